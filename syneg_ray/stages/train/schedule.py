"""How many steps and epochs a training run takes: plain arithmetic on the instance count, kept
free of torch so the plan (`syneg_ray.plan`) computes the same schedule the workers run."""

from __future__ import annotations

from syneg_ray.config import TrainConfig


def steps_per_epoch(n: int, batch_size: int, world: int) -> int:
    """Optimizer steps per epoch (the last incomplete global batch is dropped)."""
    return n // (batch_size * world)


def planned_steps(n: int, cfg: TrainConfig, world: int) -> int:
    """Optimizer steps of the whole run: every epoch's, or `max_steps` when that is fewer."""
    total = steps_per_epoch(n, cfg.batch_size, world) * cfg.epochs
    return min(total, cfg.max_steps) if cfg.max_steps else total


def dev_scored(epoch: int, epochs: int, every: int) -> bool:
    """Whether dev nDCG is scored after `epoch` (0-based) of the `epochs` a run plans: after every
    `every`-th epoch and always after the last (`every` 0: the last only)."""
    return epoch == epochs - 1 or (every > 0 and (epoch + 1) % every == 0)


def planned_epochs(n: int, cfg: TrainConfig, world: int) -> int:
    """Epochs that hold the planned steps: `epochs`, or fewer when `max_steps` is spent before the last."""
    per_epoch = steps_per_epoch(n, cfg.batch_size, world)
    return min(cfg.epochs, -(-planned_steps(n, cfg, world) // per_epoch)) if per_epoch else cfg.epochs
