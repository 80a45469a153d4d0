"""Mining and mixing on queries with dozens of positives: which pairs keep their hard negatives.

    .venv/bin/python benchmarks/many_positives.py [--work /tmp/syneg-many] [--docs 5000 --queries 2300 --positives 30..45]

Generates a BEIR folder with `tests/make_dataset.py` (graded positives, 30-45 a query by default,
about 100k train qrels), then for each false-negative guard reference (`mine.guard_reference`:
`query_min`, the query's lowest positive, the rule before; `pair`, the pair's own positive, as
sentence-transformers' miner) runs `syneg mine` on the embedded defaults (all-MiniLM-L6-v2, dense
+ BM25, `data.max_positives_per_query` and `data.max_pairs` caps) and the retrieved-only mix twice:
`mix.min_negatives = n` (every instance exactly n, the rule before: a short pair is dropped) and
the default `mix.min_negatives = 1` (a short instance trains on what it has). It prints, per rule,
the share of in-window candidates the guard rejected, negatives per pair, pairs short / empty,
and the share of pairs each mix keeps.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/syneg-many"))
    parser.add_argument("--docs", default="5000")
    parser.add_argument("--queries", default="2300")
    parser.add_argument("--positives", default="30..45")
    args = parser.parse_args()
    data = args.work / "many"
    if not (data / "qrels" / "train.tsv").is_file():
        subprocess.run([sys.executable, str(ROOT / "tests" / "make_dataset.py"), str(data), "--docs", args.docs,
                        "--queries", args.queries, "--positives", args.positives], check=True)  # fmt: skip
    from syneg_ray.config import load_config
    from syneg_ray.stages.mine import run_mine
    from syneg_ray.stages.mix import run_mix

    qrels = sum(1 for _ in (data / "qrels" / "train.tsv").open()) - 1
    print(f"dataset: {args.docs} documents, {args.queries} train queries, {qrels:,} train qrels ({args.positives} positives a query)")
    rows = []
    for reference in ("query_min", "pair"):
        overrides = [f"data.dataset={data}", f"run.cache_dir={args.work / 'cache'}", "mix.strategy=retrieved",
                     f"run.run_dir={args.work / f'run-{reference}'}", f"mine.guard_reference={reference}"]  # fmt: skip
        started = time.perf_counter()
        mined = run_mine(load_config(None, overrides))
        seconds = time.perf_counter() - started
        kept = {m: run_mix(load_config(None, [*overrides, f"mix.min_negatives={m}"])) for m in (4, 1)}
        rows.append((reference, mined, kept, seconds))
    print("\n| guard reference | pairs | candidates the guard rejected | negatives a pair | pairs short of 7 | pairs with none | "
          "instances, min_negatives = 4 (a short pair dropped) | instances, min_negatives = 1 | mine s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for reference, mined, kept, seconds in rows:
        pairs = mined["pairs"]
        print(f"| {reference} | {pairs:,} | {mined['skipped_share']:.1%} | {mined['avg_negatives']:.2f} | {mined['short_pairs']:,} | "
              f"{mined['empty_pairs']:,} | {kept[4]['instances']:,} ({kept[4]['instances'] / pairs:.1%}) | "
              f"{kept[1]['instances']:,} ({kept[1]['instances'] / pairs:.1%}) | {seconds:.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
