"""mining.py: positive exclusion, rank window, false-negative guard, sampling, combination. No Ray."""

from __future__ import annotations

import numpy as np
import pytest

from syneg_ray import mining
from syneg_ray.config import GuardReference, MineConfig, Sampling

RNG = np.random.default_rng(0)


def _cand(indices, scores, pos, source="dense"):
    return mining.Candidates(
        source, np.asarray(scores, np.float32), np.asarray(indices, np.int64), np.asarray(pos, np.float32)
    )


def _cfg(**kw):
    base = {"relative_margin": 0.0, "absolute_margin": 0.0, "num_negatives": 2, "range_max": 10, "sources": ("dense",)}
    return MineConfig(**{**base, **kw})


def test_all_positives_excluded_and_do_not_use_window_slots():
    cand = _cand([[5, 1, 7, 2, 9]], [[0.9, 0.8, 0.7, 0.6, 0.5]], [0.95])
    out, stats = mining.select_negatives([cand], [np.array([5, 2])], _cfg(range_max=2), RNG)
    assert out[0].indices == [1, 7]  # 5 and 2 are positives; the window of 2 counts non-positives only
    assert stats.short == 0 and stats.in_window == 2


def test_rank_window_skips_leading_candidates():
    cand = _cand([[1, 2, 3, 4, 5]], [[0.5, 0.4, 0.3, 0.2, 0.1]], [0.9])
    out, _ = mining.select_negatives([cand], [np.array([0])], _cfg(range_min=2, range_max=4), RNG)
    assert out[0].indices == [3, 4]


def test_relative_and_absolute_margin_and_max_score():
    cand = _cand([[1, 2, 3, 4]], [[0.85, 0.79, 0.7, 0.6]], [0.8])
    out, stats = mining.select_negatives([cand], [np.array([0])], _cfg(relative_margin=0.05), RNG)
    assert out[0].indices == [3, 4]  # threshold 0.8 - 0.04 = 0.76
    assert stats.skipped_margin == 2
    out, _ = mining.select_negatives([cand], [np.array([0])], _cfg(absolute_margin=0.15), RNG)
    assert out[0].indices == [4]  # only 0.6 <= 0.8 - 0.15
    out, stats = mining.select_negatives([cand], [np.array([0])], _cfg(max_score=0.65, absolute_margin=0.0), RNG)
    assert out[0].indices == [4] and stats.skipped_max_score == 2  # 0.79 and 0.7 pass the margin, fail max_score


def test_relative_margin_is_sign_safe_for_negative_positive_scores():
    cand = _cand([[1, 2]], [[-0.5, -0.6]], [-0.5])
    out, _ = mining.select_negatives([cand], [np.array([0])], _cfg(relative_margin=0.1), RNG)
    assert out[0].indices == [2]  # threshold -0.5 - 0.05 = -0.55


def test_max_score_never_applies_to_bm25():
    cand = _cand([[1, 2]], [[12.0, 11.0]], [20.0], source="bm25")
    out, _ = mining.select_negatives([cand], [np.array([0])], _cfg(max_score=0.9, sources=("bm25",)), RNG)
    assert out[0].indices == [1, 2]


def test_short_queries_are_counted_not_padded():
    cand = _cand([[3, 1, -1, -1]], [[0.5, 0.95, -np.inf, -np.inf]], [0.9])
    out, stats = mining.select_negatives([cand], [np.array([3])], _cfg(num_negatives=3), RNG)
    assert out[0].indices == [] and stats.short == 1 and stats.empty == 1 and stats.negatives == 0


def test_sources_round_robin_dedup_and_cross_source_ban():
    dense = _cand([[1, 2, 3, 4]], [[0.5, 0.4, 0.3, 0.2]], [0.6])
    bm25 = _cand([[9, 1, 5, 6]], [[30.0, 9.0, 8.0, 7.0]], [10.0], source="bm25")  # 9 outscores the positive: banned
    cfg = _cfg(num_negatives=4, sources=("dense", "bm25"), relative_margin=0.05)
    out, stats = mining.select_negatives([dense, bm25], [np.array([0])], cfg, RNG)
    assert out[0].indices == [1, 5, 2, 6]  # 1 found by both is taken once; 9 never
    assert out[0].sources == ["dense", "bm25", "dense", "bm25"]
    assert stats.per_source == {"dense": 2, "bm25": 2}
    dense_ban = _cand([[5, 2]], [[0.7, 0.4]], [0.6])  # dense finds 5 too close to the positive
    out, _ = mining.select_negatives([dense_ban, bm25], [np.array([0])], cfg, RNG)
    assert 5 not in out[0].indices


