"""Pure, seeded mixing of synthetic and retrieved negatives into training instances (no Ray, no I/O).

With n = `n_negatives` and s = floor(R * n + 0.5) synthetic slots (round half up, not Python's
banker's rounding, so R = 0.5, n = 4 gives 2 and R = 0.625, n = 4 gives 3):

- hybrid: every instance asks for s synthetic and n - s retrieved negatives; when 0 < R < 1 and
  the pair has both kinds, s is clamped to [1, n - 1] so each instance really holds both kinds.
- direct: a seeded choice of floor(R * N + 0.5) of the N pairs ask for n synthetic negatives, the
  others for n retrieved ones.
- synthetic: n synthetic (R = 1). retrieved: n retrieved (R = 0).
- random: n corpus documents drawn uniformly without replacement, never a positive of the query.

Shortfall rule (every case is counted in `MixStats`):
- hybrid: a source that runs short is topped up from the other source (`borrowed_*`), because the
  instance is a mix by definition and stays as close to R as the pair allows;
- single-source instances (direct, synthetic, retrieved) never borrow: that would change what the
  strategy measures;
- an instance still short of n negatives is kept with what it has (`short`), as long as it has
  `min_negatives` (else it is dropped, `dropped_short`): training masks its empty slots, and its
  in-batch negatives remain. A query with dozens of positives often has fewer guarded negatives
  than n for some pairs; dropping those pairs would drop most of such a dataset. Set
  `min_negatives = n` for instances that all hold exactly n (the paper's setting, and the ablation's,
  where every query sees the same number of hard negatives). A pair absent from an input counts as
  0 negatives of it.

Which negatives: the first ones in input order (synthetic: the LLM's order; retrieved: the mining
order, hardest first, already past the false-negative guard), so the choice is deterministic.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from syneg_ray.config import MixConfig, MixStrategy
from syneg_ray.errors import DataError
from syneg_ray.schema import INSTANCE_COLUMNS, Instance, Pair

PairKey = tuple[str, str]  # (query_id, positive_id)
# A chosen negative: (id, source, text). A corpus document's text is None until `with_texts` fills
# it, so that a caller looks up the texts of the documents chosen only, once the choice is made.
Negative = tuple[str, str, str | None]
SYNTHETIC = "synthetic"
RANDOM = "random"


@dataclass(frozen=True)
class SyntheticNegs:
    """The synthetic negatives of one pair and the key that names them."""

    key: str  # SyntheticRow.key; negative ids are f"{key}#{i}"
    texts: tuple[str, ...]
    # The judge's cos(query, negative) per text and cos(query, positive), when this run's settings
    # (its encoder and margins, part of the key) judged them during synthesis; else empty / nan.
    scores: tuple[float, ...] = ()
    positive_score: float = math.nan

    @property
    def judged(self) -> bool:
        return (len(self.scores) == len(self.texts) and math.isfinite(self.positive_score)
                and all(math.isfinite(s) for s in self.scores))  # fmt: skip


@dataclass
class MixStats:
    """What the mix did, including every shortfall."""

    pairs: int = 0
    instances: int = 0
    dropped_short: int = 0  # instances left with fewer than min_negatives after the shortfall rule
    short: int = 0  # instances kept with fewer than n negatives (their empty slots are masked in training)
    borrowed_synthetic: int = 0  # hybrid slots meant for synthetic, filled with retrieved
    borrowed_retrieved: int = 0  # hybrid slots meant for retrieved, filled with synthetic
    synthetic_slots: int = 0
    retrieved_slots: int = 0
    random_slots: int = 0
    with_synthetic: int = 0  # kept instances whose pair has synthetic negatives
    with_synthetic_slots: int = 0  # their filled slots
    with_synthetic_synthetic_slots: int = 0  # of those, synthetic

    @property
    def realized_ratio(self) -> float:
        """Share of the kept negative slots that hold synthetic negatives (the R actually trained on)."""
        total = self.synthetic_slots + self.retrieved_slots + self.random_slots
        return self.synthetic_slots / total if total else 0.0

    @property
    def realized_ratio_with_synthetic(self) -> float:
        """Realized R over the instances whose pair has synthetic negatives: what the mix achieves
        where the LLM wrote something (the run-wide figure also counts pairs never synthesized)."""
        return self.with_synthetic_synthetic_slots / self.with_synthetic_slots if self.with_synthetic_slots else 0.0

    def as_dict(self) -> dict[str, float]:
        return {**dataclasses.asdict(self), "realized_ratio": round(self.realized_ratio, 4),
                "realized_ratio_with_synthetic": round(self.realized_ratio_with_synthetic, 4)}  # fmt: skip


def synthetic_slots(ratio: float, n: int) -> int:
    """floor(R * n + 0.5): synthetic slots per hybrid instance before the at-least-one-of-each clamp."""
    return int(np.floor(ratio * n + 0.5))


def direct_choice(n_pairs: int, ratio: float, seed: int) -> np.ndarray:
    """Boolean mask of the pairs that get only synthetic negatives in the direct mix (seeded)."""
    chosen = np.zeros(n_pairs, dtype=bool)
    chosen[np.random.default_rng(seed).permutation(n_pairs)[: synthetic_slots(ratio, n_pairs)]] = True
    return chosen


def plan_hybrid(n_syn: int, n_ret: int, ratio: float, n: int) -> tuple[int, int]:
    """How many synthetic and retrieved negatives one hybrid instance takes, given what the pair has.

    Returns:
        (synthetic, retrieved); their sum is below n only when the pair has fewer than n in total.
    """
    want = hybrid_target(ratio, n, both_kinds=bool(n_syn and n_ret))
    syn = min(want, n_syn)
    ret = min(n - syn, n_ret)
    syn = min(n - ret, n_syn)  # top up synthetic when retrieved ran short
    return syn, ret


def hybrid_target(ratio: float, n: int, both_kinds: bool = True) -> int:
    """Synthetic slots a hybrid instance asks for: floor(R * n + 0.5), and at least one of each kind
    when 0 < R < 1 and the pair has both."""
    want = synthetic_slots(ratio, n)
    if 0.0 < ratio < 1.0 and both_kinds and n > 1:
        want = min(max(want, 1), n - 1)
    return want


def mix(
    pairs: Sequence[Pair],
    synthetic: Mapping[PairKey, SyntheticNegs],
    mined: Mapping[PairKey, Sequence[tuple[str, str]]],
    corpus: Mapping[str, str],
    cfg: MixConfig,
    seed: int,
    positives: Mapping[str, Iterable[str]] | None = None,
) -> tuple[list[Instance], MixStats]:
    """Builds the training instances of `pairs` with `cfg.strategy` at ratio `cfg.ratio`, in one block.

    Args:
        pairs: the train pairs, with query and positive text.
        synthetic: (query_id, positive_id) -> its synthetic negatives (missing = none).
        mined: (query_id, positive_id) -> [(doc_id, source)] retrieved negatives, hardest first.
        corpus: doc_id -> text; the text of retrieved and random negatives.
        cfg: strategy, R, n and the fewest negatives an instance may keep (min_negatives).
        seed: drives the direct choice and the random draws.
        positives: query_id -> all its positives (random never draws them); defaults to the pairs'.

    Returns:
        (instances in pair order, stats).
    """
    random = cfg.strategy is MixStrategy.RANDOM
    mixer = Mixer(cfg, seed, len(pairs), query_positives(((p["query_id"], p["positive_id"]) for p in pairs), positives)
                  if random else {}, list(corpus) if random else ())  # fmt: skip
    return with_texts(mixer.choose(pairs, synthetic, mined), corpus), mixer.stats


def query_positives(pairs: Iterable[PairKey],
                    positives: Mapping[str, Iterable[str]] | None = None) -> dict[str, set[str]]:  # fmt: skip
    """query_id -> every positive of the query: those of `pairs` and those `positives` adds."""
    found: dict[str, set[str]] = {}
    for query_id, positive_id in pairs:
        found.setdefault(query_id, set()).add(positive_id)
    for query_id, ids in (positives or {}).items():
        found.setdefault(query_id, set()).update(ids)
    return found


class Mixer:
    """Mixes the pairs one block at a time (`choose`, then `with_texts`), giving the instances and
    statistics of one `mix` over all of them whatever the blocks.

    What spans blocks is carried here: the direct choice (a seeded draw over all pairs, so it needs
    their count up front), the generator of the random draws (one draw per pair, in pair order, so
    the blocks must come in pair order), the pairs mixed so far and the statistics.

    Args:
        n_pairs: how many pairs the blocks hold together.
        positives: query_id -> every positive of the query, for every pair's query (random only).
        doc_ids: every corpus document id, in corpus order (random only: its draws index them).
    """

    def __init__(self, cfg: MixConfig, seed: int, n_pairs: int, positives: Mapping[str, set[str]] | None = None,
                 doc_ids: Sequence[str] = ()) -> None:  # fmt: skip
        self.cfg = cfg
        self.stats = MixStats()
        self.direct = direct_choice(n_pairs, cfg.ratio, seed) if cfg.strategy is MixStrategy.DIRECT else None
        self.rng = np.random.default_rng(seed)
        self.positives = positives or {}
        self.doc_ids = doc_ids
        self.mixed = 0  # pairs of earlier blocks: the index of this block's first pair in the direct choice

    def choose(
        self,
        pairs: Sequence[Pair],
        synthetic: Mapping[PairKey, SyntheticNegs],
        mined: Mapping[PairKey, Sequence[tuple[str, str]]],
    ) -> list[tuple[Pair, list[Negative]]]:
        """The next block's kept pairs with their chosen negatives (corpus texts still None), counted in `stats`.

        `synthetic` and `mined` need to hold the block's pairs only (missing = none).
        """
        cfg, stats, strategy = self.cfg, self.stats, self.cfg.strategy
        kept: list[tuple[Pair, list[Negative]]] = []
        for i, pair in enumerate(pairs, start=self.mixed):
            key = (pair["query_id"], pair["positive_id"])
            has_synthetic = False
            if strategy is MixStrategy.RANDOM:
                chosen = _random_negatives(self.rng, self.doc_ids, self.positives[pair["query_id"]], cfg.n_negatives)
            else:
                syn = synthetic.get(key, SyntheticNegs("", ()))
                ret = list(mined.get(key, ()))
                direct_syn = bool(self.direct is not None and self.direct[i])
                counts = _counts(strategy, cfg, len(syn.texts), len(ret), direct_syn, stats)
                chosen = [(f"{syn.key}#{j}", SYNTHETIC, syn.texts[j]) for j in range(counts[0])]
                chosen += [(doc, source, None) for doc, source in ret[: counts[1]]]
                has_synthetic = bool(syn.texts)
            if len(chosen) < cfg.min_negatives:
                stats.dropped_short += 1
                continue
            stats.short += len(chosen) < cfg.n_negatives
            kept.append((pair, chosen))
            _count_slots(stats, chosen, has_synthetic)
        self.mixed += len(pairs)
        stats.pairs += len(pairs)
        stats.instances += len(kept)
        return kept


def corpus_ids(kept: Iterable[tuple[Pair, list[Negative]]]) -> set[str]:
    """The corpus documents whose text the chosen negatives need."""
    return {doc for _, chosen in kept for doc, _, text in chosen if text is None}


def with_texts(kept: Iterable[tuple[Pair, list[Negative]]], corpus: Mapping[str, str]) -> list[Instance]:
    """The instances of the kept pairs, each corpus negative's text taken from `corpus`."""
    return [_instance(pair, [(doc, source, corpus[doc] if text is None else text) for doc, source, text in chosen])
            for pair, chosen in kept]  # fmt: skip


