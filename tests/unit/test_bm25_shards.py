"""Corpus-sharded BM25: any cut of the corpus scores as one global index, and as bm25s does. No Ray."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from syneg_ray import ann, beir, bm25

K = 60


@pytest.fixture(scope="module")
def corpus_and_queries(scifact):
    ids, texts = zip(*beir.iter_corpus(scifact / "corpus.jsonl"), strict=True)
    with (scifact / "queries.jsonl").open(encoding="utf-8") as f:
        queries = [json.loads(line)["text"] for line in f][:200]
    return list(ids), list(texts), queries


def _sharded(texts: list[str], tokens: list[list[str]], bounds: list[int], k: int):
    shards = [bm25.BM25Shard(texts[a:b]) for a, b in itertools.pairwise(bounds)]
    stats = bm25.CorpusStats.combine([s.stats({t for q in tokens for t in q}) for s in shards])
    parts = []
    for start, shard in zip(bounds, shards, strict=False):
        scores, rows = shard.search(tokens, stats, k)
        parts.append((scores, np.where(rows >= 0, rows + start, -1)))
    return ann.merge_topk(parts, k), shards, stats


def test_shards_score_as_one_global_index_and_as_bm25s(corpus_and_queries):
    ids, texts, queries = corpus_and_queries
    tokens = bm25.tokenize(queries)
    (one_scores, one_rows), _, _ = _sharded(texts, tokens, [0, len(texts)], K)
    (scores, rows), _, _ = _sharded(texts, tokens, [0, 1000, 1001, 3700, len(texts)], K)  # uneven, one of 1 document
    assert np.array_equal(rows, one_rows)
    np.testing.assert_allclose(scores, one_scores, rtol=0, atol=1e-5)
    # against bm25s's own index over the whole corpus (the one evaluation's BM25 baseline uses)
    ref_scores, ref_rows = bm25.BM25Index(ids, texts, show_progress=False).search(queries, K, show_progress=False)
    assert np.array_equal(ref_rows >= 0, rows >= 0)
    found = rows >= 0
    np.testing.assert_allclose(scores[found], ref_scores[found], rtol=0, atol=1e-5)
    assert (rows == ref_rows)[found].mean() > 0.99  # only ties may come in another order


def test_scores_of_chosen_rows_add_up_across_shards(corpus_and_queries):
    ids, texts, queries = corpus_and_queries
    queries = queries[:20]
    tokens = bm25.tokenize(queries)
    bounds = [0, 2000, len(texts)]
    _, shards, stats = _sharded(texts, tokens, bounds, 5)
    wanted = [np.array([0, 1999, 2000, len(texts) - 1, 17 * i]) for i in range(len(queries))]
    total = np.zeros((len(queries), 5), np.float32)
    for start, stop, shard in zip(bounds, bounds[1:], shards, strict=False):
        local = [np.clip(w - start, 0, stop - start - 1) for w in wanted]
        inside = np.array([(w >= start) & (w < stop) for w in wanted])
        total += np.where(inside, np.array(shard.score_rows(tokens, stats, local)), 0)
    index = bm25.BM25Index(ids, texts, show_progress=False)
    np.testing.assert_allclose(total, np.array(bm25.score_documents(index, queries, wanted)), rtol=0, atol=1e-5)
    assert (total > 0).any()


def test_merge_breaks_ties_by_row_whatever_the_cut():
    a = (np.array([[3.0, 1.0, -np.inf]], np.float32), np.array([[7, 2, -1]]))
    b = (np.array([[3.0, 2.0]], np.float32), np.array([[4, 9]]))
    scores, rows = ann.merge_topk([a, b], 4)
    assert rows.tolist() == [[4, 7, 9, 2]] and scores.tolist() == [[3.0, 3.0, 2.0, 1.0]]
    scores, rows = ann.merge_topk([a], 4)  # fewer hits than k: padded
    assert rows.tolist() == [[7, 2, -1, -1]] and np.isneginf(scores[0, 2:]).all()


def test_a_shard_keeps_the_lowest_rows_of_a_tie_at_its_kth_score():
    """Of documents tied at the k-th score, the lowest rows are kept, so the cut cannot change them."""
    texts = ["apple pie"] * 1000
    for row in (17, 500, 990):
        texts[row] = "apple apple"  # the three best; the other 997 tie
    tokens = bm25.tokenize(["apple"])
    (scores, rows), _, _ = _sharded(texts, tokens, [0, len(texts)], 10)
    assert rows.tolist() == [[17, 500, 990, 0, 1, 2, 3, 4, 5, 6]]
    assert len(set(scores[0, :3].tolist())) == 1 and len(set(scores[0, 3:].tolist())) == 1 and scores[0, 0] > scores[0, 3]
    for bounds in ([0, 333, 1000], [0, 5, 600, 1000]):
        assert _sharded(texts, tokens, bounds, 10)[0][1].tolist() == rows.tolist()


def test_a_term_unknown_to_a_shard_still_counts_its_corpus_wide_frequency():
    texts = ["apple pie", "apple tart", "banana bread", "cherry cake"]
    tokens = bm25.tokenize(["apple cake"])
    (scores, rows), _, _ = _sharded(texts, tokens, [0, 2, 4], 4)  # shard 2 has no "apple", shard 1 no "cake"
    (one_scores, one_rows), _, _ = _sharded(texts, tokens, [0, 4], 4)
    assert rows.tolist() == one_rows.tolist() and np.allclose(scores, one_scores)
    assert rows[0, 0] == 3  # "cake" occurs once in the corpus: rarer, so a higher idf than "apple"


def test_a_shard_indexed_chunk_by_chunk_scores_as_one_indexed_whole(corpus_and_queries):
    """The actors index their rows one Parquet row group at a time; the chunks' vocabularies merge."""
    _, texts, queries = corpus_and_queries
    texts, tokens = texts[:1500], bm25.tokenize(queries[:40])
    whole = bm25.BM25Shard(texts)
    chunked = bm25.BM25Shard.from_chunks(texts[i : i + 333] for i in range(0, len(texts), 333))
    terms = {t for q in tokens for t in q}
    assert chunked.stats(terms) == whole.stats(terms) and len(chunked) == len(whole) == 1500
    stats = whole.stats(terms)
    (scores, rows), (ref_scores, ref_rows) = chunked.search(tokens, stats, 20), whole.search(tokens, stats, 20)
    assert np.array_equal(rows, ref_rows) and np.array_equal(scores, ref_scores) and (rows >= 0).any()


def test_a_query_without_matches_and_a_k_beyond_the_shard_are_padded():
    shard = bm25.BM25Shard(["apple pie", "apple tart", "banana bread"])
    tokens = bm25.tokenize(["apple", "durian", "tart"])
    stats = shard.stats({t for q in tokens for t in q})
    scores, rows = shard.search(tokens, stats, 5)  # k above the shard's 3 documents
    assert rows.tolist() == [[0, 1, -1, -1, -1], [-1] * 5, [1, -1, -1, -1, -1]]  # the two apples tie: by row
    assert scores[0, 0] == scores[0, 1] > 0 and np.isneginf(scores[1]).all() and np.isneginf(scores[0, 2:]).all()
    assert [s.tolist() for s in shard.score_rows(tokens, stats, [np.array([2, 0]), np.array([0]), np.array([1, 2])])] == [
        [0.0, scores[0, 0]], [0.0], [scores[2, 0], 0.0]]
