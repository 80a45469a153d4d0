"""train_loop_per_worker: what each Ray Train worker runs. The only file that calls ray.train.* inside a worker.

train/trainer.py builds the TorchTrainer and tune.py wraps it in a Tuner, both on the driver.

Everything else (step, schedule, data order, dev metrics, checkpoint format) is Ray-free code in
train/step.py, train/local.py and train/state.py; the `# [ray]` comments mark each touch point.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from syneg_ray import storage
from syneg_ray.config import from_dict
from syneg_ray.model import load_model
from syneg_ray.stages.train.devset import BY_QUERY, load_devset
from syneg_ray.stages.train.local import fit_epochs, session_prompts
from syneg_ray.stages.train.schedule import planned_steps, steps_per_epoch
from syneg_ray.stages.train.state import MODEL_DIR, load_state, save_state
from syneg_ray.stages.train.step import Batch, Session, build_session, padded

logger = logging.getLogger(__name__)
PLACEMENT_GROUP = "placement_group.txt"  # the worker group's placement group id, written by rank 0

PROGRESS_FILE = "progress.json"  # rank 0's latest step, with its pid (monitoring, and the kill test)
# Records of every worker process, one file per process (rank<r>-<pid>.jsonl): workers on other
# nodes publish theirs to a run directory in object storage, where no two processes may write one object.
ATTEMPTS_DIR = "attempts"  # one line per worker start: pid, rank, first epoch to run
SHARDS_DIR = "shards"  # one line per worker and epoch: steps, instances read from its shard, mean loss
DEV_BY_QUERY = "dev_by_query.json"  # rank 0: the latest epoch's nDCG@10 per dev query (Tune pairs trials by it)
PROGRESS_EVERY_S = 10.0  # rank 0 rewrites progress.json at most this often (an object-store put each time)


def train_loop_per_worker(config: dict) -> None:
    """Trains `config["cfg"]` on `config["instances"]` from `config["model"]` (or the latest checkpoint).

    Args:
        config: {"cfg": to_dict(PipelineConfig), "n_instances": rows of the "train" dataset, "width": the most
            negatives an instance holds (batches are padded to it), "model": local model path,
            "threads": int, "train_dir": folder for progress files}. The instances arrive as the trainer's
            "train" Ray dataset, split across the workers.
    """
    import ray.train
    import ray.train.torch

    cfg = from_dict(config["cfg"])
    context = ray.train.get_context()  # [ray] rank and world size of this worker
    rank, world = context.get_world_rank(), context.get_world_size()
    _setup_worker(rank, config.get("threads", 1))
    device = ray.train.torch.get_device()  # [ray] cuda:<local rank> or cpu
    # [ray] this worker's share of the instances, streamed by Ray Data: no worker reads the whole file
    data = ShardStream(ray.train.get_dataset_shard("train"), config["n_instances"], config["width"])
    total = planned_steps(data.n, cfg.train, world)
    checkpoint = ray.train.get_checkpoint()  # [ray] latest checkpoint after a failure or a rerun, else None
    with checkpoint.as_directory() if checkpoint else contextlib.nullcontext() as ckpt_dir:
        # the base model, fetched on a node that lacks it when the cache is in object storage
        st = load_model(str(Path(ckpt_dir) / MODEL_DIR) if ckpt_dir else str(storage.fetch(config["model"])), device)
        # [ray] prepare_model moves to the device and wraps in DDP when world > 1
        sess = build_session(st, cfg.train, total, device, wrap=ray.train.torch.prepare_model, **session_prompts(cfg))
        done = load_state(sess, ckpt_dir)["epochs"] if ckpt_dir else []
    train_dir = Path(config["train_dir"])
    _append_attempt(train_dir, rank, len(done))
    if rank == 0:
        _record_placement_group(train_dir)
    if rank == 0 and done:
        logger.info("resumed from the checkpoint of epoch %d (step %d)", len(done), sess.step)
    dev = load_devset(cfg) if rank == 0 else None
    on_step = _progress_writer(train_dir) if rank == 0 else None
    fit_epochs(sess, data, cfg, done, world, rank, dev, on_step=on_step,
               on_epoch_end=lambda summaries: _end_epoch(sess, config["cfg"], rank, summaries, data, train_dir))  # fmt: skip


def _end_epoch(sess: Session, cfg_dict: dict, rank: int, summaries: list[dict], data: ShardStream, train_dir: Path) -> None:
    # what this worker trained on, before the report: a run stopped at the report keeps the record
    last = summaries[-1]
    _append_record(train_dir / SHARDS_DIR, rank, {"rank": rank, "epoch": last["epoch"], "steps": last["steps"],
                                                  "rows": data.rows_read, "loss": last["loss"], "pid": os.getpid()})  # fmt: skip
    if rank == 0 and f"dev_{BY_QUERY}" in last:  # before the report, which may end the trial
        (train_dir / DEV_BY_QUERY).write_text(json.dumps({"epoch": last["epoch"], "ndcg@10": last[f"dev_{BY_QUERY}"]}), encoding="utf-8")
        storage.publish(train_dir / DEV_BY_QUERY)
    _report(sess, cfg_dict, rank, summaries)


def _append_record(folder: Path, rank: int, record: dict) -> None:
    """Appends `record` to this process's file in `folder` and publishes it (see ATTEMPTS_DIR)."""
    from syneg_ray import storage

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"rank{rank}-{os.getpid()}.jsonl"
    with path.open("a", encoding="utf-8") as out:
        out.write(json.dumps(record) + "\n")
    storage.publish(path)


