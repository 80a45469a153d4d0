"""BEIR metrics over plain dicts: run[qid][docid] = score, qrels[qid][docid] = graded relevance.

pytrec_eval (the C trec_eval) computes the numbers, as BEIR does, so figures compare with the
literature. MRR@10 is trec_eval's `recip_rank` on each query's top 10.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

Run = dict[str, dict[str, float]]

METRICS = ("ndcg@10", "recall@100", "mrr@10", "map@100")


def ranked(docs: Mapping[str, float]) -> list[tuple[str, float]]:
    """(doc id, score) by descending score, ties by descending doc id: trec_eval's order, so a cut at
    rank k here (MRR@10) keeps the documents trec_eval ranks within k for nDCG@10."""
    by_id = sorted(docs.items(), key=lambda kv: kv[0], reverse=True)
    return sorted(by_id, key=lambda kv: -kv[1])  # stable: equal scores keep the descending ids


def top_k(run: Mapping[str, Mapping[str, float]], k: int) -> Run:
    """Each query's k highest-scored documents, in trec_eval's order (`ranked`)."""
    return {q: dict(ranked(docs)[:k]) for q, docs in run.items()}


def without_self_hits(run: Mapping[str, Mapping[str, float]], k: int) -> Run:
    """Drops each query's hit on a document with the query's own id, then keeps the top k.

    BEIR's evaluation does this by default (`ignore_identical_ids`): in ArguAna and Quora the query
    is itself a corpus document and would rank first. Retrieve k + 1 so every query keeps k hits.
    """
    return top_k({q: {d: s for d, s in docs.items() if d != q} for q, docs in run.items()}, k)


def evaluate_run(qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Mean nDCG@10, Recall@100, MRR@10 and MAP@100 over the queries of `qrels`, and the standard
    error of the nDCG@10 mean (`ndcg@10_se`: the per-query values' sample deviation over sqrt(n); nan
    for one query), which says how far apart two models must score on these queries to be told apart.

    A query of `qrels` missing from the run counts as zero (trec_eval's -c). BEIR averages over the
    queries it retrieved for, which is every query when each gets a ranking, as here.

    Args:
        qrels: judgements; documents with relevance <= 0 are not relevant.
        run: retrieved documents with scores (any k; higher is better).

    Returns:
        {"ndcg@10": ..., "recall@100": ..., "mrr@10": ..., "map@100": ..., "ndcg@10_se": ...}

    Raises:
        ValueError: `qrels` holds no query (a mean over none is undefined); callers that read a
            qrels file check this first and name the file.
    """
    return evaluate_run_by_query(qrels, run)[0]


def evaluate_run_by_query(
    qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]]
) -> tuple[dict[str, float], dict[str, float]]:
    """`evaluate_run`'s means, and each judged query's nDCG@10 that they average (0 for a query
    missing from the run): two models' per-query values go to `paired_difference`."""
    import pytrec_eval

    if not qrels:
        raise ValueError("evaluate_run needs qrels with at least one judged query")
    qrels = {q: {d: int(r) for d, r in docs.items()} for q, docs in qrels.items()}
    full = {q: {d: float(s) for d, s in run.get(q, {}).items()} or {"__none__": 0.0} for q in qrels}
    per_query = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100", "map_cut.100"}).evaluate(full)
    mrr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top_k(full, 10))
    n = len(qrels)
    by_query = {q: float(per_query[q]["ndcg_cut_10"]) for q in qrels}
    ndcg = np.array(list(by_query.values()))
    means = {
        "ndcg@10": float(ndcg.sum()) / n,
        "recall@100": sum(m["recall_100"] for m in per_query.values()) / n,
        "mrr@10": sum(m["recip_rank"] for m in mrr.values()) / n,
        "map@100": sum(m["map_cut_100"] for m in per_query.values()) / n,
        "ndcg@10_se": float(ndcg.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan"),
    }
    return means, by_query


def paired_difference(a: Mapping[str, float], b: Mapping[str, float]) -> tuple[float, float, int]:
    """Mean of a - b over the queries both score, its standard error, and how many queries.

    Two models scored on the same queries differ less from query to query than either score does,
    so the error of their difference is what says whether one beats the other: often several times
    smaller than either score's own standard error. The error is nan for fewer than two queries.
    """
    common = sorted(set(a) & set(b))
    diff = np.array([a[q] - b[q] for q in common])
    if len(diff) < 2:
        return (float(diff.mean()) if len(diff) else float("nan")), float("nan"), len(diff)
    return float(diff.mean()), float(diff.std(ddof=1) / np.sqrt(len(diff))), len(diff)


def json_value(value: float) -> float | None:
    """`value` as JSON holds it: JSON has no NaN, so an undefined metric (the standard error over one
    query) is written as null."""
    return None if np.isnan(value) else value


def to_run(query_ids: list[str], doc_ids: Sequence[str] | Mapping[int, str], scores: np.ndarray, indices: np.ndarray) -> Run:
    """Turns top-k (scores, indices) arrays of shape (queries, k) into a run dict; index -1 means empty.

    `doc_ids` names each index: every document's id, or (a large corpus) only the retrieved ones'.
    """
    run: Run = {}
    for row, query_id in enumerate(query_ids):
        run[query_id] = {doc_ids[j]: float(s) for s, j in zip(scores[row], indices[row], strict=True) if j >= 0}
    return run


def write_trec(run: Run, path, tag: str) -> None:
    """Writes a TREC run file: `qid Q0 docid rank score tag`, ranks from 1."""
    with open(path, "w", encoding="utf-8") as out:
        for query_id, docs in run.items():
            out.writelines(f"{query_id} Q0 {doc_id} {rank} {score:.6f} {tag}\n"
                           for rank, (doc_id, score) in enumerate(ranked(docs), start=1))


def read_trec(path) -> Run:
    """Reads a TREC run file back into a run dict: the inverse of `write_trec`."""
    run: Run = {}
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            fields = line.split()
            if len(fields) != 6:
                raise ValueError(f"{path}, line {number}: expected 'qid Q0 docid rank score tag' "
                                 f"(6 fields), got {len(fields)}; rewrite the run with `write_trec`")
            query_id, _, doc_id, _, score, _ = fields
            run.setdefault(query_id, {})[doc_id] = float(score)
    return run
