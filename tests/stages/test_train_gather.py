"""2 real gloo processes: gathered InfoNCE x world size under DDP gives the single-process full-batch gradient."""

from __future__ import annotations

import gc
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from syneg_ray import losses
from syneg_ray.config import TrainConfig
from syneg_ray.stages.train.step import _loss_scale

B, K, H, TAU = 3, 3, 8, 0.05  # per-worker batch, 1 + n documents, input dim


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(2 * B, H, generator=g), torch.randn(2 * B, K, H, generator=g)


def _ids() -> tuple[torch.Tensor, torch.Tensor]:
    """Text ids: rank 0's first row and rank 1's last row are two positives of one query, so the
    known-positive mask has to cross workers."""
    q_ids = torch.tensor([7, 1, 2, 3, 4, 7])
    return q_ids, 100 + torch.arange(2 * B * K).view(2 * B, K)


def _model() -> torch.nn.Linear:
    torch.manual_seed(1)
    return torch.nn.Linear(H, H)


def _worker(rank: int, port: int, out: str, masked: bool) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    q, d = _data()
    q_ids, d_ids = _ids() if masked else (None, None)
    model = torch.nn.parallel.DistributedDataParallel(_model())
    mine = slice(rank * B, (rank + 1) * B)
    ids = (q_ids[mine], d_ids[mine]) if masked else (None, None)
    loss = losses.gathered_info_nce(model(q[mine]), model(d[mine]), TAU, q_ids=ids[0], d_ids=ids[1])
    (loss * _loss_scale(TrainConfig())).backward()  # the step's one scale factor
    if rank == 0:
        torch.save({"loss": loss.item(), "grad": model.module.weight.grad.clone()}, out)
    # DDP's reducer keeps gloo work alive; left for interpreter exit, freeing it aborts the
    # process ("terminate called without an active exception") in about one run in ten.
    del model, loss
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.parametrize("masked", [False, True], ids=["plain", "known-positives-masked"])
def test_two_process_gradient_equals_single_process(tmp_path, masked: bool) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "rank0.pt")
    mp.start_processes(_worker, args=(port, out, masked), nprocs=2, start_method="spawn")
    q, d = _data()
    model = _model()
    ids = _ids() if masked else (None, None)
    full = losses.info_nce(model(q), model(d), TAU, q_ids=ids[0], d_ids=ids[1])  # one process, the whole 2B batch
    full.backward()
    got = torch.load(out)
    assert abs(got["loss"] - full.item()) < 1e-5
    torch.testing.assert_close(got["grad"], model.weight.grad, atol=1e-5, rtol=1e-4)
