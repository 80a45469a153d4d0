"""Mine stage without Ray: BM25 mining on the SciFact subset, checked over the whole output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from syneg_ray import beir, schema
from syneg_ray.config import load_config
from syneg_ray.errors import ConfigError
from syneg_ray.stages.mine import run_mine


def assert_no_positive_mined(run_dir: Path, folder: Path, split: str = "train") -> list[dict]:
    """Every mined negative of every row is checked against ALL positives of its query in the qrels."""
    qrels, _ = beir.read_qrels(folder, split)
    rows = pq.read_table(run_dir / schema.MINED).to_pylist()
    for row in rows:
        positives = {d for d, rel in qrels[row["query_id"]].items() if rel > 0}
        assert not positives & set(row["negative_ids"]), row
        assert set(row["positive_ids"]) >= positives and row["positive_id"] in positives
        assert (
            len(row["negative_ids"])
            == len(set(row["negative_ids"]))
            == len(row["negative_scores"])
            == len(row["source"])
        )
    return rows


def test_bm25_mining_on_scifact_small(tiny_cfg, scifact_small):
    run, cache = tiny_cfg.run.run_dir, tiny_cfg.run.cache_dir
    overrides = [f"run.run_dir={run}", f"data.dataset={scifact_small}", f"run.cache_dir={cache}", "mine.sources=[bm25]"]
    cfg = load_config(None, [*overrides, "mine.num_negatives=5"])
    summary = run_mine(cfg)
    rows = assert_no_positive_mined(Path(cfg.run.run_dir), scifact_small)
    pairs = pq.read_table(Path(cfg.run.run_dir) / schema.PAIRS)
    assert len(rows) == pairs.num_rows == summary["pairs"]
    full = [r for r in rows if len(r["negative_ids"]) == 5]
    assert len(full) >= 0.5 * len(rows) and summary["short_pairs"] == sum(
        1 for q in {r["query_id"]: r for r in rows}.values() if len(q["negative_ids"]) < 5
    )
    for row in full:  # the guard held: every negative scored at most (1 - 0.05) x the lowest positive
        assert max(row["negative_scores"]) <= 0.95 * row["positive_score"] + 1e-4 or len(row["positive_ids"]) > 1
        assert set(row["source"]) == {"bm25"}


def test_mine_config_rejects_impossible_window():
    with pytest.raises(ConfigError, match="raise mine.range_max"):
        load_config(None, ["mine.range_max=5", "mine.num_negatives=7"])
    with pytest.raises(ConfigError, match="flat, ivf or hnsw"):
        load_config(None, ["mine.index=pq"])


def test_positive_width_counts_text_duplicates_without_scanning_the_corpus() -> None:
    """The window is widened by what a query's positives occupy, duplicates of their text included."""
    import numpy as np

    from syneg_ray.stages.mine import _expanded

    rng = np.random.default_rng(0)
    groups = rng.integers(0, 50, size=400)
    groups = np.unique(groups, return_inverse=True)[1]  # dense group ids, as mining.text_groups makes them
    sizes = np.bincount(groups)
    for _ in range(20):
        rows = rng.choice(400, size=rng.integers(1, 6), replace=False)
        assert _expanded(rows, groups, sizes) == int(np.isin(groups, groups[rows]).sum())
    assert _expanded(np.array([3, 7]), None, None) == 2


