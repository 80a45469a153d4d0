"""The GPU kernels, each against its CPU reference: exact search, corpus encoding, the training step.

These are the parts a GPU machine runs without Ray, so they can be checked on one alone:

    .venv/bin/python -m pytest -m gpu tests/gpu

SYNEG_TEST_DEVICE=cpu runs the same comparisons with the torch code on the CPU, which checks the
tests themselves on a machine without CUDA.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from syneg_ray.config import Dtype, TrainConfig
from syneg_ray.encoder import EncodeOptions, encode, load_encoder
from syneg_ray.index import _search_torch, search_exact
from syneg_ray.model import build_tiny, load_model
from syneg_ray.registry import resolve_model
from syneg_ray.stages.train.step import build_session, plain_step

DEVICE = os.environ.get("SYNEG_TEST_DEVICE", "cuda")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(DEVICE.startswith("cuda") and not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _unit(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_search_on_the_device_finds_what_faiss_finds() -> None:
    corpus, queries = _unit(20_000, 384, 0), _unit(300, 384, 1)
    ref_scores, ref_idx = search_exact(queries, corpus, 10, device="cpu")  # faiss
    scores, idx = _search_torch(queries, corpus, 10, block=128, device=DEVICE)  # several blocks
    assert idx.dtype == np.int64 and idx.shape == ref_idx.shape
    assert (idx == ref_idx).mean() > 0.999  # random vectors: ties that reorder are vanishingly rare
    np.testing.assert_allclose(scores, ref_scores, atol=1e-4)


def test_encoding_on_the_device_matches_the_cpu(scifact) -> None:
    import json

    with (scifact / "corpus.jsonl").open(encoding="utf-8") as f:
        texts = [json.loads(next(f))["text"] for _ in range(64)]
    minilm = resolve_model("minilm")
    ref = encode(load_encoder(minilm, device="cpu"), texts, EncodeOptions())
    on_device = load_encoder(minilm, device=DEVICE)
    fp32 = encode(on_device, texts, EncodeOptions())
    np.testing.assert_allclose(fp32, ref, atol=2e-4)
    if DEVICE.startswith("cuda"):  # bf16 autocast: the precision GPU encoding uses for speed
        bf16 = encode(on_device, texts, EncodeOptions(dtype=Dtype.BF16))
        assert float(np.min(np.sum(bf16 * ref, axis=1))) > 0.99


def test_training_step_on_the_device_gives_the_cpu_loss_and_gradient(tmp_path) -> None:
    folder = str(build_tiny(tmp_path / "tiny", resolve_model("minilm")))
    queries = [f"what is known about topic {i}" for i in range(8)]
    docs = [[f"topic {i} studies report results", f"an unrelated note on subject {i + 3}"] for i in range(8)]
    results = []
    for device in ("cpu", DEVICE):
        st = load_model(folder, device=device).eval()  # no dropout, so both sides compute the same function
        sess = build_session(st, TrainConfig(temperature=0.05, batch_size=8), 10, torch.device(device))
        loss = plain_step(sess, queries, docs)
        grads = [p.grad.detach().cpu() for p in sess.model.parameters() if p.grad is not None]
        results.append((loss.item(), grads))
    (cpu_loss, cpu_grads), (dev_loss, dev_grads) = results
    assert dev_loss == pytest.approx(cpu_loss, abs=1e-4)
    assert len(dev_grads) == len(cpu_grads) > 0
    for a, b in zip(dev_grads, cpu_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)
