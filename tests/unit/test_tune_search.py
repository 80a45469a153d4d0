"""Tune's search algorithms, built without starting Ray: seeded from run.seed, holding tune.max_concurrent."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from syneg_ray.config import load_config
from syneg_ray.stages.tune import METRIC, param_space, search_alg


def _noop(config: dict) -> None:
    pass


def random_points(overrides: list[str], storage: Path, n: int = 4) -> list[tuple[float, float]]:
    """The (tau, R) of the first n trials the searcher hands Tune, completing each before the next."""
    cfg = load_config(None, ["tune.searcher=random", *overrides])
    alg = search_alg(cfg)
    alg.add_configurations({"t": {"run": _noop, "config": param_space(cfg), "num_samples": n, "storage_path": str(storage)}})
    points = []
    for _ in range(n):
        trial = alg.next_trial()
        assert alg.next_trial() is None  # tune.max_concurrent = 1: the next waits for this one
        points.append((trial.config["temperature"], trial.config["ratio"]))
        alg.on_trial_complete(trial.trial_id)
    return points


def test_random_searcher_draws_the_same_points_for_the_same_seed(tmp_path: Path) -> None:
    first = random_points(["run.seed=7"], tmp_path / "a")
    assert random_points(["run.seed=7"], tmp_path / "b") == first
    assert random_points(["run.seed=8"], tmp_path / "c") != first
    assert len(set(first)) == len(first)


def test_optuna_searcher_is_seeded_and_limited(tmp_path: Path) -> None:
    def first_point(seed: int) -> dict:
        cfg = load_config(None, ["tune.searcher=optuna", f"run.seed={seed}", "tune.max_concurrent=2"])
        alg = search_alg(cfg)
        assert alg.max_concurrent == 2
        assert alg.set_search_properties(METRIC, "max", param_space(cfg))
        return alg.suggest("t1")

    assert first_point(3) == first_point(3)
    assert first_point(3) != first_point(4)


def test_a_range_of_one_value_holds_that_axis() -> None:
    from syneg_ray.stages.tune import grid

    held_tau = load_config(None, ["tune.searcher=grid", "tune.grid_points=5", "tune.temperature_min=0.05", "tune.temperature_max=0.05"])
    assert grid(held_tau) == ([0.05], [0.0, 0.25, 0.5, 0.75, 1.0])
    held_ratio = load_config(None, ["tune.grid_points=3", "tune.ratio_min=0.7", "tune.ratio_max=0.7"])
    assert grid(held_ratio) == ([0.005, 0.02236, 0.1], [0.7])
    space = param_space(held_ratio)  # the random searcher: R is a constant, tau still a distribution
    assert space["ratio"] == 0.7 and hasattr(space["temperature"], "sample")


def test_random_searcher_with_tau_held_draws_only_ratios(tmp_path: Path) -> None:
    points = random_points(["tune.temperature_min=0.05", "tune.temperature_max=0.05"], tmp_path)
    assert {tau for tau, _ in points} == {0.05}
    assert len({ratio for _, ratio in points}) == len(points)


def test_optuna_searcher_takes_a_held_axis(tmp_path: Path) -> None:
    from ray.tune.search import SearchGenerator

    cfg = load_config(None, ["tune.searcher=optuna", "tune.ratio_min=0.5", "tune.ratio_max=0.5"])
    searcher = search_alg(cfg)
    assert searcher.set_search_properties(METRIC, "max", param_space(cfg))
    generator = SearchGenerator(searcher)  # as Tune wraps it: the constant joins each suggested config
    generator.add_configurations({"t": {"run": _noop, "config": param_space(cfg), "num_samples": 1, "storage_path": str(tmp_path)}})
    config = generator.next_trial().config
    assert config["ratio"] == 0.5 and 0.005 <= config["temperature"] <= 0.1


def test_tune_without_dev_scores_is_refused_before_any_trial(tmp_path: Path) -> None:
    from syneg_ray.errors import ConfigError
    from syneg_ray.stages.tune import run_tune

    for overrides, named in ((["train.dev_eval=false"], "train.dev_eval"), (["data.dev_fraction=0"], "data.dev_fraction"),
                             (["train.dev_every=0"], "train.dev_every=1 or tune.asha=false")):  # ASHA compares every epoch
        cfg = load_config(None, [f"run.run_dir={tmp_path / 'run'}", *overrides])
        with pytest.raises(ConfigError, match=named):
            run_tune(cfg)
    assert not (tmp_path / "run").exists()  # refused before the run directory or Ray were touched


def test_hybrid_grid_runs_one_trial_per_synthetic_count() -> None:
    from syneg_ray.stages.tune import grid

    def ratios(*overrides: str) -> list[float]:
        return grid(load_config(None, ["tune.searcher=grid", "tune.grid_points=5", *overrides]))[1]

    # n = 3: R 0.5 and 0.75 both give 2 synthetic negatives an instance
    assert ratios("mix.n_negatives=3") == [0.0, 0.25, 0.5, 1.0]
    assert ratios("mix.n_negatives=4") == [0.0, 0.25, 0.5, 0.75, 1.0]  # every R its own count
    assert ratios("mix.n_negatives=3", "mix.strategy=direct") == [0.0, 0.25, 0.5, 0.75, 1.0]  # R is a share of instances
    # at least one of each kind when 0 < R < 1: R 0.1 at n = 3 asks for 1, as R 0.25 does
    assert ratios("mix.n_negatives=3", "tune.ratio_min=0.1", "tune.ratio_max=0.3") == [0.1]


def test_a_trial_links_the_shared_folders_the_run_has(tmp_path: Path) -> None:
    from syneg_ray.stages.tune import link_shared

    base, trial = tmp_path / "run", tmp_path / "run" / "tune" / "trials" / "t1"
    for name in ("pairs", "mine"):
        (base / name).mkdir(parents=True)
        (base / name / "file").write_text(name)
    (trial / "pairs").parent.mkdir(parents=True)
    (trial / "pairs").symlink_to(tmp_path, target_is_directory=True)  # left by an earlier run, pointing elsewhere
    link_shared(base, trial)
    assert (trial / "pairs" / "file").read_text() == "pairs" and (trial / "mine" / "file").read_text() == "mine"
    assert not (trial / "synthesize").exists()  # a run without synthesis (R = 0): nothing to link


def test_trials_carry_their_dev_score_and_its_standard_error() -> None:
    from types import SimpleNamespace

    from syneg_ray.stages.tune import METRIC_SE, trial_rows

    done = SimpleNamespace(path="/x/trial_b", config={"temperature": 0.05, "ratio": 0.5}, error=None,
                           metrics={"training_iteration": 1, "epoch": 1, METRIC: 0.71, METRIC_SE: 0.02})  # fmt: skip
    failed = SimpleNamespace(path="/x/trial_a", config={"temperature": 0.01, "ratio": 0.5}, error=RuntimeError("boom"), metrics={})
    first, second = trial_rows([done, failed])
    assert (first["trial"], first["error"]) == ("trial_a", "boom") and math.isnan(first[METRIC]) and math.isnan(first[METRIC_SE])
    assert (second[METRIC], second[METRIC_SE], second["epochs"]) == (0.71, 0.02, 2)


def test_each_trial_is_compared_to_the_best_on_the_same_dev_queries(tmp_path: Path) -> None:
    import json

    from syneg_ray.stages.train.loop import DEV_BY_QUERY
    from syneg_ray.stages.tune import VS_BEST, VS_BEST_SE, compare_to_best, runner_up, trial_by_query

    trials = tmp_path / "trials"
    by_query = {"best": {"q1": 0.9, "q2": 0.5, "q3": 0.2}, "near": {"q1": 0.85, "q2": 0.45, "q3": 0.15}}
    for trial_id, scores in by_query.items():
        (trials / trial_id / "train").mkdir(parents=True)
        (trials / trial_id / "train" / DEV_BY_QUERY).write_text(json.dumps({"epoch": 2, "ndcg@10": scores}))

    def row(trial_id: str, score: float) -> dict:
        return {"trial": trial_id, "trial_id": trial_id, "temperature": 0.02, "ratio": 0.5, METRIC: score}

    rows = [row("near", 0.4833), row("best", 0.5333), row("failed", math.nan), row("unwritten", 0.30)]
    read = {r["trial_id"]: trial_by_query(trials, r) for r in rows}
    assert read["near"] == by_query["near"] and read["unwritten"] == {}  # a trial whose rank 0 wrote nothing
    best = compare_to_best(rows, read)
    assert best is rows[1] and (rows[1][VS_BEST], rows[1][VS_BEST_SE]) == (0.0, 0.0)
    # 5 points below on every query: a difference known exactly, though either score's own error is 0.2
    assert rows[0][VS_BEST] == pytest.approx(-0.05) and rows[0][VS_BEST_SE] == pytest.approx(0.0, abs=1e-12)
    assert all(math.isnan(r[VS_BEST]) for r in rows[2:])  # no per-query scores: nothing to pair
    assert runner_up(rows, best) == "; the runner-up (tau 0.0200, R 0.50) is 0.0500 ± 0.0000 below the best"
    assert compare_to_best([row("failed", math.nan)], read) is None
