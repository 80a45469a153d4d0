"""The corpus's texts by row: what the store returns is what the corpus Parquet holds."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from syneg_ray import dataset, docstore
from syneg_ray.config import from_dict


def test_texts_by_row_in_any_order_match_the_written_ones(tmp_path: Path) -> None:
    batches = [["alpha", "", "βeta ✓ naïve"], ["x" * 10_000], ["last"]]
    path = tmp_path / "store.texts"
    assert docstore.write(iter(batches), path) == 5
    store = docstore.DocStore(path)
    flat = [t for b in batches for t in b]
    assert len(store) == 5
    assert store.texts([4, 0, 2, 2, 1, 3]) == [flat[4], flat[0], flat[2], flat[2], flat[1], flat[3]]
    assert store.texts([]) == []
    with pytest.raises(IndexError, match="out of range"):
        store.texts([5])
    store.close()


def test_a_file_that_is_not_a_store_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "broken.texts"
    path.write_bytes(b"half a store")
    with pytest.raises(ValueError, match="not a text store"):
        docstore.DocStore(path)


def test_the_corpus_store_is_built_once_beside_the_parquet_and_agrees_with_it(scifact: Path, tmp_path: Path) -> None:
    cfg = from_dict({"data": {"dataset": str(scifact)}, "run": {"cache_dir": str(tmp_path / "cache")}})
    prepared = dataset.prepare(cfg)
    corpus = pq.read_table(prepared.corpus_parquet)
    rows = [5182, 0, 777, 4096, 2047, 2048]
    store = dataset.open_docstore(prepared)
    assert store.texts(rows) == [corpus.column("text")[r].as_py() for r in rows]
    built = store.path.stat().st_mtime_ns
    store.close()
    assert dataset.open_docstore(prepared).path.stat().st_mtime_ns == built  # found, not rebuilt
    ids = corpus.column("doc_id")
    assert dataset.rows_of(ids, [ids[r].as_py() for r in rows] + ["not-an-id"]).tolist() == [*rows, -1]
