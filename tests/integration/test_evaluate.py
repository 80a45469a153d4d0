"""`syneg evaluate` end to end on a real local Ray and a real SciFact subset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from syneg_ray import beir, metrics
from syneg_ray.dataset import prepare
from syneg_ray.encoder import load_encoder
from syneg_ray.registry import resolve_model
from syneg_ray.services import embed
from syneg_ray.stages.evaluate import run_evaluate


def test_dense_evaluation_caches_embeddings_and_matches_sentence_transformers(ray_local, tiny_cfg, monkeypatch) -> None:
    scores = run_evaluate(tiny_cfg)
    out = Path(tiny_cfg.run.run_dir) / "evaluate" / "minilm-test"
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["ndcg@10"] == pytest.approx(scores["ndcg@10"]) and saved["queries"] == 20
    assert (out / "run.trec").read_text().count("\n") == 20 * 100

    # the corpus embeddings were cached by the run above: a second request must not encode again
    prepared = prepare(tiny_cfg)
    monkeypatch.setattr(embed, "encode_on_pool", lambda *a, **k: pytest.fail("cache miss: corpus encoded twice"))
    ours = np.asarray(embed.embed_corpus(tiny_cfg, prepared))

    # the peer: SentenceTransformer.encode + sentence_transformers.util.semantic_search; only the metrics are ours
    from sentence_transformers.util import semantic_search

    table = pq.read_table(prepared.corpus_parquet)
    doc_ids, texts = table.column("doc_id").to_pylist(), table.column("text").to_pylist()
    qrels, _ = beir.read_qrels(prepared.folder, "test")
    queries = beir.read_queries(prepared.folder, keep=set(qrels))
    model = load_encoder(resolve_model("minilm"), device="cpu")
    peer_docs = model.encode(texts, convert_to_numpy=True)
    np.testing.assert_allclose(ours, peer_docs, atol=1e-4)  # rows in corpus order, same vectors
    hits = semantic_search(model.encode(list(queries.values()), convert_to_tensor=True),
                           torch.from_numpy(peer_docs), top_k=100)
    peer_run = {q: {doc_ids[h["corpus_id"]]: h["score"] for h in hs} for q, hs in zip(queries, hits, strict=True)}
    assert scores["ndcg@10"] == pytest.approx(metrics.evaluate_run(qrels, peer_run)["ndcg@10"], abs=0.002)


def test_int8_encoder_actors_keep_retrieval_quality(ray_local, tiny_cfg) -> None:
    from dataclasses import replace

    from syneg_ray.config import Dtype

    fp32 = run_evaluate(tiny_cfg)
    int8_cfg = replace(tiny_cfg, encoder=replace(tiny_cfg.encoder, dtype=Dtype.INT8))
    int8 = run_evaluate(int8_cfg)
    cached = sorted(p.name for p in (Path(tiny_cfg.run.cache_dir) / "embeddings").glob("*.npy"))
    assert len(cached) == 2  # int8 embeddings are cached apart from fp32's
    assert int8["ndcg@10"] == pytest.approx(fp32["ndcg@10"], abs=0.03)
    assert int8["recall@100"] == pytest.approx(fp32["recall@100"], abs=0.03)


def test_bm25_baseline(tiny_cfg) -> None:
    from dataclasses import replace

    cfg = replace(tiny_cfg, evaluate=replace(tiny_cfg.evaluate, model="bm25"))
    scores = run_evaluate(cfg)
    assert 0.5 < scores["ndcg@10"] <= 1.0  # 20 queries over ~340 docs: lexical search finds most positives
    assert (Path(cfg.run.run_dir) / "evaluate" / "bm25-test" / "metrics.json").is_file()
