"""Cost against corpus size: mine (dense + BM25) -> mix -> train (a few steps) on generated corpora.

    nice .venv/bin/python benchmarks/scale.py --points 10000:1000,100000:10000 [--work /tmp/syneg-scale]
        [--out benchmarks/figures/scale.png] [--json scale.json]

Each point is a BEIR folder generated here: N documents of 50-300 words drawn from SciFact's own
vocabulary with its word frequencies, and P training queries, each 6-14 words taken from one
document (its positive) with a few other words mixed in. The encoder is a randomly initialised
2-layer, 128-wide BERT with MiniLM's tokenizer, created once (`syneg_ray.model.build_tiny`): it
costs what such a model costs, and retrieval quality is not the question here. It encodes the first
128 tokens of a document in int8 (ONNX Runtime), about 4x the fp32 speed at full length, so the 1M
point fits an afternoon on 2 cores. Beyond 200k documents dense search uses IVF (`mine.index=ivf`),
and mining drops BM25 (`--bm25-max-docs`): a BM25 search costs queries x documents, which at 100k
queries over 1M documents is hours on 2 cores however the index is sharded. Each point's run folder
is made afresh; the caches (corpus Parquet, embeddings) stay, and the output says whether the
corpus was encoded in this run.

Every stage runs as its own `python -m syneg_ray` process on a fresh local Ray, while this
process samples the PSS of every process of that tree every 0.5 s (`--interval`), with the part of
it in shared memory (Ray's object store, which a worker maps and streams its blocks through), and
files it under a kind:
driver (the stage's own process), encoder actor, search actor (BM25 and dense shards), train
worker, and Ray's own processes (GCS, raylet, dashboard, Ray Data's and Train's helper actors,
idle workers), the last summed. The table and the figure give each kind's peak per point and each
stage's wall time (Ray's start included).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("driver", "encoder actor", "search actor", "train worker", "Ray's own (sum)")
STAGES = ("mine", "mix", "train")


def generate(folder: Path, n_docs: int, n_pairs: int, vocabulary: tuple[list[str], np.ndarray], seed: int = 0) -> Path:
    """A BEIR folder (corpus.jsonl, queries.jsonl, qrels/train.tsv) with the given sizes; reused when present.

    Every query has one positive; a document is the positive of at most one query unless there are
    more queries than documents.
    """
    if (folder / "qrels" / "train.tsv").is_file():
        return folder
    done, folder = folder, folder.with_name(folder.name + ".partial")  # renamed when whole: a killed run is not reused
    shutil.rmtree(folder, ignore_errors=True)
    words, freq = vocabulary
    rng = np.random.default_rng(seed)
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    # more pairs than documents gives some documents several queries: a point with many training
    # instances over a small corpus, which tells the cost of instances apart from the corpus's
    positives = rng.choice(n_docs, size=n_pairs, replace=n_pairs > n_docs)
    wanted = set(positives.tolist())
    query_words: dict[int, list[str]] = {}  # the positives' first words, which their queries are drawn from
    with (folder / "corpus.jsonl").open("w", encoding="utf-8") as out:
        for start in range(0, n_docs, 10_000):
            count = min(10_000, n_docs - start)
            lengths = rng.integers(50, 301, size=count)
            drawn = rng.choice(len(words), size=int(lengths.sum()), p=freq)
            for i, part in enumerate(np.split(drawn, np.cumsum(lengths)[:-1])):
                text = " ".join(words[w] for w in part)
                out.write(json.dumps({"_id": f"d{start + i}", "title": "", "text": text}) + "\n")
                if start + i in wanted:
                    query_words[start + i] = text.split()[:40]
    with (folder / "queries.jsonl").open("w", encoding="utf-8") as out, (folder / "qrels" / "train.tsv").open("w") as qrels:
        qrels.write("query-id\tcorpus-id\tscore\n")
        for q, doc in enumerate(positives.tolist()):
            own = rng.choice(query_words[doc], size=int(rng.integers(6, 15)))
            noise = [words[w] for w in rng.choice(len(words), size=3, p=freq)]
            out.write(json.dumps({"_id": f"q{q}", "text": " ".join([*own, *noise])}) + "\n")
            qrels.write(f"q{q}\td{doc}\t1\n")
    folder.rename(done)
    return done


def scifact_vocabulary(corpus: Path) -> tuple[list[str], np.ndarray]:
    """Words of a real corpus and their relative frequencies."""
    counts: Counter[str] = Counter()
    with corpus.open(encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            counts.update(f"{row.get('title', '')} {row['text']}".split())
    words, n = zip(*counts.most_common(), strict=True)
    freq = np.asarray(n, dtype=np.float64)
    return list(words), freq / freq.sum()


def bag_of_words_encoder(folder: Path) -> Path:
    """Makes the random tiny BERT a usable retriever: without position and segment embeddings, and with
    unit-scale word embeddings, its mean-pooled output is close to a random projection of the bag of
    words, so a query scores its positive above most documents (rank ~4 of 200 on this generator's
    data) and the false-negative guard keeps negatives, as with a trained encoder. Costs are unchanged."""
    import torch
    from sentence_transformers import SentenceTransformer

    from syneg_ray.model import save_model

    st = SentenceTransformer(str(folder), device="cpu")
    embeddings = st[0].auto_model.embeddings
    with torch.no_grad():
        embeddings.position_embeddings.weight.zero_()
        embeddings.token_type_embeddings.weight.zero_()
        embeddings.word_embeddings.weight.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(0))
    return save_model(st, folder)


def kind_of(proc: psutil.Process, driver: int) -> str:
    if proc.pid == driver:
        return "driver"
    cmd = " ".join(proc.cmdline())
    if "EncodeUDF" in cmd:
        return "encoder actor"
    if "BM25Searcher" in cmd or "ShardSearcher" in cmd:
        return "search actor"
    if "RayTrainWorker" in cmd:
        return "train worker"
    return "Ray's own (sum)"


def pss_mb(proc: psutil.Process) -> tuple[float, float]:
    """The process's PSS and the part of it in shared memory (MB). A Ray worker maps the object store
    (shared memory), and every block that streams through it adds pages to its PSS while the store
    keeps them; the rest is what the process holds itself."""
    try:
        rollup = Path(f"/proc/{proc.pid}/smaps_rollup").read_text()
    except OSError:  # not Linux, or gone: PSS alone
        return proc.memory_full_info().pss / 2**20, 0.0
    fields = {k: int(v) for k, v in re.findall(r"^(\w+):\s+(\d+) kB", rollup, re.MULTILINE)}
    return fields.get("Pss", 0) / 1024, fields.get("Pss_Shmem", 0) / 1024


def run_stage(stage: str, overrides: list[str], env: dict, log: Path, interval: float = 0.5, cwd: Path = ROOT) -> dict:
    """Runs one stage in its own process tree, with the `syneg_ray` of checkout `cwd`; returns wall
    seconds, the peak PSS (MB) per kind, and per kind the peak of PSS less its shared memory (`pss_mb`)."""
    command = [sys.executable, "-m", "syneg_ray", stage, *overrides]
    started = time.perf_counter()
    with log.open("a", encoding="utf-8") as out:
        out.write(f"$ {' '.join(command)}\n")
        out.flush()
        child = psutil.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        peaks, own = dict.fromkeys(KINDS, 0.0), dict.fromkeys(KINDS, 0.0)
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                try:
                    tree = [child, *child.children(recursive=True)]
                except psutil.NoSuchProcess:
                    break
                ray_own = ray_own_unshared = 0.0
                for proc in tree:
                    try:
                        mb, shared = pss_mb(proc)
                        kind = kind_of(proc, child.pid)
                    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                        continue
                    if kind == "Ray's own (sum)":
                        ray_own, ray_own_unshared = ray_own + mb, ray_own_unshared + mb - shared
                    else:
                        peaks[kind], own[kind] = max(peaks[kind], mb), max(own[kind], mb - shared)
                peaks["Ray's own (sum)"] = max(peaks["Ray's own (sum)"], ray_own)
                own["Ray's own (sum)"] = max(own["Ray's own (sum)"], ray_own_unshared)
                stop.wait(interval)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        code = child.wait()
        stop.set()
        sampler.join()
    if code:
        raise SystemExit(f"{stage} failed with exit code {code}; see {log}")
    return {"seconds": round(time.perf_counter() - started, 1), "peak_mb": {k: round(v, 1) for k, v in peaks.items()},
            "peak_mb_without_shared_memory": {k: round(v, 1) for k, v in own.items()}}


def run_point(n_docs: int, n_pairs: int, work: Path, model: Path, vocabulary, steps: int, bm25_max_docs: int,
              stages: tuple[str, ...] = STAGES, interval: float = 0.5) -> dict:  # fmt: skip
    folder = generate(work / "data" / f"scale-{n_docs}-{n_pairs}", n_docs, n_pairs, vocabulary)
    run_dir = work / "runs" / folder.name
    log = run_dir.parent / f"{folder.name}.log"
    if stages == STAGES:  # every stage runs afresh (the caches stay); a later stage alone reruns on the last run's outputs
        shutil.rmtree(run_dir, ignore_errors=True)
        log.unlink(missing_ok=True)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "SYNEG_CACHE": str(work / "cache"), "RAY_AUTH_MODE": "disabled"}
    sources = "dense,bm25" if n_docs <= bm25_max_docs else "dense"
    overrides = [
        f"run.run_dir={run_dir}", f"data.dataset={folder}", "data.dev_fraction=0", "data.max_pairs=0",
        f"encoder.model={model}", "encoder.max_seq_length=128", "encoder.dtype=int8", f"mine.sources=[{sources}]",
        f"mine.index={'ivf' if n_docs > 200_000 else 'flat'}", "mine.shard_cpus=1",
        "mix.strategy=retrieved", "mix.n_negatives=3", "train.dev_eval=false", "train.batch_size=16",
        f"train.max_steps={steps}", "train.max_seq_length=64", "train.workers=2", "train.cpus_per_worker=1",
    ]  # fmt: skip
    point = {"docs": n_docs, "pairs": n_pairs, "sources": sources, "stages": {}}
    for stage in stages:
        if stage != "mine":
            shutil.rmtree(run_dir / stage, ignore_errors=True)  # so it runs, not resumes
        point["stages"][stage] = run_stage(stage, overrides, env, log, interval)
        print(f"{n_docs:>9,} docs {n_pairs:>7,} pairs  {stage:<5} {point['stages'][stage]}", flush=True)
    text = log.read_text(encoding="utf-8")
    point["corpus_encoded"] = "corpus embeddings: cache hit" not in text  # else the corpus's vectors came from the cache
    mined = re.findall(r"mined .* seconds (\{.*\})", text)
    point["mine_seconds"] = ast.literal_eval(mined[-1]) if mined else {}  # per source, from the stage's own log
    print(f"{n_docs:>9,} docs  mine by part: {point['mine_seconds']}, corpus encoded: {point['corpus_encoded']}", flush=True)
    return point


def plot(points: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (mem, wall) = plt.subplots(1, 2, figsize=(11, 4.2))
    docs = [p["docs"] for p in points]
    for kind in KINDS:
        peak = [max(s["peak_mb"][kind] for s in p["stages"].values()) for p in points]
        if any(peak):
            mem.plot(docs, peak, marker="o", label=kind)
    for stage in STAGES:
        wall.plot(docs, [p["stages"][stage]["seconds"] for p in points], marker="o", label=stage)
    for ax, label in ((mem, "peak PSS per process (MB)"), (wall, "wall time (s)")):
        ax.set_xscale("log")
        ax.set_xlabel("documents")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    dense_only = [f"{p['docs']:,}" for p in points if "bm25" not in p.get("sources", "dense,bm25")]
    fig.suptitle("syneg-ray: cost against corpus size (mine dense+BM25 -> mix -> train, 2-layer encoder"
                 + (f"; {', '.join(dense_only)} documents: dense only)" if dense_only else ")"))  # fmt: skip
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", default="10000:1000,100000:10000", help="documents:pairs, comma-separated")
    parser.add_argument("--work", type=Path, default=Path("/tmp/syneg-scale"), help="generated data, caches and runs")
    parser.add_argument("--vocabulary", type=Path, default=ROOT.parent / "shared" / "datasets" / "scifact" / "corpus.jsonl")
    parser.add_argument("--steps", type=int, default=8, help="training steps per point")
    parser.add_argument("--stages", default=",".join(STAGES),
                        help="rerun only these stages on the last run's outputs (with --json: that run's points file, updated)")
    parser.add_argument("--interval", type=float, default=0.5,
                        help="seconds between memory samples (a stage shorter than a few samples may peak between them)")
    parser.add_argument("--bm25-max-docs", type=int, default=200_000,
                        help="mine with BM25 too up to this many documents (its search costs queries x documents)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "figures" / "scale.png")
    parser.add_argument("--json", type=Path, default=None, help="also write the points here")
    args = parser.parse_args()

    from syneg_ray.model import build_tiny
    from syneg_ray.registry import resolve_model

    args.work.mkdir(parents=True, exist_ok=True)
    model = args.work / "tiny-128"
    if not model.is_dir():
        bag_of_words_encoder(build_tiny(model, resolve_model("minilm"), hidden=128, layers=2))
    vocabulary = scifact_vocabulary(args.vocabulary)
    flags = [f for f in Path("/proc/cpuinfo").read_text().split() if f.startswith(("avx", "amx"))] if Path("/proc/cpuinfo").is_file() else []
    print(f"host: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{psutil.virtual_memory().total >> 30} GiB; flags {' '.join(sorted(set(flags)))}")  # fmt: skip
    stages = tuple(args.stages.split(","))
    # a partial rerun updates those stages' figures in the --json file of a full run, and redraws
    earlier = {(p["docs"], p["pairs"]): p for p in json.loads(args.json.read_text())} if stages != STAGES else {}
    points = []
    for spec in args.points.split(","):
        n_docs, n_pairs = (int(x) for x in spec.split(":"))
        point = run_point(n_docs, n_pairs, args.work, model, vocabulary, args.steps, args.bm25_max_docs, stages, args.interval)
        if (n_docs, n_pairs) in earlier:
            point = {**earlier[(n_docs, n_pairs)], "stages": {**earlier[(n_docs, n_pairs)]["stages"], **point["stages"]}}
        points.append(point)
        if args.json:
            args.json.write_text(json.dumps(points, indent=2))
    print(f"\n{'documents':>10} {'pairs':>7} | " + " | ".join(f"{k:>15}" for k in KINDS) + " | " + " | ".join(f"{s:>6} s" for s in STAGES))
    for p in points:
        peaks = [max(s["peak_mb"][k] for s in p["stages"].values()) for k in KINDS]
        print(f"{p['docs']:>10,} {p['pairs']:>7,} | " + " | ".join(f"{v:>12.0f} MB" for v in peaks) + " | "
              + " | ".join(f"{p['stages'][s]['seconds']:>8.1f}" for s in STAGES))  # fmt: skip
    plot(points, args.out)
    print(f"figure: {args.out}")


if __name__ == "__main__":
    main()
