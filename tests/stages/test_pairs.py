"""`ensure_pairs`: a resumed run reuses its pairs only when they were built with the same settings."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from syneg_ray import schema
from syneg_ray.dataset import ensure_pairs


def _pair_ids(cfg) -> list[tuple[str, str]]:
    _, path = ensure_pairs(cfg)
    return [(r["query_id"], r["positive_id"]) for r in pq.read_table(path).to_pylist()]


def test_changed_limit_rebuilds_the_pairs(tiny_cfg):
    full = _pair_ids(tiny_cfg)
    limited = _pair_ids(dataclasses.replace(tiny_cfg, data=dataclasses.replace(tiny_cfg.data, limit=5)))
    assert limited == full[:5]  # not the 'full' list left on disk by the first call
    assert _pair_ids(tiny_cfg) == full


def test_run_seed_keeps_the_pairs_and_split_seed_changes_the_dev_split(tiny_cfg):
    full = _pair_ids(tiny_cfg)
    assert _pair_ids(dataclasses.replace(tiny_cfg, run=dataclasses.replace(tiny_cfg.run, seed=7))) == full
    resplit = _pair_ids(dataclasses.replace(tiny_cfg, data=dataclasses.replace(tiny_cfg.data, split_seed=7, dev_fraction=0.3)))
    assert resplit != full


def test_a_rebuild_killed_midway_is_not_trusted_by_the_next_run(tiny_cfg, monkeypatch):
    """Config A's pairs are on disk; a run with config B dies while writing its pairs. Back at A, the
    half-replaced files must be rebuilt, not taken for A's because A's record is still there."""
    from syneg_ray import dataset

    full = _pair_ids(tiny_cfg)
    limited_cfg = dataclasses.replace(tiny_cfg, data=dataclasses.replace(tiny_cfg.data, limit=5))
    real_write = dataset.write_pairs

    def dies_after_the_pairs(*args):
        real_write(*args)
        raise KeyboardInterrupt  # killed before the new record is written

    monkeypatch.setattr(dataset, "write_pairs", dies_after_the_pairs)
    with pytest.raises(KeyboardInterrupt):  # B's pairs were written: the kill happened where it should
        ensure_pairs(limited_cfg)
    monkeypatch.setattr(dataset, "write_pairs", real_write)
    assert pq.read_table(Path(tiny_cfg.run.run_dir) / schema.PAIRS).num_rows == 5 < len(full)  # B's files on disk under A's record
    assert _pair_ids(tiny_cfg) == full
