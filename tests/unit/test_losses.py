"""InfoNCE against a naive loop, against sentence-transformers' MNRL, and gathered == local at world size 1."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from syneg_ray import losses


def _batch(b: int = 5, n: int = 3, h: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, h, generator=g, requires_grad=True), torch.randn(b, 1 + n, h, generator=g, requires_grad=True)


def _naive(q: torch.Tensor, d: torch.Tensor, tau: float) -> float:
    b, k, _ = d.shape
    total = 0.0
    for i in range(b):
        pos = math.exp(F.cosine_similarity(q[i], d[i, 0], dim=0).item() / tau)
        denom = sum(math.exp(F.cosine_similarity(q[i], d[j, s], dim=0).item() / tau) for j in range(b) for s in range(k))
        total += -math.log(pos / denom)
    return total / b


@pytest.mark.parametrize("tau", [0.05, 0.5])
def test_info_nce_matches_explicit_loop(tau: float) -> None:
    q, d = _batch()
    assert losses.info_nce(q, d, tau).item() == pytest.approx(_naive(q, d, tau), rel=1e-5)


def test_info_nce_without_in_batch_uses_own_negatives_only() -> None:
    q, d = _batch()
    s = F.cosine_similarity(q[:, None], d, dim=-1) / 0.1  # (B, 1 + n)
    expected = -F.log_softmax(s, dim=-1)[:, 0].mean()
    assert losses.info_nce(q, d, 0.1, in_batch=False).item() == pytest.approx(expected.item(), rel=1e-6)


def test_info_nce_equals_sentence_transformers_mnrl() -> None:
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    tau = 0.05
    q, d = _batch(b=8, n=4, h=32, seed=1)
    mnrl = MultipleNegativesRankingLoss(model=torch.nn.Identity(), scale=1.0 / tau)
    theirs = mnrl.compute_loss_from_embeddings([q, *d.unbind(dim=1)], labels=None)
    ours = losses.info_nce(q, d, tau)
    assert abs(ours.item() - theirs.item()) < 1e-5
    (g_ours,) = torch.autograd.grad(ours, q)
    (g_theirs,) = torch.autograd.grad(theirs, q)
    torch.testing.assert_close(g_ours, g_theirs, atol=1e-5, rtol=1e-4)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_gathered_equals_local_at_world_size_one() -> None:
    q, d = _batch()
    local = losses.info_nce(q, d, 0.05)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)  # a real gloo group, not a shortcut
    try:
        assert losses.world_size() == 1
        gathered = losses.gathered_info_nce(q, d, 0.05)
    finally:
        dist.destroy_process_group()
    assert gathered.item() == pytest.approx(local.item(), abs=1e-7)
    g_local = torch.autograd.grad(local, [q, d])
    g_gathered = torch.autograd.grad(gathered, [q, d])
    for a, b in zip(g_local, g_gathered, strict=True):
        torch.testing.assert_close(a, b)
