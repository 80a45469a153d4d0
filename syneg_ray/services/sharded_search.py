"""Search on Ray actors over corpus shards, per-shard top-k lists merged in the driver.

Dense (`DenseShards`): each actor reads its own row range of the cached corpus embeddings (the
.npy the encoder actors' output was written to; fetched from object storage on a node that lacks
it), searches it (exact, or its own IVF / HNSW index built on the first search) and scores given
corpus rows for the false-negative guard. The driver sends query vectors and receives (block, k)
results: it never reads a corpus vector. Every actor asks Ray for its shard's memory, so Ray
spreads the shards over the nodes that have room (`mine.shards`; one shard is the laptop's case).

BM25: always on actors (`mine.bm25_shards`, 1 on a laptop). Each actor reads its own row range of
the corpus Parquet and indexes it (bm25.BM25Shard); the driver sends only the tokenized queries,
sums the shards' statistics for the query terms into the corpus-wide ones (so every shard scores as
one global index would) and merges the top-k lists. The driver never holds a document's text.

Queries go out a block at a time and only (block, k) results come back per shard.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from pathlib import Path

import numpy as np

from syneg_ray import ann, bm25
from syneg_ray.config import PipelineConfig
from syneg_ray.errors import DataError
from syneg_ray.extras import require

logger = logging.getLogger(__name__)

INDEX_OVERHEAD = 1.5  # memory asked per shard, as a multiple of its raw float32 size (HNSW graph, copies)


def score_rows(vectors: np.ndarray, offset: int, queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Inner products of each query with its corpus rows that fall in `vectors` (rows offset..offset+len).

    Args:
        vectors: (n, dim) one shard of the corpus embeddings (a memory map is read row by row).
        offset: the corpus row of vectors[0].
        queries: (b, dim).
        rows: (b, k) corpus rows per query; -1 pads.

    Returns:
        (b, k) float32: the score where the row is in this shard, nan elsewhere (other shards, pads),
        so the shards' answers combine by taking the one that is not nan.
    """
    local = rows - offset
    inside = (rows >= 0) & (local >= 0) & (local < len(vectors))
    out = np.full(rows.shape, np.nan, dtype=np.float32)
    q, j = np.nonzero(inside)
    if len(q):
        wanted = local[q, j]
        order = np.argsort(wanted, kind="stable")  # read the map in row order
        docs = np.asarray(vectors[wanted[order]], dtype=np.float32)
        out[q[order], j[order]] = np.einsum("nd,nd->n", docs, np.asarray(queries, dtype=np.float32)[q[order]])
    return out


