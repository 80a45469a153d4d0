"""A tiny real Ray Tune run: 4 trials (2 tau x 2 R) over Ray Train, on hand-written negatives."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from syneg_ray import schema
from syneg_ray.config import load_config
from syneg_ray.dataset import ensure_pairs, read_corpus
from syneg_ray.stages.tune import run_tune

pytestmark = pytest.mark.slow


def write_negatives(run_dir: Path, corpus: dict[str, str]) -> None:
    """Synthetic negatives = texts of unrelated documents; mined = ids of other unrelated documents."""
    pairs = pq.read_table(run_dir / schema.PAIRS).to_pylist()
    positives = {p["positive_id"] for p in pairs}
    others = [d for d in corpus if d not in positives]
    synthetic, mined = [], []
    for i, p in enumerate(pairs):
        texts = [corpus[others[(3 * i + j) % len(others)]] for j in range(2)]
        synthetic.append({"key": f"k{i}", "query_id": p["query_id"], "positive_id": p["positive_id"], "negatives": texts, "status": "ok"})
        ids = [others[(3 * i + 7 + j) % len(others)] for j in range(3)]
        mined.append({"query_id": p["query_id"], "positive_id": p["positive_id"], "positive_ids": [p["positive_id"]],
                      "negative_ids": ids, "negative_scores": [0.1] * 3, "positive_score": 0.5, "source": ["dense"] * 3})
    for rows, name in ((synthetic, schema.SYNTHETIC), (mined, schema.MINED)):
        (run_dir / name).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), run_dir / name)


def test_four_trials_write_table_best_config_and_heatmap(ray_local, tmp_path: Path, scifact_small: Path) -> None:
    cfg = load_config(None, [
        f"run.run_dir={tmp_path / 'run'}", f"run.cache_dir={tmp_path / 'cache'}", f"data.dataset={scifact_small}",
        "data.dev_fraction=0.25", "data.limit=24", "mix.n_negatives=2", "train.batch_size=8", "train.epochs=1",
        "train.max_seq_length=64", "train.dev_max_docs=100", "train.cpus_per_worker=1",
        "tune.searcher=grid", "tune.grid_points=2", "tune.temperature_min=0.02", "tune.temperature_max=0.1",
    ])  # fmt: skip
    prepared, _ = ensure_pairs(cfg)
    write_negatives(Path(cfg.run.run_dir), read_corpus(prepared))
    summary = run_tune(cfg)

    out = Path(cfg.run.run_dir) / "tune"
    with (out / "trials.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4 and summary["trials"] == 4
    assert {(float(r["temperature"]), float(r["ratio"])) for r in rows} == {(0.02, 0.0), (0.02, 1.0), (0.1, 0.0), (0.1, 1.0)}
    assert all(r["error"] == "" and 0.0 <= float(r["dev_ndcg@10"]) <= 1.0 for r in rows)
    best = load_config(out / "best.yaml")
    assert (best.train.temperature, best.mix.ratio) == (summary["best"]["temperature"], summary["best"]["ratio"])
    assert replace(best, train=cfg.train, mix=cfg.mix) == cfg  # only tau and R differ from the base config
    assert (out / "heatmap.png").stat().st_size > 10_000
    # the untrained model, scored on the same dev split as the trials: the line a trial has to clear
    assert 0.0 < summary["base"] <= 1.0
    base = json.loads((out / "base.json").read_text())
    # scored with its standard error (0 when every dev query scores the same: the untrained model finds
    # each of these 10 dev queries' positive first among the 100 dev documents)
    assert base["dev_ndcg@10"] == summary["base"] and 0.0 <= base["dev_ndcg@10_se"] < 0.5
    assert all(0.0 <= float(r["dev_ndcg@10_se"]) < 0.5 for r in rows)  # and so is every trial
    # each trial against the best on the same dev queries: its paired difference, and the best's own gain over the untrained model
    top = max(rows, key=lambda r: float(r["dev_ndcg@10"]))
    assert (float(top["dev_ndcg@10_vs_best"]), float(top["dev_ndcg@10_vs_best_se"])) == (0.0, 0.0)
    for r in rows:
        assert float(r["dev_ndcg@10_vs_best"]) == pytest.approx(float(r["dev_ndcg@10"]) - float(top["dev_ndcg@10"]), abs=1e-9)
    assert base["best_gain"] == pytest.approx(float(top["dev_ndcg@10"]) - base["dev_ndcg@10"], abs=1e-9)
    assert base["best_gain_se"] is not None and 0.0 <= base["best_gain_se"] < 0.5
    # every trial linked the shared negatives instead of copying or recomputing them
    trial_dirs = list((out / "trials").iterdir())
    assert len(trial_dirs) == 4 and all((d / "mine").is_symlink() and (d / "synthesize").is_symlink() for d in trial_dirs)


def test_trials_scored_only_after_their_last_epoch_are_ranked_by_it(ray_local, tmp_path: Path, scifact_small: Path) -> None:
    """train.dev_every=0 (ASHA off): the epochs before the last report nothing to Tune, and each
    trial is ranked by its last epoch's dev score."""
    cfg = load_config(None, [
        f"run.run_dir={tmp_path / 'run'}", f"run.cache_dir={tmp_path / 'cache'}", f"data.dataset={scifact_small}",
        "data.dev_fraction=0.25", "data.limit=24", "mix.n_negatives=2", "train.batch_size=8", "train.epochs=2",
        "train.dev_every=0", "tune.asha=false", "train.max_seq_length=64", "train.dev_max_docs=100", "train.cpus_per_worker=1",
        "tune.searcher=grid", "tune.grid_points=2", "tune.temperature_min=0.05", "tune.temperature_max=0.05",
    ])  # fmt: skip
    prepared, _ = ensure_pairs(cfg)
    write_negatives(Path(cfg.run.run_dir), read_corpus(prepared))
    summary = run_tune(cfg)

    with (Path(cfg.run.run_dir) / "tune" / "trials.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 and summary["trials"] == 2
    assert all(r["error"] == "" and r["epochs"] == "2" and 0.0 <= float(r["dev_ndcg@10"]) <= 1.0 for r in rows)
    reported = sorted((Path(cfg.run.run_dir) / "tune" / "ray" / "tune").glob("*/result.json"))  # Tune's log of each trial's reports
    assert len(reported) == 2
    for log in reported:
        assert [json.loads(line)["epoch"] for line in log.read_text().splitlines()] == [1]  # the last epoch's only
