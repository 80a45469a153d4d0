"""The epoch loop shared by the Ray Train worker and the bare run, and the bare run itself (no Ray).

`train_local` is the reference the benchmark measures Ray's overhead against, and what runs on a
GPU machine that has no Ray: same step, same schedule, same data order.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from syneg_ray.config import PipelineConfig
from syneg_ray.encoder import EncodeOptions
from syneg_ray.model import load_model
from syneg_ray.stages.train.devset import DevSet, dev_metrics
from syneg_ray.stages.train.schedule import dev_scored, planned_epochs, planned_steps
from syneg_ray.stages.train.step import Data, Instances, Session, build_session, run_epoch

logger = logging.getLogger(__name__)


def summary_line(s: dict, epochs: int) -> str:
    """One line per epoch, e.g. `epoch 1/2: loss 0.4231, grad-norm 1.20, grad-var 12.3, dev nDCG@10 0.6123 ± 0.0210, ...`
    (± the standard error over the dev queries)."""
    dev = f", dev nDCG@10 {s['dev_ndcg@10']:.4f}" if "dev_ndcg@10" in s else ""
    if dev and not math.isnan(se := s.get("dev_ndcg@10_se", math.nan)):
        dev += f" ± {se:.4f}"
    return (
        f"epoch {s['epoch'] + 1}/{epochs}: loss {s['loss']:.4f}, grad-norm {s['grad_norm']:.3f}, "
        f"grad-var {s['grad_var']:.4g}{dev}, {s['samples_per_s']:.1f} samples/s, {s['seconds']:.0f} s"
    )


def progress_logger(total: int, every: int) -> Callable[[dict], None]:
    """A per-step callback that logs one progress line every `every` steps (rank 0 only)."""

    def log(record: dict) -> None:
        if record["step"] % every == 0:
            logger.info("epoch %d step %d/%d: loss %.4f, grad-norm %.3f, lr %.2e", record["epoch"] + 1,
                        record["step"], total, record["loss"], record["grad_norm"], record["lr"])  # fmt: skip

    return log


def dev_options(cfg: PipelineConfig, model_limit: int) -> EncodeOptions:
    """How dev texts are encoded: truncated where evaluation truncates them (encoder.max_seq_length,
    else `model_limit`, the limit the model declares, not the shorter one it trains at), so a model
    in training and a saved one (the base model Tune compares its trials with) read the same tokens.
    The precision is training's: an int8 encoder is an ONNX export, not the model in training.
    The prompts come per side in `dev_scores`."""
    return EncodeOptions(
        batch_size=cfg.encoder.batch_size, max_tokens_per_batch=cfg.encoder.max_tokens_per_batch,
        max_seq_length=cfg.encoder.max_seq_length or model_limit, dtype=cfg.train.dtype,
    )  # fmt: skip


def dev_scores(st, dev: DevSet, cfg: PipelineConfig, model_limit: int = 0) -> dict[str, Any]:
    """`dev_metrics` with the run's encoding options and, per side, the prompt mining and evaluation use.

    Args:
        model_limit: the token limit `st` declares (`DualEncoder.declared_max_seq_length` in training);
            0: `st`'s current one, which is the declared limit for a model loaded from disk.
    """
    return dev_metrics(st, dev, dev_options(cfg, model_limit or st.max_seq_length), **session_prompts(cfg))


def session_prompts(cfg: PipelineConfig) -> dict[str, str]:
    """encoder.query_prompt and encoder.document_prompt, the prompts mining and evaluation use, as the keyword
    arguments of `build_session` (and `dev_metrics`)."""
    return {"query_prompt": cfg.encoder.query_prompt, "document_prompt": cfg.encoder.document_prompt}


def check_prompts(sess: Session, cfg: PipelineConfig) -> None:
    """Raises ValueError when the session prefixes other prompts than `cfg.encoder`'s (built without `session_prompts`)."""
    got = {"query_prompt": sess.encoder.query_prompt, "document_prompt": sess.encoder.document_prompt}
    if got != session_prompts(cfg):
        raise ValueError(f"the training session prefixes {got}, but mining and evaluation use {session_prompts(cfg)}: "
                         "build it with build_session(..., **session_prompts(cfg))")


def fit_epochs(
    sess: Session, data: Instances, cfg: PipelineConfig, done: list[dict], world: int = 1, rank: int = 0,
    dev: DevSet | None = None, on_step: Callable[[dict], None] | None = None,
    on_epoch_end: Callable[[list[dict]], None] | None = None,
) -> list[dict]:  # fmt: skip
    """Runs the epochs after those in `done`; rank 0 adds dev metrics and logs one line per epoch.

    Returns:
        All epoch summaries, `done` included.
    """
    check_prompts(sess, cfg)
    summaries = list(done)
    total, epochs = planned_steps(data.n, cfg.train, world), planned_epochs(data.n, cfg.train, world)
    log = progress_logger(total, cfg.train.log_every) if rank == 0 else None
    hooks = [h for h in (log, on_step) if h]
    for epoch in range(len(done), epochs):  # no epoch starts once the step budget is spent
        summary = run_epoch(sess, data, epoch, cfg.run.seed, world, rank, on_step=lambda r: [h(r) for h in hooks])
        if rank == 0 and dev is not None and dev_scored(epoch, epochs, cfg.train.dev_every):
            scores = dev_scores(sess.encoder.st, dev, cfg, sess.encoder.declared_max_seq_length)
            summary.update({f"dev_{k}": v for k, v in scores.items()})
        if rank == 0:
            logger.info("%s", summary_line(summary, epochs))
        summaries.append(summary)
        if on_epoch_end:
            on_epoch_end(summaries)
    return summaries


def train_local(cfg: PipelineConfig, rows: Sequence[dict], model_path: str, out_dir: str | Path, dev: DevSet | None = None) -> dict:
    """Trains in this process (no Ray, no DDP) and saves the sentence-transformers model to `out_dir`.

    Returns:
        {"epochs": [summary per epoch], "steps": [record per step], "model": out_dir}
    """
    device = torch.device("cuda" if cfg.train.use_gpu and torch.cuda.is_available() else "cpu")
    st = load_model(model_path, device)
    data = Data.from_rows(rows)
    sess = build_session(st, cfg.train, planned_steps(len(rows), cfg.train, 1), device,
                         **session_prompts(cfg))  # fmt: skip
    summaries = fit_epochs(sess, data, cfg, [], dev=dev)
    sess.encoder.save(out_dir)
    return {"epochs": summaries, "steps": sess.history, "model": str(out_dir)}
