"""Mixing rules: hybrid / direct / synthetic / retrieved / random, shortfalls, seeding, instance validation."""

from __future__ import annotations

import pytest

from syneg_ray import mixing
from syneg_ray.config import MixConfig, MixStrategy
from syneg_ray.errors import DataError

CORPUS = {f"d{i}": f"document {i}" for i in range(50)}


def _pairs(n: int = 10) -> list[dict]:
    return [{"query_id": f"q{i}", "positive_id": f"d{i}", "query": f"query {i}", "positive": CORPUS[f"d{i}"]} for i in range(n)]


def _inputs(n: int = 10, n_syn: int = 4, n_ret: int = 4):
    pairs = _pairs(n)
    syn = {(p["query_id"], p["positive_id"]): mixing.SyntheticNegs(f"k{i}", tuple(f"syn {i}.{j}" for j in range(n_syn))) for i, p in enumerate(pairs)}
    ret = {(p["query_id"], p["positive_id"]): [(f"d{20 + (i + j) % 30}", "dense") for j in range(n_ret)] for i, p in enumerate(pairs)}
    return pairs, syn, ret


def _mix(strategy: MixStrategy, ratio: float, n: int = 4, seed: int = 0, min_negatives: int = 1, **kw):
    pairs, syn, ret = _inputs(**kw)
    cfg = MixConfig(strategy=strategy, ratio=ratio, n_negatives=n, min_negatives=min_negatives)
    return mixing.mix(pairs, syn, ret, CORPUS, cfg, seed)


def _syn_count(inst: dict) -> int:
    return sum(s == "synthetic" for s in inst["negative_sources"])


@pytest.mark.parametrize(("ratio", "n", "expected"), [(0.7, 4, 3), (0.5, 4, 2), (0.625, 4, 3), (0.1, 4, 1), (0.9, 4, 3), (0.0, 4, 0), (1.0, 4, 4)])
def test_hybrid_counts_per_instance(ratio: float, n: int, expected: int) -> None:
    instances, stats = _mix(MixStrategy.HYBRID, ratio, n)
    assert stats.instances == len(instances) == 10 and stats.dropped_short == 0
    assert all(_syn_count(i) == expected and len(i["negatives"]) == n for i in instances)


def test_hybrid_borrows_from_the_other_source_and_counts_it() -> None:
    instances, stats = _mix(MixStrategy.HYBRID, 0.75, 4, n_syn=1, n_ret=4)
    assert all(_syn_count(i) == 1 and len(i["negatives"]) == 4 for i in instances)  # wanted 3, had 1: 2 retrieved slots borrowed
    assert stats.borrowed_synthetic == 20 and stats.instances == len(instances) == 10
    assert stats.realized_ratio == pytest.approx(0.25)


def test_hybrid_keeps_instances_short_in_total_unless_min_negatives_asks_for_all() -> None:
    instances, stats = _mix(MixStrategy.HYBRID, 0.5, 4, n_syn=1, n_ret=2)
    assert stats.instances == len(instances) == 10 and stats.short == 10 and stats.dropped_short == 0
    assert all(len(i["negatives"]) == len(i["negative_ids"]) == 3 and _syn_count(i) == 1 for i in instances)
    assert stats.realized_ratio == pytest.approx(1 / 3) and stats.realized_ratio_with_synthetic == pytest.approx(1 / 3)
    _, stats = _mix(MixStrategy.HYBRID, 0.5, 4, n_syn=1, n_ret=2, min_negatives=4)
    assert stats.instances == 0 and stats.dropped_short == 10 and stats.short == 0


def test_realized_ratio_with_synthetic_counts_only_pairs_the_llm_wrote_for() -> None:
    pairs, syn, ret = _inputs(10)
    syn = {key: negs for i, (key, negs) in enumerate(syn.items()) if i < 2}  # the LLM wrote for 2 of 10 pairs
    _, stats = mixing.mix(pairs, syn, ret, CORPUS, MixConfig(strategy=MixStrategy.HYBRID, ratio=0.5), 0)
    assert stats.with_synthetic == 2 and stats.realized_ratio_with_synthetic == pytest.approx(0.5)
    assert stats.realized_ratio == pytest.approx(4 / 40)


def test_direct_assigns_a_fraction_of_instances_to_one_source() -> None:
    instances, _stats = _mix(MixStrategy.DIRECT, 0.7, 4)
    per_instance = [_syn_count(i) for i in instances]
    assert sorted(set(per_instance)) == [0, 4] and per_instance.count(4) == 7
    again, _ = _mix(MixStrategy.DIRECT, 0.7, 4)
    other, _ = _mix(MixStrategy.DIRECT, 0.7, 4, seed=1)
    assert again == instances and [_syn_count(i) for i in other] != per_instance


def test_direct_and_single_source_never_borrow() -> None:
    instances, stats = _mix(MixStrategy.SYNTHETIC, 1.0, 4, n_syn=2)
    assert stats.instances == 10 and stats.short == 10 and all(i["negative_sources"] == ["synthetic"] * 2 for i in instances)
    _, stats = _mix(MixStrategy.SYNTHETIC, 1.0, 4, n_syn=2, min_negatives=4)
    assert stats.instances == 0 and stats.dropped_short == 10
    instances, stats = _mix(MixStrategy.RETRIEVED, 0.0, 4)
    assert stats.instances == len(instances) == 10 and stats.borrowed_synthetic == 0
    assert all(i["negative_sources"] == ["dense"] * 4 for i in instances)
    assert instances[0]["negatives"][0] == CORPUS[instances[0]["negative_ids"][0]]


