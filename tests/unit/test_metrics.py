"""Metrics: pytrec_eval results against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from syneg_ray import metrics


def test_perfect_and_empty_runs() -> None:
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}}
    perfect = metrics.evaluate_run(qrels, {"q1": {"a": 1.0, "x": 0.5}, "q2": {"b": 2.0}})
    assert perfect == pytest.approx({"ndcg@10": 1.0, "recall@100": 1.0, "mrr@10": 1.0, "map@100": 1.0, "ndcg@10_se": 0.0})
    missing = metrics.evaluate_run(qrels, {"q1": {"a": 1.0}})  # q2 retrieved nothing: counts as 0
    assert missing["ndcg@10"] == pytest.approx(0.5)
    assert missing["ndcg@10_se"] == pytest.approx(np.std([1.0, 0.0], ddof=1) / np.sqrt(2))  # 0.5: the two queries disagree fully
    assert math.isnan(metrics.evaluate_run({"q1": {"a": 1}}, {"q1": {"a": 1.0}})["ndcg@10_se"])  # one query: no spread to estimate


def test_hand_computed_ndcg_mrr_graded() -> None:
    qrels = {"q": {"a": 2, "b": 1, "c": 0}}
    run = {"q": {"x": 0.9, "a": 0.8, "c": 0.7, "b": 0.6}}  # relevant at ranks 2 (gain 2) and 4 (gain 1)
    # trec_eval (and so BEIR) uses the relevance grade itself as the gain, not 2**rel - 1
    dcg = 2 / math.log2(3) + 1 / math.log2(5)
    idcg = 2 / math.log2(2) + 1 / math.log2(3)
    got = metrics.evaluate_run(qrels, run)
    assert got["ndcg@10"] == pytest.approx(dcg / idcg)
    assert got["mrr@10"] == pytest.approx(0.5)
    assert got["recall@100"] == pytest.approx(1.0)
    assert got["map@100"] == pytest.approx((1 / 2 + 2 / 4) / 2)


def test_mrr_is_cut_at_ten() -> None:
    run = {"q": {f"d{i}": 100.0 - i for i in range(10)} | {"rel": 1.0}}  # relevant doc at rank 11
    assert metrics.evaluate_run({"q": {"rel": 1}}, run)["mrr@10"] == 0.0


def test_to_run_drops_padding_and_write_trec(tmp_path) -> None:
    run = metrics.to_run(["q"], ["a", "b"], np.array([[0.9, 0.0]]), np.array([[1, -1]]))
    assert run == {"q": {"b": pytest.approx(0.9)}}
    metrics.write_trec(run, tmp_path / "r.trec", "t")
    assert (tmp_path / "r.trec").read_text() == "q Q0 b 1 0.900000 t\n"


def test_read_trec_inverts_write_trec_and_names_a_bad_line(tmp_path) -> None:
    run = {"q1": {"a": 0.5, "b": 0.25}, "q2": {"c": 1.0}}
    metrics.write_trec(run, tmp_path / "r.trec", "t")
    assert metrics.read_trec(tmp_path / "r.trec") == run
    (tmp_path / "bad.trec").write_text("q1 Q0 a 1 0.5 t\nq1 Q0 b 2 0.25\n")
    with pytest.raises(ValueError, match=r"bad.trec, line 2: expected .* got 5"):
        metrics.read_trec(tmp_path / "bad.trec")


def test_ties_are_ranked_as_trec_eval_ranks_them() -> None:
    """Eleven documents with one score: trec_eval ranks them by descending id, so d00 is 11th.
    MRR@10 (cut here) and nDCG@10 (cut by trec_eval) must agree on that."""
    run = {"q": {f"d{i:02d}": 1.0 for i in range(11)}}
    got = metrics.evaluate_run({"q": {"d00": 1}}, run)
    assert got["ndcg@10"] == 0.0 and got["mrr@10"] == 0.0
    got = metrics.evaluate_run({"q": {"d10": 1}}, run)
    assert got["ndcg@10"] == 1.0 and got["mrr@10"] == 1.0
    assert list(metrics.top_k(run, 2)["q"]) == ["d10", "d09"]


def test_without_self_hits_drops_the_query_document_and_keeps_k() -> None:
    run = {"q1": {"q1": 0.99, "a": 0.8, "b": 0.7, "c": 0.6}, "q2": {"a": 0.5, "b": 0.4, "c": 0.3}}
    assert metrics.without_self_hits(run, 2) == {"q1": {"a": 0.8, "b": 0.7}, "q2": {"a": 0.5, "b": 0.4}}


def test_json_value_writes_an_undefined_metric_as_null() -> None:
    import json

    one_query = metrics.evaluate_run({"q": {"d": 1}}, {"q": {"d": 1.0}})
    assert np.isnan(one_query["ndcg@10_se"])  # a standard error over one query is undefined
    written = json.loads(json.dumps({k: metrics.json_value(v) for k, v in one_query.items()}))
    assert written["ndcg@10_se"] is None and written["ndcg@10"] == 1.0


def test_per_query_ndcg_averages_to_the_mean_and_a_paired_difference_is_known_better() -> None:
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}, "q3": {"c": 1}, "q4": {"d": 1}}
    first = {"q1": {"a": 1.0}, "q2": {"x": 1.0, "b": 0.5}, "q3": {"x": 1.0, "y": 0.9, "c": 0.5}}  # q4 retrieved nothing
    means, by_query = metrics.evaluate_run_by_query(qrels, first)
    assert by_query["q4"] == 0.0 and by_query["q2"] == pytest.approx(1 / math.log2(3))
    assert np.mean(list(by_query.values())) == pytest.approx(means["ndcg@10"])
    assert means == metrics.evaluate_run(qrels, first)
    # a second model a little better on every query: a small gain, but the same on every query
    second = {q: v + 0.05 for q, v in by_query.items()}
    mean, se, n = metrics.paired_difference(second, by_query)
    assert mean == pytest.approx(0.05) and se == pytest.approx(0.0) and n == 4
    unpaired = np.std(list(by_query.values()), ddof=1) / 2  # either score's own error is far larger than the gain
    assert unpaired > 0.2
    mean, se, n = metrics.paired_difference({"q1": 1.0, "q9": 0.0}, by_query)
    assert (mean, n) == (0.0, 1) and math.isnan(se)
