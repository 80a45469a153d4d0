"""Exact top-k inner-product search in bounded memory: faiss on CPU, torch on GPU. No Ray.

Never the full queries x corpus score matrix (the failure of `mine_hard_negatives` on large
corpora): faiss scores in tiles of its own, torch a block of queries at a time. On CPU a corpus
larger than one block is searched a block of documents at a time and the top-k merged, so a
memory-mapped corpus of millions of vectors is never copied whole into an index.
"""

from __future__ import annotations

import os
import sys

import numpy as np

CORPUS_BLOCK = 1 << 18  # documents searched at once on CPU: 384 MB of float32 at dimension 384


def search_exact(
    queries: np.ndarray,
    corpus: np.ndarray,
    k: int,
    block: int = 1024,
    device: str | None = None,
    corpus_block: int = CORPUS_BLOCK,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k documents per query by inner product (cosine when both sides are normalized).

    Args:
        queries: (n_queries, dim) float32.
        corpus: (n_docs, dim) float32.
        k: documents per query; capped at n_docs.
        block: queries scored at once on the GPU path (bounds memory to block x n_docs floats).
        device: "cuda" uses torch; None picks cuda when available, else faiss on CPU.
        corpus_block: documents searched at once on CPU; a larger corpus is searched block by block.

    Returns:
        scores (n_queries, k) float32 descending, indices (n_queries, k) int64 into `corpus`.
    """
    k = min(k, len(corpus))
    if device is None:
        device = _default_device()
    if device.startswith("cuda"):
        return _search_torch(queries, corpus, k, block, device)
    from syneg_ray.extras import require

    faiss = require("faiss")  # faiss-cpu (extra cpu) or faiss-gpu-cu12 (extra gpu)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if len(corpus) <= corpus_block:
        return faiss.knn(queries, np.ascontiguousarray(corpus, dtype=np.float32), k, metric=faiss.METRIC_INNER_PRODUCT)
    heap = faiss.ResultHeap(len(queries), k, keep_max=True)
    for start in range(0, len(corpus), corpus_block):
        docs = np.ascontiguousarray(corpus[start : start + corpus_block], dtype=np.float32)  # one block read from a memmap
        scores, indices = faiss.knn(queries, docs, min(k, len(docs)), metric=faiss.METRIC_INNER_PRODUCT)
        heap.add_result(scores, indices + start)
    heap.finalize()
    return heap.D, heap.I


def _default_device() -> str:
    # torch costs a CPU-only driver about 180 MB for an answer it can only give as "cpu": ask it only
    # where a GPU's device node exists (NVIDIA, or AMD's ROCm) or where it is loaded already.
    if "torch" not in sys.modules and not any(os.path.exists(node) for node in ("/dev/nvidiactl", "/dev/kfd")):
        return "cpu"
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:  # pragma: no cover - torch is a core dependency
        return "cpu"


def _search_torch(queries: np.ndarray, corpus: np.ndarray, k: int, block: int, device: str) -> tuple[np.ndarray, np.ndarray]:
    import torch

    docs = torch.from_numpy(np.ascontiguousarray(corpus)).to(device)  # (n_docs, dim)
    out_scores, out_indices = [], []
    for start in range(0, len(queries), block):
        q = torch.from_numpy(np.ascontiguousarray(queries[start : start + block])).to(device)  # (b, dim)
        scores, indices = torch.topk(q @ docs.T, k, dim=1)  # (b, k)
        out_scores.append(scores.float().cpu().numpy())
        out_indices.append(indices.cpu().numpy())
    return np.concatenate(out_scores), np.concatenate(out_indices).astype(np.int64)
