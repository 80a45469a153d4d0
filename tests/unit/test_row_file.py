"""Rows of a .npy written in any order by the encoder pool's writer, read back by row in any order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from syneg_ray.services.embed import RowFile, _RowWriter


def test_rows_written_in_any_order_read_back_in_any_order(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(97, 5)).astype(np.float32)
    path = tmp_path / "queries.npy.partial"  # any name: the stage's scratch file is not a .npy by name
    writer = _RowWriter(path, 97, 5)
    order = rng.permutation(97)
    for part in np.array_split(order, 7):  # batches arrive out of order, each with scattered rows
        writer.write(part, vectors[part])
    writer.close()
    rows = RowFile(path)
    assert len(rows) == 97 and rows.shape == (97, 5)
    wanted = np.array([5, 6, 7, 96, 0, 6, 40, 41])  # runs, a repeat, the ends
    np.testing.assert_array_equal(rows.rows(wanted), vectors[wanted])
    assert rows.rows(np.array([], dtype=np.int64)).shape == (0, 5)


def test_a_file_that_is_not_float32_rows_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ints.npy"
    np.save(path, np.arange(10))
    with pytest.raises(ValueError, match="not a float32"):
        RowFile(path)