def test_random_never_draws_a_positive_and_is_seeded() -> None:
    pairs, _syn, _ret = _inputs(30)
    cfg = MixConfig(strategy=MixStrategy.RANDOM, n_negatives=8)
    positives = {"q0": ["d1", "d2", "d3"]}
    a, stats = mixing.mix(pairs, {}, {}, CORPUS, cfg, seed=3, positives=positives)
    b, _ = mixing.mix(pairs, {}, {}, CORPUS, cfg, seed=3, positives=positives)
    assert a == b and stats.random_slots == 240
    for inst in a:
        assert inst["positive_id"] not in inst["negative_ids"] and len(set(inst["negative_ids"])) == 8
    assert not {"d0", "d1", "d2", "d3"} & set(a[0]["negative_ids"])


def test_synthetic_ids_name_the_generation_key() -> None:
    instances, _ = _mix(MixStrategy.SYNTHETIC, 1.0, 2)
    assert instances[0]["negative_ids"] == ["k0#0", "k0#1"] and instances[0]["negatives"] == ["syn 0.0", "syn 0.1"]


def test_check_instances_names_file_and_row() -> None:
    instances, _ = _mix(MixStrategy.HYBRID, 0.5, 4)
    assert mixing.check_instances(instances, "x.parquet", CORPUS) == 4
    short = [dict(i) for i in instances]
    for key in ("negatives", "negative_ids", "negative_sources"):
        short[1][key] = short[1][key][:1]
        short[3][key] = []
    assert mixing.check_instances(short, "x.parquet", CORPUS) == 4  # fewer negatives is fine: the width is the most
    assert mixing.check_instances(short[3:4], "x.parquet", CORPUS, n=2) == 2
    bad = [dict(i) for i in instances]
    bad[2]["negatives"] = bad[2]["negatives"][:3]
    with pytest.raises(DataError, match=r"x.parquet:3: 3 negatives, 4 negative_ids and 4 negative_sources"):
        mixing.check_instances(bad, "x.parquet", CORPUS)
    bad = [dict(i) for i in instances]
    bad[2]["negatives"] = ["", *bad[2]["negatives"][1:]]
    with pytest.raises(DataError, match=r"x.parquet:3: an empty negative text"):
        mixing.check_instances(bad, "x.parquet", CORPUS)
    bad = [dict(i) for i in instances]
    bad[4]["positive_id"] = "nope"
    with pytest.raises(DataError, match=r"x.parquet:5: unknown positive_id 'nope'"):
        mixing.check_instances(bad, "x.parquet", CORPUS)
    with pytest.raises(DataError, match=r"missing columns \['negative_sources'\]"):
        mixing.check_instances([{k: v for k, v in i.items() if k != "negative_sources"} for i in instances], "x.parquet", CORPUS)


@pytest.mark.parametrize("strategy", list(MixStrategy))
@pytest.mark.parametrize("block", [1, 3, 7])
def test_a_mix_in_blocks_is_the_mix_in_one(strategy: MixStrategy, block: int) -> None:
    """The stage mixes a block of pairs at a time: the direct choice spans all pairs, and the random
    draws come from one generator in pair order, so the blocks change nothing."""
    pairs, syn, ret = _inputs(23, n_syn=3, n_ret=5)
    syn = {key: negs for i, (key, negs) in enumerate(syn.items()) if i % 4}  # some pairs without synthetic negatives
    pairs += [{**pairs[0], "positive_id": "d40", "positive": CORPUS["d40"]}]  # q0's second positive, in another block
    cfg = MixConfig(strategy=strategy, ratio=0.6, n_negatives=4, min_negatives=2)
    whole, stats = mixing.mix(pairs, syn, ret, CORPUS, cfg, seed=5, positives={"q1": ["d45"]})
    positives = mixing.query_positives(((p["query_id"], p["positive_id"]) for p in pairs), {"q1": ["d45"]})
    mixer = mixing.Mixer(cfg, 5, len(pairs), positives, list(CORPUS))
    blocks = []
    for start in range(0, len(pairs), block):
        kept = mixer.choose(pairs[start : start + block], syn, ret)
        blocks += mixing.with_texts(kept, {doc: CORPUS[doc] for doc in mixing.corpus_ids(kept)})  # the chosen texts only
    assert blocks == whole and mixer.stats == stats and stats.pairs == len(pairs)


def test_drop_flagged_keeps_the_unflagged_and_drops_pairs_left_empty() -> None:
    syn = {("q0", "d0"): mixing.SyntheticNegs("k0", ("a", "b", "c")), ("q1", "d1"): mixing.SyntheticNegs("k1", ("x",)),
           ("q2", "d2"): mixing.SyntheticNegs("k2", ("y", "z"))}  # fmt: skip
    flags = {("q0", "d0"): (False, True, False, False), ("q1", "d1"): (True,), ("q9", "d9"): (True,)}
    assert mixing.drop_flagged(syn, flags) == {("q0", "d0"): mixing.SyntheticNegs("k0", ("a", "c")),
                                               ("q2", "d2"): syn[("q2", "d2")]}  # fmt: skip
