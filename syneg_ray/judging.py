"""The judge of synthetic negatives: encoder scores -> a verdict per negative, and the selection of the kept ones.

Pure numpy: no Ray, no model. The stage scores each negative with the base encoder (cosine to the
query, to the positive) and this module decides, per negative, in this order:

1. `near_copy`: its similarity to the positive is above `max_positive_similarity` (it restates the
   positive, so it is a false negative whatever its query score);
2. `false_negative`: it fails the miner's false-negative guard (`mining.guard_masks`: it scores
   above the positive's score less `mine.relative_margin` / `mine.absolute_margin`, or above
   `mine.max_score`): the encoder takes it for an answer;
3. `off_topic`: it scores below the pair's floor, the k-th mined negative's score (when mining
   output exists): a real corpus document is a harder negative than it;
4. `ok` otherwise.

`near_copy` and `false_negative` disqualify a negative: it is never kept. `off_topic` only asks
for a rewrite: an easy negative is still a true one, so after the last round it may be kept (after
every harder one), and a pair whose candidates are all easy is not retried for it. A negative with
no score (nan: the judge is off) is `ok`, and the selection then keeps the first k in the order
written. `describe` puts a verdict into the words the LLM gets back in reflection.

A rewrite asked for in reflection that `repeats` its original (the same text up to case, whitespace
and punctuation; see `normalized`) is not a rewrite: its record says `unchanged` and the original
keeps its place and its verdict. Small LLMs often hand the flagged text back as their answer, and
scored again a copy with another case or punctuation can land on the other side of a threshold,
so a false negative would pass the judge without having changed.
"""

from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass

import numpy as np

from syneg_ray import mining
from syneg_ray.config import MineConfig

OK = "ok"
FALSE_NEGATIVE = "false_negative"
NEAR_COPY = "near_copy"
OFF_TOPIC = "off_topic"
VERDICTS = (OK, FALSE_NEGATIVE, NEAR_COPY, OFF_TOPIC)
# the record's verdict of a rewrite that repeats its original; never a candidate's verdict, as the
# original stays with its own
UNCHANGED = "unchanged"


@dataclass(frozen=True, kw_only=True)
class Rule:
    """The judge's thresholds: the miner's guard (from `mine`) and the near-copy bound."""

    relative_margin: float = 0.05  # mine.relative_margin: pass only if score <= pos - |pos| * margin
    absolute_margin: float = 0.0  # mine.absolute_margin: ... and score <= pos - margin
    max_score: float = 0.0  # mine.max_score: ... and score <= max_score (0 = off)
    max_positive_similarity: float = 0.9  # synthesize.judge_max_positive_similarity: above = near_copy

    @classmethod
    def of(cls, mine: MineConfig, max_positive_similarity: float) -> Rule:
        """The rule of a run: the miner's guard settings and the synthesize section's near-copy bound."""
        return cls(relative_margin=mine.relative_margin, absolute_margin=mine.absolute_margin,
                   max_score=mine.max_score, max_positive_similarity=max_positive_similarity)

    def guard(self) -> MineConfig:
        """The guard part as the miner's config, so both apply `mining.guard_masks`, the one rule."""
        return MineConfig(relative_margin=self.relative_margin, absolute_margin=self.absolute_margin,
                          max_score=self.max_score)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two (n, dim) arrays -> (n,); a zero vector scores 0."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.divide((a * b).sum(1), norms, out=np.zeros(len(a)), where=norms > 0)


