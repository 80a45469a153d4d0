"""Ray Train streams the instances as a Ray dataset split across workers: each worker reads only its
shard, both run the same number of full steps when the count does not divide, and the loss is still
gathered across them."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from syneg_ray import schema
from syneg_ray.config import MixConfig, MixStrategy
from syneg_ray.model import build_tiny
from syneg_ray.registry import resolve_model
from syneg_ray.stages.mix import run_mix
from syneg_ray.stages.train.loop import SHARDS_DIR, worker_records
from syneg_ray.stages.train.trainer import run_train
from tests.stages.test_train_mix import write_inputs


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(build_tiny(tmp_path_factory.mktemp("tiny") / "st", resolve_model("minilm")))


def test_two_workers_read_only_their_shard_take_equal_steps_and_gather(tiny_cfg, ray_local, tiny_model) -> None:
    train = {"model": tiny_model, "workers": 2, "epochs": 2, "learning_rate": 1e-3, "max_seq_length": 32,
             "grad_var_window": 2, "dev_eval": False, "cpus_per_worker": 1.0}  # fmt: skip
    cfg = dataclasses.replace(tiny_cfg, mix=MixConfig(strategy=MixStrategy.RETRIEVED, ratio=0.0, n_negatives=2),
                              train=dataclasses.replace(tiny_cfg.train, **train))  # fmt: skip
    write_inputs(cfg, synthetic=False)
    run_mix(cfg)
    n = pq.ParquetFile(Path(cfg.run.run_dir) / schema.INSTANCES).metadata.num_rows
    batch = next(b for b in (3, 4, 5, 7) if n % (2 * b) and (n // 2) % b)  # a remainder on every worker
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=batch))
    summary = run_train(cfg)

    steps = n // (2 * batch)
    records = worker_records(Path(cfg.run.run_dir) / "train", SHARDS_DIR)
    assert sorted((r["epoch"], r["rank"]) for r in records) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for epoch in (0, 1):
        ranks = {r["rank"]: r for r in records if r["epoch"] == epoch}
        assert ranks[0]["steps"] == ranks[1]["steps"] == steps  # the same number of full steps
        # Ray's equal split: floor(n / 2) rows each, so together all but n % 2, and never the whole file
        assert ranks[0]["rows"] == ranks[1]["rows"] == n // 2
        assert ranks[0]["pid"] != ranks[1]["pid"]
        # the gathered loss is the mean over both workers' queries: the same number on both
        assert ranks[0]["loss"] == pytest.approx(ranks[1]["loss"], rel=1e-6)
    history = json.loads((Path(cfg.run.run_dir) / "train" / "history.json").read_text())["steps"]
    assert len(history) == 2 * steps and [e["steps"] for e in summary["epochs"]] == [steps, steps]


def test_a_step_budget_stops_training_and_sizes_the_schedule(tmp_path, tiny_model) -> None:
    from syneg_ray.config import load_config
    from syneg_ray.stages.train.local import train_local

    cfg = load_config(None, ["train.batch_size=2", "train.epochs=2", "train.max_steps=3", "train.max_seq_length=16",
                             "train.grad_var_window=0", "train.warmup_ratio=0"])  # fmt: skip
    rows = [{"query": f"query {i}", "positive": f"positive {i}", "negatives": [f"negative {i}"]} for i in range(10)]
    out = train_local(cfg, rows, tiny_model, tmp_path / "model")
    assert [s["step"] for s in out["steps"]] == [1, 2, 3]  # 5 steps an epoch, 10 planned: 3 taken
    assert [e["steps"] for e in out["epochs"]] == [3]  # the second epoch does not start
    assert out["steps"][-1]["lr"] == pytest.approx(2e-5 / 3)  # linear decay over the 3 planned steps, not 10

    cfg = load_config(None, ["train.batch_size=2", "train.epochs=3", "train.max_steps=7", "train.max_seq_length=16",
                             "train.grad_var_window=0", "train.warmup_ratio=0"])  # fmt: skip
    out = train_local(cfg, rows, tiny_model, tmp_path / "model-7")
    assert [e["steps"] for e in out["epochs"]] == [5, 2]  # the budget ends within the second epoch


class _Split:
    """What `ShardStream` reads of a Ray Data split: `iter_batches`, here over a table in memory."""

    def __init__(self, table):
        self.table = table

    def iter_batches(self, batch_size: int, **_) -> list:
        return [self.table.slice(start, batch_size) for start in range(0, self.table.num_rows, batch_size)]


def test_a_shard_past_the_step_budget_is_read_to_its_end_but_not_trained_on() -> None:
    import pyarrow as pa

    from syneg_ray.stages.train.loop import ShardStream

    table = pa.table({"query": [f"q{i}" for i in range(11)], "positive": [f"p{i}" for i in range(11)],
                      "negatives": [[f"n{i}"] for i in range(11)]})  # fmt: skip
    stream = ShardStream(_Split(table), n=22, width=1)  # 22 instances on 2 workers: 11 each, 5 full batches of 2
    batches = list(stream.epoch(0, batch_size=2, world=2, rank=0, seed=0, steps=2))
    assert [queries for queries, _ in batches] == [["q0", "q1"], ["q2", "q3"]]
    assert batches[0][1] == [["p0", "n0"], ["p1", "n1"]]
    assert stream.rows_read == 11  # the split is still run to its end, so its next epoch can start
    with pytest.raises(RuntimeError, match="gave 5 full batches of 2 in epoch 1, where 6 were planned"):
        list(ShardStream(_Split(table), n=24, width=1).epoch(0, batch_size=2, world=2, rank=0, seed=0, steps=1))


def test_the_instances_are_read_while_the_workers_hold_every_cpu(ray_local, tmp_path: Path) -> None:
    """Train workers (and Tune's trials beside them) may hold every whole CPU of the cluster: reading
    the instances must not wait for one (Ray Data's newer Parquet reader lists the files in a task
    of 1 CPU, which then never starts)."""
    import threading

    import pyarrow as pa
    from ray.util.placement_group import placement_group, remove_placement_group

    from syneg_ray.stages.train.trainer import instances_dataset

    path = tmp_path / "instances.parquet"
    pq.write_table(pa.table({"query": [f"q{i}" for i in range(40)]}), path, row_group_size=16)  # 3 row groups
    held = placement_group([{"CPU": ray_local.cluster_resources()["CPU"]}])  # every CPU, as the workers would
    ray_local.get(held.ready(), timeout=60)
    try:
        rows: list[dict] = []
        # a daemon thread: a read that waits forever fails the test instead of hanging it
        reader = threading.Thread(target=lambda: rows.extend(instances_dataset(path).take_all()), daemon=True)
        reader.start()
        reader.join(timeout=120)
        assert not reader.is_alive(), "the read is waiting for a CPU that the workers hold"
        assert sorted(r["query"] for r in rows) == sorted(f"q{i}" for i in range(40))
    finally:
        remove_placement_group(held)