def test_lexical_hits_with_dense_scores_are_judged_on_the_dense_scale():
    # The positive shares no term with its query: BM25 scores it 0, and its own guard rejects every hit.
    hits, bm25_scores = [[1, 2, 3, 4]], [[12.0, 9.0, 8.0, 7.0]]
    cfg = _cfg(num_negatives=4, sources=("bm25",), relative_margin=0.05)
    out, stats = mining.select_negatives([_cand(hits, bm25_scores, [0.0], "bm25")], [np.array([0])], cfg, RNG)
    assert out[0].indices == [] and stats.skipped_margin == 4
    # The encoder scores the positive 0.8 and the hits 0.9, 0.5, 0.3, nan (a pad): only 1 is too close.
    judged = mining.Candidates("bm25", np.float32(bm25_scores), np.int64(hits), np.float32([0.8]),
                               dense_scores=np.float32([[0.9, 0.5, 0.3, np.nan]]))  # fmt: skip
    out, stats = mining.select_negatives([judged], [np.array([0])], cfg, RNG)
    assert out[0].indices == [2, 3] and stats.skipped_margin == 2  # 4's unknown score passes nothing
    assert out[0].scores == [9.0, 8.0]  # the negatives keep their BM25 scores; only the guard reads the dense ones
    # on the dense scale max_score applies to lexical hits as to dense ones
    dense = _cand([[1, 3]], [[0.6, 0.3]], [0.8])
    out, stats = mining.select_negatives([dense, judged], [np.array([0])], _cfg(
        num_negatives=4, sources=("dense", "bm25"), relative_margin=0.05, max_score=0.4), RNG)  # fmt: skip
    assert out[0].indices == [3] and stats.skipped_max_score == 2  # dense 1 (0.6) and bm25 2 (0.5)


def test_dense_scores_must_match_the_hits():
    cand = mining.Candidates("bm25", np.float32([[1.0, 0.5]]), np.int64([[1, 2]]), np.float32([2.0]),
                             dense_scores=np.float32([[0.1]]))  # fmt: skip
    with pytest.raises(ValueError, match=r"dense scores \(1, 1\)"):
        mining.select_negatives([cand], [np.array([0])], _cfg(sources=("bm25",)), RNG)


def test_text_groups_exclude_duplicates_of_positives_and_dedup_negatives():
    groups = mining.text_groups(["pos", "a", "POS ", "b", "a"])
    assert groups.tolist() == [0, 1, 0, 2, 1]
    cand = _cand([[2, 1, 4, 3]], [[0.5, 0.4, 0.3, 0.2]], [0.9])
    out, _ = mining.select_negatives([cand], [np.array([0])], _cfg(num_negatives=3), RNG, groups=groups)
    assert out[0].indices == [1, 3]  # 2 duplicates the positive, 4 duplicates 1


def test_random_sampling_is_seeded_and_within_survivors():
    cand = _cand([list(range(1, 11))], [np.linspace(0.5, 0.1, 10)], [0.9])
    cfg = _cfg(num_negatives=3, sampling=Sampling.RANDOM)
    a, _ = mining.select_negatives([cand], [np.array([0])], cfg, np.random.default_rng(7))
    b, _ = mining.select_negatives([cand], [np.array([0])], cfg, np.random.default_rng(7))
    assert a[0].indices == b[0].indices and len(set(a[0].indices)) == 3 and set(a[0].indices) <= set(range(1, 11))


def test_vectorised_mask_matches_naive_loop():
    rng = np.random.default_rng(1)
    indices = rng.integers(-1, 50, size=(40, 12))
    positives = [rng.choice(50, size=rng.integers(1, 5), replace=False) for _ in range(40)]
    mask = mining.positive_mask(indices, positives)
    naive = np.array([[d >= 0 and d in set(p) for d in row] for row, p in zip(indices, positives, strict=True)])
    assert naive.any() and not naive.all() and (indices == -1).any()  # positives, others and padding all occur
    np.testing.assert_array_equal(mask, naive)  # shape included: no broadcasting


def test_mismatched_sources_raise_with_shapes():
    cand = _cand([[1, 2]], [[0.5, 0.4]], [0.9])
    with pytest.raises(ValueError, match="do not match 2 rows"):
        mining.select_negatives([cand], [np.array([0]), np.array([1])], _cfg(), RNG)


def test_stats_merge_and_share():
    a, b = (
        mining.MineStats(rows=1, in_window=10, skipped_margin=2),
        mining.MineStats(rows=2, in_window=10, skipped_margin=3),
    )
    a.merge(b)
    assert a.rows == 3 and a.skipped_share == pytest.approx(0.25)


