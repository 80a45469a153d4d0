"""`run_mix` a block of pairs at a time: any block size writes the instances and statistics of one
pass over all pairs (the mix before it streamed), row for row, and the output stays atomic."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from syneg_ray import mixing, probes, prompts, schema
from syneg_ray import synthetic_store as store
from syneg_ray.config import MixConfig, MixStrategy, PipelineConfig
from syneg_ray.dataset import ensure_pairs, read_corpus
from syneg_ray.errors import DataError
from syneg_ray.stages import mix
from tests.stages.test_train_mix import write_inputs

STRATEGIES = {
    "hybrid": MixConfig(strategy=MixStrategy.HYBRID, ratio=0.5, n_negatives=4),
    "hybrid-r1": MixConfig(strategy=MixStrategy.HYBRID, ratio=1.0, n_negatives=4, min_negatives=2),
    "direct": MixConfig(strategy=MixStrategy.DIRECT, ratio=0.7, n_negatives=3),
    "synthetic": MixConfig(strategy=MixStrategy.SYNTHETIC, ratio=1.0, n_negatives=3, min_negatives=3),
    "retrieved": MixConfig(strategy=MixStrategy.RETRIEVED, ratio=0.0, n_negatives=3),
    "random": MixConfig(strategy=MixStrategy.RANDOM, n_negatives=5),
}


def _with(cfg: PipelineConfig, mix_cfg: MixConfig, seed: int = 3) -> PipelineConfig:
    # the guard off: it encodes on Ray actors (tests/integration/test_mix_guard.py); the last test fakes its scores
    return dataclasses.replace(cfg, mix=dataclasses.replace(mix_cfg, guard_synthetic=False),
                               run=dataclasses.replace(cfg.run, seed=seed))  # fmt: skip


def _mixed(cfg: PipelineConfig, monkeypatch, block: int, row_group: int = 4) -> tuple[pa.Table, dict]:
    """The instances file and stats.json of a mix at `block` pairs a block."""
    monkeypatch.setattr(mix, "MIX_BLOCK", block)
    monkeypatch.setattr(mix, "INSTANCE_ROW_GROUP", row_group)
    returned = mix.run_mix(cfg)
    folder = Path(cfg.run.run_dir) / "mix"
    stats = json.loads((folder / "stats.json").read_text(encoding="utf-8"))
    assert stats == returned
    assert sorted(p.name for p in folder.iterdir()) == ["instances.parquet", "stats.json"]  # no temporary file left
    # row groups of INSTANCE_ROW_GROUP across the blocks' boundaries, as one write of every instance made them
    meta = pq.ParquetFile(folder / "instances.parquet").metadata
    full, rest = divmod(meta.num_rows, row_group)
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [row_group] * full + ([rest] if rest else [])
    return pq.read_table(folder / "instances.parquet"), stats


def _one_pass(cfg: PipelineConfig) -> tuple[list[dict], dict]:
    """The mix as one pass over every pair: whole input files, the whole corpus, `mixing.mix`."""
    prepared, pairs_path = ensure_pairs(cfg)
    run_dir = Path(cfg.run.run_dir)
    pairs = pq.read_table(pairs_path).to_pylist()
    corpus = read_corpus(prepared)
    need_syn, need_ret = mix.sources_needed(cfg)
    current = frozenset(store.pair_key(cfg, p["query_id"], p["positive_id"]) for p in pairs)
    llm = (cfg.synthesize.model, prompts.PROMPT_VERSION)
    synthetic = mix.read_synthetic(run_dir / schema.SYNTHETIC, llm, current) if need_syn else {}
    mined, positives = mix.read_mined(run_dir / schema.MINED, corpus) if need_ret else ({}, {})
    instances, stats = mixing.mix(pairs, synthetic, mined, corpus, cfg.mix, cfg.run.seed, positives)
    return instances, stats.as_dict()


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_any_block_size_writes_the_one_pass_instances_and_stats(tiny_cfg, monkeypatch, strategy: str) -> None:
    write_inputs(tiny_cfg, n_syn=3, n_ret=5)  # synthesis in two part files, every fifth pair failed
    cfg = _with(tiny_cfg, STRATEGIES[strategy])
    small, small_stats = _mixed(cfg, monkeypatch, block=3)
    large, large_stats = _mixed(cfg, monkeypatch, block=100_000)
    assert small.num_rows > 8 and small.to_pylist() == large.to_pylist()
    assert small.schema == large.schema == mix.INSTANCE_SCHEMA
    assert small_stats == large_stats
    instances, stats = _one_pass(cfg)
    assert small.to_pylist() == instances
    assert {k: v for k, v in small_stats.items() if k in stats} == stats


def test_the_seed_still_decides_the_draws(tiny_cfg, monkeypatch) -> None:
    write_inputs(tiny_cfg)
    for strategy in ("direct", "random"):
        at_3, _ = _mixed(_with(tiny_cfg, STRATEGIES[strategy], seed=3), monkeypatch, block=3)
        at_4, _ = _mixed(_with(tiny_cfg, STRATEGIES[strategy], seed=4), monkeypatch, block=3)
        assert at_3.column("negative_ids").to_pylist() != at_4.column("negative_ids").to_pylist()


def _shuffled_mine(cfg: PipelineConfig) -> list[dict]:
    """The mine file rewritten out of pair order, with a row of a pair not in the run and a second,
    later row of the first pair (the later one wins, as it did)."""
    path = Path(cfg.run.run_dir) / schema.MINED
    rows = pq.read_table(path).to_pylist()
    rng = np.random.default_rng(0)
    shuffled = [rows[i] for i in rng.permutation(len(rows))]
    later = dict(rows[0], negative_ids=list(reversed(rows[0]["negative_ids"])), source=list(reversed(rows[0]["source"])))
    stranger = dict(rows[1], query_id="not-a-train-query")
    shuffled = shuffled + [stranger, later]
    pq.write_table(pa.Table.from_pylist(shuffled), path)
    return shuffled


def test_a_mine_file_out_of_pair_order_is_looked_up_by_pair(tiny_cfg, monkeypatch) -> None:
    """`syneg mine` writes pairs in pair order: its file is read alongside the pairs, once (after a
    pass over its id columns that checks the order). A file in another order is split by block once:
    a pass over its ids, then one over its rows for each SPILL_WRITERS blocks (here 4), not a scan a block."""
    write_inputs(tiny_cfg, synthetic=False, n_ret=5)
    cfg = _with(tiny_cfg, STRATEGIES["retrieved"])
    scans: list[Path] = []
    scan = mix._scan
    monkeypatch.setattr(mix, "_scan", lambda dataset, path, *a, **k: scans.append(path) or scan(dataset, path, *a, **k))
    in_order, stats = _mixed(cfg, monkeypatch, block=3)
    assert len(scans) == 2 and stats["pairs"] > 3 * 2
    _shuffled_mine(cfg)
    scans.clear()
    monkeypatch.setattr(mix, "SPILL_WRITERS", 4)
    shuffled, stats = _mixed(cfg, monkeypatch, block=3)
    blocks = math.ceil(stats["pairs"] / 3)
    assert len(scans) == 1 + math.ceil(blocks / 4) < blocks
    assert shuffled.to_pylist() == _one_pass(cfg)[0]
    first = shuffled.to_pylist()[0]
    assert first["negative_ids"] != in_order.to_pylist()[0]["negative_ids"]  # the later row of the pair won
    assert shuffled.to_pylist()[1:] == in_order.to_pylist()[1:]
    assert stats["instances"] == stats["pairs"] == in_order.num_rows


def test_a_block_reads_only_the_synthesis_parts_holding_its_pairs(tiny_cfg, monkeypatch) -> None:
    """Synthesis parts of 2 rows in pair order, and a later part holding a second row of the first
    pair (a retry): a block of 3 pairs reads the 2 or 3 parts holding its pairs, never the whole
    folder, and mixes what one pass over every pair mixes."""
    write_inputs(tiny_cfg, n_syn=3)
    folder = Path(tiny_cfg.run.run_dir) / schema.SYNTHETIC
    rows = [r for part in sorted(folder.glob("*.parquet")) for r in pq.read_table(part).to_pylist()]
    for part in folder.glob("*.parquet"):
        part.unlink()
    for i in range(0, len(rows), 2):
        pq.write_table(pa.Table.from_pylist(rows[i : i + 2]), folder / f"part-{i:04d}.parquet")
    # the first pair failed in its first part (write_inputs fails every fifth) and succeeded later
    retry = dict(rows[0], key="k0-again", status="ok", negatives=[n.replace("synthetic", "rewritten") for n in rows[1]["negatives"]])
    pq.write_table(pa.Table.from_pylist([retry]), folder / "part-9999.parquet")
    cfg = _with(tiny_cfg, STRATEGIES["synthetic"])
    read: list[int] = []
    scan = mix._scan
    monkeypatch.setattr(mix, "_scan", lambda dataset, *a, **k: read.append(len(dataset.files)) or scan(dataset, *a, **k))
    mixed, stats = _mixed(cfg, monkeypatch, block=3)
    parts = -(-len(rows) // 2) + 1
    assert len(read) == -(-stats["pairs"] // 3) and max(read) <= 3 < parts  # a scan a block, of its parts only
    assert read[0] == 3  # the first block's pairs sit in two parts, and the retry's part
    assert mixed.to_pylist() == _one_pass(cfg)[0]
    assert all(text.startswith("rewritten") for text in mixed.to_pylist()[0]["negatives"])


def _one_synthesis_file(cfg: PipelineConfig) -> None:
    """The synthesis parts rewritten as one file of every pair in shuffled order, with a second,
    later row of an ok pair."""
    folder = Path(cfg.run.run_dir) / schema.SYNTHETIC
    rows = [r for part in sorted(folder.glob("*.parquet")) for r in pq.read_table(part).to_pylist()]
    for part in folder.glob("*.parquet"):
        part.unlink()
    rows = [rows[i] for i in np.random.default_rng(0).permutation(len(rows))]
    first = next(r for r in rows if r["status"] == "ok")
    rows.append(dict(first, key=first["key"] + "-again", negatives=["a rewritten negative of length", "two", "three"]))
    pq.write_table(pa.Table.from_pylist(rows), folder / "part-0.parquet")


@pytest.mark.parametrize(("buffer", "writers"), [(64 << 20, 256), (1, 2)], ids=["one row group a block", "row groups, passes"])
def test_one_file_of_every_pair_is_split_by_block_once(tiny_cfg, monkeypatch, buffer: int, writers: int) -> None:
    """A hand-written synthesis file of every pair in shuffled order, with a second row of a pair
    after its first: it is split into a file a block once, each block reads only its own, and the
    mix equals one pass over the file (the later row wins, so the split kept the file's order). The split files are gone after the
    mix. A buffer of 1 byte writes every added row out at once (row groups); 2 writers, a pass over
    the file for every 2 blocks."""
    write_inputs(tiny_cfg, n_syn=3)
    _one_synthesis_file(tiny_cfg)
    monkeypatch.setattr(mix, "SPILL_BUFFER", buffer)
    monkeypatch.setattr(mix, "SPILL_WRITERS", writers)
    cfg = _with(tiny_cfg, STRATEGIES["synthetic"])
    read: list[list[str]] = []
    scan = mix._scan
    monkeypatch.setattr(mix, "_scan", lambda dataset, *a, **k: read.append(list(dataset.files)) or scan(dataset, *a, **k))
    mixed, stats = _mixed(cfg, monkeypatch, block=3)
    assert len(read) == -(-stats["pairs"] // 3)  # a scan a block
    assert all(len(files) == 1 and ".by-block" in files[0] for files in read)  # of its own split file
    assert len({files[0] for files in read}) == len(read)
    assert mixed.to_pylist() == _one_pass(cfg)[0]
    assert any(i["negatives"][0] == "a rewritten negative of length" for i in mixed.to_pylist())


def test_two_wide_inputs_share_one_index_of_the_pairs_blocks(tiny_cfg, monkeypatch) -> None:
    """A hybrid mix of one synthesis file and a mine file out of pair order splits both by block,
    from one pair -> block index built once (20 bytes a pair: 2 GB at 100M pairs)."""
    write_inputs(tiny_cfg, n_syn=3)
    _one_synthesis_file(tiny_cfg)
    cfg = _with(tiny_cfg, STRATEGIES["hybrid"])
    _shuffled_mine(cfg)
    built, split = [], []
    index, split_by_block = mix._BlockOf.of, mix.split_by_block
    monkeypatch.setattr(mix._BlockOf, "of", lambda pairs_path: built.append(pairs_path) or index(pairs_path))
    monkeypatch.setattr(mix, "split_by_block", lambda scan, rows, folder, stem, **k: split.append(stem) or split_by_block(scan, rows, folder, stem, **k))
    mixed, _ = _mixed(cfg, monkeypatch, block=3)
    assert sorted(split) == ["mined", "synthetic-000000"] and len(built) == 1
    assert mixed.to_pylist() == _one_pass(cfg)[0]


@pytest.mark.parametrize("order", ["pair order", "shuffled"])
def test_an_unknown_mined_id_in_a_later_block_names_its_file_row(tiny_cfg, monkeypatch, order: str) -> None:
    write_inputs(tiny_cfg, synthetic=False)
    cfg = _with(tiny_cfg, STRATEGIES["retrieved"])
    path = Path(cfg.run.run_dir) / schema.MINED
    rows = _shuffled_mine(cfg) if order == "shuffled" else pq.read_table(path).to_pylist()
    rows[10]["negative_ids"] = [*rows[10]["negative_ids"][:-1], "no-such-doc"]  # row 11 of the file, block 4 of 3 pairs
    pq.write_table(pa.Table.from_pylist(rows), path)
    monkeypatch.setattr(mix, "MIX_BLOCK", 3)
    with pytest.raises(DataError, match=r"mine/negatives.parquet:11: unknown negative id 'no-such-doc'"):
        mix.run_mix(cfg)
    assert not (path.parent.parent / "mix").exists() or not list((path.parent.parent / "mix").iterdir())


def test_an_interrupted_mix_leaves_the_last_output_whole(tiny_cfg, monkeypatch) -> None:
    """Blocks are appended to a temporary file renamed into place at the end: a mix stopped in its
    third block leaves the previous instances as they were, and no part file."""
    write_inputs(tiny_cfg)
    cfg = _with(tiny_cfg, STRATEGIES["hybrid"])
    before, _ = _mixed(cfg, monkeypatch, block=3)
    calls = {"n": 0}
    choose = mixing.Mixer.choose

    def stopped_in_block_3(self, *args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return choose(self, *args)

    monkeypatch.setattr(mixing.Mixer, "choose", stopped_in_block_3)
    with pytest.raises(KeyboardInterrupt):
        mix.run_mix(_with(tiny_cfg, STRATEGIES["retrieved"]))
    folder = Path(cfg.run.run_dir) / "mix"
    assert sorted(p.name for p in folder.iterdir()) == ["instances.parquet", "stats.json"]
    assert pq.read_table(folder / "instances.parquet").to_pylist() == before.to_pylist()


def test_the_guard_flags_whole_and_cached_apply_per_block(tiny_cfg, monkeypatch) -> None:
    """The guard scores every synthetic negative in one pass and caches the flags by the texts: a mix
    at another block size reads them from the cache and drops the same negatives."""
    from syneg_ray import registry
    from syneg_ray.services import embed

    write_inputs(tiny_cfg, n_syn=3)
    cfg = dataclasses.replace(_with(tiny_cfg, STRATEGIES["hybrid"]), mix=dataclasses.replace(STRATEGIES["hybrid"], guard_synthetic=True))
    monkeypatch.setattr(registry, "resolve_model", lambda name, cache: "a-hub-model")
    monkeypatch.setattr(embed, "backend_of", lambda e, path: embed.Backend.TORCH)
    scored: list[int] = []

    def second_negative_flagged(cfg, model_path, guarded, negatives, folder):
        scored.append(len(guarded))
        flags = np.zeros((len(guarded), max(len(n) for n in negatives)), dtype=bool)
        flags[::2, 1] = True  # every other pair's second negative restates its positive
        return flags

    monkeypatch.setattr(mix, "_guard_flags", second_negative_flagged)
    small, small_stats = _mixed(cfg, monkeypatch, block=3)
    large, large_stats = _mixed(cfg, monkeypatch, block=100_000)
    synthesized = len([i for i in range(small_stats["pairs"]) if i % 5])
    assert scored == [synthesized]  # once, every synthesized pair; the second mix read the cache
    assert small.to_pylist() == large.to_pylist() and small_stats == large_stats
    assert small_stats["synthetic_guarded_out"] == (synthesized + 1) // 2
    # write_inputs' second negative of pair i is "synthetic passage i.1 about ...": left in the unflagged pairs only
    assert sum(any(".1 about" in t for t in r["negatives"]) for r in small.to_pylist()) == synthesized // 2


def test_negatives_the_judge_scored_are_guarded_from_their_scores_without_encoding(tiny_cfg, monkeypatch) -> None:
    """Synthesis with the judge records each kept negative's score and its positive's under this
    run's encoder (the key says so): the guard flags from them, a block at a time, and encodes
    only rows without them (here: a pair written under another seed's key)."""
    from syneg_ray import registry
    from syneg_ray.services import embed

    cfg = dataclasses.replace(_with(tiny_cfg, STRATEGIES["synthetic"]), mix=dataclasses.replace(STRATEGIES["synthetic"], min_negatives=1,
                              guard_synthetic=True))  # fmt: skip
    write_inputs(cfg, synthetic=False)
    _, pairs_path = ensure_pairs(cfg)
    pairs = pq.read_table(pairs_path).to_pylist()
    run_dir = Path(cfg.run.run_dir)
    rows = []
    for i, p in enumerate(pairs):
        judged = i > 0  # pair 0: a row of another seed, with no scores this run may trust
        key = store.pair_key(cfg, p["query_id"], p["positive_id"]) if judged else "another-seed"
        # positive 0.8, margin 0.05: the bound is 0.76, so 0.77 is flagged and 0.75 kept
        rows.append({"key": key, "query_id": p["query_id"], "positive_id": p["positive_id"], "status": "ok",
                     "negatives": [f"judged {i}.{j}" for j in range(3)],
                     "negative_scores": [0.5, 0.77, 0.75] if judged else [math.nan] * 3, "positive_score": 0.8})  # fmt: skip
    (run_dir / schema.SYNTHETIC).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), run_dir / schema.SYNTHETIC)
    monkeypatch.setattr(registry, "resolve_model", lambda name, cache: "a-hub-model")
    monkeypatch.setattr(embed, "backend_of", lambda e, path: embed.Backend.TORCH)
    encoded: list[list[tuple[str, ...]]] = []

    def encode(cfg, model_path, guarded, negatives, folder):
        encoded.append(negatives)
        return np.zeros((len(guarded), 3), dtype=bool)

    monkeypatch.setattr(mix, "_guard_flags", encode)
    table, stats = _mixed(cfg, monkeypatch, block=2)
    assert encoded == [[("judged 0.0", "judged 0.1", "judged 0.2")]]  # only the row without trusted scores
    assert stats["synthetic_guarded_out"] == len(pairs) - 1  # each judged pair's 0.77
    kept = {(r["query_id"], r["positive_id"]): sorted(r["negatives"]) for r in table.to_pylist()}
    assert kept == {(p["query_id"], p["positive_id"]): [f"judged {i}.{j}" for j in ((0, 1, 2) if i == 0 else (0, 2))]
                    for i, p in enumerate(pairs)}  # fmt: skip


def test_scores_count_only_when_whole_and_the_rows_are_this_runs() -> None:
    row = {"key": "k", "negatives": ["a", " ", "c"], "negative_scores": [0.1, 0.2, 0.3], "positive_score": 0.9}
    negs = mix._negatives_of(row, judged_here=True)
    assert negs.texts == ("a", "c") and negs.scores == (0.1, 0.3) and negs.judged  # a blank text takes its score along
    assert not mix._negatives_of(row, judged_here=False).judged  # another run's key: its encoder may not be ours
    assert not mix._negatives_of({**row, "negative_scores": [0.1]}, judged_here=True).judged  # misaligned: ignored
    assert not mix._negatives_of({**row, "positive_score": None}, judged_here=True).judged
    assert mix._negatives_of({**row, "negatives": ["", None]}, judged_here=True) is None
    assert probes.flags_from_scores(negs.positive_score, negs.scores, 0.05).tolist() == [False, False]
    assert probes.flags_from_scores(0.9, (0.86,), 0.05).tolist() == [True]
