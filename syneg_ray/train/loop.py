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
from pathlib import Path

import pyarrow.parquet as pq
import torch

from syneg_ray.config import from_dict
from syneg_ray.model import load_model
from syneg_ray.train.devset import load_devset
from syneg_ray.train.local import fit_epochs
from syneg_ray.train.state import MODEL_DIR, load_state, save_state
from syneg_ray.train.step import Data, Session, build_session, steps_per_epoch

logger = logging.getLogger("syneg_ray.train")
PLACEMENT_GROUP = "placement_group.txt"  # the worker group's placement group id, written by rank 0

PROGRESS_FILE = "progress.json"  # rank 0's latest step, with its pid (monitoring, and the kill test)
ATTEMPTS_FILE = "attempts.jsonl"  # one line per worker start: pid, rank, first epoch to run


def train_loop_per_worker(config: dict) -> None:
    """Trains `config["cfg"]` on `config["instances"]` from `config["model"]` (or the latest checkpoint).

    Args:
        config: {"cfg": to_dict(PipelineConfig), "instances": parquet path, "model": local model path, "threads": int,
            "train_dir": folder for progress files}.
    """
    import ray.train
    import ray.train.torch

    cfg = from_dict(config["cfg"])
    context = ray.train.get_context()  # [ray] rank and world size of this worker
    rank, world = context.get_world_rank(), context.get_world_size()
    _setup_worker(rank, config.get("threads", 1))
    device = ray.train.torch.get_device()  # [ray] cuda:<local rank> or cpu
    data = Data.from_rows(pq.read_table(config["instances"]).to_pylist())
    total = steps_per_epoch(len(data.queries), cfg.train.batch_size, world) * cfg.train.epochs
    checkpoint = ray.train.get_checkpoint()  # [ray] latest checkpoint after a failure or a rerun, else None
    with checkpoint.as_directory() if checkpoint else contextlib.nullcontext() as ckpt_dir:
        st = load_model(str(Path(ckpt_dir) / MODEL_DIR) if ckpt_dir else config["model"], device)
        # [ray] prepare_model moves to the device and wraps in DDP when world > 1
        sess = build_session(st, cfg.train, total, device, wrap=ray.train.torch.prepare_model)
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
               on_epoch_end=lambda summaries: _report(sess, config["cfg"], rank, summaries))  # fmt: skip


def _record_placement_group(train_dir: Path) -> None:
    """Writes the worker group's placement group id, so a Tune trial stopped mid-run can release it (tune.py)."""
    import ray.util

    group = ray.util.get_current_placement_group()
    if group is not None:
        (train_dir / PLACEMENT_GROUP).write_text(group.id.hex(), encoding="utf-8")


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
    train_dir.mkdir(parents=True, exist_ok=True)
    with (train_dir / ATTEMPTS_FILE).open("a", encoding="utf-8") as out:
        out.write(json.dumps({"pid": os.getpid(), "rank": rank, "start_epoch": start_epoch, "time": time.time()}) + "\n")


def _progress_writer(train_dir: Path):
    from syneg_ray.runtime import write_text_atomic

    path = train_dir / PROGRESS_FILE

    def write(record: dict) -> None:
        write_text_atomic(path, json.dumps({"pid": os.getpid(), "epoch": record["epoch"], "step": record["step"], "loss": record["loss"]}))

    return write
