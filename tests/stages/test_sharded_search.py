"""Sharded search on a real local Ray: per-shard top-k merged equals exact search; rows scored by their shard."""

from __future__ import annotations

import json
import os
import time
from contextlib import closing

import numpy as np
import psutil
import pytest

from syneg_ray.config import load_config
from syneg_ray.index import search_exact
from syneg_ray.services import sharded_search
from syneg_ray.services.sharded_search import DenseShards, shard_bounds


def test_shard_bounds_cover_rows_once():
    assert shard_bounds(10, 3) == [(0, 3), (3, 6), (6, 10)]
    assert shard_bounds(2, 5) == [(0, 1), (1, 2)]


def _embeddings(tmp_path, n: int, dim: int, seed: int = 0):
    """A float32 .npy of random vectors, as the embedding cache holds them."""
    corpus = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    path = tmp_path / "embeddings.npy"
    np.save(path, corpus)
    return corpus, path


@pytest.mark.parametrize("index", ["flat", "hnsw"])
def test_sharded_search_equals_exact(ray_local, tmp_path, index):
    corpus, path = _embeddings(tmp_path, 3000, 16)
    queries = np.random.default_rng(1).normal(size=(50, 16)).astype(np.float32)
    cfg = load_config(None, ["mine.shards=3", "mine.shard_cpus=0.5", "mine.search_block=16", f"mine.index={index}"])
    with closing(DenseShards(cfg, path)) as shards:
        assert len(shards.actors) == 3
        scores, indices = shards.search(queries, k=20)
    ref_scores, ref_indices = search_exact(queries, corpus, 20)
    assert (indices == ref_indices).mean() > (0.999 if index == "flat" else 0.95)
    np.testing.assert_allclose(np.sort(scores, axis=1), np.sort(ref_scores, axis=1), atol=1e-3 if index == "hnsw" else 1e-4)


def test_one_shard_is_the_small_case_of_the_same_search(ray_local, tmp_path):
    corpus = np.random.default_rng(0).normal(size=(500, 8)).astype(np.float32)
    corpus /= np.linalg.norm(corpus, axis=1, keepdims=True)  # unit vectors: each is its own nearest by inner product
    np.save(path := tmp_path / "embeddings.npy", corpus)
    queries = corpus[:20].copy()
    with closing(DenseShards(load_config(None, ["mine.shard_cpus=0.5"]), path)) as shards:
        scores, indices = shards.search(queries, k=5)
    assert len(indices) == 20 and (indices[:, 0] == np.arange(20)).all()  # each query finds the vector it was made from
    np.testing.assert_allclose(scores, search_exact(queries, corpus, 5)[0], atol=1e-5)


def test_shards_score_the_rows_asked_for_and_nan_on_pads(ray_local, tmp_path):
    """Every row is scored by the one shard that holds it, whichever shard that is; -1 pads stay nan."""
    corpus, path = _embeddings(tmp_path, 900, 8)
    rng = np.random.default_rng(2)
    queries = rng.normal(size=(70, 8)).astype(np.float32)
    rows = rng.integers(-1, 900, size=(70, 6))
    rows[0] = [0, 299, 300, 599, 600, 899]  # the edges of the three shards
    rows[1, 2:] = -1  # a query with fewer hits than k
    cfg = load_config(None, ["mine.shards=3", "mine.shard_cpus=0.5", "mine.search_block=32"])
    with closing(DenseShards(cfg, path)) as shards:
        scored = shards.score(queries, rows)
    expected = np.where(rows >= 0, np.einsum("qkd,qd->qk", corpus[np.maximum(rows, 0)], queries), np.nan)
    assert (rows == -1).any() and np.isnan(scored[rows == -1]).all()
    np.testing.assert_allclose(scored, expected, rtol=1e-5)


def test_score_rows_of_one_shard_leave_the_others_rows_nan():
    vectors = np.eye(4, dtype=np.float32)
    queries = np.array([[1, 2, 3, 4]], dtype=np.float32)
    scored = sharded_search.score_rows(vectors, 10, queries, np.array([[12, 9, 13, 14, -1, 10]]))
    np.testing.assert_array_equal(scored, [[3, np.nan, 4, np.nan, np.nan, 1]])


