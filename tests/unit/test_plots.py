"""plots.py draws every figure: Tune's grid as cells, a held axis as a curve, uneven trials as points,
the negatives' similarity histograms and the training curves."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from syneg_ray import plots

pytest.importorskip("matplotlib")


def _trials(taus: list[float], ratios: list[float]) -> list[dict]:
    return [{"temperature": t, "ratio": r, "dev_ndcg@10": 0.7 + 0.01 * i} for i, (t, r) in
            enumerate((t, r) for t in taus for r in ratios)]  # fmt: skip


@pytest.mark.parametrize(
    ("rows", "shape"),
    [
        (_trials([0.01, 0.05], [0.0, 0.5, 1.0]), "cells"),  # a full grid
        (_trials([0.05], [0.0, 0.5, 1.0]), "curve"),  # tau held: a curve over R
        (_trials([0.01, 0.05], [0.0, 0.5])[:3], "points"),  # a random search's uneven trials
    ],
)
def test_tune_figure_takes_the_shape_of_its_trials(tmp_path: Path, rows: list[dict], shape: str) -> None:
    path = plots.plot_heatmap(rows, tmp_path / f"{shape}.png", base=0.69)
    assert path.stat().st_size > 5_000


def test_standard_errors_draw_as_error_bars_and_in_the_grid_title(tmp_path: Path, monkeypatch) -> None:
    drawn = {}
    axes = plots._pyplot().Axes
    errorbar, set_title = axes.errorbar, axes.set_title

    def recorded_errorbar(self, *args, **kwargs):
        drawn["yerr"] = kwargs["yerr"]
        return errorbar(self, *args, **kwargs)

    def recorded_title(self, text, *args, **kwargs):
        drawn["title"] = text
        return set_title(self, text, *args, **kwargs)

    monkeypatch.setattr(axes, "errorbar", recorded_errorbar)
    monkeypatch.setattr(axes, "set_title", recorded_title)
    curve = [dict(r, **{"dev_ndcg@10_se": 0.01 * (i + 1)}) for i, r in enumerate(_trials([0.05], [0.0, 0.5, 1.0]))]
    plots.plot_heatmap(curve, tmp_path / "curve.png")
    assert drawn.pop("yerr") == [0.01, 0.02, 0.03]
    drawn.clear()
    cells = [dict(r, **{"dev_ndcg@10_se": 0.02}) for r in _trials([0.01, 0.05], [0.0, 1.0])]
    plots.plot_heatmap(cells, tmp_path / "cells.png", base=0.69)
    assert "standard error of a cell ≈ 0.020" in drawn["title"] and "untrained model: 0.690" in drawn["title"]


def test_a_trial_without_a_score_is_left_out_of_the_curve(tmp_path: Path) -> None:
    rows = _trials([0.05], [0.0, 0.5, 1.0])
    rows[1]["dev_ndcg@10"] = math.nan
    assert plots.plot_heatmap(rows, tmp_path / "curve.png").stat().st_size > 5_000


def test_similarity_histograms_and_training_curves(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    sims = {"positive": rng.uniform(0.4, 0.9, 50), "dense": rng.uniform(0.2, 0.7, 80), "synthetic": np.zeros(0)}
    assert plots.plot_similarity(sims, tmp_path / "similarity.png").stat().st_size > 5_000
    steps = [{"step": i, "loss": 1.0 / i, "grad_var": 0.1, "window_end": i % 2 == 0} for i in range(1, 9)]
    epochs = [{"epoch": 0, "dev_ndcg@10": 0.7}, {"epoch": 1, "dev_ndcg@10": 0.72}]
    assert plots.plot_curves(steps, epochs, tmp_path / "deep" / "curves.png", "hybrid").stat().st_size > 5_000
