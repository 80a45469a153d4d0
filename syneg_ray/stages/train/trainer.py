"""`syneg train`: validate the instances, guard resumes, run the TorchTrainer, export the model and curves."""

from __future__ import annotations

import functools
import json
import logging
import shutil
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from syneg_ray import dataset, remote, schema, storage
from syneg_ray.config import DATA_LOCATION_KEYS, PipelineConfig, TrainConfig, diff, to_dict, with_absolute_paths
from syneg_ray.errors import DataError, ResumeError
from syneg_ray.mixing import check_instances
from syneg_ray.registry import resolve_model

logger = logging.getLogger(__name__)

TRAIN_CONFIG = "train_config.yaml"  # what the run's training depends on; a resume must match it
SUMMARY = "summary.json"
CURVES = "curves.png"
# Row-group reads running at once. A 0-CPU task is not limited by the CPUs, so without a bound
# Ray Data starts one per row group, each in a worker process of its own (measured at 100k
# instances: Ray's processes summed 3.7 GB); reading is far faster than training, so two keep up.
READ_TASKS = 2
# fields that change how a run is watched or survives, not what it learns: a resume may change them
_OPERATIONAL = {"log_every", "max_failures", "checkpoints_to_keep", "cpus_per_worker"}
# the trained model depends neither on where the dataset is found nor on which split is reported
_DATA_ELSEWHERE = {*DATA_LOCATION_KEYS, "eval_split"}


def worker_cpus(t: TrainConfig) -> float:
    """CPUs each worker reserves and uses as torch threads: the configured number, else the cores
    shared by the workers (runtime.shared_cores: this machine's, at most the smallest node's)."""
    from syneg_ray.runtime import shared_cores

    return t.cpus_per_worker or float(shared_cores(t.workers))


def require_one_batch(cfg: PipelineConfig, n_instances: int, instances: Path) -> None:
    """Raises DataError when the mix left fewer instances than one global batch (nothing to train)."""
    global_batch = cfg.train.batch_size * cfg.train.workers
    if n_instances < global_batch:
        raise DataError.at(instances, None, f"{n_instances} instances, fewer than one global batch (train.batch_size x "
                           f"train.workers = {global_batch}); lower train.batch_size or mix more pairs")  # fmt: skip


def instances_dataset(instances: str | Path):  # -> ray.data.Dataset
    """The instances file as a Ray dataset that the trainer splits across its workers.

    No part of the read reserves a CPU: training workers may hold every whole CPU of the cluster (and
    a Tune trial a share beside them), and a read waiting for a CPU would stall every worker's first
    batch for ever. So it is not `ray.data.read_parquet`, whose readers run a task of 1 CPU that
    `ray_remote_args` does not reach (the classic one samples the file, the newer one lists it): the
    dataset is the file's row-group numbers, made here from the footer, mapped by 0-CPU tasks
    (`READ_TASKS` at once) that each read their row groups, from object storage when the run
    directory is there.
    """
    import ray.data

    path, filesystem = storage.storage_location(instances)  # on any node: the file at its URI
    with _open(path, filesystem) as handle:
        groups = pq.ParquetFile(handle).metadata.num_row_groups
    numbers = ray.data.from_items([{"row_group": g} for g in range(groups)], override_num_blocks=max(1, groups))
    return numbers.map_batches(functools.partial(read_row_groups, path=path, filesystem=filesystem), batch_size=None,
                               batch_format="pyarrow", num_cpus=0, compute=ray.data.TaskPoolStrategy(size=READ_TASKS))  # fmt: skip


def read_row_groups(batch: pa.Table, path: str, filesystem) -> pa.Table:  # filesystem: pyarrow FileSystem | None
    """The instances in the row groups `batch` numbers: one read task of `instances_dataset`."""
    with _open(path, filesystem) as handle:
        return pq.ParquetFile(handle, pre_buffer=False).read_row_groups(batch.column("row_group").to_pylist())


def _open(path: str, filesystem):  # -> a file object
    return filesystem.open_input_file(path) if filesystem is not None else open(path, "rb")


def instance_width(instances: str | Path) -> int:
    """The most negatives any instance of the file holds, read from one list column a row group at a time."""
    import pyarrow.compute as pc

    width = 0
    for batch in pq.ParquetFile(instances, pre_buffer=False).iter_batches(batch_size=VALIDATE_ROWS, columns=["negative_sources"]):
        width = max(width, pc.max(pc.list_value_length(batch.column(0))).as_py() or 0)
    return width