def test_lexical_hits_are_scored_by_the_encoder_for_the_guard() -> None:
    """Every BM25 hit gets its query-document dot product, pads get nan, and the positives' scores are the encoder's."""
    import numpy as np

    from syneg_ray import mining
    from syneg_ray.services.sharded_search import score_rows
    from syneg_ray.stages import mine

    rng = np.random.default_rng(0)
    corpus, queries = rng.normal(size=(700, 8)).astype(np.float32), rng.normal(size=(300, 8)).astype(np.float32)
    hits = rng.integers(-1, 700, size=(300, 5))  # some pads
    positives = [np.sort(rng.choice(700, size=1 + i % 3, replace=False)) for i in range(300)]

    class OneShard:  # DenseShards' scoring over an array, without Ray
        def score(self, q, rows):
            return score_rows(corpus, 0, q, rows)

    block = mine.QueryBlock(np.arange(300), ["text"] * 300, positives, mine.Embedded(queries, OneShard))
    bm25 = mining.Candidates("bm25", rng.random((300, 5)).astype(np.float32), hits, np.zeros(300, np.float32))
    source = mine.judged_by_encoder(mine.Source(bm25, [np.zeros(len(p), np.float32) for p in positives]), block)
    judged = source.candidates
    expected = np.where(hits >= 0, np.einsum("qkd,qd->qk", corpus[np.maximum(hits, 0)], queries), np.nan)
    np.testing.assert_allclose(judged.dense_scores, expected, rtol=1e-5, atol=1e-5)
    pos_scores = [corpus[p] @ q for q, p in zip(queries, positives, strict=True)]
    for got, want in zip(block.dense_positive_scores, pos_scores, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(judged.positive_scores, [s.min() for s in pos_scores], rtol=1e-5, atol=1e-5)
    assert source.guard_positive_scores is block.dense_positive_scores  # each pair's reference is then taken on the dense scale
    assert judged.scores is bm25.scores and judged.judged_dense


def test_positives_are_scored_a_block_of_queries_at_a_time(monkeypatch) -> None:
    """Positives go to the shards in blocks as wide as the block's widest query, not the widest of all."""
    from syneg_ray.services.sharded_search import score_rows
    from syneg_ray.stages import mine

    monkeypatch.setattr(mine, "POSITIVE_BLOCK", 4)
    rng = np.random.default_rng(1)
    corpus, queries = rng.normal(size=(100, 4)).astype(np.float32), rng.normal(size=(10, 4)).astype(np.float32)
    positives = [np.arange(40) if i == 9 else np.array([i]) for i in range(10)]  # one wide query, last
    shapes = []

    class OneShard:
        def score(self, q, rows):
            shapes.append(rows.shape)
            return score_rows(corpus, 0, q, rows)

    scored = mine.Embedded(queries, OneShard).positive_scores(queries, positives)
    assert shapes == [(4, 1), (4, 1), (2, 40)]
    assert [len(s) for s in scored] == [len(p) for p in positives]
    np.testing.assert_allclose(scored[9], corpus[:40] @ queries[9], rtol=1e-5)


def test_guard_scorer_resolves_and_rejects_unknown_values() -> None:
    assert load_config(None, []).mine.dense_guard  # dense is a default source
    assert not load_config(None, ["mine.sources=[bm25]"]).mine.dense_guard
    assert load_config(None, ["mine.sources=[bm25]", "mine.guard_scorer=dense"]).mine.dense_guard
    assert not load_config(None, ["mine.guard_scorer=source"]).mine.dense_guard
    with pytest.raises(ConfigError, match="mine.guard_scorer = 'bm25'; choose auto, dense or source"):
        load_config(None, ["mine.guard_scorer=bm25"])


def test_shard_actors_that_cannot_all_start_on_one_node_are_refused_in_one_line(ray_local) -> None:
    """Dense and BM25 shard actors run side by side: asking for more CPUs than the node has would
    wait forever, so it is a one-line error naming the settings; what fits passes."""
    from syneg_ray.stages import mine

    cpus = ray_local.cluster_resources()["CPU"]
    too_many = load_config(None, ["mine.sources=[dense,bm25]", f"mine.shards={int(cpus)}", "mine.bm25_shards=1", "mine.shard_cpus=1"])
    with pytest.raises(ConfigError) as excinfo:
        mine.check_actor_room(too_many)
    message = str(excinfo.value)
    assert "\n" not in message and "mine.shard_cpus" in message and f"{int(cpus) + 1} shard actors" in message
    mine.check_actor_room(load_config(None, ["mine.sources=[dense,bm25]", "mine.shard_cpus=1"]))  # 2 actors fit
    mine.check_actor_room(load_config(None, ["mine.sources=[bm25]", "mine.guard_scorer=source", f"mine.shards={int(cpus) + 5}"]))  # no dense shards