def verdicts(query_scores: np.ndarray, positive_score: float, positive_similarities: np.ndarray, rule: Rule,
             floor: float = math.nan) -> list[str]:
    """One verdict per negative of one pair.

    Args:
        query_scores: (n,) cos(query, negative); nan = not scored.
        positive_score: cos(query, positive); nan = not scored (the guard then passes everything).
        positive_similarities: (n,) cos(negative, positive); nan = not scored.
        rule: thresholds.
        floor: the lowest query score a negative may have (the pair's k-th mined negative's); nan = none.

    Returns:
        `near_copy`, `false_negative`, `off_topic` or `ok` per negative, in order.
    """
    q = np.asarray(query_scores, dtype=np.float64).reshape(-1)
    sim = np.asarray(positive_similarities, dtype=np.float64).reshape(-1)
    if not len(q):
        return []
    if math.isnan(positive_score):
        guard_ok = np.ones(len(q), dtype=bool)
    else:
        margin_ok, max_ok = mining.guard_masks(q[None, :], np.array([positive_score]), rule.guard(), dense=True)
        guard_ok = (margin_ok & max_ok)[0] | np.isnan(q)  # an unscored negative is not judged
    out = []
    for score, similarity, passes in zip(q, sim, guard_ok, strict=True):
        if similarity > rule.max_positive_similarity:  # nan compares False: unscored is never a copy
            out.append(NEAR_COPY)
        elif not passes:
            out.append(FALSE_NEGATIVE)
        elif score < floor:  # a nan floor or score compares False: no floor
            out.append(OFF_TOPIC)
        else:
            out.append(OK)
    return out


KEEPABLE = (OK, OFF_TOPIC)  # verdicts a kept negative may have: true negatives, hard or easy


def select(verdict_list: list[str], query_scores: np.ndarray, k: int) -> list[int]:
    """Indices of the k hardest keepable negatives: the highest query scores among those neither a
    near copy nor a false negative (an `ok` one always scores above an `off_topic` one: the floor
    lies between them).

    Unscored negatives (nan) come after scored ones, in their written order; ties keep it too.
    """
    scores = np.asarray(query_scores, dtype=np.float64).reshape(-1)
    passing = [i for i, v in enumerate(verdict_list) if v in KEEPABLE]
    passing.sort(key=lambda i: (math.isnan(scores[i]), -scores[i] if not math.isnan(scores[i]) else 0.0))
    return passing[:k]


def mined_floor(negative_scores: list[float], sources: list[str], k: int) -> float:
    """The off-topic floor of a pair: its k-th best dense mined negative's score (the last one's when
    fewer were mined); nan when none was mined densely. BM25 scores are on another scale than
    cosines, so only dense hits count."""
    dense = sorted((float(s) for s, src in zip(negative_scores, sources, strict=True) if src == mining.DENSE), reverse=True)
    if not dense:
        return math.nan
    return dense[min(k, len(dense)) - 1]


def normalized(text: str) -> str:
    """`text` as `repeats` compares it: NFKC-normalized (full-width and compatibility forms become
    their plain ones), case-folded, every punctuation character (Unicode category P*: periods,
    commas, quotes, brackets, hyphens, dashes) turned into a space, then split on whitespace and
    joined with single spaces.

    Letters, digits, marks and symbols stay, so a changed claim is not taken for a repeat: "p < 0.05"
    and "p > 0.05" differ, and "1.5" (read "1 5") differs from "15".
    """
    folded = unicodedata.normalize("NFKC", text).casefold()
    spaced = "".join(" " if unicodedata.category(c).startswith("P") else c for c in folded)
    return " ".join(spaced.split())


def repeats(original: str, rewrite: str) -> bool:
    """Whether `rewrite` is `original` again: equal once both are `normalized`."""
    return normalized(original) == normalized(rewrite)


def describe(verdict: str, query_score: float, positive_score: float, positive_similarity: float,
             floor: float = math.nan) -> str:
    """The verdict in words, with its scores, as the LLM reads it in a reflection turn."""
    if verdict == NEAR_COPY:
        return (f"it nearly copies the positive document (similarity {positive_similarity:.2f} to it); rewrite it in "
                "your own words about a different finding on the same topic")
    if verdict == FALSE_NEGATIVE:
        return (f"it supports the claim the query makes (it scores {query_score:.2f} against the query, the positive "
                f"document {positive_score:.2f}); rewrite it so it stays on the topic but does not answer the query")
    if verdict == OFF_TOPIC:
        return (f"it drifts off the query's topic (it scores {query_score:.2f} against the query, real documents "
                f"retrieved for it {floor:.2f}); rewrite it closer to the query's topic and terms, still without "
                "answering it")
    return "it is fine as it is"