def build_trainer(cfg: PipelineConfig, instances: str | Path, model_path: str, train_dir: str | Path, callbacks=(),
                  n_instances: int | None = None, width: int | None = None):  # -> TorchTrainer  # fmt: skip
    """A Ray Train V2 TorchTrainer over `train.workers` workers (gloo on CPU, nccl on GPU).

    The instances reach the workers as a Ray dataset split across them (`get_dataset_shard`), so each
    one streams only its share. Checkpoints and Ray's own state go to `train_dir/ray/train`; fitting
    again with the same `train_dir` resumes from the latest checkpoint there. `callbacks` are Ray
    Train UserCallbacks. `width` is the most negatives an instance holds (read from the file when
    not given): every worker pads its batches to it, so the gathered tensors match in shape.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from syneg_ray.stages.train.loop import train_loop_per_worker

    train_dir = Path(train_dir).resolve()
    # Ray keeps checkpoints where every worker can write them: the URI of a run directory in object storage
    storage_path, storage_filesystem = storage.storage_location(train_dir / "ray")
    t = cfg.train
    if n_instances is None:
        n_instances = pq.ParquetFile(instances).metadata.num_rows
    if width is None:
        width = instance_width(instances)
    cpus = worker_cpus(t)
    resources = {"CPU": cpus, **({"GPU": 1} if t.use_gpu else {})}
    return TorchTrainer(
        train_loop_per_worker,
        # workers run in a directory of their own: relative paths in the config would name other folders
        train_loop_config={"cfg": to_dict(with_absolute_paths(cfg)), "n_instances": n_instances, "width": width, "model": model_path,
                           "train_dir": str(train_dir), "threads": max(1, int(cpus))},
        # a factory: the trainer's controller reads the file when the run starts, not this call
        datasets={"train": functools.partial(instances_dataset, str(Path(instances).resolve()))},
        torch_config=TorchConfig(backend="nccl" if t.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=t.workers, use_gpu=t.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name="train",
            storage_path=storage_path,
            storage_filesystem=storage_filesystem,
            failure_config=FailureConfig(max_failures=t.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=t.checkpoints_to_keep),
            callbacks=list(callbacks),  # e.g. Tune's TuneReportCallback, so trials see each epoch's metrics
        ),
    )


def training_fingerprint(cfg: PipelineConfig, instances: Path) -> dict:
    """The parts of the config (and the instances file) that determine the trained model."""
    train = {k: v for k, v in to_dict(cfg.train).items() if k not in _OPERATIONAL}
    data = {k: v for k, v in to_dict(cfg.data).items() if k not in _DATA_ELSEWHERE}
    return {"train": train, "mix": to_dict(cfg.mix), "data": data, "seed": cfg.run.seed,
            "model": cfg.train.model or cfg.encoder.model, "instances_sha256": dataset.file_digest(instances)[:16]}  # fmt: skip


def check_resume(train_dir: Path, fingerprint: dict) -> bool:
    """True when `train_dir` already holds a run of this config; raises when it holds another one.

    Raises:
        ResumeError: the saved fingerprint differs; the message lists each difference.
    """
    saved = train_dir / TRAIN_CONFIG
    if not saved.is_file():
        return False
    changes = diff(yaml.safe_load(saved.read_text(encoding="utf-8")) or {}, fingerprint)
    if changes:
        raise ResumeError(f"{train_dir} was trained with a different config ({'; '.join(changes)}); "
                          "restore those values, or use a new run.run_dir, or delete that folder to start over")  # fmt: skip
    return True


VALIDATE_ROWS = 4096  # instances validated at once: the driver never holds more of them


def read_instances(path: Path, doc_ids) -> tuple[int, int]:
    """Validates the instances file a block of rows at a time; returns (instances, the most negatives
    an instance holds: the width every batch is padded to, its empty slots masked in the loss).

    Args:
        path: the instances Parquet.
        doc_ids: the corpus's ids (an Arrow column, or any collection of str).

    Raises:
        DataError: naming the file and row (mixing.check_instances), or an unreadable file.
    """
    import pyarrow.compute as pc

    if not path.exists():
        raise DataError.at(path, None, "no instances file; run `syneg mix` first")
    corpus_ids = doc_ids if isinstance(doc_ids, pa.ChunkedArray) else pa.chunked_array([pa.array(list(doc_ids), pa.string())])
    count, n = 0, 0
    try:
        for batch in pq.ParquetFile(path, pre_buffer=False).iter_batches(batch_size=VALIDATE_ROWS):
            rows = batch.to_pylist()
            ids = [r.get("positive_id") for r in rows] + [d for r in rows for d in (r.get("negative_ids") or ())]
            candidates = pa.array(sorted({i for i in ids if isinstance(i, str)}), pa.string())
            # the block's ids are the hash table and the corpus's ids are scanned against it: a table
            # of every corpus id would cost tens of MB a block at a million documents
            known = set(corpus_ids.filter(pc.is_in(corpus_ids, value_set=candidates)).to_pylist())
            n = check_instances(rows, path, known, first_row=count + 1, n=n)
            count += len(rows)
    except (pa.ArrowInvalid, OSError) as exc:  # an interrupted write, or not Parquet at all
        raise DataError.at(path, None, f"not a readable Parquet file ({' '.join(str(exc).split())}); "
                                       "rerun `syneg mix` to rewrite it") from None
    finally:
        pa.default_memory_pool().release_unused()  # Arrow keeps freed blocks; the driver has no more use for them
    if not count:
        check_instances([], path, set())  # raises: no instances
    return count, n


def run_train(cfg: PipelineConfig, replace_other_config: bool = False) -> dict:
    """Trains the run's model with Ray Train and writes run_dir/train/{model, summary.json, curves.png}.

    Args:
        replace_other_config: when run_dir/train holds a run of another config, delete it and train
            anew (`syneg run` after a config change) instead of raising ResumeError (`syneg train`).

    Returns:
        {"model": path, "epochs": [...], "seconds": ...}; read back from summary.json when the run was done before.
    """
    from syneg_ray.runtime import init_ray

    started = time.perf_counter()
    run_dir = Path(cfg.run.run_dir)
    train_dir, instances = run_dir / "train", run_dir / schema.INSTANCES
    n_instances, n_negatives = read_instances(instances, dataset.prepare(cfg).doc_ids())
    require_one_batch(cfg, n_instances, instances)
    fingerprint = training_fingerprint(cfg, instances)
    try:
        resumable = check_resume(train_dir, fingerprint)
    except ResumeError as exc:
        if not replace_other_config:
            raise
        logger.warning("train: replacing the model of the previous config: %s", exc)
        storage.remove(train_dir)  # the model, its checkpoints and curves: all of that config, here and in object storage
        resumable = False
    if resumable and (train_dir / SUMMARY).is_file():
        logger.info("train: %s is already trained with this config; delete it to train again", train_dir)
        return json.loads((train_dir / SUMMARY).read_text(encoding="utf-8"))
    train_dir.mkdir(parents=True, exist_ok=True)
    (train_dir / TRAIN_CONFIG).write_text(yaml.safe_dump(fingerprint, sort_keys=False), encoding="utf-8")
    model_path = resolve_model(cfg.train.model or cfg.encoder.model, cfg.run.cache_dir or None)
    logger.info("train: %d instances x up to %d negatives, %d worker(s), batch %d per worker, %d epoch(s), model %s",
                n_instances, n_negatives, cfg.train.workers, cfg.train.batch_size, cfg.train.epochs, model_path)  # fmt: skip
    init_ray(cfg)
    remote.push(cfg)  # the instances and the dev set, for workers on nodes that read them from object storage
    result = build_trainer(cfg, instances, model_path, train_dir, n_instances=n_instances, width=n_negatives).fit()
    return export(result.checkpoint, run_dir, cfg, time.perf_counter() - started)


def export(checkpoint, run_dir: Path, cfg: PipelineConfig, seconds: float) -> dict:
    """Copies the final checkpoint's model to run_dir/train/model and writes the summary and the curves."""
    from syneg_ray.plots import plot_curves
    from syneg_ray.stages.train.state import MODEL_DIR, read_meta

    target = run_dir / schema.MODEL
    with checkpoint.as_directory() as folder:
        meta = read_meta(folder)
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(Path(folder) / MODEL_DIR, target)
    storage.publish(target)  # whole before evaluate's actors, on any node, fetch it
    train_dir = target.parent
    title = f"{cfg.mix.strategy.value} R={cfg.mix.ratio} tau={cfg.train.temperature}"
    plot_curves(meta["steps"], meta["epochs"], train_dir / CURVES, title)
    (train_dir / "history.json").write_text(json.dumps({"epochs": meta["epochs"], "steps": meta["steps"]}), encoding="utf-8")
    summary = {"model": str(target), "epochs": meta["epochs"], "seconds": seconds, "curves": str(train_dir / CURVES)}
    (train_dir / SUMMARY).write_text(json.dumps(summary, indent=2), encoding="utf-8")
    last = meta["epochs"][-1]
    dev = f", dev nDCG@10 {last['dev_ndcg@10']:.4f}" if "dev_ndcg@10" in last else ""
    logger.info("trained %d epoch(s) in %.0f s: final loss %.4f%s -> %s", len(meta["epochs"]), seconds, last["loss"], dev, target)
    return summary
