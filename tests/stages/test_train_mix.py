"""`run_mix` on hand-written synthesis / mining Parquet files, and `run_train`'s checks before Ray starts."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from syneg_ray import schema
from syneg_ray.config import MixConfig, MixStrategy, PipelineConfig
from syneg_ray.dataset import ensure_pairs, read_corpus
from syneg_ray.errors import DataError, ResumeError
from syneg_ray.stages.mix import run_mix
from syneg_ray.stages.train.trainer import check_resume, run_train, training_fingerprint


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
    # the guard off: it would also drop the hand-written negatives, and this test counts failed synthesis alone
    cfg = dataclasses.replace(tiny_cfg, mix=dataclasses.replace(tiny_cfg.mix, guard_synthetic=False))
    stats = run_mix(cfg)
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


def assert_stops_on(path: Path, rows: list[dict], run: Callable[[], object], row_error: str, column: str) -> None:
    """`run` stops with a one-line error naming the bad row when `path` holds `rows` (one of them
    corrupted), and naming `column` when that column is dropped."""
    pq.write_table(pa.Table.from_pylist(rows), path)
    with pytest.raises(DataError, match=row_error):
        run()
    pq.write_table(pa.Table.from_pylist([{k: v for k, v in r.items() if k != column} for r in rows]), path)
    with pytest.raises(DataError, match=rf"missing columns \['{column}'\]"):
        run()


def test_run_mix_rejects_unknown_ids_and_missing_columns(tiny_cfg) -> None:
    write_inputs(tiny_cfg)
    path = Path(tiny_cfg.run.run_dir) / schema.MINED
    table = pq.read_table(path).to_pylist()
    table[1]["negative_ids"][0] = "no-such-doc"
    assert_stops_on(path, table, lambda: run_mix(tiny_cfg), r"mine/negatives.parquet:2: unknown negative id 'no-such-doc'", "source")


@pytest.fixture
def mixed(tiny_cfg) -> tuple[PipelineConfig, Path]:
    """A run directory mixed up to training's input (retrieved negatives only): its config and instances."""
    write_inputs(tiny_cfg, synthetic=False)
    cfg = dataclasses.replace(tiny_cfg, mix=MixConfig(strategy=MixStrategy.RETRIEVED, ratio=0.0))
    run_mix(cfg)
    return cfg, Path(cfg.run.run_dir) / schema.INSTANCES


def test_run_train_fails_fast_on_bad_instances(mixed) -> None:
    cfg, path = mixed
    rows = pq.read_table(path).to_pylist()
    rows[3]["negatives"] = rows[3]["negatives"][1:]
    assert_stops_on(path, rows, lambda: run_train(cfg), r"instances.parquet:4: \d negatives, \d negative_ids", "query")


def test_resume_with_a_changed_config_shows_the_difference(mixed) -> None:
    cfg, instances = mixed
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
    from syneg_ray.stages.train.trainer import build_trainer

    monkeypatch.chdir(tmp_path)
    dataset = Path(tiny_cfg.data.dataset)
    (tmp_path / "data").symlink_to(dataset.parent)
    cfg = load_config(None, ["run.run_dir=runs/rel", f"data.dataset=data/{dataset.name}", "data.data_dir=data"])
    trainer = build_trainer(cfg, "runs/rel/mix/instances.parquet", "model", "runs/rel/train", n_instances=8, width=4)
    seen = from_dict(trainer.train_loop_config["cfg"])
    assert seen.run.run_dir == str(tmp_path / "runs" / "rel")
    assert Path(seen.data.dataset).is_absolute() and Path(seen.data.dataset, "corpus.jsonl").is_file()
    assert seen.data.data_dir == str((tmp_path / "data").resolve())


def _stored_synthesis(cfg, model: str, text: str, seed: int = 0, status: str = "ok", temperature: float | None = None) -> None:
    """Rows as `syneg synthesize` stores them, for every pair, under `model`'s, `seed`'s (and `temperature`'s) keys."""
    from syneg_ray import prompts
    from syneg_ray import synthetic_store as store

    pairs = pq.read_table(ensure_pairs(cfg)[1]).to_pylist()
    synthesize = dataclasses.replace(cfg.synthesize, model=model)
    if temperature is not None:
        synthesize = dataclasses.replace(synthesize, temperature=temperature)
    as_run = dataclasses.replace(cfg, synthesize=synthesize, run=dataclasses.replace(cfg.run, seed=seed))
    rows = [{"key": store.pair_key(as_run, p["query_id"], p["positive_id"]), "query_id": p["query_id"],
             "positive_id": p["positive_id"], "negatives": [f"{text} {i}.{j}" for j in range(3)] if status == "ok" else [],
             "model": model, "prompt_version": prompts.PROMPT_VERSION, "status": status} for i, p in enumerate(pairs)]  # fmt: skip
    store.write_part(Path(cfg.run.run_dir) / schema.SYNTHETIC, rows, store.SYNTHETIC_SCHEMA)


def _mixed_negatives(cfg) -> list[str]:
    cfg = dataclasses.replace(cfg, mix=MixConfig(strategy=MixStrategy.SYNTHETIC, n_negatives=3))
    run_mix(cfg)
    return [n for r in pq.read_table(Path(cfg.run.run_dir) / schema.INSTANCES).to_pylist() for n in r["negatives"]]


def _stored_texts(cfg, text: str) -> list[str]:
    """Every negative `_stored_synthesis(cfg, ..., text)` wrote: 3 per pair."""
    n_pairs = pq.read_table(ensure_pairs(cfg)[1]).num_rows
    assert n_pairs > 0
    return [f"{text} {i}.{j}" for i in range(n_pairs) for j in range(3)]


