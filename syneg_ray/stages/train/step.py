"""The bare training step and epoch loop: InfoNCE on a DualEncoder, plain or GradCache-style. No Ray.

Ray Train (train/loop.py) runs exactly this code inside each worker, with the model wrapped in DDP;
`train_local` runs it in the current process, which is what the benchmark compares against and
what runs on a GPU machine without Ray.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from torch import nn

from syneg_ray import losses
from syneg_ray.config import Dtype, TrainConfig
from syneg_ray.model import DualEncoder
from syneg_ray.stages.train.gradvar import GradVariance
from syneg_ray.stages.train.schedule import steps_per_epoch

logger = logging.getLogger(__name__)


Batch = tuple[list[str], list[list[str | None]]]  # queries, and per query [positive, negative_1, ..., negative_n]; None = an empty slot


def padded(positive: str, negatives: Sequence[str], width: int) -> list[str | None]:
    """[positive, *negatives] padded with None to 1 + width slots: an instance with fewer negatives
    than the widest keeps its empty slots, which the loss masks (losses.py)."""
    return [positive, *negatives, *([None] * (width - len(negatives)))]


class Instances(Protocol):
    """What an epoch trains on: the instances in memory (`Data`), or a Ray Train worker's stream of
    its shard (train/loop.py), each giving every rank the same number of full batches."""

    @property
    def n(self) -> int:
        """Instances over all workers (the schedule's length is computed from it)."""

    def epoch(self, epoch: int, batch_size: int, world: int, rank: int, seed: int, steps: int) -> Iterator[Batch]:
        """This rank's first `steps` batches of `epoch` (of steps_per_epoch(n, batch_size, world)), each full."""


@dataclass
class Data:
    """Instance texts in memory, column-wise: queries[i] and docs[i] = [positive, negative_1, ..., negative_n],
    padded with None to the widest instance."""

    queries: list[str]
    docs: list[list[str | None]]

    @classmethod
    def from_rows(cls, rows: Sequence[dict]) -> Data:
        width = max((len(r["negatives"]) for r in rows), default=0)
        return cls([r["query"] for r in rows], [padded(r["positive"], r["negatives"], width) for r in rows])

    @property
    def n(self) -> int:
        return len(self.queries)

    def epoch(self, epoch: int, batch_size: int, world: int, rank: int, seed: int, steps: int) -> Iterator[Batch]:
        for index in epoch_batches(self.n, batch_size, world, rank, seed, epoch)[:steps]:
            yield [self.queries[i] for i in index], [self.docs[i] for i in index]


@dataclass
class Session:
    """Everything one worker trains with."""

    model: nn.Module  # forward/backward go through this (DDP-wrapped under Ray with > 1 worker)
    encoder: DualEncoder  # the unwrapped module: tokenize, save, evaluate
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    cfg: TrainConfig
    device: torch.device
    grad_var: GradVariance
    step: int = 0  # optimizer steps done, over all epochs
    history: list[dict] = field(default_factory=list)  # one record per step (rank 0 keeps them)


def epoch_batches(n: int, batch_size: int, world: int, rank: int, seed: int, epoch: int) -> list[np.ndarray]:
    """This rank's instance indices for each step of `epoch`: a permutation seeded by (seed, epoch), global batches
    of batch_size * world, the last incomplete one dropped, rank r taking the r-th slice of each.

    (seed, epoch) rather than seed + epoch, so seed 0's second epoch is not seed 1's first.
    """
    order = np.random.default_rng([seed, epoch]).permutation(n)
    step = batch_size * world
    return [order[s * step + rank * batch_size : s * step + (rank + 1) * batch_size] for s in range(n // step)]


def build_session(
    st: nn.Module, cfg: TrainConfig, total_steps: int, device: torch.device, wrap: Callable[[nn.Module], nn.Module] | None = None,
    *, query_prompt: str = "", document_prompt: str = "",
) -> Session:  # fmt: skip
    """AdamW with linear warmup (warmup_ratio) and linear decay to 0, as HF Trainer's default schedule.

    `query_prompt` and `document_prompt` are encoder.query_prompt and encoder.document_prompt: the
    steps prefix them as mining and evaluation do (`DualEncoder.tokenize_queries` / `tokenize_documents`).
    """
    encoder = DualEncoder(st, cfg.max_seq_length, query_prompt, document_prompt).to(device)
    frozen = encoder.freeze_unused(device)
    if frozen:
        logger.debug("not trained (unused by the embedding): %s", ", ".join(frozen))
    model = wrap(encoder) if wrap else encoder
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0)
    warmup = math.ceil(cfg.warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return Session(model, encoder, optimizer, scheduler, cfg, device, GradVariance(cfg.grad_var_window))


def _autocast(cfg: TrainConfig, device: torch.device):
    if cfg.dtype is Dtype.BF16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _loss_scale(cfg: TrainConfig) -> int:
    # THE one place the world size enters: the gathered loss covers all W x B queries on every
    # worker and DDP averages W copies of its gradient, so multiply by W to get the full gradient.
    gathered = cfg.gather_across_workers and cfg.in_batch_negatives
    return losses.world_size() if gathered else 1


def text_ids(texts: Sequence[str | None]) -> list[int]:
    """A 64-bit id per text, the same in every process (Python's hash() is salted per process); 0 for an empty slot."""
    return [0 if t is None else int.from_bytes(hashlib.blake2b(t.encode(), digest_size=8).digest(), "little", signed=True)
            for t in texts]  # fmt: skip


def _present(docs: list[list[str | None]]) -> tuple[list[str], torch.Tensor]:
    """The batch's document texts without empty slots, and the (B, 1 + n) mask of the slots they fill."""
    return [t for row in docs for t in row if t is not None], torch.tensor([[t is not None for t in row] for row in docs])


def _slots(flat: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, 1 + n, H): the embeddings of the present texts at their slots, zeros at empty ones (autograd flows to `flat`)."""
    out = flat.new_zeros(mask.numel(), flat.shape[-1])
    return out.index_put((mask.reshape(-1).nonzero().squeeze(1).to(flat.device),), flat).view(*mask.shape, -1)


def _loss(sess: Session, q: torch.Tensor, d: torch.Tensor, queries: list[str], docs: list[list[str | None]],
          mask: torch.Tensor) -> torch.Tensor:  # fmt: skip
    cfg = sess.cfg
    q_ids = d_ids = None
    if cfg.mask_known_positives and cfg.in_batch_negatives:
        q_ids = torch.tensor(text_ids(queries), device=q.device)  # (B,)
        d_ids = torch.tensor([text_ids(row) for row in docs], device=q.device)  # (B, 1 + n)
    return losses.gathered_info_nce(q, d, cfg.temperature, cfg.in_batch_negatives, cfg.gather_across_workers, q_ids, d_ids,
                                    mask.to(q.device))  # fmt: skip


def plain_step(sess: Session, queries: list[str], docs: list[list[str | None]]) -> torch.Tensor:
    """Forward both sides with the graph kept, backward the loss. Returns the (unscaled) loss."""
    texts, mask = _present(docs)
    with _autocast(sess.cfg, sess.device):
        q = sess.model(sess.encoder.tokenize_queries(queries, sess.device))  # (B, H)
        d = sess.model(sess.encoder.tokenize_documents(texts, sess.device))  # (present texts, H)
    loss = _loss(sess, q, _slots(d, mask), queries, docs, mask)  # ids of the raw texts: the prompt is the same for all
    (loss * _loss_scale(sess.cfg)).backward()
    return loss.detach()


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class _RandState:
    """CPU (and CUDA) RNG state, so the re-forward of a chunk draws the same dropout masks."""

    def __init__(self, device: torch.device) -> None:
        self.devices = [device] if device.type == "cuda" else []
        self.cpu = torch.get_rng_state()
        self.cuda = [torch.cuda.get_rng_state(d) for d in self.devices]

    @contextlib.contextmanager
    def restored(self) -> Iterator[None]:
        with torch.random.fork_rng(devices=self.devices):
            torch.set_rng_state(self.cpu)
            for d, state in zip(self.devices, self.cuda, strict=True):
                torch.cuda.set_rng_state(state, d)
            yield


def cached_step(sess: Session, queries: list[str], docs: list[list[str | None]]) -> torch.Tensor:
    """GradCache (Gao et al. 2021): the same gradient as `plain_step` with activations of one chunk at a time.

    1. embed every chunk without a graph; 2. loss and backward on the embeddings only, which gives
    d loss / d embedding; 3. re-embed chunk by chunk with a graph and backpropagate that cached
    gradient. DDP syncs only on the last chunk's backward.
    """
    size = sess.cfg.grad_cache_chunk
    present, mask = _present(docs)
    texts = [queries, present]
    tokenizers = [sess.encoder.tokenize_queries, sess.encoder.tokenize_documents]
    feats = [[tokenize(c, sess.device) for c in _chunks(side, size)] for tokenize, side in zip(tokenizers, texts, strict=True)]
    states: list[list[_RandState]] = [[], []]
    embs = []
    with torch.no_grad(), _autocast(sess.cfg, sess.device):
        for side, chunk_feats in enumerate(feats):
            parts = []
            for f in chunk_feats:
                states[side].append(_RandState(sess.device))
                parts.append(sess.model(f).float())
            embs.append(torch.cat(parts).requires_grad_())  # (B, H) then (present texts, H)
    loss = _loss(sess, embs[0], _slots(embs[1], mask), queries, docs, mask)  # raw texts, as in plain_step
    (loss * _loss_scale(sess.cfg)).backward()
    jobs = [(f, s, g) for side in range(2) for f, s, g in zip(feats[side], states[side], embs[side].grad.split(size), strict=True)]
    no_sync = getattr(sess.model, "no_sync", contextlib.nullcontext)
    for i, (f, state, grad) in enumerate(jobs):
        sync = i == len(jobs) - 1
        with (contextlib.nullcontext() if sync else no_sync()), state.restored(), _autocast(sess.cfg, sess.device):
            out = sess.model(f)
        out.float().backward(grad)
    return loss.detach()


def train_step(sess: Session, queries: list[str], docs: list[list[str | None]]) -> dict[str, float]:
    """One optimizer step. Returns loss, grad_norm (before clipping), grad_var (last full window) and lr."""
    step_fn = cached_step if sess.cfg.grad_cache_chunk else plain_step
    loss = step_fn(sess, queries, docs)
    params = [p for p in sess.model.parameters() if p.grad is not None]
    grad_var = sess.grad_var.update(params)
    limit = sess.cfg.max_grad_norm or float("inf")
    norm = torch.nn.utils.clip_grad_norm_(params, limit)
    lr = sess.scheduler.get_last_lr()[0]
    sess.optimizer.step()
    sess.scheduler.step()
    sess.optimizer.zero_grad(set_to_none=True)
    sess.step += 1
    return {
        "step": sess.step, "loss": float(loss), "grad_norm": float(norm), "grad_var": grad_var,
        "window_end": sess.grad_var.ended, "lr": lr,
    }  # fmt: skip


def run_epoch(
    sess: Session, data: Instances, epoch: int, seed: int, world: int = 1, rank: int = 0,
    on_step: Callable[[dict], None] | None = None,
) -> dict[str, float]:  # fmt: skip
    """Trains one epoch; returns its summary (means over steps, samples/s over all workers)."""
    sess.model.train()
    # dropout: seeded per (seed, epoch, rank), so a resumed epoch replays and no two runs share draws
    torch.manual_seed(int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0]))
    records, start = [], time.perf_counter()
    steps = steps_per_epoch(data.n, sess.cfg.batch_size, world)
    if sess.cfg.max_steps:
        steps = max(0, min(steps, sess.cfg.max_steps - sess.step))  # the step budget ends within this epoch
    for queries, docs in data.epoch(epoch, sess.cfg.batch_size, world, rank, seed, steps):
        record = train_step(sess, queries, docs)
        record["epoch"] = epoch
        records.append(record)
        if on_step:
            on_step(record)
    seconds = time.perf_counter() - start
    sess.history.extend(records)
    windows = [r["grad_var"] for r in records if r.get("window_end")]
    return {
        "epoch": epoch,
        "steps": len(records),
        "loss": float(np.mean([r["loss"] for r in records])) if records else float("nan"),
        "grad_norm": float(np.mean([r["grad_norm"] for r in records])) if records else float("nan"),
        "grad_var": float(np.mean(windows)) if windows else sess.grad_var.last,
        "seconds": seconds,
        "samples_per_s": len(records) * sess.cfg.batch_size * world / seconds if seconds else 0.0,
    }
