"""Every figure a run writes: training curves, Tune's dev scores over (tau, R), and how close each
source's negatives sit to their query. matplotlib (the `plots` extra) is imported on first use. No Ray."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _pyplot():  # -> matplotlib.pyplot, drawing to files only
    from syneg_ray.extras import require

    matplotlib = require("matplotlib")
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def plot_curves(steps: Sequence[dict], epochs: Sequence[dict], path: str | Path, title: str = "") -> Path:
    """Three panels: loss per step, gradient variance per window, dev nDCG@10 per epoch.

    Args:
        steps: per-step records (step, loss, grad_var, window_end).
        epochs: per-epoch summaries (epoch, dev_ndcg@10 when measured).
        path: the PNG to write.
        title: figure title (e.g. strategy and R).

    Returns:
        The path.
    """
    plt = _pyplot()
    fig, (ax_loss, ax_var, ax_dev) = plt.subplots(1, 3, figsize=(13, 3.6))
    ax_loss.plot([s["step"] for s in steps], [s["loss"] for s in steps], lw=0.8)
    ax_loss.set(xlabel="step", ylabel="InfoNCE loss", title="loss")
    windows = [s for s in steps if s.get("window_end") and not math.isnan(s["grad_var"])]
    ax_var.plot([s["step"] for s in windows], [s["grad_var"] for s in windows], marker=".")
    ax_var.set(xlabel="step", ylabel="tr Cov(g) over window", title="gradient variance")
    dev = [e for e in epochs if "dev_ndcg@10" in e]
    ax_dev.plot([e["epoch"] + 1 for e in dev], [e["dev_ndcg@10"] for e in dev], marker="o")
    ax_dev.set(xlabel="epoch", ylabel="nDCG@10", title="dev nDCG@10")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_heatmap(rows: list[dict[str, Any]], path: Path, base: float = float("nan"), metric: str = "dev_ndcg@10") -> Path:
    """dev nDCG@10 over (tau, R): a curve when one axis was held, else cells or points coloured by
    score; `base` (the untrained model's score) is drawn or named."""
    plt = _pyplot()
    taus = sorted({r["temperature"] for r in rows})
    ratios = sorted({r["ratio"] for r in rows})
    fig, ax = plt.subplots(figsize=(6, 4.5))
    if len(taus) == 1 or len(ratios) == 1:  # one axis held: a curve over the other reads better than one row of cells
        _draw_curve(ax, rows, "ratio" if len(taus) == 1 else "temperature", base, metric)
    else:
        _draw_cells(fig, ax, rows, taus, ratios, base, metric)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _draw_curve(ax, rows: list[dict[str, Any]], axis: str, base: float, metric: str) -> None:
    """dev nDCG@10 over `axis` ("ratio" or "temperature"), the other axis held, with the untrained model's line."""
    held_axis, held_name = ("temperature", "tau") if axis == "ratio" else ("ratio", "R")
    scored = sorted((r[axis], r[metric], r.get(f"{metric}_se", math.nan)) for r in rows if not math.isnan(r[metric]))
    errors = [se for *_, se in scored]
    ax.errorbar([x for x, *_ in scored], [y for _, y, _ in scored], yerr=None if all(map(math.isnan, errors)) else errors,
                marker="o", capsize=3, label="trials (± standard error over the dev queries)")  # fmt: skip
    if not math.isnan(base):
        ax.axhline(base, color="#999999", linestyle="--", label=f"untrained model ({base:.3f})")
    ax.legend(fontsize=8)
    ax.margins(y=0.15)  # room for the labels above the points
    for x, y, _ in scored:
        ax.annotate(f"{y:.3f}", (x, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    ax.set_xlabel("synthetic ratio R" if axis == "ratio" else "temperature tau")
    ax.set_xscale("linear" if axis == "ratio" else "log")
    ax.set_ylabel("dev nDCG@10")
    ax.set_title(f"Ray Tune: dev nDCG@10 over {'R' if axis == 'ratio' else 'tau'} ({held_name} {rows[0][held_axis]:g})")


def _draw_cells(fig, ax, rows: list[dict[str, Any]], taus: list[float], ratios: list[float], base: float, metric: str) -> None:
    """A cell grid over (tau, R) when the trials form one, else points coloured by score; the untrained model in the title."""
    if len(taus) * len(ratios) == len(rows):
        cells = np.full((len(ratios), len(taus)), np.nan)
        for r in rows:
            cells[ratios.index(r["ratio"]), taus.index(r["temperature"])] = r[metric]
        image = ax.imshow(cells, origin="lower", cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(taus)), [f"{t:g}" for t in taus])
        ax.set_yticks(range(len(ratios)), [f"{x:g}" for x in ratios])
        for (i, j), value in np.ndenumerate(cells):
            if not np.isnan(value):
                ax.text(j, i, f"{value:.3f}", ha="center", va="center", color="white", fontsize=8)
    else:
        image = ax.scatter([r["temperature"] for r in rows], [r["ratio"] for r in rows], c=[r[metric] for r in rows],
                           cmap="viridis", s=120, edgecolors="black")  # fmt: skip
        ax.set_xscale("log")
    fig.colorbar(image, ax=ax, label="dev nDCG@10")
    ax.set_xlabel("temperature tau")
    ax.set_ylabel("synthetic ratio R")
    errors = [se for r in rows if not math.isnan(se := r.get(f"{metric}_se", math.nan))]
    notes = ([] if math.isnan(base) else [f"untrained model: {base:.3f}"]) + ([f"standard error of a cell ≈ {np.median(errors):.3f}"] if errors else [])
    ax.set_title("Ray Tune: dev nDCG@10 over (tau, R)" + "".join(f"\n{n}" for n in notes))


def plot_similarity(sims: dict[str, np.ndarray], path: Path) -> Path:
    """Histograms of each source's negatives' (and the positives') cosine similarity to their query."""
    plt = _pyplot()

    fig, ax = plt.subplots(figsize=(7, 4))
    bins = np.linspace(-0.2, 1.0, 49)
    for name, values in sims.items():
        if len(values):
            ax.hist(values, bins=bins, alpha=0.5, density=True, label=f"{name} (n={len(values)}, mean {values.mean():.2f})")
    ax.set_xlabel("cosine similarity to the query (base encoder)")
    ax.set_ylabel("density")
    ax.set_title("How close negatives sit to their query")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
