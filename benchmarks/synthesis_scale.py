"""What the synthesize stage's driver holds against the number of pairs, beside another checkout's.

    nice .venv/bin/python benchmarks/synthesis_scale.py --pairs 10000,100000,1000000 [--baseline-code DIR]

Each point is a generated BEIR folder (`scale.generate`: 10,000 documents, P training queries) and
a synthesis output in which every pair is already done: P rows of 3 negatives of 100-200 words,
in parts of 256 rows (one engine batch each, as a GPU replica commits them). `syneg synthesize`
then runs on it as a rerun does: it reads which pairs are finished, finds nothing to generate and
summarizes the whole output. No LLM runs, so what is measured is the stage's own bookkeeping (the
sets of pair keys, the output's counts), which a real synthesis of that many pairs also carries,
on top of one window's pairs and rounds. The pairs are prepared before the measured run, so
their preparation is not in it.

The driver's peak PSS (sampled every 0.2 s, as `scale.py` samples) and the stage's wall seconds
are printed per point; with `--baseline-code`, the same run with that checkout's `syneg_ray` (for
example the commit before a change) beside it, and the ratio. With `--mix`, `syneg mix` then mixes
the output (synthetic-only instances of 3 negatives), which reads the synthesis folder's parts for
every block of pairs. With `--one-file`, the output is instead one file of every pair in shuffled
order, in row groups of 65,536 rows, as a user's own generation loop might write it; it implies `--mix`.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
from scale import generate, run_stage, scifact_vocabulary

ROOT = Path(__file__).resolve().parents[1]
DOCS = 10_000
PART_ROWS = 256
ONE_FILE_ROW_GROUP = 65_536
POOLS = "domains: [biology, medicine]\n"  # named, so no LLM is asked for them


def overrides(folder: Path, run_dir: Path, pools: Path) -> list[str]:
    return [f"run.run_dir={run_dir}", f"data.dataset={folder}", "data.dev_fraction=0", "data.max_pairs=0",
            "synthesize.judge=false", "synthesize.max_pairs=0", f"synthesize.attribute_pools={pools}"]  # fmt: skip


def write_finished_output(cfg, pairs_path: Path, words: list[str], one_file: bool = False, seed: int = 0) -> int:
    """Every pair of `pairs_path` as an ok row of 3 negatives, under the keys `cfg` gives them, in
    parts of PART_ROWS in pair order, or (`one_file`) one file in shuffled order; returns the rows."""
    from syneg_ray import prompts, schema
    from syneg_ray import synthetic_store as store

    rng = np.random.default_rng(seed)
    vocabulary = np.asarray(words[:5000], dtype=object)
    parts = Path(cfg.run.run_dir) / schema.SYNTHETIC
    parts.mkdir(parents=True, exist_ok=True)
    ids = pq.read_table(pairs_path, columns=["query_id", "positive_id"])
    order = rng.permutation(ids.num_rows) if one_file else np.arange(ids.num_rows)
    ids = ids.take(pa.array(order))
    pairs = list(zip(ids.column("query_id").to_pylist(), ids.column("positive_id").to_pylist(), strict=True))
    step = ONE_FILE_ROW_GROUP if one_file else PART_ROWS
    writer = pq.ParquetWriter(parts / "part-00000000.parquet", store.SYNTHETIC_SCHEMA) if one_file else None
    for start in range(0, len(pairs), step):
        rows = []
        for q, d in pairs[start : start + step]:
            negatives = [" ".join(rng.choice(vocabulary, size=int(rng.integers(100, 201)))) for _ in range(3)]
            rows.append({"key": store.pair_key(cfg, q, d), "query_id": q, "positive_id": d, "negatives": negatives,
                         "reasoning": "", "model": cfg.synthesize.model, "engine": cfg.synthesize.engine.value,
                         "prompt_version": prompts.PROMPT_VERSION, "attempts": 1, "prompt_tokens": 400, "output_tokens": 900,
                         "status": "ok", "reject_reasons": [], "negative_scores": [0.5, 0.5, 0.5], "positive_score": 0.7})  # fmt: skip
        table = pa.Table.from_pylist([{**dict.fromkeys(store.SYNTHETIC_SCHEMA.names), **r} for r in rows], schema=store.SYNTHETIC_SCHEMA)
        if writer is not None:
            writer.write_table(table)
        else:
            pq.write_table(table, parts / f"part-{start // PART_ROWS:08d}.parquet")
    if writer is not None:
        writer.close()
    return len(pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", default="10000,100000", help="pairs per point, comma-separated")
    parser.add_argument("--work", type=Path, default=Path("/tmp/syneg-synthesis-scale"), help="generated data and runs")
    parser.add_argument("--vocabulary", type=Path, default=ROOT.parent / "shared" / "datasets" / "scifact" / "corpus.jsonl")
    parser.add_argument("--baseline-code", type=Path, help="a checkout whose syneg_ray runs the same points beside this one's")
    parser.add_argument("--mix", action="store_true", help="then `syneg mix` (synthetic-only) on each point's output, with each checkout")
    parser.add_argument("--one-file", action="store_true", help="the output as one file in shuffled pair order (implies --mix)")
    args = parser.parse_args()
    args.mix = args.mix or args.one_file

    from syneg_ray.config import load_config
    from syneg_ray.dataset import ensure_pairs

    flags = [f for f in Path("/proc/cpuinfo").read_text().split() if f.startswith(("avx", "amx"))] if Path("/proc/cpuinfo").is_file() else []
    print(f"host: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{psutil.virtual_memory().total >> 30} GiB; flags {' '.join(sorted(set(flags)))}")  # fmt: skip
    vocabulary = scifact_vocabulary(args.vocabulary)
    pools = args.work / "pools.yaml"
    args.work.mkdir(parents=True, exist_ok=True)
    pools.write_text(POOLS, encoding="utf-8")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    codes = {"this": ROOT, **({"baseline": args.baseline_code.resolve()} if args.baseline_code else {})}
    rows = []
    for n_pairs in (int(x) for x in args.pairs.split(",")):
        folder = generate(args.work / "data" / f"pairs-{n_pairs}", DOCS, n_pairs, vocabulary)
        run_dir = args.work / "runs" / (folder.name + ("-one-file" if args.one_file else ""))
        shutil.rmtree(run_dir, ignore_errors=True)
        cfg = load_config(None, overrides(folder, run_dir, pools))
        _, pairs_path = ensure_pairs(cfg)
        written = write_finished_output(cfg, pairs_path, vocabulary[0], args.one_file)
        point = {"pairs": n_pairs, "rows": written}
        for name, code in codes.items():
            log = run_dir / f"{name}.log"
            result = run_stage("synthesize", overrides(folder, run_dir, pools), {**env, "PYTHONPATH": str(code)}, log,
                               interval=0.2, cwd=code)  # fmt: skip
            if ", 0 to generate" not in log.read_text(encoding="utf-8"):
                raise SystemExit(f"{name}: the rerun generated pairs; see {log}")
            point[name] = {"seconds": result["seconds"], "driver_mb": result["peak_mb"]["driver"]}
            print(f"{n_pairs:>9,} pairs  {name:<8} driver {point[name]['driver_mb']:>7.0f} MB  {result['seconds']:>6.1f} s", flush=True)
        for name, code in codes.items() if args.mix else ():
            # unguarded: the guard would encode every negative, which is the encoder's cost, not the mix's
            settings = ["mix.strategy=synthetic", "mix.n_negatives=3", "mix.guard_synthetic=false"]
            shutil.rmtree(run_dir / "mix", ignore_errors=True)  # so it runs, not finds the other checkout's output
            mix = run_stage("mix", [*overrides(folder, run_dir, pools), *settings], {**env, "PYTHONPATH": str(code)},
                            run_dir / f"{name}-mix.log", interval=0.2, cwd=code)  # fmt: skip
            point[name]["mix"] = {"seconds": mix["seconds"], "driver_mb": mix["peak_mb"]["driver"]}
            print(f"{n_pairs:>9,} pairs  {name:<8} mix    driver {mix['peak_mb']['driver']:>7.0f} MB  {mix['seconds']:>6.1f} s", flush=True)
        rows.append(point)
    stages = ["synthesize", *(["mix"] if args.mix else [])]
    print(f"\n{'pairs':>10} | {'stage':<10} | " + " | ".join(f"{name} driver MB | {name} s" for name in codes)
          + (" | driver MB, baseline / this | s, baseline / this" if args.baseline_code else ""))  # fmt: skip
    for p in rows:
        for stage in stages:
            cell = {name: p[name] if stage == "synthesize" else p[name]["mix"] for name in codes}
            ratio = ([f"{cell['baseline']['driver_mb'] / cell['this']['driver_mb']:.2f}x",
                      f"{cell['baseline']['seconds'] / cell['this']['seconds']:.2f}x"] if args.baseline_code else [])  # fmt: skip
            print(f"{p['pairs']:>10,} | {stage:<10} | " + " | ".join([f"{c['driver_mb']:.0f} | {c['seconds']:.1f}" for c in cell.values()] + ratio))


if __name__ == "__main__":
    main()
