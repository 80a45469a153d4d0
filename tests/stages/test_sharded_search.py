"""Sharded search on a real local Ray: per-shard top-k merged equals exact search."""

from __future__ import annotations

import numpy as np

from syneg_ray.config import load_config
from syneg_ray.index import search_exact
from syneg_ray.stages.sharded_search import search_sharded, shard_bounds


def test_shard_bounds_cover_rows_once():
    assert shard_bounds(10, 3) == [(0, 3), (3, 6), (6, 10)]
    assert shard_bounds(2, 5) == [(0, 1), (1, 2)]


def test_sharded_equals_exact(ray_local):
    rng = np.random.default_rng(0)
    corpus = rng.normal(size=(3000, 16)).astype(np.float32)
    queries = rng.normal(size=(50, 16)).astype(np.float32)
    cfg = load_config(None, ["mine.shards=3", "mine.shard_cpus=0.5", "mine.search_block=16"])
    scores, indices = search_sharded(cfg, corpus, queries, k=20)
    ref_scores, ref_indices = search_exact(queries, corpus, 20)
    assert (indices == ref_indices).mean() > 0.99 and np.allclose(scores, ref_scores, atol=1e-4)