def drop_flagged(synthetic: Mapping[PairKey, SyntheticNegs],
                 flags: Mapping[PairKey, Sequence[bool]]) -> dict[PairKey, SyntheticNegs]:  # fmt: skip
    """`synthetic` less the negatives flagged True (by the false-negative guard); a pair left with none is left out."""
    kept = {}
    for key, negs in synthetic.items():
        flagged = flags.get(key, ())
        left = tuple(t for j, t in enumerate(negs.texts) if not (j < len(flagged) and flagged[j]))
        if left:
            kept[key] = SyntheticNegs(negs.key, left) if len(left) < len(negs.texts) else negs
    return kept


def _counts(strategy: MixStrategy, cfg: MixConfig, n_syn: int, n_ret: int, direct_syn: bool, stats: MixStats) -> tuple[int, int]:
    n = cfg.n_negatives
    if strategy is MixStrategy.HYBRID:
        syn, ret = plan_hybrid(n_syn, n_ret, cfg.ratio, n)
        want = hybrid_target(cfg.ratio, n, both_kinds=bool(n_syn and n_ret))
        if syn + ret >= cfg.min_negatives:  # only kept instances count as borrowing
            stats.borrowed_synthetic += max(0, want - syn)
            stats.borrowed_retrieved += max(0, syn - want)
        return syn, ret
    if strategy is MixStrategy.SYNTHETIC or (strategy is MixStrategy.DIRECT and direct_syn):
        return min(n, n_syn), 0
    return 0, min(n, n_ret)  # retrieved, or a direct pair not chosen for synthetic


