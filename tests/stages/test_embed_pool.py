"""Queries encoded on the corpus's Ray Data actor pool: same vectors as in the driver, each side with its prompt."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pyarrow.parquet as pq
import pytest

from syneg_ray import beir
from syneg_ray.config import Backend, default_cache_dir
from syneg_ray.dataset import prepare
from syneg_ray.encoder import encode
from syneg_ray.registry import resolve_model
from syneg_ray.services import embed


@pytest.fixture
def prompted_cfg(tiny_cfg):
    """Torch backend (no ONNX export to wait for) and a prompt on each side, so a mixed-up prompt shows."""
    encoder = replace(tiny_cfg.encoder, backend=Backend.TORCH, query_prompt="query: ", document_prompt="passage: ")
    return replace(tiny_cfg, encoder=encoder)


def test_queries_ride_on_the_corpus_pool_unless_few_against_a_cached_corpus(ray_local, prompted_cfg, monkeypatch) -> None:
    cfg = prompted_cfg
    prepared = prepare(cfg)
    queries = list(beir.read_queries(prepared.folder).values())[:25]
    documents = pq.read_table(prepared.corpus_parquet, columns=["text"]).column("text").to_pylist()[:40]
    model = embed.local_encoder(cfg, resolve_model(cfg.encoder.model, default_cache_dir(cfg)))
    queries_here = embed.embed_queries(cfg, queries)
    documents_here = encode(model, documents, embed.encode_options(cfg.encoder, cfg.encoder.document_prompt))
    unprompted = encode(model, queries, embed.encode_options(cfg.encoder, ""))
    assert not np.allclose(queries_here, unprompted, atol=1e-3)  # the prompt changes the vectors, so the check below can fail

    # the pool runs for the corpus, so the queries go with it and the driver opens no model
    monkeypatch.setattr(embed, "local_encoder", lambda *a, **k: pytest.fail("the driver opened a model"))
    corpus, on_pool = embed.embed_corpus_and_queries(cfg, prepared, queries)
    np.testing.assert_allclose(on_pool, queries_here, atol=1e-5)
    np.testing.assert_allclose(np.asarray(corpus[:40]), documents_here, atol=1e-5)

    # corpus cached, many queries: they go to the pool alone, the corpus is not encoded again
    calls = []
    pooled = embed.encode_on_pool
    monkeypatch.setattr(embed, "POOL_QUERIES", 10)
    monkeypatch.setattr(embed, "encode_on_pool", lambda c, m, docs, *a, **k: calls.append(len(docs)) or pooled(c, m, docs, *a, **k))
    _, again = embed.embed_corpus_and_queries(cfg, prepared, queries)
    assert calls == [0]
    np.testing.assert_allclose(again, queries_here, atol=1e-5)

    # corpus cached, a few queries: encoded in the driver, no pool started
    monkeypatch.setattr(embed, "local_encoder", lambda *a, **k: model)
    monkeypatch.setattr(embed, "encode_on_pool", lambda *a, **k: pytest.fail("a pool started for 3 queries"))
    cached, few = embed.embed_corpus_and_queries(cfg, prepared, queries[:3])
    np.testing.assert_allclose(few, queries_here[:3], atol=1e-5)
    assert np.array_equal(cached, corpus)


def test_a_piece_may_outlast_ray_datas_no_progress_limit(ray_local, prompted_cfg, tmp_path) -> None:
    """Ray Data fails an execution in which no block moves for `execution_no_progress_timeout_s` (30
    minutes by default; one corpus row group on a slow CPU can take longer). Here the limit is 1 s,
    and the actor's start and first piece take longer."""
    from ray.data import DataContext

    cfg = prompted_cfg
    documents = pq.read_table(prepare(cfg).corpus_parquet, columns=["text"]).column("text").to_pylist()[:64]
    context = DataContext.get_current()
    limit = context.execution_no_progress_timeout_s
    context.execution_no_progress_timeout_s = 1  # datasets made from here on copy it
    try:
        out = embed.encode_on_pool(cfg, resolve_model(cfg.encoder.model, default_cache_dir(cfg)), documents,
                                   tmp_path / "documents.npy", [])  # fmt: skip
    finally:
        context.execution_no_progress_timeout_s = limit
    assert out.documents.shape[0] == 64
