"""ANN scale: IVF and HNSW over 10k / 100k / 1M synthetic 384-dim vectors vs exact search.

    nice .venv/bin/python benchmarks/ann_scale.py [--sizes 10000 100000 1000000] [--queries 1000] [--out r.json]

The vectors are a seeded mixture of 1,000 clusters on the unit sphere whose spread lies mostly in
a shared 48-dim subspace, plus a little isotropic noise (see `make_vectors`): real text embeddings
are clustered with a low intrinsic dimension, and uniform random 384-dim points would be a worst
case no ANN index is meant for. Queries are fresh draws from the same mixture. Ground truth:
exact inner-product top-10 (faiss IndexFlatIP). Per size and index: build seconds, index size
(serialized bytes) and RSS delta, queries/s (one 1,000-query batch, `--threads` faiss threads)
and recall@10 at each search setting. Each result line is printed as soon as it exists.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import faiss
import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from syneg_ray import ann

DIM, CENTERS, SUBSPACE, SPREAD, NOISE, K = 384, 1000, 48, 0.8, 0.1, 10


def make_vectors(n: int, seed: int, centers: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """n unit vectors: a random center + spread in the shared subspace + isotropic noise, in float32 chunks."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, DIM), dtype=np.float32)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        x = centers[rng.integers(0, len(centers), m)]
        x += (rng.standard_normal((m, SUBSPACE), dtype=np.float32) * (SPREAD / np.sqrt(SUBSPACE))) @ basis  # (m, DIM)
        x += rng.standard_normal((m, DIM), dtype=np.float32) * (NOISE / np.sqrt(DIM))
        out[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def timed_search(index, queries: np.ndarray) -> tuple[np.ndarray, float]:
    started = time.perf_counter()
    _, indices = ann.search(index, queries, K, block=len(queries))
    return indices, len(queries) / (time.perf_counter() - started)


def bench_index(
    corpus: np.ndarray, queries: np.ndarray, truth: np.ndarray, spec: ann.IndexSpec, sweep: list[int]
) -> dict:
    """Builds one index, then searches at each sweep value (nprobe for IVF, efSearch for HNSW)."""
    before, started = rss_mb(), time.perf_counter()
    index = ann.build_index(corpus, spec)
    build_s, rss_delta = time.perf_counter() - started, rss_mb() - before
    size_mb = faiss.serialize_index(index).nbytes / 2**20  # exact index bytes (RSS deltas hide reused pages)
    row = {"build_s": round(build_s, 1), "index_mb": round(size_mb), "rss_delta_mb": round(rss_delta), "search": []}
    for value in sweep:
        spec_v = ann.IndexSpec(**{**spec.__dict__, ("nprobe" if spec.kind == "ivf" else "ef_search"): value})
        ann.set_search_params(index, spec_v)
        indices, qps = timed_search(index, queries)
        row["search"].append(
            {"param": value, "qps": round(qps), "recall@10": round(ann.recall_at_k(indices, truth, K), 4)}
        )
    del index
    return row


def bench_size(n: int, n_queries: int, centers: np.ndarray, basis: np.ndarray, hnsw_max: int) -> dict:
    corpus = make_vectors(n, 1, centers, basis)
    queries = make_vectors(n_queries, 2, centers, basis)
    flat = ann.build_index(corpus, ann.IndexSpec(kind="flat", use_gpu=False))
    truth, exact_qps = timed_search(flat, queries)
    del flat
    result = {"n": n, "exact_qps": round(exact_qps)}
    nlist = ann.default_nlist(n)
    result["ivf"] = {
        "nlist": nlist,
        **bench_index(
            corpus, queries, truth, ann.IndexSpec(kind="ivf", nlist=nlist, use_gpu=False), [8, 16, 32, 64, 128]
        ),
    }
    print(json.dumps({"n": n, "exact_qps": result["exact_qps"], "ivf": result["ivf"]}), flush=True)
    if n <= hnsw_max:
        spec = ann.IndexSpec(kind="hnsw", hnsw_m=32, ef_construction=100, use_gpu=False)
        result["hnsw"] = {
            "m": 32,
            "ef_construction": 100,
            **bench_index(corpus, queries, truth, spec, [32, 64, 128, 256]),
        }
    print(json.dumps({"n": n, "hnsw": result.get("hnsw")}), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--hnsw-max", type=int, default=1_000_000, help="skip HNSW above this corpus size")
    parser.add_argument("--threads", type=int, default=1, help="faiss threads (1 is robust on a shared machine)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((CENTERS, DIM), dtype=np.float32) / np.sqrt(DIM)  # (CENTERS, DIM), norm ~1
    basis = np.linalg.qr(rng.standard_normal((DIM, SUBSPACE)))[0].T.astype(np.float32)  # (SUBSPACE, DIM) orthonormal
    results = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {psutil.virtual_memory().total >> 30} GiB",
        "load_avg_start": os.getloadavg(), "threads": args.threads, "dim": DIM, "queries": args.queries,
        "sizes": [bench_size(n, args.queries, centers, basis, args.hnsw_max) for n in args.sizes],
    }  # fmt: skip
    results["load_avg_end"] = os.getloadavg()
    text = json.dumps(results, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