class ShardSearcher:
    """One row range of the corpus embeddings, read from the cache file by this actor itself."""

    def __init__(self, embeddings: str, start: int, stop: int, spec: ann.IndexSpec, threads: int):
        from syneg_ray import storage

        faiss = require("faiss")
        faiss.omp_set_num_threads(threads)  # stay inside the CPUs Ray gave this actor
        self.vectors = np.load(storage.fetch(embeddings), mmap_mode="r")[start:stop]  # pages read as searched
        self.offset, self.spec = start, spec
        self.index = None  # an IVF / HNSW index is built on the first search: scoring alone needs none

    def ready(self) -> int:
        """Vectors held; returns once the shard is open."""
        return len(self.vectors)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of this shard with global row indices (-1 pads stay -1)."""
        k = min(k, len(self.vectors))
        if self.spec.kind == "flat" and not self.spec.use_gpu:
            from syneg_ray.index import search_exact

            scores, indices = search_exact(queries, self.vectors, k, device="cpu")  # a block of the map at a time
        else:
            if self.index is None:
                self.index = ann.build_index(self.vectors, self.spec)
            scores, indices = ann.search(self.index, queries, k, block=len(queries) or 1)
        return scores, np.where(indices >= 0, indices + self.offset, -1)

    def score(self, queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """`score_rows` on this shard."""
        return score_rows(self.vectors, self.offset, queries, rows)


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


class DenseShards:
    """The corpus embeddings split across `mine.shards` Ray actors: top-k search and row scoring.

    Example:
        >>> with contextlib.closing(DenseShards(cfg, embeddings_file)) as shards:  # doctest: +SKIP
        ...     scores, rows = shards.search(query_vectors, k=50)
        ...     guard = shards.score(query_vectors, rows)  # (n_queries, 50)

    The actors start when the object is made and are killed by `close`.
    """

    def __init__(self, cfg: PipelineConfig, embeddings: str | Path):
        import ray

        from syneg_ray.runtime import init_ray

        init_ray(cfg)
        m = cfg.mine
        self.block = m.search_block
        n, dim = np.load(embeddings, mmap_mode="r").shape  # the header only
        use_gpu = m.faiss_gpu and ray.cluster_resources().get("GPU", 0) > 0
        # without a GPU a flat shard is searched in place (search_exact over the map), not copied into an index
        spec = dataclasses.replace(index_spec(cfg), use_gpu=use_gpu)
        remote = ray.remote(ShardSearcher)
        self.actors = []
        try:
            for start, stop in shard_bounds(n, m.shards):
                memory = int(INDEX_OVERHEAD * (stop - start) * dim * 4)
                self.actors.append(
                    remote.options(num_cpus=m.shard_cpus, num_gpus=1 if use_gpu else 0, memory=memory,
                                   scheduling_strategy="SPREAD")
                    .remote(str(embeddings), start, stop, spec, max(1, int(m.shard_cpus)))
                )  # fmt: skip
            sizes = ray.get([a.ready.remote() for a in self.actors])
        except BaseException:
            # the caller gets no object when start-up fails, so it could not close the shards that
            # did start: they would hold their memory until the driver exits
            self.close()
            raise
        self.n_docs = n
        logger.info("dense search: %d shard(s) of %s vectors", len(self.actors), "/".join(f"{s:,}" for s in sizes))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k corpus rows by inner product for every query, a block of queries at a time.

        Returns:
            scores (n_queries, k) descending, corpus rows (n_queries, k); -inf / -1 pads.
        """
        import ray

        k = min(k, self.n_docs)
        scores = np.empty((len(queries), k), dtype=np.float32)
        indices = np.empty((len(queries), k), dtype=np.int64)
        for start in range(0, len(queries), self.block):
            q_ref = ray.put(np.ascontiguousarray(queries[start : start + self.block], dtype=np.float32))
            parts = ray.get([a.search.remote(q_ref, k) for a in self.actors])  # each (b, <=k): small
            rows = slice(start, start + len(parts[0][0]))
            scores[rows], indices[rows] = ann.merge_topk(parts, k)
        return scores, indices

    def score(self, queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Each query's score for each of its corpus rows: (n_queries, k) float32, nan on -1 pads."""
        import ray

        out = np.full(rows.shape, np.nan, dtype=np.float32)
        for start in range(0, len(queries), self.block):
            block = slice(start, start + self.block)
            q_ref = ray.put(np.ascontiguousarray(queries[block], dtype=np.float32))
            r_ref = ray.put(np.ascontiguousarray(rows[block], dtype=np.int64))
            for part in ray.get([a.score.remote(q_ref, r_ref) for a in self.actors]):
                out[block] = np.where(np.isnan(part), out[block], part)  # each row lives in one shard
        return out

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.actors = []


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


class BM25Shards:
    """BM25 over a corpus sharded across `mine.bm25_shards` Ray actors, kept up between searches.

    Example:
        >>> with contextlib.closing(BM25Shards(cfg, corpus_parquet, n_docs)) as shards:  # doctest: +SKIP
        ...     scores, rows, positive_scores = shards.search(query_texts, k=50, positives=positive_rows)

    Each search sums the shards' statistics for its queries' terms into the corpus-wide ones (so
    every shard scores as one global index would, whichever queries a search holds) and merges the
    shards' top-k lists. The actors start when the object is made and are killed by `close`.

    Raises:
        DataError: no document of the corpus has a BM25 term (all empty, or stopwords only).
    """

    def __init__(self, cfg: PipelineConfig, corpus_parquet: str | Path, n_docs: int):
        import ray

        from syneg_ray.runtime import init_ray

        init_ray(cfg)
        m = cfg.mine
        self.block, self.n_docs = m.search_block, n_docs
        remote = ray.remote(BM25Searcher).options(num_cpus=m.shard_cpus, scheduling_strategy="SPREAD")
        self.actors = [remote.remote(str(corpus_parquet), a, b, m.bm25_k1, m.bm25_b) for a, b in shard_bounds(n_docs, m.bm25_shards)]
        try:
            if bm25.CorpusStats.combine(ray.get([a.stats.remote(set()) for a in self.actors])).total_length == 0:
                raise DataError.at(corpus_parquet, None, "no document has a BM25 term (every text is empty or stopwords); "
                                   "fix the corpus or drop bm25 from mine.sources")  # fmt: skip
        except BaseException:
            self.close()  # the caller gets no object to close
            raise

    def search(self, queries: list[str], k: int, positives: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """BM25 top-k of each query, and the exact score of each query's `positives` (the guard's
        reference on BM25's scale), `mine.search_block` queries at a time.

        Args:
            queries: query texts; tokenized here (their terms are what the shards exchange).
            k: hits per query.
            positives: per query, corpus rows to score exactly.

        Returns:
            scores (n_queries, k) descending, corpus rows (n_queries, k), -inf / -1 pads; per query the
            scores of its `positives`.
        """
        import ray

        k = min(k, self.n_docs)
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        rows = np.full((len(queries), k), -1, dtype=np.int64)
        positive_scores: list[np.ndarray] = []
        for start in range(0, len(queries), self.block):
            block = slice(start, start + self.block)
            tokens = bm25.tokenize(queries[block])
            stats = bm25.CorpusStats.combine(ray.get([a.stats.remote({t for q in tokens for t in q}) for a in self.actors]))
            tokens_ref, stats_ref = ray.put(tokens), ray.put(stats)
            hits = [a.search.remote(tokens_ref, stats_ref, k) for a in self.actors]
            exact = [a.score_rows.remote(tokens_ref, stats_ref, positives[block]) for a in self.actors]
            scores[block], rows[block] = ann.merge_topk(ray.get(hits), k)
            positive_scores += [np.sum(per_shard, axis=0) for per_shard in zip(*ray.get(exact), strict=True)]
        return scores, rows, positive_scores

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.actors = []


def bm25_search(cfg: PipelineConfig, corpus_parquet: str, n_docs: int, queries: list[str], k: int,
                positives: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:  # fmt: skip
    """`BM25Shards.search` on shards started for this one search."""
    shards = BM25Shards(cfg, corpus_parquet, n_docs)
    try:
        return shards.search(queries, k, positives)
    finally:
        shards.close()
