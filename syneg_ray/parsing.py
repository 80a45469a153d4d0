"""Raw LLM text -> validated negatives and reasoning, or the reasons each candidate was rejected.

Pure: no Ray, no model. Tolerates code fences, text before the object and trailing text after
it (the first balanced JSON object wins). Every rejection is counted by reason; nothing raises.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

# Reject reasons: stable strings, stored in the output and counted in the summary.
INVALID_JSON = "invalid_json"
BAD_SCHEMA = "bad_schema"
EMPTY = "empty"
TOO_SHORT = "too_short"
TOO_LONG = "too_long"
NEAR_DUP_POSITIVE = "near_duplicate_positive"
NEAR_DUP_QUERY = "near_duplicate_query"
CONTAINS_QUERY = "contains_query"  # restates a query of 5+ words verbatim, then adds text: it answers, not misses
DUPLICATE = "duplicate_negative"
TRUNCATED = "truncated"  # the answer ended at its token budget inside this negative (those before it are kept)
MARKUP = "markup"  # holds a tag the positive does not (the prompt's own <data>, <style_reference>, ...): not a document

_WORD = re.compile(r"\w+", re.UNICODE)
_FENCE = re.compile(r"```(?:json|JSON)?")
_ITEM_END = re.compile(r'"\s*(?:,|$)')  # a quote before a comma or the cut: where a complete list item may end
_TAG = re.compile(r"</?([A-Za-z][\w-]*)\s*/?>")  # <data>, </style_reference>, <br/>; not "p < 0.05" or "a<b"


@dataclass(frozen=True, kw_only=True)
class Limits:
    """Validation thresholds; lengths are in words and relative to the positive document."""

    min_ratio: float = 0.2  # shorter than this x the positive's words -> too_short
    max_ratio: float = 3.0  # longer than this x the positive's words (+ slack) -> too_long
    min_words: int = 8  # floor for too_short, whatever the positive
    slack_words: int = 50  # added to the too_long bound so short positives still allow a paragraph
    near_duplicate: float = 0.8  # word-set Jaccard at or above this = near-duplicate
    max_negatives: int = 0  # keep at most this many valid negatives (0 = all)

    def shortest(self, positive_words: int) -> float:
        """The fewest words a negative may have beside a positive of `positive_words` words."""
        return max(self.min_words, self.min_ratio * positive_words)


@dataclass
class Parsed:
    """What one generation yielded."""

    negatives: list[str] = field(default_factory=list)
    reasoning: str = ""
    reasons: list[str] = field(default_factory=list)  # one per rejected candidate (or the whole answer)

    @property
    def ok(self) -> bool:
        return bool(self.negatives)


def extract_object(text: str) -> dict[str, Any] | None:
    """The first JSON object in `text`, skipping code fences, prose before it and text after it."""
    text = _FENCE.sub("", text)
    decoder = json.JSONDecoder()
    start = text.find("{")
    while start != -1:
        try:
            value, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            start = text.find("{", start + 1)
            continue
        if isinstance(value, dict):
            return value
        start = text.find("{", start + 1)
    return None


def salvage_object(text: str) -> dict[str, Any] | None:
    """The object of an answer cut inside its list of negatives, closed after its last complete
    item, or None when no item was complete (or the text is no such answer).

    An answer decoded under a JSON schema is a prefix of valid JSON; when the token budget ends it
    inside the k-th negative, the negatives before it are whole and worth their generation.
    """
    text = _FENCE.sub("", text)
    start = text.find("{")
    if start == -1:
        return None
    body = text[start:]
    for end in reversed([m.start() + 1 for m in _ITEM_END.finditer(body)]):  # the last complete item first
        try:
            value = json.loads(body[:end] + "]}")
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict) and _candidates(value):
            return value
    return None


def tokens(text: str) -> list[str]:
    """Lower-cased word tokens in order (punctuation and spacing ignored), for verbatim containment."""
    return _WORD.findall(text.lower())


def words(text: str) -> set[str]:
    """Lower-cased word set, the unit of the near-duplicate test."""
    return set(tokens(text))


def tags(text: str) -> set[str]:
    """The lower-cased names of the markup tags in `text`."""
    return {name.lower() for name in _TAG.findall(text)}


def jaccard(a: set[str], b: set[str]) -> float:
    """|a & b| / |a | b|, 0 for two empty sets."""
    union = a | b
    return len(a & b) / len(union) if union else 0.0


def _candidates(obj: dict[str, Any]) -> list[Any] | None:
    """The negatives list, accepting the common drifts (`hard_negatives`, one string, dict items)."""
    raw = obj.get("negatives", obj.get("hard_negatives", obj.get("negative_documents")))
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list):
        return None
    out = []
    for item in raw:
        if isinstance(item, dict):  # {"text": ...} or {"document": ...}
            item = next((v for v in item.values() if isinstance(v, str)), item)
        out.append(item)
    return out


class _Checker:
    """The per-candidate tests of one pair: length, near-duplicates of the positive, the query and kept negatives."""

    def __init__(self, query: str, positive: str, limits: Limits, others: tuple[str, ...] = ()) -> None:
        n_pos = len(positive.split())
        self.low, self.high = limits.shortest(n_pos), limits.max_ratio * n_pos + limits.slack_words
        q_tokens = tokens(query)
        self.q_words, self.p_words = set(q_tokens), words(positive)
        self.q_phrase = f" {' '.join(q_tokens)} " if len(q_tokens) >= 5 else ""  # a short query is a topic, not a claim
        self.near_duplicate = limits.near_duplicate
        self.kept_words: list[set[str]] = [words(t) for t in others]  # negatives the pair already holds
        self.p_tags = tags(positive)  # a corpus of HTML or XML may hold tags: a negative may hold those too

    def keep(self, text: str) -> None:
        """Counts `text` as kept: later candidates that nearly repeat it are duplicates."""
        self.kept_words.append(words(text))

    def reason(self, item: Any) -> str:
        """Why `item` is rejected, or "" when it is a valid negative."""
        text = item.strip() if isinstance(item, str) else ""
        n = len(text.split())
        t = tokens(text)
        w = set(t)
        if not text:
            return EMPTY
        if tags(text) - self.p_tags:  # small LLMs echo the prompt's layout into a negative, around or inside it
            return MARKUP
        if n < self.low:
            return TOO_SHORT
        if n > self.high:
            return TOO_LONG
        if jaccard(w, self.p_words) >= self.near_duplicate:
            return NEAR_DUP_POSITIVE
        if jaccard(w, self.q_words) >= self.near_duplicate:
            return NEAR_DUP_QUERY
        if self.q_phrase and self.q_phrase in f" {' '.join(t)} ":
            return CONTAINS_QUERY
        if any(jaccard(w, k) >= self.near_duplicate for k in self.kept_words):
            return DUPLICATE
        return ""


def validate(candidates: list[Any], query: str, positive: str, limits: Limits,
             others: tuple[str, ...] = ()) -> tuple[list[str], list[str]]:
    """Splits candidate negatives into (valid, reject reasons), in order, first duplicate wins; a
    candidate that nearly repeats one of `others` (negatives the pair already holds) is a duplicate."""
    check = _Checker(query, positive, limits, others)
    valid: list[str] = []
    reasons: list[str] = []
    for item in candidates:
        reason = check.reason(item)
        if reason:
            reasons.append(reason)
        elif limits.max_negatives and len(valid) >= limits.max_negatives:
            continue  # surplus valid negatives are dropped silently: they are not rejects
        else:
            valid.append(item.strip())
            check.keep(item)
    return valid, reasons


@dataclass
class Rewrites:
    """What one reflection answer yielded, aligned with the negatives it was asked to rewrite."""

    texts: list[str]  # per asked negative: its valid rewrite, or "" when there is none
    reasons: list[str]  # per asked negative: "" for a valid rewrite, else why it was rejected
    reasoning: str = ""


def parse_rewrites(text: str, n: int, query: str, positive: str, limits: Limits, others: tuple[str, ...] = ()) -> Rewrites:
    """Parses a reflection answer: the i-th negative of its list rewrites the i-th flagged negative.

    Args:
        text: the raw model output.
        n: negatives it was asked to rewrite.
        query: the pair's query; positive: its positive document (the same tests as `parse`).
        limits: thresholds (`max_negatives` is ignored: the count is `n`).
        others: the pair's negatives that stay (a rewrite that nearly repeats one is a duplicate).

    Returns:
        `Rewrites` of length `n`; an answer that is not a JSON object with a list marks all `n`
        `invalid_json` / `bad_schema`, a missing item `empty` (`truncated` in an answer cut at its
        token budget, whose complete items count).
    """
    obj, cut = extract_object(text or ""), False
    if obj is None:  # cut at the token budget, perhaps: keep what it completed
        obj = salvage_object(text or "")
        cut = obj is not None
    candidates = _candidates(obj) if obj is not None else None
    if candidates is None:
        return Rewrites([""] * n, [INVALID_JSON if obj is None else BAD_SCHEMA] * n)
    reasoning = obj.get("reasoning", "")
    reasoning = reasoning.strip() if isinstance(reasoning, str) else json.dumps(reasoning, ensure_ascii=False)
    check = _Checker(query, positive, limits, others)
    texts, reasons = [], []
    for i, item in enumerate([*candidates[:n], *[""] * (n - len(candidates))]):
        reason = TRUNCATED if cut and i >= len(candidates) else check.reason(item)
        texts.append("" if reason else item.strip())
        reasons.append(reason)
        if not reason:
            check.keep(item)
    return Rewrites(texts, reasons, reasoning)


def parse(text: str, query: str, positive: str, limits: Limits | None = None, others: tuple[str, ...] = ()) -> Parsed:
    """Parses and validates one generation.

    Args:
        text: the raw model output (may hold code fences, prose, trailing text).
        query: the pair's query, for the near-duplicate test.
        positive: the pair's positive document, for length and near-duplicate tests.
        limits: thresholds; defaults to `Limits()`.
        others: negatives the pair already holds (carried from an earlier attempt): a near repeat is a duplicate.

    Returns:
        `Parsed` with the valid negatives, the reasoning and one reason per rejection. A whole
        answer that is not a JSON object yields `[invalid_json]`, unless it was cut inside its list
        of negatives: then its complete ones are judged and the cut one is `truncated`. An object
        without a negatives list yields `[bad_schema]`.
    """
    limits = limits or Limits()
    if not text or not text.strip():
        return Parsed(reasons=[EMPTY])
    obj, cut = extract_object(text), False
    if obj is None:  # cut at the token budget, perhaps: keep what it completed
        obj = salvage_object(text)
        cut = obj is not None
    if obj is None:
        return Parsed(reasons=[INVALID_JSON])
    candidates = _candidates(obj)
    reasoning = obj.get("reasoning", "")
    reasoning = reasoning.strip() if isinstance(reasoning, str) else json.dumps(reasoning, ensure_ascii=False)
    if candidates is None:
        return Parsed(reasoning=reasoning, reasons=[BAD_SCHEMA])
    if not candidates:
        return Parsed(reasoning=reasoning, reasons=[EMPTY])
    valid, reasons = validate(candidates, query, positive, limits, others)
    return Parsed(negatives=valid, reasoning=reasoning, reasons=reasons + [TRUNCATED] * cut)


def parse_domains(text: str, limit: int = 12) -> list[str]:
    """Domains proposed by the LLM (`{"domains": [...]}`), cleaned and de-duplicated; [] when unusable."""
    obj = extract_object(text or "")
    raw = obj.get("domains") if obj else None
    if not isinstance(raw, list):
        return []
    seen: dict[str, str] = {}
    for item in raw:
        if isinstance(item, str) and 2 <= len(item.strip()) <= 60:
            seen.setdefault(item.strip().lower(), item.strip())
    return list(seen.values())[:limit]
