"""Sharded dense search on Ray: each actor holds one corpus shard and its faiss index; per-shard top-k merged.

For corpora larger than one node's memory: the driver streams the (memory-mapped) corpus into the
object store one shard at a time, so it never holds more than one shard; every actor asks Ray for
its shard's memory, so Ray spreads the shards over the nodes that have room. Queries go out a
block at a time and only (block, k) results come back per shard, merged by `ann.merge_topk`.
"""

from __future__ import annotations

import itertools
import logging

import numpy as np

from syneg_ray import ann
from syneg_ray.config import PipelineConfig

logger = logging.getLogger(__name__)

INDEX_OVERHEAD = 1.5  # memory asked per shard, as a multiple of its raw float32 size (HNSW graph, copies)


class ShardSearcher:
    """One corpus shard, its index and the global row offset of its first vector."""

    def __init__(self, shard: np.ndarray, offset: int, spec: ann.IndexSpec, threads: int):
        import faiss

        faiss.omp_set_num_threads(threads)  # stay inside the CPUs Ray gave this actor
        self.offset = offset
        self.size = len(shard)
        self.index = ann.build_index(shard, spec)

    def ready(self) -> int:
        """Vectors held; returns once the index is built."""
        return self.size

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of this shard with global row indices (-1 pads stay -1)."""
        scores, indices = ann.search(self.index, queries, k, block=len(queries) or 1)
        return scores, np.where(indices >= 0, indices + self.offset, -1)


def shard_bounds(n: int, shards: int) -> list[tuple[int, int]]:
    """Contiguous [start, stop) row ranges of near-equal size; never more shards than rows."""
    edges = np.linspace(0, n, min(shards, max(n, 1)) + 1).astype(int)
    return [(int(a), int(b)) for a, b in itertools.pairwise(edges)]


def start_shards(cfg: PipelineConfig, corpus: np.ndarray, spec: ann.IndexSpec) -> list:
    """Starts one actor per shard and waits until every index is built; kills them all if one fails."""
    import ray

    m = cfg.mine
    remote = ray.remote(ShardSearcher)
    actors = []
    try:
        for start, stop in shard_bounds(len(corpus), m.shards):
            shard_ref = ray.put(
                np.ascontiguousarray(corpus[start:stop], dtype=np.float32)
            )  # one shard in the driver at a time
            memory = int(INDEX_OVERHEAD * (stop - start) * corpus.shape[1] * 4)
            actors.append(
                remote.options(num_cpus=m.shard_cpus, memory=memory, scheduling_strategy="SPREAD").remote(
                    shard_ref, start, spec, max(1, int(m.shard_cpus))
                )
            )
            del shard_ref  # the actor holds it now; the object store can evict it once the index is built
        sizes = ray.get([a.ready.remote() for a in actors])
    except BaseException:
        # the caller only gets the actors once all are ready, so it cannot kill them: without this a
        # shard that fails to build would leave the others holding their memory until the driver exits
        for actor in actors:
            ray.kill(actor)
        raise
    logger.info("sharded search: %d shards of %s vectors", len(actors), "/".join(f"{s:,}" for s in sizes))
    return actors


def search_sharded(
    cfg: PipelineConfig, corpus: np.ndarray, queries: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k over a corpus split across `mine.shards` Ray actors.

    Args:
        cfg: the mine section gives shards, index kind and parameters, search_block.
        corpus: (n_docs, dim) float32, typically a memory map of the embedding cache.
        queries: (n_queries, dim) float32.
        k: results per query.

    Returns:
        scores (n_queries, k) descending, global indices (n_queries, k); -inf / -1 pads.
    """
    import ray

    from syneg_ray.runtime import init_ray
    from syneg_ray.stages.mine import index_spec

    init_ray(cfg)
    actors = start_shards(cfg, corpus, index_spec(cfg))
    try:
        k = min(k, len(corpus))
        scores = np.empty((len(queries), k), dtype=np.float32)
        indices = np.empty((len(queries), k), dtype=np.int64)
        block = cfg.mine.search_block
        for start in range(0, len(queries), block):
            q_ref = ray.put(np.ascontiguousarray(queries[start : start + block]))
            parts = ray.get([a.search.remote(q_ref, k) for a in actors])  # each (b, <=k): small
            rows = slice(start, start + len(parts[0][0]))
            scores[rows], indices[rows] = ann.merge_topk(parts, k)
        return scores, indices
    finally:
        for actor in actors:
            ray.kill(actor)
