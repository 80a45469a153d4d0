"""Exact top-k inner-product search in bounded memory: faiss on CPU, torch on GPU. No Ray.

Scores are computed a block of queries at a time, so memory is O(block x corpus) and never the
full queries x corpus matrix (the failure of `mine_hard_negatives` on large corpora).
"""

from __future__ import annotations

import os
import sys

import numpy as np


def search_exact(
    queries: np.ndarray, corpus: np.ndarray, k: int, block: int = 1024, device: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k documents per query by inner product (cosine when both sides are normalized).

    Args:
        queries: (n_queries, dim) float32.
        corpus: (n_docs, dim) float32.
        k: documents per query; capped at n_docs.
        block: queries scored at once (bounds memory to block x n_docs floats on the GPU path).
        device: "cuda" uses torch; None picks cuda when available, else faiss on CPU.

    Returns:
        scores (n_queries, k) float32 descending, indices (n_queries, k) int64 into `corpus`.
    """
    k = min(k, len(corpus))
    if device is None:
        device = _default_device()
    if device.startswith("cuda"):
        return _search_torch(queries, corpus, k, block, device)
    import faiss

    index = faiss.IndexFlatIP(corpus.shape[1])
    index.add(np.ascontiguousarray(corpus, dtype=np.float32))
    scores = np.empty((len(queries), k), dtype=np.float32)
    indices = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), block):
        stop = start + block
        scores[start:stop], indices[start:stop] = index.search(np.ascontiguousarray(queries[start:stop], dtype=np.float32), k)
    return scores, indices


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
