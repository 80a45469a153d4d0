"""One round's lookup in the answer cache when it holds tens of thousands of parts: the index against opening every part.

    .venv/bin/python benchmarks/answer_cache.py --answers 100000 --batch 8 --round 4096

The answer cache stores one part per engine batch (`synthesize.batch_size` requests, 8 by
default), so the answers of a million pairs fill a hundred thousand parts, and every round of
every window of 4,096 pairs looks its requests up. This writes `--answers` answers of `--chars`
characters in parts of `--batch` (filler text: the cache finds answers by their 16-byte request
digest and reads a text only to hand it back), then times a round's lookup of `--round` requests,
half of them stored (answers written one after another, as a window asked again finds them), in two caches over the same parts in one process: the index (the cache as it
ships: the first round builds it, later rounds read it) and every part's digest column (the index
turned off, as the cache was before it). Prints one JSON object; `speedup` is the later rounds'
seconds with the index against without.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import tempfile
import time
from pathlib import Path


def fill(folder: Path, answers: int, batch: int, chars: int) -> list[bytes]:
    """Writes `answers` stored answers in parts of `batch`, as `AnswerCache.add` commits them; returns their digests."""
    from syneg_ray import answer_cache
    from syneg_ray import synthetic_store as store

    rng = random.Random(0)
    words = ["trial", "cohort", "protein", "receptor", "dose", "mortality", "expression", "signalling", "tumour", "placebo"]
    digests = [os.urandom(16) for _ in range(answers)]
    for start in range(0, answers, batch):
        text = " ".join(rng.choice(words) for _ in range(chars // 8))[:chars]
        rows = [{"request": d, "generated_text": text, "prompt_tokens": 600, "output_tokens": chars // 4, "seconds": 1.0}
                for d in digests[start : start + batch]]  # fmt: skip
        store.write_part(folder, rows, answer_cache.SCHEMA, id_columns=("request",))
    return digests


def timed_rounds(cache, rounds: list[tuple[set[bytes], set[bytes]]]) -> list[float]:
    """Seconds of each round's lookup; each must find exactly its stored half."""
    seconds = []
    for wanted, stored in rounds:
        began = time.perf_counter()
        found = cache._answers(wanted)
        seconds.append(time.perf_counter() - began)
        if set(found) != stored:
            raise SystemExit(f"a lookup found {len(found)} answers, not the {len(stored)} stored")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--answers", type=int, default=100_000, help="answers in the cache")
    parser.add_argument("--batch", type=int, default=8, help="answers a part (the engine batch)")
    parser.add_argument("--chars", type=int, default=4000, help="characters an answer")
    parser.add_argument("--round", type=int, default=4096, help="requests a round looks up, half of them stored")
    parser.add_argument("--rounds", type=int, default=3, help="rounds timed a cache")
    args = parser.parse_args()

    from syneg_ray import answer_cache
    from syneg_ray.config import load_config

    s = load_config(None, []).synthesize
    folder = Path(tempfile.mkdtemp(prefix="answer-cache-"))
    try:
        began = time.perf_counter()
        digests = fill(folder / "answers", args.answers, args.batch, args.chars)
        fill_s = time.perf_counter() - began
        rng = random.Random(1)
        rounds = []
        for _ in range(args.rounds):  # a window asked again: its stored half was written batch after batch
            start = rng.randrange(len(digests) - args.round // 2)
            stored = set(digests[start : start + args.round // 2])
            rounds.append((stored | {os.urandom(16) for _ in range(args.round - len(stored))}, stored))
        scan_every_part = answer_cache.INDEX_EVERY
        answer_cache.INDEX_EVERY = args.answers + 1  # no index: every part's digest column, every round
        without = timed_rounds(answer_cache.AnswerCache(folder / "answers", s), rounds)
        answer_cache.INDEX_EVERY = scan_every_part
        indexed = timed_rounds(answer_cache.AnswerCache(folder / "answers", s), rounds)
        parts = len(list((folder / "answers").glob("part-*.parquet")))
        index_mb = sum(f.stat().st_size for f in (folder / "answers" / "index").glob("*.parquet")) / 2**20
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), platform.machine())
    flags = " ".join(sorted({f for f in cpuinfo.split() if f.startswith(("avx", "amx"))}))
    later = sum(indexed[1:]) / max(1, len(indexed) - 1)
    print(json.dumps({
        "host": model, "cpu_flags": flags, "answers": args.answers, "parts": parts, "round_requests": args.round,
        "fill_s": round(fill_s, 1), "index_mb": round(index_mb, 2),
        "every_part_s": [round(x, 3) for x in without], "indexed_first_s": round(indexed[0], 3),
        "indexed_later_s": [round(x, 3) for x in indexed[1:]],
        "speedup": round((sum(without) / len(without)) / later, 1) if later else None,
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
