"""Writes a generated BEIR-format folder with many graded positives per query: the test data for
datasets unlike SciFact (never a copy of a real dataset).

    python tests/make_dataset.py OUT --docs 5000 --queries 2300 --positives 30..45

OUT gets corpus.jsonl, queries.jsonl and qrels/{train,dev,test}.tsv. Documents belong to topics (a
few topic words each, plus filler words from the list below); a query is written from its topic's
words, and its positives are documents of its topic, graded 2 (the third that share the most of
the query's words) or 1. `--queries` train queries, plus `--dev-queries` and `--test-queries`
(a tenth of it by default) with their own qrels, graded the same way. Seeded: the same arguments
write the same files.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path

WORDS = """
acid actor agent algae alloy amber angle ankle apple arrow atlas atom basin beam berry blade bloom
bond brick bridge cable canal carbon cargo cell chalk chart cloud coast cobalt comet coral cotton
crane crystal cycle delta dune dust eagle echo engine enzyme falcon fern fiber flame flint fluid
forest fossil frost galaxy garnet gene glacier granite graph harbor hazel helium heron hinge honey
ion iris island ivory jade jungle kernel lagoon laser lava lemon lens lever lichen linen lotus
magnet maple marble matrix meadow mercury meteor mineral mirror moss motor nectar needle neuron
nickel oasis ocean olive orbit osmium oxygen panel pebble pepper photon pigment pine planet plasma
pollen prism protein pulse quartz radar raven reef resin ridge river rocket saddle salt sensor
shadow shell signal silica silver socket solar spore spring steam stone storm sugar sulfur summit
tablet thorn tide timber titan topaz torch tundra turbine valley vapor velvet vessel violet volcano
wafer walnut willow wind wire yeast zinc zircon
""".split()  # noqa: SIM905 (a word list reads best as text)
FILLER = "the of and a in on with for by from as at to is are was its into over under about".split()  # noqa: SIM905


@dataclass(frozen=True)
class Sizes:
    docs: int = 5000
    queries: int = 2300  # train queries
    positives: tuple[int, int] = (30, 45)  # positives per query, inclusive range
    dev_queries: int = -1  # -1 = a tenth of `queries` (at least 1)
    test_queries: int = -1  # -1 = a tenth of `queries` (at least 1)
    seed: int = 0


def make_dataset(out: str | Path, sizes: Sizes | None = None, **overrides) -> Path:
    """Writes the folder (replacing its files) and returns its path. `overrides` set fields of `sizes`."""
    s = Sizes(**{**(sizes or Sizes()).__dict__, **overrides})
    low, high = min(s.positives), max(s.positives)
    if s.docs < 1 or s.queries < 1 or low < 1:
        raise ValueError("docs, queries and positives must be at least 1")
    high = min(high, s.docs)
    low = min(low, high)
    rng = random.Random(s.seed)
    out = Path(out)
    (out / "qrels").mkdir(parents=True, exist_ok=True)

    topic_size = max(high + high // 2, 1)
    n_topics = max(1, s.docs // topic_size)
    topics = [rng.sample(WORDS, 5) for _ in range(n_topics)]
    members: list[list[int]] = [[] for _ in range(n_topics)]
    with (out / "corpus.jsonl").open("w", encoding="utf-8") as f:
        for i in range(s.docs):
            t = i % n_topics
            members[t].append(i)
            words = rng.choices(topics[t], k=rng.randint(6, 14)) + rng.choices(WORDS, k=rng.randint(10, 30))
            words += rng.choices(FILLER, k=len(words) // 3)
            rng.shuffle(words)
            title = " ".join(rng.sample(topics[t], 2)).capitalize()
            f.write(json.dumps({"_id": f"d{i}", "title": title, "text": " ".join(words) + ".", "metadata": {}}) + "\n")

    def n_of(value: int) -> int:
        return max(1, s.queries // 10) if value < 0 else value

    splits = {"train": s.queries, "dev": n_of(s.dev_queries), "test": n_of(s.test_queries)}
    with (out / "queries.jsonl").open("w", encoding="utf-8") as fq:
        for split, count in splits.items():
            with (out / "qrels" / f"{split}.tsv").open("w", encoding="utf-8", newline="") as fr:
                fr.write("query-id\tcorpus-id\tscore\n")
                for j in range(count):
                    t = rng.randrange(n_topics)
                    words = rng.sample(topics[t], 3) + rng.sample(WORDS, 1)
                    qid = f"{split[:2]}{j}"
                    fq.write(json.dumps({"_id": qid, "text": " ".join(words) + "?", "metadata": {}}) + "\n")
                    k = min(rng.randint(low, high), len(members[t]))
                    chosen = rng.sample(members[t], k)
                    top = set(chosen[: max(1, k // 3)])  # a third graded 2
                    for d in sorted(chosen):
                        fr.write(f"{qid}\td{d}\t{2 if d in top else 1}\n")
    return out


def _range(text: str) -> tuple[int, int]:
    low, sep, high = text.partition("..")
    return (int(low), int(high or low)) if sep or high else (int(low), int(low))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="folder to write (created)")
    parser.add_argument("--docs", type=int, default=Sizes.docs)
    parser.add_argument("--queries", type=int, default=Sizes.queries, help="train queries")
    parser.add_argument("--positives", type=_range, default=Sizes.positives, help="positives per query, e.g. 30..45")
    parser.add_argument("--dev-queries", type=int, default=-1, help="default: a tenth of --queries")
    parser.add_argument("--test-queries", type=int, default=-1, help="default: a tenth of --queries")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = make_dataset(args.out, Sizes(docs=args.docs, queries=args.queries, positives=args.positives,
                                       dev_queries=args.dev_queries, test_queries=args.test_queries, seed=args.seed))
    rows = sum(1 for _ in (out / "qrels" / "train.tsv").open(encoding="utf-8")) - 1
    sys.stdout.write(f"{out}: {args.docs} documents, {args.queries} train queries, {rows} train qrels rows\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
