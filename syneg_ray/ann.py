"""Approximate and exact faiss indexes (Flat, IVF, HNSW) by inner product, GPU when faiss has it. No Ray.

Search always runs a block of queries at a time into preallocated (n_queries, k) outputs, so
memory is the index plus O(block x k), never a queries x corpus matrix. `merge_topk` merges the
per-shard results of `services/sharded_search.py`.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexSpec:
    """What to build; copied from MineConfig so this module stays config-agnostic."""

    kind: str = "flat"  # flat | ivf | hnsw
    nlist: int = 0  # ivf lists; 0 = 4 * sqrt(n)
    nprobe: int = 32  # ivf lists visited per query
    hnsw_m: int = 32  # hnsw neighbours per node
    ef_construction: int = 200
    ef_search: int = 128
    use_gpu: bool = True  # only when faiss was built with GPU support and sees a GPU
    train_per_list: int = 64  # ivf: training vectors per list (faiss warns below 39)
    seed: int = 0


def _faiss():
    from syneg_ray.extras import require

    return require("faiss")  # faiss-cpu (extra cpu) or faiss-gpu-cu12 (extra gpu)


def gpu_count() -> int:
    """GPUs faiss can use (0 for faiss-cpu)."""
    return int(getattr(_faiss(), "get_num_gpus", lambda: 0)())


def default_nlist(n: int) -> int:
    """4 * sqrt(n), the usual starting point, at least 1 and at most n / 39 (faiss's minimum training ratio)."""
    return max(1, min(int(4 * math.sqrt(n)), n // 39 or 1))


def build_index(corpus: np.ndarray, spec: IndexSpec):  # -> faiss.Index
    """Builds an inner-product index over `corpus` (n, dim) float32 and sets its search parameters.

    Raises:
        ValueError: unknown `spec.kind`.
    """
    faiss = _faiss()
    corpus = np.ascontiguousarray(corpus, dtype=np.float32)
    n, dim = corpus.shape
    started = time.perf_counter()
    if spec.kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif spec.kind == "ivf":
        nlist = spec.nlist or default_nlist(n)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng(spec.seed).choice(n, size=min(n, nlist * spec.train_per_list), replace=False)
        index = _maybe_gpu(index, spec)
        index.train(corpus[np.sort(sample)])
    elif spec.kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, spec.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = spec.ef_construction
    else:
        raise ValueError(f"index kind {spec.kind!r} is unknown; choose flat, ivf or hnsw")
    if spec.kind == "flat":
        index = _maybe_gpu(index, spec)
    index.add(corpus)
    set_search_params(index, spec)
    logger.info("%s index over %s vectors built in %.1f s", spec.kind, f"{n:,}", time.perf_counter() - started)
    return index


def _on_gpu(spec: IndexSpec) -> bool:
    return spec.use_gpu and spec.kind != "hnsw" and gpu_count() > 0


def _maybe_gpu(index, spec: IndexSpec):
    """Moves a Flat or IVF index onto all visible GPUs (HNSW has no GPU form in faiss)."""
    if not _on_gpu(spec):
        return index
    faiss = _faiss()
    options = faiss.GpuMultipleClonerOptions()
    options.shard = True  # split the vectors across GPUs rather than replicate them
    logger.info("faiss: %s index on %d GPU(s)", spec.kind, gpu_count())
    return faiss.index_cpu_to_all_gpus(index, co=options)


def set_search_params(index, spec: IndexSpec) -> None:
    """Applies nprobe (IVF) or efSearch (HNSW); a no-op for Flat."""
    faiss = _faiss()
    if spec.kind == "ivf":
        # The CPU ParameterSpace does not know GPU indexes (nor the shards a multi-GPU clone is made of)
        space = faiss.GpuParameterSpace() if _on_gpu(spec) else faiss.ParameterSpace()
        space.set_index_parameter(index, "nprobe", spec.nprobe)
    elif spec.kind == "hnsw":
        index.hnsw.efSearch = max(spec.ef_search, 1)


def search(index, queries: np.ndarray, k: int, block: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Top-k per query, a block of queries at a time.

    Returns:
        scores (n, k) float32 descending (-inf on pads), indices (n, k) int64 (-1 on pads).
    """
    k = max(1, min(k, index.ntotal))
    scores = np.empty((len(queries), k), dtype=np.float32)
    indices = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), block):
        chunk = np.ascontiguousarray(queries[start : start + block], dtype=np.float32)
        scores[start : start + len(chunk)], indices[start : start + len(chunk)] = index.search(chunk, k)
    scores[indices < 0] = -np.inf  # faiss pads with -1 and a huge negative or arbitrary score
    return scores, indices


def merge_topk(parts: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merges per-shard top-k results whose indices are already global into one top-k (dense and BM25 shards).

    Equal scores are ordered by the lower corpus row, so the merged list is the same however the
    corpus was cut into shards.

    Args:
        parts: (scores (n, k_i), indices (n, k_i)) per shard, the same n queries in the same order; -1 indices are pads.
        k: results kept per query.

    Returns:
        scores (n, k) descending, indices (n, k); -inf / -1 where fewer than k exist.
    """
    scores = np.concatenate([p[0] for p in parts], axis=1)  # (n, sum k_i): small, k per shard
    indices = np.concatenate([p[1] for p in parts], axis=1)
    scores = np.where(indices >= 0, scores, -np.inf)
    if scores.shape[1] < k:
        pad = k - scores.shape[1]
        scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        indices = np.pad(indices, ((0, 0), (0, pad)), constant_values=-1)
    tie_break = np.where(indices >= 0, indices, np.iinfo(np.int64).max)
    order = np.lexsort((tie_break, -scores), axis=1)[:, :k]
    return np.take_along_axis(scores, order, 1).astype(np.float32), np.take_along_axis(indices, order, 1)


def recall_at_k(approx: np.ndarray, exact: np.ndarray, k: int) -> float:
    """Mean share of the exact top-k found in the approximate top-k (both (n, >= k) indices)."""
    hits = [
        len(np.intersect1d(a[:k], e[:k][e[:k] >= 0])) / max((e[:k] >= 0).sum(), 1)
        for a, e in zip(approx, exact, strict=True)
    ]
    return float(np.mean(hits)) if hits else 0.0
