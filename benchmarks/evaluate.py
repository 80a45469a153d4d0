"""Corpus encoding: our Ray Data encoder stage vs plain `SentenceTransformer.encode`, same model and corpus.

Each side runs in its own subprocess, cold (no embedding cache), so peak memory is its own:
the peak summed RSS of the process and all its descendants (for Ray: driver, GCS, raylet,
actors), sampled every 50 ms. Both sides' embeddings are then scored on the test split with
the same exact search and pytrec_eval, so the nDCG@10 columns show that speed did not cost quality.

    python benchmarks/evaluate.py --data-dir ../shared/datasets [--dataset scifact] [--model minilm]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

SIDES = ("peer", "ours", "ours-torch", "ours-bf16", "ours-int8")  # ours: the default backend (ONNX Runtime, fp32, on CPUs)


def tree_rss(pid: int) -> int:
    """RSS of a process and all its descendants, in bytes."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


class PeakSampler(threading.Thread):
    """Samples the RSS of this process tree until stopped."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, tree_rss(os.getpid()))
            time.sleep(0.05)

    def stop(self) -> int:
        self._done.set()
        self.join()
        return self.peak


def run_side(side: str, args: argparse.Namespace, out: Path) -> None:
    """Encodes the corpus one way and saves embeddings + timing to `out`."""
    from syneg_ray.config import load_config
    from syneg_ray.dataset import prepare, read_corpus
    from syneg_ray.registry import resolve_model

    cache = Path(tempfile.mkdtemp(prefix="bench-cache-"))  # cold: no cached embeddings on either side
    overrides = [f"data.dataset={args.dataset}", f"data.data_dir={args.data_dir}", f"run.cache_dir={cache}"]
    if side == "ours-torch":
        overrides.append("encoder.backend=torch")
    if side == "ours-bf16":
        overrides.append("encoder.dtype=bf16")  # bf16 autocast runs on the torch backend
    if side == "ours-int8":
        overrides.append("encoder.dtype=int8")  # ONNX Runtime, dynamically quantized
    cfg = load_config(None, overrides)
    texts = list(read_corpus(prepare(cfg)).values())
    model_path = resolve_model(args.model)
    sampler = PeakSampler()
    sampler.start()
    started = time.perf_counter()
    if side == "peer":
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(model_path, device="cpu")
        embeddings = model.encode(texts, batch_size=args.peer_batch_size, convert_to_numpy=True)
        ready = started
    else:
        from syneg_ray.runtime import init_ray
        from syneg_ray.services.embed import encode_with_ray

        init_ray(cfg)
        ready = time.perf_counter()
        embeddings = encode_with_ray(cfg, model_path, texts, "", cache / "corpus.npy")
    elapsed = time.perf_counter() - started
    peak = sampler.stop()
    np.save(out / f"{side}.npy", np.asarray(embeddings))
    record = {"side": side, "docs": len(texts), "seconds": elapsed, "startup_seconds": ready - started, "peak_rss_gb": peak / 1e9}
    (out / f"{side}.json").write_text(json.dumps(record))


def ndcg(args: argparse.Namespace, embeddings: np.ndarray, side: str) -> float:
    """nDCG@10 on the test split with the given corpus embeddings.

    Queries are encoded in fp32 by sentence-transformers for every side but int8, whose queries
    are int8 too, as `syneg evaluate` with `encoder.dtype=int8` encodes them.
    """
    from syneg_ray import beir, metrics
    from syneg_ray.config import load_config
    from syneg_ray.dataset import prepare, read_corpus
    from syneg_ray.encoder import encode, load_encoder
    from syneg_ray.index import search_exact
    from syneg_ray.registry import resolve_model

    cfg = load_config(None, [f"data.dataset={args.dataset}", f"data.data_dir={args.data_dir}"])
    prepared = prepare(cfg)
    doc_ids = list(read_corpus(prepared))
    qrels, _ = beir.read_qrels(prepared.folder, "test")
    queries = beir.read_queries(prepared.folder, keep=set(qrels))
    if side == "ours-int8":
        from syneg_ray.services.embed import embed_queries

        # the default cache: its int8 graph is reused from run to run, and query embeddings are never cached
        int8 = load_config(None, [f"data.dataset={args.dataset}", f"data.data_dir={args.data_dir}", "encoder.dtype=int8"])
        query_embeddings = embed_queries(int8, list(queries.values()), args.model)
    else:
        query_embeddings = encode(load_encoder(resolve_model(args.model), device="cpu"), list(queries.values()))
    scores, indices = search_exact(query_embeddings, embeddings, 100)
    return metrics.evaluate_run(qrels, metrics.to_run(list(queries), doc_ids, scores, indices))["ndcg@10"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="scifact")
    parser.add_argument("--data-dir", default="../shared/datasets")
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--peer-batch-size", type=int, default=32, help="SentenceTransformer.encode's default")
    parser.add_argument("--sides", nargs="+", default=list(SIDES), choices=SIDES)
    parser.add_argument("--side", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if args.side:
        run_side(args.side, args, Path(args.out))
        return
    out = Path(tempfile.mkdtemp(prefix="bench-evaluate-"))
    results = {}
    for side in args.sides:
        cmd = [sys.executable, __file__, "--side", side, "--out", str(out), "--dataset", args.dataset,
               "--data-dir", args.data_dir, "--model", args.model, "--peer-batch-size", str(args.peer_batch_size)]
        subprocess.run(cmd, check=True)
        results[side] = json.loads((out / f"{side}.json").read_text())
        results[side]["ndcg@10"] = ndcg(args, np.load(out / f"{side}.npy"), side)
    print(f"\n{args.model} on {args.dataset} corpus ({results[args.sides[0]]['docs']:,} docs), cold cache, one run")
    print(f"{'side':<10} {'seconds':>8} {'docs/s':>8} {'peak RSS GB':>12} {'nDCG@10':>8}")
    for side, r in results.items():
        print(f"{side:<10} {r['seconds']:>8.1f} {r['docs'] / r['seconds']:>8.1f} {r['peak_rss_gb']:>12.2f} {r['ndcg@10']:>8.4f}")
    if "peer" in results:
        for side in results.keys() - {"peer"}:
            speed = results["peer"]["seconds"] / results[side]["seconds"]
            delta = results[side]["ndcg@10"] - results["peer"]["ndcg@10"]
            print(f"{side} vs peer: {speed:.2f}x faster (Ray start-up {results[side]['startup_seconds']:.1f} s included), "
                  f"nDCG@10 delta {delta:+.4f}")


if __name__ == "__main__":
    main()
