"""Gradient variance, the stability measure of the SyNeg paper (hybrid 155.23 vs direct 188.5), defined precisely.

Definition used here: the trace of the covariance of the per-step gradient vectors g_t (all
trainable parameters, flattened; the DDP-averaged gradient the optimizer sees, before clipping),
estimated over non-overlapping windows of K consecutive steps:

    Var_K = K / (K - 1) * ( mean_t ||g_t||^2  -  || mean_t g_t ||^2 )

i.e. the expected squared distance of a step's gradient from the window's mean gradient. Why this
and not the variance of the gradient *norm*: two batches can have equal norms and opposite
directions; mixing all-synthetic and all-retrieved instances (the direct mix) makes batches pull in
different directions, which the vector form sees and the norm form misses. Why windows: the mean
gradient drifts as the model learns, so a short window (default 10 steps) isolates batch-to-batch
noise from that drift. Comparable between hybrid and direct when model, learning-rate schedule,
batch size, temperature, seed and K are the same, which a run's config pins. The absolute value
depends on the model and scale, so compare runs, not against the paper's numbers. Memory: one
running sum of the size of the parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class GradVariance:
    """Running windowed estimate; `last` holds the latest completed window (nan before the first)."""

    def __init__(self, window: int) -> None:
        self.window = window  # K; 0 or 1 disables the measurement (it then costs nothing)
        self.count = 0
        self.total: torch.Tensor | None = None  # sum of g_t over the window
        self.sq = 0.0  # sum of ||g_t||^2 over the window
        self.last = float("nan")
        self.ended = False  # True right after an update that closed a window

    def update(self, params: Sequence[torch.nn.Parameter]) -> float:
        """Adds the current gradients (call after backward, before clipping); returns `last`."""
        self.ended = False
        if self.window < 2:
            return self.last
        flat = torch.cat([p.grad.detach().float().reshape(-1) for p in params])  # (P,)
        self.total = flat.clone() if self.total is None else self.total.add_(flat)
        self.sq += float(flat.dot(flat))
        self.count += 1
        if self.count == self.window:
            k = self.count
            mean_sq = float(self.total.dot(self.total)) / k**2
            self.last = k / (k - 1) * (self.sq / k - mean_sq)
            self.count, self.total, self.sq, self.ended = 0, None, 0.0, True
        return self.last