def test_a_shard_failing_to_start_takes_the_others_down(ray_local, monkeypatch, tmp_path):
    """The caller gets no object when start-up fails, so DenseShards must kill the shards it did
    start; a caller still holding the error (a notebook's last traceback) would keep them alive."""
    pids_dir = tmp_path / "pids"
    pids_dir.mkdir()

    class FailingMiddleShard(sharded_search.ShardSearcher):
        folder = str(pids_dir)  # travels with the class to the actors

        def __init__(self, embeddings, start, stop, spec, threads):
            if start != 100:  # rows [0, 100) and [200, 300) start normally, [100, 200) fails
                with open(os.path.join(self.folder, f"{start}.pid"), "w") as f:
                    f.write(str(os.getpid()))
                super().__init__(embeddings, start, stop, spec, threads)
                return
            deadline = time.monotonic() + 60  # fail only once both others are up, so they exist to leak
            while len(os.listdir(self.folder)) < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
            raise RuntimeError("shard failed to open")

    monkeypatch.setattr(sharded_search, "ShardSearcher", FailingMiddleShard)
    cfg = load_config(None, ["mine.shards=3", "mine.shard_cpus=0.5", "mine.index=flat"])
    _, path = _embeddings(tmp_path, 300, 8)
    with pytest.raises(ray_local.exceptions.RayActorError) as excinfo:
        DenseShards(cfg, path)
    pids = [int(p.read_text()) for p in pids_dir.iterdir()]
    assert len(pids) == 2
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(psutil.pid_exists(p) for p in pids):
        time.sleep(0.5)
    assert [p for p in pids if psutil.pid_exists(p)] == [], f"shards left running after {excinfo.value!r}"


def _corpus_parquet(tmp_path, texts: list[str]):
    from syneg_ray.dataset import write_corpus_parquet

    source = tmp_path / "corpus.jsonl"
    source.write_text("".join(json.dumps({"_id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    target = tmp_path / "corpus.parquet"
    return target, write_corpus_parquet(source, target)


def test_bm25_on_sharded_actors_equals_one_index(ray_local, scifact_small, tmp_path):
    """Actors that each read their own rows of the corpus Parquet give the global index's top-k and positive scores."""
    from syneg_ray import beir, bm25

    ids, texts = map(list, zip(*beir.iter_corpus(scifact_small / "corpus.jsonl"), strict=True))
    path, n = _corpus_parquet(tmp_path, texts)
    queries = [texts[7][:80], "vitamin D deficiency and bone density", "the of and", "zzzz unknownterm"]
    positives = [np.array([7, 300]), np.array([], np.int64), np.array([0]), np.array([n - 1])]
    cfg = load_config(None, ["mine.bm25_shards=3", "mine.shard_cpus=0.25", "mine.search_block=3"])
    scores, rows, pos = sharded_search.bm25_search(cfg, str(path), n, queries, 30, positives)
    index = bm25.BM25Index(ids, texts, show_progress=False)
    ref_scores, ref_rows = index.search(queries, 30, show_progress=False)
    found = ref_rows >= 0
    assert np.array_equal(rows >= 0, found) and found[:2].all() and not found[2:].any()  # stopwords / unknown: no hit
    np.testing.assert_allclose(scores[found], ref_scores[found], atol=1e-5, rtol=0)
    assert rows[0, 0] == 7  # the query cut from document 7 finds it first
    for mine, ref in zip(pos, bm25.score_documents(index, queries, positives), strict=True):
        np.testing.assert_allclose(mine, ref, atol=1e-5, rtol=0)


def test_bm25_on_a_corpus_without_a_single_term_is_one_line(ray_local, tmp_path):
    from syneg_ray.errors import DataError

    path, n = _corpus_parquet(tmp_path, ["", "the"])  # one empty text and one stop word
    cfg = load_config(None, ["mine.shard_cpus=0.25"])
    with pytest.raises(DataError) as excinfo:
        sharded_search.bm25_search(cfg, str(path), n, ["a query"], 5, [np.array([0])])
    message = str(excinfo.value)
    assert "\n" not in message and str(path) in message and "mine.sources" in message
