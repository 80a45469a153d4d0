"""`syneg run` end to end on a real local Ray, real models and a SciFact subset; then resume and rerun rules."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from syneg_ray import pipeline, schema
from syneg_ray.config import load_config

pytestmark = pytest.mark.slow

TINY = [
    "data.limit=8", "data.dev_fraction=0.2", "synthesize.negatives_per_pair=2", "synthesize.max_new_tokens=200",
    "mine.num_negatives=3", "mix.n_negatives=2", "train.batch_size=4", "train.max_seq_length=128",
    "train.dev_max_docs=100", "encoder.actors=1",
]  # fmt: skip


def test_run_writes_every_stage_then_skips_and_reruns_only_what_changed(ray_local, tmp_path: Path, scifact_small: Path, monkeypatch) -> None:
    # relative paths, as in the README's `syneg run --data-dir ../shared/datasets`: Ray Train workers
    # run in a directory of their own and must still find the dataset and the dev split
    monkeypatch.chdir(tmp_path)
    dataset = os.path.relpath(scifact_small, tmp_path)
    cfg = load_config(None, ["run.run_dir=run", "run.cache_dir=cache", f"data.dataset={dataset}", *TINY])
    summaries = pipeline.run_pipeline(cfg)
    run_dir = Path(cfg.run.run_dir)
    assert "dev_ndcg@10" in summaries["train"]["epochs"][-1]  # the workers found the dev split

    assert pq.read_table(run_dir / schema.SYNTHETIC).num_rows == 8
    assert pq.read_table(run_dir / schema.MINED).num_rows == 8
    instances = pq.read_table(run_dir / schema.INSTANCES).to_pylist()
    assert instances and all(len(i["negatives"]) == 2 for i in instances)
    assert (run_dir / schema.MODEL / "modules.json").is_file()
    assert set(summaries["evaluate"]) == {"base", "trained"}
    report = (run_dir / "report.md").read_text()
    assert "| trained |" in report and "similarity.png" in report and (run_dir / "similarity.png").is_file()
    assert (run_dir / "config.yaml").is_file()
    for stage in ("synthesize", "mine", "mix", "train", "evaluate"):
        assert json.loads((run_dir / stage / pipeline.MARKER).read_text())["fingerprint"]
    # what the LLM and training measured here is kept for the next plan on this host
    (rates_file,) = Path("cache").glob("rates-*.json")
    assert set(json.loads(rates_file.read_text())) == {"llm_s_per_pair:smollm2-135m", "train_s_per_text:minilm"}

    # a rerun with the same config runs nothing, and neither does a change of how the data is found
    ran: list[str] = []
    real = pipeline._stages()
    fake = [replace(s, run=lambda c, name=s.name: ran.append(name) or {}) for s in real]
    monkeypatch.setattr(pipeline, "_stages", lambda: fake)
    pipeline.run_pipeline(cfg)
    pipeline.run_pipeline(replace(cfg, data=replace(cfg.data, download=False)))
    assert ran == []

    # a new R reruns mix and everything after it, for real: the model trained at the old R is replaced
    monkeypatch.setattr(pipeline, "_stages", lambda: real)
    before = {stage: (run_dir / stage / pipeline.MARKER).read_text() for stage in ("synthesize", "mine", "mix", "train")}
    summaries = pipeline.run_pipeline(replace(cfg, mix=replace(cfg.mix, ratio=0.5)))
    assert set(summaries) == {"synthesize", "mine", "mix", "train", "evaluate"}
    for stage in ("synthesize", "mine"):
        assert (run_dir / stage / pipeline.MARKER).read_text() == before[stage]
    for stage in ("mix", "train"):
        assert (run_dir / stage / pipeline.MARKER).read_text() != before[stage]
    assert json.loads((run_dir / "mix" / "stats.json").read_text())["ratio"] == 0.5
    assert "ratio: 0.5" in (run_dir / "train" / "train_config.yaml").read_text()
    assert (run_dir / schema.MODEL / "modules.json").is_file()
