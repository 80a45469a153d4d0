"""The mine file is written a block of pairs at a time: the same rows, in pair order, whatever the
block size, through a temporary file that only a finished write renames into place."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from syneg_ray import mining, schema
from syneg_ray.config import load_config
from syneg_ray.stages import mine
from tests.make_dataset import make_dataset


def comparable(table: pa.Table) -> list[dict]:
    """The table's rows with nan spelled out, so that rows holding nan compare equal."""

    def plain(value):
        if isinstance(value, float) and math.isnan(value):
            return "nan"
        return [plain(v) for v in value] if isinstance(value, list) else value

    return [{name: plain(value) for name, value in row.items()} for row in table.to_pylist()]


@pytest.mark.parametrize("settings", [["mine.sources=[bm25]"], ["mine.sources=[bm25]", "mine.sampling=random", "mine.dedup_text=true"],
                                      ["mine.sources=[dense,bm25]"]], ids=["top", "random", "dense+bm25"])  # fmt: skip
def test_the_mined_file_and_summary_do_not_depend_on_the_block_size(tmp_path, monkeypatch, settings) -> None:
    """Blocks of 3 pairs (a block boundary inside most queries' pairs, each block searched for its
    own queries) and one block of every pair write the same rows in pair order, and the same
    counters. With dense: the first run encodes the queries on the actors into a file read a block
    at a time, the second (corpus cached) in memory; both give the same rows."""
    folder = make_dataset(tmp_path / "generated", docs=300, queries=25, positives=(1, 4), dev_queries=2, test_queries=2)
    cfg = load_config(None, [f"run.run_dir={tmp_path / 'run'}", f"data.dataset={folder}", f"run.cache_dir={tmp_path / 'cache'}",
                             "mine.num_negatives=5", *settings])  # fmt: skip
    path = Path(cfg.run.run_dir) / schema.MINED
    outputs = {}
    for block in (3, 1 << 20):
        monkeypatch.setattr(mine, "SELECT_BLOCK", block)
        summary = mine.run_mine(cfg)
        summary = {k: v for k, v in summary.items() if k != "seconds"}
        outputs[block] = (pq.read_table(path), summary, pq.ParquetFile(path).metadata)
    (small, small_summary, small_meta), (large, large_summary, large_meta) = outputs[3], outputs[1 << 20]
    pairs = pq.read_table(Path(cfg.run.run_dir) / schema.PAIRS)
    assert small.schema == large.schema == mine.MINED_SCHEMA
    assert small.num_rows == pairs.num_rows > 3 * 5 and small_summary["pairs"] == pairs.num_rows
    assert comparable(small) == comparable(large)
    assert small_summary == large_summary and small_summary["per_source"]["bm25"] > 0
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # the query vectors' file is gone
    # one row per pair, in pair order: the mix stage reads the file alongside the pairs
    assert small.column("query_id").to_pylist() == pairs.column("query_id").to_pylist()
    assert small.column("positive_id").to_pylist() == pairs.column("positive_id").to_pylist()
    # each block was appended as it was selected: one row group a block
    assert small_meta.num_row_groups == math.ceil(pairs.num_rows / 3) and large_meta.num_row_groups == 1
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary file left


def test_block_rows_are_the_per_pair_rows() -> None:
    """`mined_table` over blocks builds, column by column, the rows a per-pair loop builds: all
    positives of the query, the named negatives, and the pair's own positive's score under the
    first source (nan when that source left it unscored or the positive is not in the corpus)."""
    rng = np.random.default_rng(3)
    n_docs, n_queries = 50, 12
    doc_ids = pa.chunked_array([[f"d{i}" for i in range(20)], [f"d{i}" for i in range(20, n_docs)]])
    positives = [np.sort(rng.choice(n_docs, size=rng.integers(1, 5), replace=False)) for _ in range(n_queries)]
    first_pos = [rng.normal(size=len(p)).astype(np.float32) for p in positives]
    first_pos[2][:] = np.nan
    pair_query = np.repeat(np.arange(n_queries), [len(p) for p in positives])
    pair_positive = np.concatenate(positives)
    pair_positive[5] = -1  # a pair whose positive is not in the corpus
    positive_id = [f"d{r}" if r >= 0 else "missing" for r in pair_positive.tolist()]
    query_ids = [f"q{i}" for i in range(n_queries)]
    pairs = pa.table({"query_id": [query_ids[q] for q in pair_query.tolist()], "positive_id": positive_id,
                      "query": ["text"] * len(pair_query)})  # fmt: skip
    inputs = mine.MineInputs(query_ids, ["text"] * n_queries, positives, pair_query, pair_positive, doc_ids, None, 10,
                             Path("corpus.parquet"), "")  # fmt: skip
    selected = []
    for i in range(len(pair_query)):
        k = int(rng.integers(0, 4))  # some pairs get none
        selected.append(mining.Selected(rng.choice(n_docs, size=k, replace=False).tolist(),
                                        [float(np.float32(s)) for s in rng.normal(size=k)],
                                        rng.choice(["bm25", "dense"], size=k).tolist()))  # fmt: skip
    expected = []
    pair_ids = pairs.column("query_id").to_pylist()
    for q, d, sel, i in zip(pair_ids, positive_id, selected, pair_query.tolist(), strict=True):
        pos_ids = [f"d{r}" for r in positives[i]]
        expected.append({"query_id": q, "positive_id": d, "positive_ids": pos_ids,
                         "negative_ids": [f"d{r}" for r in sel.indices], "negative_scores": sel.scores,
                         "positive_score": float(first_pos[i][pos_ids.index(d)]) if d in pos_ids else float("nan"),
                         "source": sel.sources})  # fmt: skip
    ids = doc_ids.combine_chunks()
    blocks = [slice(a, min(a + 4, len(pair_query))) for a in range(0, len(pair_query), 4)]
    got = pa.concat_tables(mine.mined_table(pairs, inputs, ids, b, selected[b], first_pos) for b in blocks)
    assert got.schema == mine.MINED_SCHEMA
    assert comparable(got) == comparable(pa.Table.from_pylist(expected, schema=mine.MINED_SCHEMA))
    assert any(not s.indices for s in selected) and math.isnan(got.column("positive_score")[5].as_py())


def test_a_failed_write_leaves_no_file_and_no_temporary(tmp_path) -> None:
    path = tmp_path / "mine" / "negatives.parquet"
    table = pa.table({"x": [1, 2]})
    with pytest.raises(RuntimeError, match="cut off"), mine.parquet_writer(path, table.schema) as writer:
        writer.write_table(table)
        raise RuntimeError("cut off")
    assert list(path.parent.iterdir()) == []
    with mine.parquet_writer(path, table.schema) as writer:
        writer.write_table(table)
        writer.write_table(table)
        assert not path.exists()  # nothing under the final name until the write is finished
    assert pq.read_table(path).column("x").to_pylist() == [1, 2, 1, 2]
    with pytest.raises(RuntimeError), mine.parquet_writer(path, table.schema) as writer:
        raise RuntimeError("cut off")
    assert pq.read_table(path).num_rows == 4 and [p.name for p in path.parent.iterdir()] == [path.name]