def test_text_groups_streamed_from_parquet_match_the_in_memory_ones(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from syneg_ray.stages.mine import text_groups

    texts = ["pos", "a", "POS ", "b", "a", " b", "c"]
    path = tmp_path / "corpus.parquet"
    pq.write_table(pa.table({"doc_id": [str(i) for i in range(7)], "text": texts}), path, row_group_size=3)
    assert text_groups(path).tolist() == mining.text_groups(texts).tolist() == [0, 1, 0, 2, 1, 2, 3]
    cached = path.with_name("corpus.digests-v1.npy")
    assert cached.is_file()  # the digests are cached beside the corpus, and read back the next time
    np.save(cached, np.array([5, 5, 6, 6, 7, 7, 8], dtype=np.int64))
    assert text_groups(path).tolist() == [0, 0, 1, 1, 2, 2, 3]


def test_pair_reference_is_the_pairs_own_positive_and_query_min_the_lowest():
    positives = [np.array([3, 8, 11]), np.array([4])]
    scores = [np.array([0.9, 0.5, 0.7], np.float32), np.array([0.6], np.float32)]
    pair_query, pair_positive = np.array([0, 0, 1, 0]), np.array([8, 11, 4, 99])  # 99: not a scored positive
    pair = mining.pair_references(scores, positives, pair_query, pair_positive, GuardReference.PAIR)
    np.testing.assert_allclose(pair, [0.5, 0.7, 0.6, 0.5])  # an unknown positive falls back to the lowest
    low = mining.pair_references(scores, positives, pair_query, pair_positive, GuardReference.QUERY_MIN)
    np.testing.assert_allclose(low, [0.5, 0.5, 0.6, 0.5])
    empty = mining.pair_references([np.zeros(0, np.float32)], [np.zeros(0, np.int64)], np.array([0]), np.array([-1]), GuardReference.PAIR)
    assert np.isnan(empty).all()


def test_many_positive_query_keeps_negatives_per_pair_where_its_lowest_positive_rejects_them():
    # One query with three positives of very different scores (a loosely relevant one at 0.2).
    # Judged against the lowest, every candidate above 0.2 is suspect; judged per pair, the pair
    # of the 0.9 positive keeps the candidates below it, and the excluded positives stay excluded.
    query = _cand([[10, 3, 11, 12, 13]], [[0.85, 0.8, 0.6, 0.5, 0.1]], [0.2])
    positives = [np.array([1, 2, 3])]
    scores = [np.array([0.9, 0.45, 0.2], np.float32)]
    pair_query, pair_positive = np.array([0, 0, 0]), np.array([1, 2, 3])
    cfg = _cfg(num_negatives=3, relative_margin=0.05)
    kept = {}
    for reference in GuardReference:
        ref = mining.pair_references(scores, positives, pair_query, pair_positive, reference)
        out, _ = mining.select_negatives([query.take(pair_query, ref)], positives * 3, cfg, RNG)
        kept[reference] = [o.indices for o in out]
    assert kept[GuardReference.PAIR] == [[10, 11, 12], [13], [13]]  # 0.45's threshold is 0.4275: 0.5 fails it
    assert kept[GuardReference.QUERY_MIN] == [[13], [13], [13]]


def _pair_references_loop(positive_scores, positives, pair_query, pair_positive, reference):
    """The per-pair definition the vectorised `pair_references` must match."""
    out = np.full(len(pair_query), np.nan, dtype=np.float32)
    for i, (q, row) in enumerate(zip(pair_query.tolist(), pair_positive.tolist(), strict=True)):
        scores = positive_scores[q]
        if not len(scores):
            continue
        out[i] = scores.min()
        if reference is GuardReference.PAIR:
            at = int(np.searchsorted(positives[q], row))
            if at < len(scores) and positives[q][at] == row:
                out[i] = scores[at]
    return out


@pytest.mark.parametrize("seed", range(5))
def test_vectorised_pair_references_match_the_per_pair_loop(seed):
    rng = np.random.default_rng(seed)
    n_queries, n_docs = 60, 80
    positives = [np.sort(rng.choice(n_docs, size=rng.integers(0, 6), replace=False)) for _ in range(n_queries)]
    scores = [rng.normal(size=len(p)).astype(np.float32) for p in positives]
    scores[3] = np.full(len(positives[3]), np.nan, np.float32)  # a source that leaves the positives unscored
    pair_query = rng.integers(0, n_queries, size=400)  # queries repeat and come in any order
    own = np.array([rng.choice(positives[q]) if len(positives[q]) else -1 for q in pair_query.tolist()], dtype=np.int64)
    other = rng.integers(-1, n_docs, size=400)  # some pairs' positive is not (or no longer) among the query's
    pair_positive = np.where(rng.random(400) < 0.8, own, other)
    assert (pair_positive == -1).any() and any(not len(p) for p in positives)
    for reference in GuardReference:
        got = mining.pair_references(scores, positives, pair_query, pair_positive, reference)
        want = _pair_references_loop(scores, positives, pair_query, pair_positive, reference)
        assert got.dtype == np.float32 and got.shape == want.shape
        np.testing.assert_array_equal(got, want)  # nan where nan, equal elsewhere
    pair_scores = mining.pair_positive_scores(scores, positives, pair_query, pair_positive)
    want = [float(scores[q][list(positives[q]).index(d)]) if d in positives[q] else np.nan
            for q, d in zip(pair_query.tolist(), pair_positive.tolist(), strict=True)]  # fmt: skip
    np.testing.assert_array_equal(pair_scores, np.float32(want))
    empty = mining.pair_references(scores, positives, np.zeros(0, np.int64), np.zeros(0, np.int64), GuardReference.PAIR)
    assert empty.shape == (0,)


def test_pair_references_reject_scores_not_aligned_with_the_positives():
    with pytest.raises(ValueError, match="query 1: 1 positive scores for 2 positives"):
        mining.pair_references([np.float32([0.5]), np.float32([0.4])], [np.array([2]), np.array([3, 5])],
                               np.array([0, 1]), np.array([2, 3]), GuardReference.PAIR)  # fmt: skip
