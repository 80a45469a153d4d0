"""Sharded search on a real local Ray: per-shard top-k merged equals exact search."""

from __future__ import annotations

import os
import time

import numpy as np
import psutil
import pytest

from syneg_ray.config import load_config
from syneg_ray.index import search_exact
from syneg_ray.stages import sharded_search
from syneg_ray.stages.mine import index_spec
from syneg_ray.stages.sharded_search import search_sharded, shard_bounds, start_shards


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


def test_a_shard_failing_to_start_takes_the_others_down(ray_local, monkeypatch, tmp_path):
    """The caller gets no actor handles when start-up fails, so start_shards must kill the shards it
    did start; a caller still holding the error (a notebook's last traceback) would keep them alive."""
    pids_dir = tmp_path / "pids"
    pids_dir.mkdir()

    class FailingMiddleShard(sharded_search.ShardSearcher):
        folder = str(pids_dir)  # travels with the class to the actors

        def __init__(self, shard, offset, spec, threads):
            if offset != 100:  # rows [0, 100) and [200, 300) start normally, [100, 200) fails
                with open(os.path.join(self.folder, f"{offset}.pid"), "w") as f:
                    f.write(str(os.getpid()))
                super().__init__(shard, offset, spec, threads)
                return
            deadline = time.monotonic() + 60  # fail only once both others are up, so they exist to leak
            while len(os.listdir(self.folder)) < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
            raise RuntimeError("index build failed")

    monkeypatch.setattr(sharded_search, "ShardSearcher", FailingMiddleShard)
    cfg = load_config(None, ["mine.shards=3", "mine.shard_cpus=0.5", "mine.index=flat"])
    corpus = np.random.default_rng(0).normal(size=(300, 8)).astype(np.float32)
    with pytest.raises(ray_local.exceptions.RayActorError) as excinfo:
        start_shards(cfg, corpus, index_spec(cfg))
    pids = [int(p.read_text()) for p in pids_dir.iterdir()]
    assert len(pids) == 2
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(psutil.pid_exists(p) for p in pids):
        time.sleep(0.5)
    assert [p for p in pids if psutil.pid_exists(p)] == [], f"shards left running after {excinfo.value!r}"
