"""Search on Ray actors over corpus shards, per-shard top-k lists merged in the driver.

Dense: each actor holds one shard of the embeddings and its faiss index. For corpora larger than
one node's memory: the driver streams the (memory-mapped) corpus into the object store one shard at
a time, so it never holds more than one shard; every actor asks Ray for its shard's memory, so Ray
spreads the shards over the nodes that have room (`mine.shards`; 1 searches in the driver).

BM25: always on actors (`mine.bm25_shards`, 1 on a laptop). Each actor reads its own row range of
the corpus Parquet and indexes it (bm25.BM25Shard); the driver sends only the tokenized queries,
sums the shards' statistics for the query terms into the corpus-wide ones (so every shard scores as
one global index would) and merges the top-k lists. The driver never holds a document's text.

Queries go out a block at a time and only (block, k) results come back per shard.
"""

from __future__ import annotations

import itertools
import logging

import numpy as np

from syneg_ray import ann, bm25
from syneg_ray.config import PipelineConfig
from syneg_ray.errors import DataError
from syneg_ray.extras import require

logger = logging.getLogger(__name__)

INDEX_OVERHEAD = 1.5  # memory asked per shard, as a multiple of its raw float32 size (HNSW graph, copies)


class ShardSearcher:
    """One corpus shard, its index and the global row offset of its first vector."""

    def __init__(self, shard: np.ndarray, offset: int, spec: ann.IndexSpec, threads: int):
        faiss = require("faiss")
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


def index_spec(cfg: PipelineConfig) -> ann.IndexSpec:
    """The faiss index parameters of the mine section."""
    m = cfg.mine
    return ann.IndexSpec(
        kind=m.index, nlist=m.nlist, nprobe=m.nprobe, hnsw_m=m.hnsw_m, ef_construction=m.ef_construction,
        ef_search=m.ef_search, use_gpu=m.faiss_gpu, seed=cfg.run.seed,
    )  # fmt: skip


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


# --------------------------------------------------------------------------- BM25


class BM25Searcher:
    """One row range of the corpus Parquet, read by this actor itself and indexed for BM25."""

    def __init__(self, corpus_parquet: str, start: int, stop: int, k1: float, b: float):
        from syneg_ray import storage
        from syneg_ray.dataset import CORPUS_ROW_GROUP, read_corpus_rows

        corpus_parquet = str(storage.fetch(corpus_parquet))  # on a node that lacks the cache, from object storage
        chunks = (read_corpus_rows(corpus_parquet, a, min(a + CORPUS_ROW_GROUP, stop), ["text"]).column("text").to_pylist()
                  for a in range(start, stop, CORPUS_ROW_GROUP))  # fmt: skip
        self.shard = bm25.BM25Shard.from_chunks(chunks, k1, b)  # one row group of texts at a time
        self.start, self.stop = start, stop

    def stats(self, terms: set[str]) -> bm25.CorpusStats:
        return self.shard.stats(terms)

    def search(self, queries: list[list[str]], stats: bm25.CorpusStats, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of this shard, with corpus-wide rows (-1 pads stay -1)."""
        scores, rows = self.shard.search(queries, stats, k)
        return scores, np.where(rows >= 0, rows + self.start, -1)

    def score_rows(self, queries: list[list[str]], stats: bm25.CorpusStats, rows: list[np.ndarray]) -> list[np.ndarray]:
        """Scores of corpus-wide rows per query: exact for rows of this shard, 0 for the others'
        (each row lives in one shard, so the shards' answers add up to the corpus-wide scores)."""
        local = [np.asarray(r, dtype=np.int64) - self.start for r in rows]
        inside = [(r >= 0) & (r < len(self.shard)) for r in local]
        scored = self.shard.score_rows(queries, stats, [np.where(m, r, 0) for r, m in zip(local, inside, strict=True)])
        return [np.where(m, s, 0.0).astype(np.float32) for s, m in zip(scored, inside, strict=True)]


def bm25_search(cfg: PipelineConfig, corpus_parquet: str, n_docs: int, queries: list[str], k: int,
                positives: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:  # fmt: skip
    """BM25 top-k over a corpus sharded across `mine.bm25_shards` Ray actors, and the exact score of each
    query's positives (the guard's reference on BM25's scale).

    Args:
        cfg: the mine section gives bm25_shards, shard_cpus, bm25_k1, bm25_b and search_block.
        corpus_parquet: the corpus (doc_id, text), which each actor reads its rows of.
        n_docs: rows in that file.
        queries: query texts; tokenized here once (their terms are what the shards exchange).
        k: hits per query.
        positives: per query, corpus rows to score exactly.

    Returns:
        scores (n_queries, k) descending, corpus rows (n_queries, k), -inf / -1 pads; per query the
        scores of its `positives`.

    Raises:
        DataError: no document of the corpus has a BM25 term (all empty, or stopwords only).
    """
    import ray

    from syneg_ray.runtime import init_ray

    init_ray(cfg)
    m = cfg.mine
    tokens = bm25.tokenize(queries)  # the queries' terms: bounded by the training set, not the corpus
    remote = ray.remote(BM25Searcher).options(num_cpus=m.shard_cpus, scheduling_strategy="SPREAD")
    actors = [remote.remote(str(corpus_parquet), a, b, m.bm25_k1, m.bm25_b) for a, b in shard_bounds(n_docs, m.bm25_shards)]
    try:
        stats = bm25.CorpusStats.combine(ray.get([a.stats.remote({t for q in tokens for t in q}) for a in actors]))
        if stats.total_length == 0:
            raise DataError.at(corpus_parquet, None, "no document has a BM25 term (every text is empty or stopwords); "
                               "fix the corpus or drop bm25 from mine.sources")  # fmt: skip
        stats_ref = ray.put(stats)
        k = min(k, n_docs)
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        rows = np.full((len(queries), k), -1, dtype=np.int64)
        positive_scores: list[np.ndarray] = []
        for start in range(0, len(queries), m.search_block):
            block = slice(start, start + m.search_block)
            tokens_ref = ray.put(tokens[block])
            hits = [a.search.remote(tokens_ref, stats_ref, k) for a in actors]
            exact = [a.score_rows.remote(tokens_ref, stats_ref, positives[block]) for a in actors]
            scores[block], rows[block] = ann.merge_topk(ray.get(hits), k)
            positive_scores += [np.sum(per_shard, axis=0) for per_shard in zip(*ray.get(exact), strict=True)]
        return scores, rows, positive_scores
    finally:
        for actor in actors:
            ray.kill(actor)
