"""Encoder token budget on CPU: seconds and peak memory of one encoder process per `max_tokens_per_batch`.

    .venv/bin/python benchmarks/token_budget.py --dataset <scifact folder> [--docs 300] [--budgets 8192 2048 1024 512]

Each (backend, budget) encodes the first `--docs` SciFact documents in a fresh process with the
kernel the encoder actors run (`encoder.encode`, 2 threads), so the peak RSS is that of one actor
without Ray around it. The list runs forwards then backwards, and the two timings of each setting
are summed, so a steady drift of the machine cancels. `encoder.max_tokens_per_batch = 0` picks the
CPU default this benchmark chose.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(dataset: Path, docs: int, backend: str, budget: int) -> None:
    """One setting: load, encode, print {seconds, peak_rss_mb} as JSON."""
    from syneg_ray import beir
    from syneg_ray.config import Backend, PipelineConfig
    from syneg_ray.encoder import EncodeOptions, encode
    from syneg_ray.registry import resolve_model
    from syneg_ray.services.embed import onnx_file, open_encoder

    texts = list(beir.load_split(dataset, "test").corpus.values())[:docs]
    model_path = resolve_model("minilm")
    model = open_encoder(model_path, Backend(backend), str(onnx_file(PipelineConfig(), model_path)), threads=2)
    if backend == "torch":
        import torch

        torch.set_num_threads(2)
    started = time.perf_counter()
    encode(model, texts, EncodeOptions(max_tokens_per_batch=budget))
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=ROOT.parent / "shared" / "datasets" / "scifact")
    parser.add_argument("--docs", type=int, default=300)
    parser.add_argument("--budgets", type=int, nargs="+", default=[8192, 2048, 1024, 512])
    parser.add_argument("--backends", nargs="+", default=["onnx", "torch"], choices=["onnx", "torch"])
    parser.add_argument("--child", nargs=2, metavar=("BACKEND", "BUDGET"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.dataset, args.docs, args.child[0], int(args.child[1]))
    settings = [(b, t) for b in args.backends for t in args.budgets]
    totals: dict[tuple[str, int], dict] = {}
    for backend, budget in settings + settings[::-1]:
        cmd = [sys.executable, __file__, "--dataset", str(args.dataset), "--docs", str(args.docs),
               "--child", backend, str(budget)]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
        run = json.loads(done.stdout.strip().splitlines()[-1])
        total = totals.setdefault((backend, budget), {"seconds": 0.0, "peak_rss_mb": 0})
        total["seconds"] += run["seconds"]
        total["peak_rss_mb"] = max(total["peak_rss_mb"], run["peak_rss_mb"])
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; {args.docs} SciFact documents, minilm fp32, "
          "2 threads; seconds summed over 2 runs")
    print("| backend | max_tokens_per_batch | seconds (2 runs) | vs the largest budget | peak RSS MB |")
    print("| --- | --- | --- | --- | --- |")
    for backend, budget in settings:
        total, largest = totals[(backend, budget)], totals[(backend, max(args.budgets))]
        print(f"| {backend} | {budget} | {total['seconds']:.1f} | {largest['seconds'] / total['seconds']:.2f}x "
              f"| {total['peak_rss_mb']:,} |")
    return None


if __name__ == "__main__":
    main()