def _random_negatives(rng: np.random.Generator, doc_ids: Sequence[str], exclude: set[str], n: int) -> list[Negative]:
    # draw a few extra so removing the query's positives still leaves n; one draw per pair keeps it seeded
    draw = rng.choice(len(doc_ids), size=min(len(doc_ids), n + len(exclude)), replace=False)
    picked = [doc for doc in (doc_ids[j] for j in draw) if doc not in exclude][:n]
    return [(doc, RANDOM, None) for doc in picked]


def _instance(pair: Pair, chosen: list[tuple[str, str, str]]) -> Instance:
    return {
        "query_id": pair["query_id"],
        "positive_id": pair["positive_id"],
        "query": pair["query"],
        "positive": pair["positive"],
        "negatives": [text for _, _, text in chosen],
        "negative_sources": [source for _, source, _ in chosen],
        "negative_ids": [doc for doc, _, _ in chosen],
    }


def _count_slots(stats: MixStats, chosen: list[Negative], has_synthetic: bool) -> None:
    if has_synthetic:
        stats.with_synthetic += 1
        stats.with_synthetic_slots += len(chosen)
        stats.with_synthetic_synthetic_slots += sum(source == SYNTHETIC for _, source, _ in chosen)
    for _, source, _ in chosen:
        if source == SYNTHETIC:
            stats.synthetic_slots += 1
        elif source == RANDOM:
            stats.random_slots += 1
        else:
            stats.retrieved_slots += 1


