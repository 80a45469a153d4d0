"""Tune's search algorithms, built without starting Ray: seeded from run.seed, holding tune.max_concurrent."""

from __future__ import annotations

from pathlib import Path

from syneg_ray.config import load_config
from syneg_ray.tune import METRIC, param_space, search_alg


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
