"""Training curves (loss, gradient variance, dev nDCG@10) as one PNG. No Ray."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path


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
    from syneg_ray.extras import require

    matplotlib = require("matplotlib")
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

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
