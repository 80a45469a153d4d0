"""Pure numpy selection of hard negatives from ranked retrieval hits. No Ray, no faiss.

For each query and each source (dense, bm25, ...) the candidates go through, in order:

1. positive exclusion: every positive of the query is dropped (and, with text groups, every
   document whose text equals a positive's: duplicated documents are the commonest false negative);
2. rank window: ranks are counted over the remaining candidates, so a positive at rank 0 does
   not eat a slot; candidates ranked in [range_min, range_max) stay;
3. false-negative guard: keep a candidate only if score <= pos - |pos| * relative_margin and
   score <= pos - absolute_margin (and, for dense scores, score <= max_score). `pos` is the
   guard's reference (`pair_references`): by default the pair's own positive score, as
   sentence-transformers' `mine_hard_negatives` judges each anchor-positive pair; or the query's
   lowest positive score, the strictest choice, which suits one-positive queries but rejects
   nearly every candidate of a query with dozens of loosely relevant positives. A lexical source
   may carry its hits' dense scores (`Candidates.dense_scores`); the guard then judges them by
   those, on the same scale as dense hits, and not by BM25, whose scale changes from query to
   query and which scores 0 a positive that shares no term with its query (rejecting every
   candidate).

Selection runs per row, and a row is one (query, positive) pair: every positive of the query is
still excluded, whichever pair the row is.

The sources are then combined round-robin (first source first), de-duplicated by document (or
text group), and a document rejected by the guard of one source is banned from all of them.
A pair left with fewer than `num_negatives` is counted as short, never padded.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from syneg_ray.config import GuardReference, MineConfig, Sampling

DENSE = "dense"


@dataclass(frozen=True)
class Candidates:
    """Ranked hits of one source, one row per query (or per pair, after `take`)."""

    source: str  # "dense" | "bm25" | "pyserini"
    scores: np.ndarray  # (n_rows, k) float32, descending per row
    indices: np.ndarray  # (n_rows, k) int64 corpus rows; -1 pads short rows
    positive_scores: np.ndarray  # (n_rows,) the guard's reference per row, on the guard's scale (`pair_references`)
    dense_scores: np.ndarray | None = None  # (n_rows, k) a lexical source's hits scored by the dense model, for the guard

    @property
    def judged_dense(self) -> bool:
        """Whether the guard judges these hits on the dense scale (and so applies max_score)."""
        return self.source == DENSE or self.dense_scores is not None

    def rows(self, rows: slice) -> Candidates:
        """The candidates of a block of rows."""
        dense = None if self.dense_scores is None else self.dense_scores[rows]
        return Candidates(self.source, self.scores[rows], self.indices[rows], self.positive_scores[rows], dense)

    def take(self, query_rows: np.ndarray, reference: np.ndarray) -> Candidates:
        """One row per pair: the hits of each pair's query (`query_rows` index this object's rows)
        with the pair's own guard reference."""
        dense = None if self.dense_scores is None else self.dense_scores[query_rows]
        return Candidates(self.source, self.scores[query_rows], self.indices[query_rows], reference, dense)


def pair_references(
    positive_scores: Sequence[np.ndarray], positives: Sequence[np.ndarray], pair_query: np.ndarray,
    pair_positive: np.ndarray, reference: GuardReference,
) -> np.ndarray:  # fmt: skip
    """The guard's reference of each pair, on one source's scale.

    Args:
        positive_scores: per query, the score of each of its positives, aligned with `positives`.
        positives: per query, the sorted corpus rows of all its positives.
        pair_query: (n_pairs,) the query row of each pair.
        pair_positive: (n_pairs,) the corpus row of each pair's positive (-1 when not in the corpus).
        reference: PAIR takes the pair's own positive's score; QUERY_MIN the query's lowest.

    Returns:
        (n_pairs,) float32; nan for a query without positives (nan passes no guard). A pair whose
        positive is not among its query's scored positives falls back to the query's lowest.

    Raises:
        ValueError: a query's scores and positives differ in length.
    """
    own, found, lowest = _pair_lookup(positive_scores, positives, pair_query, pair_positive)
    return np.where(found, own, lowest) if reference is GuardReference.PAIR else lowest


