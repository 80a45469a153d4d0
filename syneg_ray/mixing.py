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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from syneg_ray.config import MixConfig, MixStrategy
from syneg_ray.errors import DataError
from syneg_ray.schema import INSTANCE_COLUMNS, Instance, Pair

PairKey = tuple[str, str]  # (query_id, positive_id)
SYNTHETIC = "synthetic"
RANDOM = "random"


@dataclass(frozen=True)
class SyntheticNegs:
    """The synthetic negatives of one pair and the key that names them."""

    key: str  # SyntheticRow.key; negative ids are f"{key}#{i}"
    texts: tuple[str, ...]


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
    """Builds the training instances of `pairs` with `cfg.strategy` at ratio `cfg.ratio`.

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
    stats = MixStats(pairs=len(pairs))
    all_pos: dict[str, set[str]] = {}
    for p in pairs:
        all_pos.setdefault(p["query_id"], set()).add(p["positive_id"])
    for qid, ids in (positives or {}).items():
        all_pos.setdefault(qid, set()).update(ids)
    strategy = cfg.strategy
    direct = direct_choice(len(pairs), cfg.ratio, seed) if strategy is MixStrategy.DIRECT else None
    rng = np.random.default_rng(seed)
    doc_ids = list(corpus)
    out: list[Instance] = []
    for i, pair in enumerate(pairs):
        key = (pair["query_id"], pair["positive_id"])
        has_synthetic = False
        if strategy is MixStrategy.RANDOM:
            chosen = _random_negatives(rng, doc_ids, all_pos[pair["query_id"]], cfg.n_negatives, corpus)
        else:
            syn = synthetic.get(key, SyntheticNegs("", ()))
            ret = list(mined.get(key, ()))
            counts = _counts(strategy, cfg, len(syn.texts), len(ret), bool(direct is not None and direct[i]), stats)
            chosen = [(f"{syn.key}#{j}", SYNTHETIC, syn.texts[j]) for j in range(counts[0])]
            chosen += [(doc, source, corpus[doc]) for doc, source in ret[: counts[1]]]
            has_synthetic = bool(syn.texts)
        if len(chosen) < cfg.min_negatives:
            stats.dropped_short += 1
            continue
        stats.short += len(chosen) < cfg.n_negatives
        out.append(_instance(pair, chosen))
        _count_slots(stats, chosen, has_synthetic)
    stats.instances = len(out)
    return out, stats


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


def _random_negatives(
    rng: np.random.Generator, doc_ids: list[str], exclude: set[str], n: int, corpus: Mapping[str, str]
) -> list[tuple[str, str, str]]:
    # draw a few extra so removing the query's positives still leaves n; one draw per pair keeps it seeded
    draw = rng.choice(len(doc_ids), size=min(len(doc_ids), n + len(exclude)), replace=False)
    picked = [doc_ids[j] for j in draw if doc_ids[j] not in exclude][:n]
    return [(doc, RANDOM, corpus[doc]) for doc in picked]


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


def _count_slots(stats: MixStats, chosen: list[tuple[str, str, str]], has_synthetic: bool) -> None:
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
