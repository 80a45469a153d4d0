"""`run_mix` on hand-written synthesis / mining Parquet files, and `run_train`'s checks before Ray starts."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from syneg_ray import schema
from syneg_ray.config import MixConfig, MixStrategy
from syneg_ray.dataset import ensure_pairs, read_corpus
from syneg_ray.errors import DataError, ResumeError
from syneg_ray.stages.mix import run_mix
from syneg_ray.train.trainer import check_resume, run_train, training_fingerprint


def write_inputs(cfg, n_syn: int = 3, n_ret: int = 4, synthetic: bool = True) -> None:
    """Small stand-ins for the synthesize and mine outputs: real corpus ids, never a positive."""
    prepared, pairs_path = ensure_pairs(cfg)
    pairs = pq.read_table(pairs_path).to_pylist()
    doc_ids = list(read_corpus(prepared))
    run_dir = Path(cfg.run.run_dir)
    positives = {p["positive_id"] for p in pairs}
    others = [d for d in doc_ids if d not in positives]
    mined = [{"query_id": p["query_id"], "positive_id": p["positive_id"], "negative_ids": others[i : i + n_ret],
              "negative_scores": [0.5] * n_ret, "source": ["dense", "bm25"] * (n_ret // 2) + ["dense"] * (n_ret % 2)}
             for i, p in enumerate(pairs)]  # fmt: skip
    (run_dir / "mine").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(mined), run_dir / schema.MINED)
    if synthetic:
        rows = [{"key": f"k{i}", "query_id": p["query_id"], "positive_id": p["positive_id"], "status": "ok" if i % 5 else "failed",
                 "negatives": [f"synthetic passage {i}.{j} about {p['query'][:30]}" for j in range(n_syn)] if i % 5 else []}
                for i, p in enumerate(pairs)]  # fmt: skip
        folder = run_dir / schema.SYNTHETIC  # a folder of part files, as Ray Data writes it
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows[: len(rows) // 2]), folder / "part-0.parquet")
        pq.write_table(pa.Table.from_pylist(rows[len(rows) // 2 :]), folder / "part-1.parquet")


def test_run_mix_hybrid_counts_failed_synthesis(tiny_cfg) -> None:
    write_inputs(tiny_cfg)
    stats = run_mix(tiny_cfg)
    rows = pq.read_table(Path(tiny_cfg.run.run_dir) / schema.INSTANCES).to_pylist()
    failed = len([i for i in range(stats["pairs"]) if i % 5 == 0])
    assert stats["instances"] == stats["pairs"] == len(rows)
    assert stats["borrowed_synthetic"] == 3 * failed  # wanted 3 of 4 synthetic, had none: all retrieved
    assert {tuple(sorted(set(r["negative_sources"]))) for r in rows} == {("dense", "synthetic"), ("bm25", "dense")}  # 3 synthetic + the top mined one
    assert json.loads((Path(tiny_cfg.run.run_dir) / "mix" / "stats.json").read_text())["realized_ratio"] == stats["realized_ratio"]


def test_run_mix_random_needs_no_inputs(tiny_cfg) -> None:
    cfg = dataclasses.replace(tiny_cfg, mix=MixConfig(strategy=MixStrategy.RANDOM, n_negatives=3))
    stats = run_mix(cfg)
    assert stats["random_slots"] == 3 * stats["instances"] > 0


def test_run_mix_rejects_unknown_ids_and_missing_columns(tiny_cfg) -> None:
    write_inputs(tiny_cfg)
    path = Path(tiny_cfg.run.run_dir) / schema.MINED
    table = pq.read_table(path).to_pylist()
    table[1]["negative_ids"][0] = "no-such-doc"
    pq.write_table(pa.Table.from_pylist(table), path)
    with pytest.raises(DataError, match=r"mine/negatives.parquet:2: unknown negative id 'no-such-doc'"):
        run_mix(tiny_cfg)
    pq.write_table(pa.Table.from_pylist([{k: v for k, v in r.items() if k != "source"} for r in table]), path)
    with pytest.raises(DataError, match=r"missing columns \['source'\]"):
        run_mix(tiny_cfg)


def test_run_train_fails_fast_on_bad_instances(tiny_cfg) -> None:
    write_inputs(tiny_cfg, synthetic=False)
    cfg = dataclasses.replace(tiny_cfg, mix=MixConfig(strategy=MixStrategy.RETRIEVED, ratio=0.0))
    run_mix(cfg)
    path = Path(cfg.run.run_dir) / schema.INSTANCES
    rows = pq.read_table(path).to_pylist()
    rows[3]["negatives"] = []
    pq.write_table(pa.Table.from_pylist(rows), path)
    with pytest.raises(DataError, match=r"instances.parquet:4: empty negatives"):
        run_train(cfg)
    pq.write_table(pa.Table.from_pylist([{k: v for k, v in r.items() if k != "query"} for r in rows]), path)
    with pytest.raises(DataError, match=r"missing columns \['query'\]"):
        run_train(cfg)


def test_resume_with_a_changed_config_shows_the_difference(tiny_cfg) -> None:
    write_inputs(tiny_cfg, synthetic=False)
    cfg = dataclasses.replace(tiny_cfg, mix=MixConfig(strategy=MixStrategy.RETRIEVED, ratio=0.0))
    run_mix(cfg)
    instances = Path(cfg.run.run_dir) / schema.INSTANCES
    train_dir = Path(cfg.run.run_dir) / "train"
    train_dir.mkdir(parents=True)
    import yaml

    (train_dir / "train_config.yaml").write_text(yaml.safe_dump(training_fingerprint(cfg, instances)))
    assert check_resume(train_dir, training_fingerprint(cfg, instances))
    changed = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, temperature=0.02))
    with pytest.raises(ResumeError, match=r"train.temperature: 0.05 -> 0.02"):
        run_train(changed)


def test_train_workers_get_absolute_paths(tiny_cfg, tmp_path, monkeypatch) -> None:
    """Ray Train workers run in a directory of their own. With a relative run directory they
    silently found no dev split, and with a relative dataset they failed to find the corpus."""
    from syneg_ray.config import from_dict, load_config
    from syneg_ray.train.trainer import build_trainer

    monkeypatch.chdir(tmp_path)
    dataset = Path(tiny_cfg.data.dataset)
    (tmp_path / "data").symlink_to(dataset.parent)
    cfg = load_config(None, ["run.run_dir=runs/rel", f"data.dataset=data/{dataset.name}", "data.data_dir=data"])
    trainer = build_trainer(cfg, "runs/rel/mix/instances.parquet", "model", "runs/rel/train")
    seen = from_dict(trainer.train_loop_config["cfg"])
    assert seen.run.run_dir == str(tmp_path / "runs" / "rel")
    assert Path(seen.data.dataset).is_absolute() and Path(seen.data.dataset, "corpus.jsonl").is_file()
    assert seen.data.data_dir == str((tmp_path / "data").resolve())