def worker_records(train_dir: str | Path, folder: str) -> list[dict]:
    """Every worker process's records in `train_dir/folder` (ATTEMPTS_DIR or SHARDS_DIR), oldest file first."""
    files = sorted((Path(train_dir) / folder).glob("rank*.jsonl"), key=lambda p: p.stat().st_mtime_ns)
    return [json.loads(line) for path in files for line in path.read_text(encoding="utf-8").splitlines() if line]


SHUFFLE_BUFFER = 1024  # instances a worker shuffles among locally; more costs memory, not steps


class ShardStream:
    """One worker's shard of the "train" dataset (Ray Train splits it with `streaming_split(equal=True)`).

    Equal steps on every worker, with full batches, is what DDP and the gathered in-batch negatives
    need: a worker with one step more waits forever in an all-reduce the others never join, and a
    short batch gathers fewer negatives. Ray's equal split gives each of W workers floor(N / W)
    rows, and floor(floor(N / W) / B) = floor(N / (W B)) = steps_per_epoch, so the full batches
    come out equal; a worker reads exactly that many and stops with an error, not a hang, if its
    shard ever runs short. Rows past the last full batch (fewer than B), and the batches past a step
    budget (`train.max_steps`) spent within the epoch, are read and dropped without being turned
    into Python lists, so every split ends its epoch and the next one starts cleanly.

    Order: blocks reach the workers as Ray Data streams them, and each worker shuffles within a
    buffer seeded by (seed, epoch, rank); unlike `Data`, the order is not replayed exactly on resume.
    """

    def __init__(self, shard, n: int, width: int):  # shard: ray.data.DataIterator
        self.shard, self._n, self.width = shard, n, width
        self.rows_read = 0  # instances of the last epoch this worker read, trained on or drained

    @property
    def n(self) -> int:
        return self._n

    def epoch(self, epoch: int, batch_size: int, world: int, rank: int, seed: int, steps: int) -> Iterator[Batch]:
        planned = steps_per_epoch(self._n, batch_size, world)
        shuffle_seed = int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])
        batches = self.shard.iter_batches(batch_size=batch_size, batch_format="pyarrow",
                                          local_shuffle_buffer_size=SHUFFLE_BUFFER, local_shuffle_seed=shuffle_seed)  # fmt: skip
        full, self.rows_read = 0, 0
        for table in batches:
            self.rows_read += table.num_rows
            if full == planned or table.num_rows < batch_size:
                continue  # drain: the epoch's remainder (a short batch), never trained on
            full += 1
            if full > steps:
                continue  # drain: past the step budget
            positives, negatives = table.column("positive").to_pylist(), table.column("negatives").to_pylist()
            yield table.column("query").to_pylist(), [padded(p, n, self.width) for p, n in zip(positives, negatives, strict=True)]
        if full < planned:
            raise RuntimeError(f"rank {rank}: its shard gave {full} full batches of {batch_size} in epoch {epoch + 1}, "
                               f"where {planned} were planned for {self._n} instances on {world} workers")  # fmt: skip


def _record_placement_group(train_dir: Path) -> None:
    """Writes the worker group's placement group id, so a Tune trial stopped mid-run can release it (tune.py)."""
    import ray.util

    from syneg_ray import storage

    group = ray.util.get_current_placement_group()
    if group is not None:
        (train_dir / PLACEMENT_GROUP).write_text(group.id.hex(), encoding="utf-8")
        storage.publish(train_dir / PLACEMENT_GROUP)


def _report(sess: Session, cfg_dict: dict, rank: int, summaries: list[dict]) -> None:
    import ray.train

    metrics = {k: v for k, v in summaries[-1].items() if isinstance(v, (int, float))}
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank == 0:  # one copy of the weights: DDP keeps them identical on every rank
            save_state(sess, tmp, summaries, cfg_dict)
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=checkpoint)  # [ray] report + checkpoint (uploaded before returning)


def _setup_worker(rank: int, threads: int) -> None:
    # one torch thread per CPU the worker reserved: more oversubscribes cores, fewer leaves them idle
    torch.set_num_threads(threads)
    if rank == 0 and not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("syneg_ray").setLevel(logging.INFO if rank == 0 else logging.WARNING)  # rank 0 logs only


def _append_attempt(train_dir: Path, rank: int, start_epoch: int) -> None:
    import ray

    node = ray.get_runtime_context().get_node_id()  # which node of the cluster this worker ran on
    _append_record(train_dir / ATTEMPTS_DIR, rank, {"pid": os.getpid(), "rank": rank, "node": node, "start_epoch": start_epoch,
                                                    "time": time.time()})  # fmt: skip


def _progress_writer(train_dir: Path):
    from syneg_ray import storage
    from syneg_ray.runtime import write_text_atomic

    path = train_dir / PROGRESS_FILE
    published = [0.0]  # when progress.json last went to object storage

    def write(record: dict) -> None:
        write_text_atomic(path, json.dumps({"pid": os.getpid(), "epoch": record["epoch"], "step": record["step"], "loss": record["loss"]}))
        if time.monotonic() - published[0] >= PROGRESS_EVERY_S:
            storage.publish(path)
            published[0] = time.monotonic()

    return write
