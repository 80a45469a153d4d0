"""`ensure_pairs`: a resumed run reuses its pairs only when they were built with the same settings."""

from __future__ import annotations

import dataclasses

import pyarrow.parquet as pq

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