def pair_positive_scores(
    positive_scores: Sequence[np.ndarray], positives: Sequence[np.ndarray], pair_query: np.ndarray,
    pair_positive: np.ndarray,
) -> np.ndarray:  # fmt: skip
    """(n_pairs,) float32: the score of each pair's own positive (arguments as `pair_references`);
    nan where it is not among its query's positives."""
    return _pair_lookup(positive_scores, positives, pair_query, pair_positive)[0]


def _pair_lookup(
    positive_scores: Sequence[np.ndarray], positives: Sequence[np.ndarray], pair_query: np.ndarray,
    pair_positive: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """(own score, found, query's lowest score) per pair, each (n_pairs,); float32 scores, nan
    where there is none.

    The positives of the pairs' distinct queries are concatenated once, so each query's are
    gathered once however many pairs it has, and every pair is found by one searchsorted over
    (query, row) keys: each query's rows are sorted, so the keys are sorted.
    """
    queries, inverse = np.unique(np.asarray(pair_query, dtype=np.int64), return_inverse=True)
    scores = [np.asarray(positive_scores[q]) for q in queries.tolist()]
    rows = [np.asarray(positives[q], dtype=np.int64) for q in queries.tolist()]
    lengths = np.array([len(s) for s in scores], dtype=np.int64)
    mismatched = np.flatnonzero(lengths != np.array([len(r) for r in rows], dtype=np.int64))
    if len(mismatched):
        q = int(queries[mismatched[0]])
        raise ValueError(f"query {q}: {len(positive_scores[q])} positive scores for {len(positives[q])} positives")
    flat_scores = np.concatenate(scores) if scores else np.zeros(0, np.float32)
    flat_rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    starts = np.cumsum(lengths) - lengths
    lowest = np.full(len(queries), np.nan, dtype=np.float32)
    filled = lengths > 0
    if filled.any():  # reduceat over the non-empty queries only: an empty one would take its neighbour's first
        lowest[filled] = np.minimum.reduceat(flat_scores, starts[filled])
    pair_positive = np.asarray(pair_positive, dtype=np.int64)
    span = int(max(flat_rows.max(initial=-1), pair_positive.max(initial=-1))) + 2  # rows shifted by 1 so -1 fits
    keys = np.repeat(np.arange(len(queries), dtype=np.int64), lengths) * span + flat_rows + 1
    wanted = inverse.reshape(-1).astype(np.int64) * span + pair_positive + 1
    at = np.minimum(np.searchsorted(keys, wanted), max(len(keys) - 1, 0))
    found = keys[at] == wanted if len(keys) else np.zeros(len(wanted), dtype=bool)
    own = np.full(len(wanted), np.nan, dtype=np.float32)
    own[found] = flat_scores[at[found]]
    return own, found, lowest[inverse.reshape(-1)]


@dataclass
class MineStats:
    """Counters summed over rows; `merge` adds another block's counters."""

    rows: int = 0  # rows judged: (query, positive) pairs, or queries when called per query
    negatives: int = 0  # negatives selected, over all rows
    short: int = 0  # rows with fewer than num_negatives
    empty: int = 0  # rows with none at all
    in_window: int = 0  # non-positive candidates inside the rank window (all sources)
    skipped_margin: int = 0  # of those, dropped by the relative / absolute margin
    skipped_max_score: int = 0  # of those, dropped by max_score only
    per_source: dict[str, int] = field(default_factory=dict)  # negatives selected per source

    def merge(self, other: MineStats) -> None:
        """Adds `other` into this object."""
        for name in ("rows", "negatives", "short", "empty", "in_window", "skipped_margin", "skipped_max_score"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for source, count in other.per_source.items():
            self.per_source[source] = self.per_source.get(source, 0) + count

    @property
    def skipped_share(self) -> float:
        """Share of in-window candidates dropped by the false-negative guard."""
        return (self.skipped_margin + self.skipped_max_score) / max(self.in_window, 1)


@dataclass(frozen=True)
class Selected:
    """The negatives of one row (a pair, or a query), best first within each source."""

    indices: list[int]
    scores: list[float]
    sources: list[str]


def positive_mask(indices: np.ndarray, positives: Sequence[np.ndarray], groups: np.ndarray | None = None) -> np.ndarray:
    """True where a candidate is a positive of its row's query (or shares a positive's text group).

    Args:
        indices: (n_queries, k) corpus rows, -1 for pads.
        positives: per query, the corpus rows of all its positives.
        groups: optional (n_docs,) text-group id per document; equal ids mean identical text.

    Returns:
        (n_queries, k) bool.
    """
    n = indices.shape[0]
    pos_rows = np.repeat(np.arange(n, dtype=np.int64), [len(p) for p in positives])
    pos_docs = np.concatenate([np.asarray(p, dtype=np.int64) for p in positives]) if n else np.zeros(0, np.int64)
    if groups is not None:  # compare text groups instead of rows; pads stay -1
        cand, pos = np.where(indices >= 0, groups[np.maximum(indices, 0)], -1), groups[pos_docs]
    else:
        cand, pos = indices, pos_docs
    span = int(max(cand.max(initial=0), pos.max(initial=0))) + 2
    # One vectorised isin over (query, doc) keys instead of a Python loop over rows.
    cand_keys = np.arange(n, dtype=np.int64)[:, None] * span + cand + 1  # (n, k)
    pos_keys = pos_rows * span + pos + 1
    return np.isin(cand_keys, pos_keys) & (indices >= 0)


def window_mask(valid: np.ndarray, range_min: int, range_max: int) -> np.ndarray:
    """True for valid candidates whose rank among the valid ones of their row is in [range_min, range_max)."""
    rank = np.cumsum(valid, axis=1) - 1  # (n, k): rank among valid candidates
    return valid & (rank >= range_min) & (rank < range_max)


def guard_masks(
    scores: np.ndarray, positive_scores: np.ndarray, cfg: MineConfig, dense: bool
) -> tuple[np.ndarray, np.ndarray]:
    """(passes margin, passes max_score) masks of shape (n_queries, k); an unknown (nan) score passes nothing.

    `dense` says the scores are an encoder's (bounded), the only scale max_score applies to.
    """
    pos = positive_scores[:, None].astype(np.float64)  # (n, 1)
    margin_ok = (scores <= pos - np.abs(pos) * cfg.relative_margin) & (scores <= pos - cfg.absolute_margin)
    max_ok = scores <= cfg.max_score if (cfg.max_score > 0 and dense) else np.ones_like(margin_ok)
    return margin_ok, max_ok


def filter_source(
    cand: Candidates, positives: Sequence[np.ndarray], cfg: MineConfig, groups: np.ndarray | None, stats: MineStats
) -> tuple[np.ndarray, np.ndarray]:
    """Applies exclusion, window and guard to one source.

    Returns:
        (keep, rejected): (n_queries, k) bool; `rejected` marks in-window candidates the guard dropped.
    """
    valid = (cand.indices >= 0) & ~positive_mask(cand.indices, positives, groups)
    in_window = window_mask(valid, cfg.range_min, cfg.range_max)
    judged = cand.scores if cand.dense_scores is None else cand.dense_scores
    margin_ok, max_ok = guard_masks(judged, cand.positive_scores, cfg, cand.judged_dense)
    keep = in_window & margin_ok & max_ok
    stats.in_window += int(in_window.sum())
    stats.skipped_margin += int((in_window & ~margin_ok).sum())
    stats.skipped_max_score += int((in_window & margin_ok & ~max_ok).sum())
    return keep, in_window & ~keep


def _order(keep_row: np.ndarray, sampling: Sampling, rng: np.random.Generator) -> np.ndarray:
    """Column positions of the kept candidates: rank order for top, a seeded shuffle for random."""
    cols = np.flatnonzero(keep_row)
    return rng.permutation(cols) if sampling is Sampling.RANDOM else cols


def _combine_row(
    q: int, sources: Sequence[Candidates], keeps: Sequence[np.ndarray], banned: set[int], cfg: MineConfig,
    groups: np.ndarray | None, rng: np.random.Generator,
) -> Selected:  # fmt: skip
    """Round-robin over the sources' ordered survivors, skipping banned and already taken documents (or text groups)."""
    orders = [list(_order(keep[q], cfg.sampling, rng)) for keep in keeps]
    taken: set[int] = set()
    picked: list[tuple[int, float, str]] = []
    cursors = [0] * len(sources)
    while len(picked) < cfg.num_negatives and any(c < len(o) for c, o in zip(cursors, orders, strict=True)):
        for s, cand in enumerate(sources):
            while cursors[s] < len(orders[s]) and len(picked) < cfg.num_negatives:
                col = orders[s][cursors[s]]
                cursors[s] += 1
                doc = int(cand.indices[q, col])
                key = int(groups[doc]) if groups is not None else doc
                if key in banned or key in taken:
                    continue
                taken.add(key)
                picked.append((doc, float(cand.scores[q, col]), cand.source))
                break  # one per source per round
    return Selected([p[0] for p in picked], [p[1] for p in picked], [p[2] for p in picked])


def select_negatives(
    sources: Sequence[Candidates],
    positives: Sequence[np.ndarray],
    cfg: MineConfig,
    rng: np.random.Generator,
    groups: np.ndarray | None = None,
) -> tuple[list[Selected], MineStats]:
    """Hard negatives for a block of rows (pairs or queries) from one or more sources.

    Args:
        sources: candidates of each source for the same rows, in combination order.
        positives: per row, the corpus rows of all positives of its query.
        cfg: window, guard, sampling and count.
        rng: seeded generator (used by random sampling only).
        groups: optional (n_docs,) text-group ids for text de-duplication.

    Returns:
        One `Selected` per row, and the block's counters.

    Raises:
        ValueError: the sources disagree on the number of rows.
    """
    stats = MineStats(rows=len(positives))
    for cand in sources:
        dense_shape = cand.indices.shape if cand.dense_scores is None else cand.dense_scores.shape
        if cand.indices.shape[0] != len(positives) or not cand.scores.shape == dense_shape == cand.indices.shape:
            raise ValueError(
                f"source {cand.source!r}: indices {cand.indices.shape} / scores {cand.scores.shape} / dense scores "
                f"{dense_shape} do not match {len(positives)} rows; pass one row per pair (or query)"
            )
    filtered = [filter_source(c, positives, cfg, groups, stats) for c in sources]
    keeps = [f[0] for f in filtered]
    out = []
    for q in range(len(positives)):
        # A document one source finds too close to the positive is suspect for every source.
        rejected = np.concatenate([c.indices[q, rej[q]] for c, (_, rej) in zip(sources, filtered, strict=True)])
        banned = set((groups[rejected] if groups is not None else rejected).tolist())
        selected = _combine_row(q, sources, keeps, banned, cfg, groups, rng)
        out.append(selected)
        stats.negatives += len(selected.indices)
        stats.short += len(selected.indices) < cfg.num_negatives
        stats.empty += not selected.indices
        for source in selected.sources:
            stats.per_source[source] = stats.per_source.get(source, 0) + 1
    return out, stats


def text_groups(texts: Sequence[str]) -> np.ndarray:
    """(n_docs,) int64 group id per text: equal after whitespace and case folding means the same group.

    Ids are dense and numbered in order of first appearance."""
    return groups_of(text_digests(texts))


def text_digests(texts: Sequence[str]) -> np.ndarray:
    """(n,) int64: a 64-bit blake2b digest of each text after whitespace and case folding (the
    same in every process, unlike hash()); a collision between two different texts is 2^-64-rare."""
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(" ".join(t.split()).casefold().encode(), digest_size=8).digest(), "little", signed=True)
         for t in texts), dtype=np.int64, count=len(texts),
    )  # fmt: skip


def groups_of(digests: np.ndarray) -> np.ndarray:
    """Dense group ids of digests, numbered in order of first appearance."""
    _, first, inverse = np.unique(digests, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return rank[inverse].astype(np.int64)