def check_instances(rows: Sequence[Mapping], path: object, corpus_ids: Mapping[str, object] | set[str],
                    first_row: int = 1, n: int = 0) -> int:  # fmt: skip
    """Validates instances before training; returns the most negatives any instance holds (the
    width training pads every instance to, masking the empty slots).

    Args:
        rows: the instances, or one block of them.
        corpus_ids: ids known to the corpus (for a block, at least those it names).
        first_row: the 1-based row number of rows[0] in the file (a block's offset).
        n: the most negatives found in earlier blocks.

    Raises:
        DataError: missing columns, no rows, an empty negative text, negatives, ids and sources of
            different lengths, or an id not in the corpus, naming `path` and the 1-based row.
    """
    if not rows:
        raise DataError.at(path, None, "no instances; run `syneg mix` first or check the mix settings")
    missing = set(INSTANCE_COLUMNS) - set(rows[0])
    if missing:
        raise DataError.at(path, None, f"missing columns {sorted(missing)}; expected {list(INSTANCE_COLUMNS)}")
    for number, row in enumerate(rows, start=first_row):
        negs, ids, sources = row["negatives"] or (), row["negative_ids"] or (), row["negative_sources"] or ()
        if any(not t for t in negs):
            raise DataError.at(path, number, "an empty negative text; leave the slot out instead (an instance may hold fewer negatives)")
        if not len(negs) == len(ids) == len(sources):
            raise DataError.at(path, number, f"{len(negs)} negatives, {len(ids)} negative_ids and {len(sources)} negative_sources; "
                                             "each negative needs its id and source")  # fmt: skip
        n = max(n, len(negs))
        if row["positive_id"] not in corpus_ids:
            raise DataError.at(path, number, f"unknown positive_id {row['positive_id']!r}: not in the corpus")
        for doc, source in zip(ids, sources, strict=True):
            if source != SYNTHETIC and doc not in corpus_ids:
                raise DataError.at(path, number, f"unknown negative id {doc!r} ({source}): not in the corpus")
        if not row["query"] or not row["positive"]:
            raise DataError.at(path, number, "empty query or positive text")
    return n
