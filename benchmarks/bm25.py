"""BM25 search: syneg-ray's corpus shard (what each mining actor runs) against bm25s's own index.

    .venv/bin/python benchmarks/bm25.py --docs 100000 --queries 2000
    .venv/bin/python benchmarks/bm25.py --docs 1000000 --pairs 100000 --queries 2000

Both sides index the same generated corpus (`scale.py`'s generator and folders, so a corpus made by
one serves the other: SciFact's vocabulary, 50-300 words a document) with the same tokenizer,
stopwords and stemmer, Lucene's BM25 with BEIR's k1 and b, and return the top k of the same
queries, on one thread each (a mining actor holds one CPU).
Ours is `bm25.BM25Shard` over the whole corpus with the corpus statistics of its queries' terms
(one shard: the search each of `mine.bm25_shards` actors runs over its slice); the peer is
`bm25s.BM25.retrieve` (numpy backend). Also timed: our exact scores of each query's positive (the
false-negative guard's reference). Reported: seconds to index and to search, queries/s, the ratio,
and agreement (the same hits, the same scores within 1e-5). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from pathlib import Path

import numpy as np
from scale import generate, scifact_vocabulary

from syneg_ray import bm25


def read_folder(folder: Path, n_queries: int) -> tuple[list[str], list[str], list[int]]:
    """The corpus's texts, the first `n_queries` queries and each one's positive row."""
    with (folder / "corpus.jsonl").open(encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    with (folder / "queries.jsonl").open(encoding="utf-8") as f:
        queries = [json.loads(line)["text"] for line, _ in zip(f, range(n_queries), strict=False)]
    with (folder / "qrels" / "train.tsv").open(encoding="utf-8") as f:
        next(f)
        positives = [int(line.split("\t")[1][1:]) for line, _ in zip(f, range(n_queries), strict=False)]
    return texts, queries, positives


def ours(texts: list[str], queries: list[str], positives: list[int], k: int) -> dict:
    started = time.perf_counter()
    chunk = bm25.BM25Shard.TOKENIZE_DOCS
    shard = bm25.BM25Shard.from_chunks(texts[i : i + chunk] for i in range(0, len(texts), chunk))
    indexed = time.perf_counter()
    tokens = bm25.tokenize(queries)
    stats = shard.stats({t for q in tokens for t in q})
    scores, rows = shard.search(tokens, stats, k)
    searched = time.perf_counter()
    shard.score_rows(tokens, stats, [np.array([p]) for p in positives])  # timed only: the unit tests check its scores
    scored = time.perf_counter()
    return {"index_s": indexed - started, "search_s": searched - indexed, "positives_s": scored - searched,
            "scores": scores, "rows": rows}  # fmt: skip


def peer(texts: list[str], queries: list[str], k: int) -> dict:
    import bm25s

    stemmer = bm25._stemmer()
    started = time.perf_counter()
    retriever = bm25s.BM25(k1=0.9, b=0.4, method="lucene")
    retriever.index(bm25s.tokenize(texts, stopwords="en", stemmer=stemmer, show_progress=False), show_progress=False)
    indexed = time.perf_counter()
    tokens = bm25s.tokenize(queries, stopwords="en", stemmer=stemmer, show_progress=False)
    rows, scores = retriever.retrieve(tokens, k=k, show_progress=False, n_threads=1)
    searched = time.perf_counter()
    return {"index_s": indexed - started, "search_s": searched - indexed,
            "scores": scores.astype(np.float32), "rows": np.where(scores > 0, rows, -1)}  # fmt: skip


def agreement(a: dict, b: dict) -> dict:
    found = (a["rows"] >= 0) & (b["rows"] >= 0)
    return {
        "same_hit_count": bool(np.array_equal(a["rows"] >= 0, b["rows"] >= 0)),
        "same_rows": float((a["rows"] == b["rows"])[found].mean()),  # ties may come in another order
        "max_score_diff": float(np.abs(a["scores"][found] - b["scores"][found]).max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=2_000, help="queries searched: the first of the generated pairs'")
    parser.add_argument("--pairs", type=int, default=0, help="pairs of the generated folder (default: --queries)")
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--data-dir", default=os.environ.get("SYNEG_DATA_DIR", "../shared/datasets"),
                        help="where scifact/ is: its corpus gives the vocabulary")
    parser.add_argument("--work", default="/tmp/syneg-scale", help="generated corpora, reused across runs (scale.py's)")
    parser.add_argument("--no-peer", action="store_true", help="time ours only")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    pairs = max(args.pairs, args.queries)
    folder = generate(Path(args.work) / "data" / f"scale-{args.docs}-{pairs}", args.docs, pairs,
                      scifact_vocabulary(Path(args.data_dir) / "scifact" / "corpus.jsonl"))  # fmt: skip
    texts, queries, positives = read_folder(folder, args.queries)
    result = {"docs": len(texts), "queries": len(queries), "k": args.k, "host": platform.processor() or platform.machine()}
    mine = ours(texts, queries, positives, args.k)
    result["ours"] = {name: round(mine[name], 2) for name in ("index_s", "search_s", "positives_s")}
    result["ours"]["queries_per_s"] = round(len(queries) / mine["search_s"], 1)
    if not args.no_peer:
        theirs = peer(texts, queries, args.k)
        result["peer"] = {name: round(theirs[name], 2) for name in ("index_s", "search_s")}
        result["peer"]["queries_per_s"] = round(len(queries) / theirs["search_s"], 1)
        result["search_speedup"] = round(theirs["search_s"] / mine["search_s"], 2)
        result["agreement"] = agreement(mine, theirs)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
