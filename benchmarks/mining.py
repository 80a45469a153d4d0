"""Dense mining, ours vs `sentence_transformers.util.mine_hard_negatives`, on SciFact train with minilm.

    nice .venv/bin/python benchmarks/mining.py --dataset <scifact folder> [--dtype bf16|int8] [--out result.json]

Each side runs in its own subprocess, from a cold start (imports, model load, Ray start and
encoding all counted; our embedding cache starts empty), while this parent samples the summed
PSS and RSS of the child's whole process tree (Ray's raylet, GCS and actors included) every
0.5 s. Ours runs three times: cold (the model's one-time ONNX export included), with the model
prepared (export cached, corpus not yet encoded: every later run on a new corpus), and warm
(embeddings cached). Same model, window (0, 50), relative margin 0.05, 7 negatives, top
sampling, faiss; the peer encodes with its default batch size 32.
Overlap is measured by document text (the peer de-duplicates the corpus by text).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"range_min": 0, "range_max": 50, "relative_margin": 0.05, "num_negatives": 7}


def _pairs_and_corpus(folder: Path):
    from syneg_ray import beir

    split = beir.load_split(folder, "train")
    pairs = [(q, d) for q, d in beir.positive_pairs(split.qrels)]
    return split, pairs


def side_peer(folder: Path, out: Path, model_path: str, seed: Path | None = None) -> None:
    """The peer: one process, SentenceTransformer.encode, faiss IndexFlatIP.

    With `seed` (an .npz of our corpus and query embeddings in the peer's order), they are put in
    the peer's own `cache_folder` under its hash names, so only its search and selection run.
    """
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives

    split, pairs = _pairs_and_corpus(folder)
    model = SentenceTransformer(model_path, device="cpu")
    data = Dataset.from_dict(
        {"query": [split.queries[q] for q, _ in pairs], "positive": [split.corpus[d] for _, d in pairs]}
    )
    cache = _seed_peer_cache(model, data, list(split.corpus.values()), seed, out.parent) if seed else None
    mined = mine_hard_negatives(
        data, model, corpus=list(split.corpus.values()), sampling_strategy="top", use_faiss=True, cache_folder=cache,
        batch_size=32, output_format="triplet", output_scores=True, verbose=True, **SETTINGS,
    )  # fmt: skip
    query_id = {split.queries[q]: q for q, _ in pairs}
    doc_id = {split.corpus[d]: d for _, d in pairs}
    rows: dict[str, list[str]] = {}
    for row in mined:
        rows.setdefault(f"{query_id[row['query']]}\t{doc_id[row['positive']]}", []).append(row["negative"])
    out.write_text(json.dumps(rows))


def _seed_peer_cache(model, data, corpus: list[str], seed: Path, work: Path) -> str:
    """Writes our embeddings where `mine_hard_negatives(cache_folder=...)` looks for its own (same hash rule)."""
    import hashlib

    import numpy as np

    name = model.model_card_data.base_model or ""
    queries = list(dict.fromkeys(data["query"]))
    docs = list(dict.fromkeys(corpus + list(data["positive"])))
    arrays, folder = np.load(seed), work / "peer-cache"
    folder.mkdir(exist_ok=True)
    for kind, texts in (("query", queries), ("corpus", docs)):
        digest = hashlib.sha256(repr((name, None, None, texts)).encode()).hexdigest()
        np.save(folder / f"{kind}_embeddings_{digest}.npy", arrays[kind])
    return str(folder)


def selection_only(folder: Path, work: Path, cache: Path) -> dict:
    """Same embeddings on both sides (ours, from the cache): measures only search + selection agreement."""
    import numpy as np

    from syneg_ray.dataset import prepare
    from syneg_ray.services.embed import embed_corpus, embed_queries

    cfg = _our_config(folder, work / "run", cache, "fp32")
    summary = run_mine_quiet(cfg)
    split, pairs = _pairs_and_corpus(folder)
    first = {}
    for row, text in enumerate(split.corpus.values()):
        first.setdefault(text, row)
    docs = list(dict.fromkeys(list(split.corpus.values()) + [split.corpus[d] for _, d in pairs]))
    queries = list(dict.fromkeys(split.queries[q] for q, _ in pairs))
    corpus = np.asarray(embed_corpus(cfg, prepare(cfg)))[[first[t] for t in docs]]
    np.savez(work / "seed.npz", corpus=corpus, query=embed_queries(cfg, queries))
    from syneg_ray.registry import resolve_model

    side_peer(folder, work / "peer.json", resolve_model("minilm", cache), seed=work / "seed.npz")
    return {"ours_summary": summary, **overlap(folder, work / "peer.json", work / "run" / "mine" / "negatives.parquet")}


def run_mine_quiet(cfg) -> dict:
    from syneg_ray.runtime import setup_logging
    from syneg_ray.stages.mine import run_mine

    setup_logging()
    return run_mine(cfg)


def _our_config(folder: Path, run_dir: Path, cache: Path, dtype: str):
    from syneg_ray.config import load_config

    return load_config(None, [
        f"run.run_dir={run_dir}", f"run.cache_dir={cache}", f"data.dataset={folder}", "data.dev_fraction=0.0",
        "mine.sources=[dense]", "mine.dedup_text=false", "mine.sampling=top", f"encoder.dtype={dtype}",
        *[f"mine.{k}={v}" for k, v in SETTINGS.items()],
    ])  # fmt: skip


def side_ours(folder: Path, out: Path, run_dir: Path, cache: Path, dtype: str) -> None:
    """Ours: the default encoder stage (one actor with every core; ONNX Runtime in fp32), exact faiss search, pure selection."""
    out.write_text(json.dumps(run_mine_quiet(_our_config(folder, run_dir, cache, dtype))))


def measure(argv: list[str]) -> dict:
    """Runs a child to completion, sampling its process tree's memory; returns wall time and peaks."""
    started = time.perf_counter()
    child = psutil.Popen(
        [sys.executable, *argv], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    peak = {"pss": 0, "rss": 0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            pss = rss = 0
            try:
                procs = [child, *child.children(recursive=True)]
            except psutil.Error:
                procs = []
            for proc in procs:
                try:
                    info = proc.memory_full_info()
                    pss, rss = pss + info.pss, rss + info.rss
                except psutil.Error:
                    continue
            peak["pss"], peak["rss"] = max(peak["pss"], pss), max(peak["rss"], rss)
            stop.wait(0.5)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    _, err = child.communicate()
    stop.set()
    thread.join()
    if child.returncode:
        raise SystemExit(f"child {argv[:3]} failed with {child.returncode}:\n{err[-3000:]}")
    return {
        "wall_s": round(time.perf_counter() - started, 1),
        "peak_pss_mb": peak["pss"] >> 20,
        "peak_rss_mb": peak["rss"] >> 20,
    }


def overlap(folder: Path, peer_file: Path, ours_parquet: Path) -> dict:
    """Share of the peer's negatives we also mined, by text, over the pairs both sides kept."""
    import pyarrow.parquet as pq

    split, _ = _pairs_and_corpus(folder)
    peer = json.loads(peer_file.read_text())
    ours = {f"{r['query_id']}\t{r['positive_id']}": r for r in pq.read_table(ours_parquet).to_pylist()}
    shared = same = peer_total = ours_total = 0
    for key, negatives in peer.items():
        if key not in ours:
            continue
        mine = {split.corpus[d] for d in ours[key]["negative_ids"]}
        shared += 1
        same += len(set(negatives) & mine)
        peer_total, ours_total = peer_total + len(negatives), ours_total + len(mine)
    return {
        "pairs_compared": shared, "peer_pairs": len(peer), "our_pairs": len(ours),
        "overlap_of_peer": same / max(peer_total, 1), "negatives_peer": peer_total, "negatives_ours": ours_total,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=ROOT.parent / "shared" / "datasets" / "scifact")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "int8"], help="our encoder's; the peer runs fp32")
    parser.add_argument("--side", choices=["peer", "ours"], help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help="write the result JSON here too")
    parser.add_argument(
        "--selection-only", type=Path, metavar="CACHE", help="reuse our cached embeddings on both sides"
    )
    args = parser.parse_args()
    from syneg_ray.registry import resolve_model

    if args.side == "peer":
        return side_peer(args.dataset, args.work / "peer.json", resolve_model("minilm", args.work / "cache"))
    if args.side == "ours":
        return side_ours(args.dataset, args.work / "ours.json", args.work / "run", args.work / "cache", args.dtype)
    if args.selection_only:
        with tempfile.TemporaryDirectory(prefix="mining-sel-") as tmp:
            sys.stdout.write(json.dumps(selection_only(args.dataset, Path(tmp), args.selection_only), indent=1) + "\n")
        return None
    with tempfile.TemporaryDirectory(prefix="mining-bench-") as tmp:
        work = Path(tmp)
        common = [
            str(Path(__file__).resolve()),
            "--dataset",
            str(args.dataset),
            "--work",
            str(work),
            "--dtype",
            args.dtype,
        ]
        load_start = os.getloadavg()
        peer = measure([*common, "--side", "peer"])
        ours_cold = measure([*common, "--side", "ours"])
        # Every later run on this model starts here: its ONNX export is cached, the corpus is not encoded yet.
        shutil.rmtree(work / "cache" / "embeddings")
        ours_prepared = measure([*common, "--side", "ours"])
        ours_warm = measure([*common, "--side", "ours"])  # same cache folder: embeddings reused
        result = {
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, {psutil.virtual_memory().total >> 30} GiB",
            "load_avg": [load_start, os.getloadavg()], "dtype": args.dtype, "settings": SETTINGS, "peer": peer, "ours_cold": ours_cold,
            "ours_model_prepared": ours_prepared, "ours_warm": ours_warm,
            "speedup_cold": round(peer["wall_s"] / ours_cold["wall_s"], 2),
            "speedup_model_prepared": round(peer["wall_s"] / ours_prepared["wall_s"], 2),
            "speedup_warm": round(peer["wall_s"] / ours_warm["wall_s"], 2),
            "ours_summary": json.loads((work / "ours.json").read_text()),
            **overlap(args.dataset, work / "peer.json", work / "run" / "mine" / "negatives.parquet"),
        }  # fmt: skip
    text = json.dumps(result, indent=1)
    sys.stdout.write(text + "\n")
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