def test_run_mix_reads_only_the_current_llms_synthesis(tiny_cfg) -> None:
    """After a change of LLM the old model's rows stay on disk; mixing them in would train on
    negatives of a config that is no longer the run's."""
    write_inputs(tiny_cfg, synthetic=False)
    _stored_synthesis(tiny_cfg, "old-llm", "stale")
    assert _mixed_negatives(tiny_cfg) == []  # another LLM's rows are no synthesis of this run's
    _stored_synthesis(tiny_cfg, tiny_cfg.synthesize.model, "current", seed=7)
    assert sorted(_mixed_negatives(tiny_cfg)) == sorted(_stored_texts(tiny_cfg, "current"))  # every pair, all 3 of its negatives


def test_run_mix_prefers_this_seeds_synthesis_and_falls_back_to_another(tiny_cfg) -> None:
    """Runs at several training seeds may share one synthesis (the ablation does); a synthesis at
    the run's own seed, when there is one, wins."""
    write_inputs(tiny_cfg, synthetic=False)
    at_one = dataclasses.replace(tiny_cfg, run=dataclasses.replace(tiny_cfg.run, seed=1))
    _stored_synthesis(tiny_cfg, tiny_cfg.synthesize.model, "seed-zero", seed=0)
    assert sorted(_mixed_negatives(at_one)) == sorted(_stored_texts(tiny_cfg, "seed-zero"))
    _stored_synthesis(tiny_cfg, tiny_cfg.synthesize.model, "seed-one", seed=1)
    assert sorted(_mixed_negatives(at_one)) == sorted(_stored_texts(tiny_cfg, "seed-one"))


def test_hybrid_at_r_1_tops_up_from_mining_and_at_r_0_needs_no_synthesis(tiny_cfg) -> None:
    write_inputs(tiny_cfg)  # every fifth pair failed synthesis
    at_one = dataclasses.replace(tiny_cfg, mix=MixConfig(strategy=MixStrategy.HYBRID, ratio=1.0, n_negatives=4))
    stats = run_mix(at_one)
    assert stats["instances"] == stats["pairs"]  # failed pairs borrowed 4 retrieved negatives instead of being dropped
    assert stats["borrowed_synthetic"] > 0
    import shutil

    shutil.rmtree(Path(tiny_cfg.run.run_dir) / schema.SYNTHETIC)
    at_zero = dataclasses.replace(tiny_cfg, mix=MixConfig(strategy=MixStrategy.HYBRID, ratio=0.0, n_negatives=4))
    assert run_mix(at_zero)["instances"] == stats["pairs"]


def test_train_in_the_pipeline_replaces_a_model_of_another_config(mixed, monkeypatch) -> None:
    """`syneg train` refuses a run directory trained under another config; `syneg run`, which reruns
    train because mix or train changed, replaces it."""
    from syneg_ray.stages.train import trainer

    cfg, instances = mixed
    train_dir = Path(cfg.run.run_dir) / "train"
    (train_dir / "model").mkdir(parents=True)
    (train_dir / "model" / "old-weights").write_text("x")
    import yaml

    (train_dir / "train_config.yaml").write_text(yaml.safe_dump(training_fingerprint(cfg, instances)))
    changed = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, temperature=0.02))

    class Started(Exception):
        pass

    def no_training(*args, **kwargs):
        raise Started

    monkeypatch.setattr(trainer, "build_trainer", no_training)
    monkeypatch.setattr("syneg_ray.runtime.init_ray", lambda cfg: None)
    with pytest.raises(ResumeError):
        run_train(changed)
    assert (train_dir / "model" / "old-weights").is_file()  # refused, nothing lost
    with pytest.raises(Started):
        run_train(changed, replace_other_config=True)
    assert not (train_dir / "model").exists()
    assert "temperature: 0.02" in (train_dir / "train_config.yaml").read_text()
    # where the dataset is found, or which split is reported, is not another config
    elsewhere = dataclasses.replace(changed, data=dataclasses.replace(changed.data, download=False, eval_split="dev"))
    with pytest.raises(Started):
        run_train(elsewhere)


def test_rows_of_other_generation_settings_do_not_stand_in_for_this_runs(tiny_cfg) -> None:
    """The temperature changed and the rerun's synthesis failed for every pair: the old temperature's
    negatives must not be mixed in as if this run had written them."""
    write_inputs(tiny_cfg, synthetic=False)
    _stored_synthesis(tiny_cfg, tiny_cfg.synthesize.model, "hot", temperature=1.3)
    # no row of this run's: the other temperature's rows are a fallback, every pair's
    assert sorted(_mixed_negatives(tiny_cfg)) == sorted(_stored_texts(tiny_cfg, "hot"))
    _stored_synthesis(tiny_cfg, tiny_cfg.synthesize.model, "", status="failed")
    assert _mixed_negatives(tiny_cfg) == []


def test_instances_are_written_in_row_groups(tiny_cfg, monkeypatch) -> None:
    """Ray Data reads a row group into one training block and the driver validates one at a time:
    a single row group of every instance would make both grow with the training set."""
    from syneg_ray.stages import mix

    monkeypatch.setattr(mix, "INSTANCE_ROW_GROUP", 4)
    write_inputs(tiny_cfg)
    stats = run_mix(tiny_cfg)
    meta = pq.ParquetFile(Path(tiny_cfg.run.run_dir) / schema.INSTANCES).metadata
    assert stats["instances"] > 8 and meta.num_row_groups == -(-stats["instances"] // 4)
    assert max(meta.row_group(i).num_rows for i in range(meta.num_row_groups)) == 4
