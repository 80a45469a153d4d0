"""The encoding kernel: batch planning covers every text once; embeddings match sentence-transformers."""

from __future__ import annotations

import numpy as np
import pytest

from syneg_ray.config import Dtype
from syneg_ray.encoder import EncodeOptions, encode, load_encoder, plan_batches
from syneg_ray.registry import resolve_model


def test_plan_batches_covers_each_index_once_within_budget() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 300, size=500)
    batches = plan_batches(lengths, batch_size=32, max_tokens=2048)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(500))
    for batch in batches:
        assert len(batch) <= 32
        assert len(batch) == 1 or len(batch) * lengths[batch].max() <= 2048
    firsts = [lengths[b[0]] for b in batches]
    assert firsts == sorted(firsts, reverse=True)  # longest first: the padded cost only falls


def test_a_text_longer_than_the_budget_gets_its_own_batch() -> None:
    assert [b.tolist() for b in plan_batches(np.array([5000, 10, 10]), 8, 1024)] == [[0], [1, 2]]


@pytest.fixture(scope="module")
def minilm():
    return load_encoder(resolve_model("minilm"), device="cpu")


def test_matches_sentence_transformers_encode(minilm) -> None:
    texts = ["short", "a much longer text " * 40, "medium length sentence about aspirin and fever", ""]
    ours = encode(minilm, texts, EncodeOptions(batch_size=2, max_tokens_per_batch=512))
    peer = minilm.encode(texts, convert_to_numpy=True)
    assert ours.shape == (4, 384)
    np.testing.assert_allclose(ours, peer, atol=1e-5)


def test_bf16_is_close_and_prompt_changes_the_embedding(minilm) -> None:
    texts = ["does aspirin reduce fever", "statins and cholesterol"]
    fp32 = encode(minilm, texts)
    bf16 = encode(minilm, texts, EncodeOptions(dtype=Dtype.BF16))
    assert (fp32 * bf16).sum(axis=1).min() > 0.99  # cosine of normalized rows
    prompted = encode(minilm, texts, EncodeOptions(prompt="query: "))
    assert not np.allclose(prompted, fp32)


def test_empty_input(minilm) -> None:
    assert encode(minilm, []).shape == (0, 384)


def test_onnx_backend_matches_torch_and_exports_once(minilm, tmp_path) -> None:
    from syneg_ray.onnx_backend import OnnxEncoder, export

    target = tmp_path / "minilm.onnx"
    assert export(resolve_model("minilm"), target) == target and target.is_file()
    stamp = target.stat().st_mtime_ns
    assert export(resolve_model("minilm"), target).stat().st_mtime_ns == stamp  # cached: a second actor does not export again
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".onnx"] == ["minilm.onnx"]  # no temp file left
    texts = ["short", "a much longer text " * 40, "medium length sentence about aspirin and fever", ""]
    options = EncodeOptions(batch_size=2, max_tokens_per_batch=512)
    onnx = encode(OnnxEncoder(minilm, target, threads=2), texts, options)
    np.testing.assert_allclose(onnx, encode(minilm, texts, options), atol=1e-5)


def test_onnx_export_failure_is_one_clear_line(tmp_path) -> None:
    from syneg_ray.errors import ConfigError
    from syneg_ray.onnx_backend import export

    with pytest.raises(ConfigError, match=r"exporting .*not-a-model failed .*set encoder.backend=torch"):
        export(str(tmp_path / "not-a-model"), tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_backend_choice() -> None:
    from syneg_ray.config import Backend, EncoderConfig
    from syneg_ray.errors import ConfigError
    from syneg_ray.stages.embed import backend_of

    assert backend_of(EncoderConfig()) is Backend.ONNX  # fp32 on CPU actors
    assert backend_of(EncoderConfig(dtype=Dtype.BF16)) is Backend.TORCH
    assert backend_of(EncoderConfig(gpus_per_actor=1)) is Backend.TORCH
    assert backend_of(EncoderConfig(backend=Backend.TORCH)) is Backend.TORCH
    with pytest.raises(ConfigError, match="onnx runs fp32 on CPUs"):
        EncoderConfig(backend=Backend.ONNX, dtype=Dtype.BF16)


def test_cpus_per_actor_fits_the_smallest_node() -> None:
    import os

    from syneg_ray.config import EncoderConfig
    from syneg_ray.stages.embed import cpus_per_actor

    cores = os.cpu_count() or 1
    assert cpus_per_actor(EncoderConfig(cpus_per_actor=0.5)) == 0.5  # as configured
    assert cpus_per_actor(EncoderConfig()) == cores  # one actor, every core of this machine
    assert cpus_per_actor(EncoderConfig(), smallest_node_cpus=cores + 1) == cores  # a local Ray's spare CPU is not a core
    assert cpus_per_actor(EncoderConfig(actors=2), smallest_node_cpus=1) == 1  # never more than a node has
