"""The encoding kernel: batch planning covers every text once; embeddings match sentence-transformers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

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


def test_the_default_token_budget_on_cpu_is_1024(minilm) -> None:
    from syneg_ray.encoder import CPU_TOKENS_PER_BATCH, iter_encode

    texts = ["word " * 120] * 30  # 122 tokens each with [CLS] and [SEP]
    sizes = [len(index) for index, _ in iter_encode(minilm, texts, EncodeOptions())]
    assert CPU_TOKENS_PER_BATCH == 1024 and sizes == [8, 8, 8, 6]  # 1024 // 122 rows per batch
    assert [len(i) for i, _ in iter_encode(minilm, texts, EncodeOptions(max_tokens_per_batch=244))] == [2] * 15


def test_encode_truncates_at_the_options_limit_and_leaves_the_models_own(minilm) -> None:
    text = ["aspirin lowers fever in adults " + "and the trial ran for many weeks " * 20]
    own = minilm.max_seq_length
    head = encode(minilm, text, EncodeOptions(max_seq_length=16))
    assert minilm.max_seq_length == own  # restored: a training session's limit survives dev scoring
    assert not np.allclose(head, encode(minilm, text))  # the default reads the model's own limit, further
    minilm.max_seq_length = 16
    try:
        np.testing.assert_allclose(head, encode(minilm, text), atol=1e-6)  # what the model itself reads at 16
    finally:
        minilm.max_seq_length = own


def test_empty_input(minilm) -> None:
    assert encode(minilm, []).shape == (0, 384)


@pytest.fixture(scope="module")
def minilm_onnx(tmp_path_factory) -> Path:
    from syneg_ray.onnx_backend import export

    target = tmp_path_factory.mktemp("onnx") / "minilm.onnx"
    assert export(resolve_model("minilm"), target) == target and target.is_file()
    return target


def test_onnx_export_happens_once(minilm_onnx) -> None:
    from syneg_ray.onnx_backend import export

    stamp = minilm_onnx.stat().st_mtime_ns
    assert export(resolve_model("minilm"), minilm_onnx).stat().st_mtime_ns == stamp  # cached: a second actor does not export again
    assert not [p.name for p in minilm_onnx.parent.iterdir() if "raw" in p.name or "partial" in p.name]  # no temp file left


@pytest.mark.parametrize("options", [EncodeOptions(batch_size=2, max_tokens_per_batch=512),
                                     EncodeOptions(prompt="query: ", max_seq_length=16)])
def test_onnx_backend_matches_torch(minilm, minilm_onnx, options) -> None:
    from syneg_ray.onnx_backend import OnnxEncoder

    texts = ["short", "a much longer text " * 40, "medium length sentence about aspirin and fever", ""]
    torch_model = load_encoder(resolve_model("minilm"), device="cpu", max_seq_length=options.max_seq_length)
    onnx = OnnxEncoder(resolve_model("minilm"), minilm_onnx, threads=2, max_seq_length=options.max_seq_length)
    assert onnx.max_seq_length == torch_model.max_seq_length  # 256 from the model's config, or the override
    np.testing.assert_allclose(encode(onnx, texts, options), encode(torch_model, texts, options), atol=1e-5)
    assert encode(onnx, []).shape == (0, 384)


def test_int8_is_made_once_and_stays_close_to_fp32(minilm_onnx, scifact) -> None:
    from syneg_ray.onnx_backend import OnnxEncoder, quantized

    int8 = quantized(minilm_onnx)
    stamp = int8.stat().st_mtime_ns
    assert int8.name == "minilm.int8.onnx" and quantized(minilm_onnx).stat().st_mtime_ns == stamp
    assert int8.stat().st_size < minilm_onnx.stat().st_size / 3  # int8 weights: a quarter of fp32's
    lines = (scifact / "corpus.jsonl").read_text(encoding="utf-8").splitlines()[:40]
    texts = [json.loads(line)["text"] for line in lines]
    fp32_vectors = encode(OnnxEncoder(resolve_model("minilm"), minilm_onnx, threads=2), texts)
    int8_vectors = encode(OnnxEncoder(resolve_model("minilm"), int8, threads=2), texts)
    cosines = (fp32_vectors * int8_vectors).sum(axis=1)  # both normalized
    assert cosines.min() > 0.97 and cosines.mean() > 0.985
    # what mining needs: each document's nearest neighbours among the others barely move
    def neighbours(vectors: np.ndarray) -> np.ndarray:
        scores = vectors @ vectors.T - 2 * np.eye(len(vectors))
        return np.argsort(-scores, axis=1)[:, :5]

    same = [len(set(a) & set(b)) for a, b in zip(neighbours(fp32_vectors), neighbours(int8_vectors), strict=True)]
    assert sum(same) / (5 * len(texts)) >= 0.8


def test_diagnostics_encode_with_the_configured_backend_and_precision(minilm_onnx, tmp_path) -> None:
    """Probes and plots open the encoder in-process; under int8 they must not quietly run fp32 torch."""
    import shutil

    from syneg_ray.config import load_config
    from syneg_ray.onnx_backend import OnnxEncoder
    from syneg_ray.services.embed import local_encoder, onnx_file

    def opened(dtype: str):
        cfg = load_config(None, [f"run.cache_dir={tmp_path}", f"encoder.dtype={dtype}"])
        cached = onnx_file(cfg, resolve_model("minilm"))
        if not cached.exists():  # the module's export, where the cache expects it: no second export
            cached.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(minilm_onnx, cached)
        return local_encoder(cfg, resolve_model("minilm"))

    int8 = opened("int8")
    assert isinstance(int8, OnnxEncoder) and int8.path.name.endswith(".int8.onnx")
    assert isinstance(opened("fp32"), OnnxEncoder) and opened("fp32").path.suffixes == [".onnx"]
    assert not isinstance(opened("bf16"), OnnxEncoder)  # bf16 runs on torch autocast


def test_a_failed_quantization_is_one_clear_line(tmp_path) -> None:
    from syneg_ray.errors import ConfigError
    from syneg_ray.onnx_backend import quantized

    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a protobuf")
    with pytest.raises(ConfigError, match=r"quantizing broken.onnx failed \(.+\); use encoder.dtype=fp32"):
        quantized(broken)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.int8.lock", "broken.onnx"]


@pytest.mark.parametrize("dtype", [Dtype.FP32, Dtype.INT8])
def test_an_onnx_encoder_process_never_imports_torch(minilm_onnx, dtype) -> None:
    """The backend's memory saving: an encoder actor on it holds no torch, transformers or sentence-transformers."""
    script = (
        "import sys\n"
        "from syneg_ray.config import Backend, Dtype\n"
        "from syneg_ray.encoder import encode\n"
        "from syneg_ray.services.embed import EncodeUDF, open_encoder\n"
        f"model = open_encoder({resolve_model('minilm')!r}, Backend.ONNX, {str(minilm_onnx)!r}, threads=1, "
        f"dtype=Dtype({dtype.value!r}))\n"
        "assert encode(model, ['aspirin and fever']).shape == (1, 384)\n"
        "print(sorted(m for m in ('torch', 'transformers', 'sentence_transformers') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("modes", [("mean",), ("cls",), ("max",), ("mean_sqrt_len_tokens",), ("lasttoken",), ("cls", "mean")])
def test_numpy_pooling_equals_sentence_transformers(modes) -> None:
    import torch
    from sentence_transformers.sentence_transformer.modules import Pooling

    from syneg_ray.onnx_backend import pool

    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(3, 7, 8)).astype(np.float32)
    mask = np.array([[1] * 7, [1] * 4 + [0] * 3, [1] + [0] * 6], dtype=np.int64)  # right padding, as the tokenizer pads
    features = {"token_embeddings": torch.from_numpy(hidden), "attention_mask": torch.from_numpy(mask)}
    expected = Pooling(8, pooling_mode=modes if len(modes) > 1 else modes[0])(features)["sentence_embedding"].numpy()
    np.testing.assert_allclose(pool(hidden, mask, modes), expected, atol=1e-6)


def _model_variant(tmp_path: Path, modules: list[str] | None = None, drop: str = "") -> str:
    """A copy of minilm's folder (weights linked) with another module stack or a file missing."""
    source = Path(resolve_model("minilm"))
    folder = tmp_path / "variant"
    shutil.copytree(source, folder, copy_function=os.symlink, ignore=shutil.ignore_patterns(drop) if drop else None)
    if modules:
        (folder / "modules.json").unlink()
        stack = [{"idx": i, "name": str(i), "path": "" if i == 0 else f"{i}_{kind}", "type": f"sentence_transformers.models.{kind}"}
                 for i, kind in enumerate(modules)]
        (folder / "modules.json").write_text(json.dumps(stack))
    return str(folder)


def test_models_the_onnx_backend_cannot_run_fall_back_to_torch_or_fail_clearly(tmp_path) -> None:
    from syneg_ray.config import Backend, EncoderConfig
    from syneg_ray.errors import ConfigError
    from syneg_ray.onnx_backend import unsupported
    from syneg_ray.services.embed import backend_of, open_encoder

    assert unsupported(resolve_model("minilm")) == ""
    dense = _model_variant(tmp_path / "a", modules=["Transformer", "Pooling", "Dense", "Normalize"])
    no_fast_tokenizer = _model_variant(tmp_path / "b", drop="tokenizer.json")
    assert "Dense" in unsupported(dense)
    assert "no tokenizer.json" in unsupported(no_fast_tokenizer)
    assert "not a local" in unsupported("org/hub-model")
    for path in (dense, no_fast_tokenizer):
        assert backend_of(EncoderConfig(), path) is Backend.TORCH  # auto: the model still runs, on torch
        with pytest.raises(ConfigError, match=r"encoder.backend = onnx: .* set encoder.backend=torch or auto"):
            open_encoder(path, Backend.ONNX, str(tmp_path / "never-exported.onnx"))
    assert not (tmp_path / "never-exported.onnx").exists()


def test_onnx_export_failure_is_one_clear_line(tmp_path) -> None:
    from syneg_ray.errors import ConfigError
    from syneg_ray.onnx_backend import export

    with pytest.raises(ConfigError, match=r"not-a-model is not a local sentence-transformers folder .*set encoder.backend=torch"):
        export(str(tmp_path / "not-a-model"), tmp_path / "x.onnx")
    broken = _model_variant(tmp_path, drop="config.json")  # the module stack is fine, the transformer cannot load
    (Path(broken) / "config.json").write_text('{"model_type": "no-such-architecture"}')
    with pytest.raises(ConfigError, match=r"exporting .*variant failed \(.*\); set encoder.backend=torch"):
        export(broken, tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_backend_choice() -> None:
    from syneg_ray.config import Backend, EncoderConfig
    from syneg_ray.errors import ConfigError
    from syneg_ray.services.embed import backend_of

    minilm = resolve_model("minilm")
    assert backend_of(EncoderConfig(), minilm) is Backend.ONNX  # fp32 on CPU actors
    assert backend_of(EncoderConfig(dtype=Dtype.BF16), minilm) is Backend.TORCH
    assert backend_of(EncoderConfig(gpus_per_actor=1), minilm) is Backend.TORCH
    assert backend_of(EncoderConfig(backend=Backend.TORCH), minilm) is Backend.TORCH
    with pytest.raises(ConfigError, match="onnx runs fp32 and int8 on CPUs"):
        EncoderConfig(backend=Backend.ONNX, dtype=Dtype.BF16)


def test_bf16_on_a_cpu_that_emulates_it_is_warned_about(monkeypatch) -> None:
    from syneg_ray.config import EncoderConfig
    from syneg_ray.services import embed

    monkeypatch.setattr(embed, "cpu_has_fast_bf16", lambda: False)
    assert "AVX512_BF16 or AMX" in embed.slow_bf16(EncoderConfig(dtype=Dtype.BF16))
    assert embed.slow_bf16(EncoderConfig(dtype=Dtype.BF16, gpus_per_actor=1)) == ""  # GPU actors
    assert embed.slow_bf16(EncoderConfig(dtype=Dtype.FP32)) == embed.slow_bf16(EncoderConfig(dtype=Dtype.INT8)) == ""
    monkeypatch.setattr(embed, "cpu_has_fast_bf16", lambda: True)
    assert embed.slow_bf16(EncoderConfig(dtype=Dtype.BF16)) == ""


def test_int8_runs_only_on_onnx_runtime_on_cpus(tmp_path) -> None:
    from syneg_ray.config import Backend, EncoderConfig, SynthesizeConfig, TrainConfig
    from syneg_ray.errors import ConfigError
    from syneg_ray.services.embed import backend_of

    assert backend_of(EncoderConfig(dtype=Dtype.INT8), resolve_model("minilm")) is Backend.ONNX
    assert backend_of(EncoderConfig(dtype=Dtype.INT8, backend=Backend.ONNX), resolve_model("minilm")) is Backend.ONNX
    for wrong in ({"backend": Backend.TORCH}, {"gpus_per_actor": 1}):
        with pytest.raises(ConfigError, match="encoder.dtype = int8 runs on ONNX Runtime on CPUs"):
            EncoderConfig(dtype=Dtype.INT8, **wrong)
    dense = _model_variant(tmp_path, modules=["Transformer", "Pooling", "Dense", "Normalize"])
    with pytest.raises(ConfigError, match=r"int8 runs on ONNX Runtime: .*Dense.*; use encoder.dtype=fp32"):
        backend_of(EncoderConfig(dtype=Dtype.INT8), dense)  # auto would pick torch, which has no int8 path here
    with pytest.raises(ConfigError, match="synthesize.dtype = int8 is for encoder.dtype only"):
        SynthesizeConfig(dtype=Dtype.INT8)
    with pytest.raises(ConfigError, match="train.dtype = int8 is for encoder.dtype only"):
        TrainConfig(dtype=Dtype.INT8)


def test_cpus_per_actor_fits_the_smallest_node() -> None:
    import os

    from syneg_ray.config import EncoderConfig
    from syneg_ray.services.embed import cpus_per_actor

    cores = os.cpu_count() or 1
    assert cpus_per_actor(EncoderConfig(cpus_per_actor=0.5)) == 0.5  # as configured
    assert cpus_per_actor(EncoderConfig()) == cores  # one actor, every core of this machine
    assert cpus_per_actor(EncoderConfig(), smallest_node_cpus=cores + 1) == cores  # a local Ray's spare CPU is not a core
    assert cpus_per_actor(EncoderConfig(actors=2), smallest_node_cpus=1) == 1  # never more than a node has


def test_row_writer_puts_rows_arriving_in_any_order_in_place(tmp_path):
    from syneg_ray.services.embed import _RowWriter

    expected = np.arange(10 * 3, dtype=np.float32).reshape(10, 3)
    writer = _RowWriter(tmp_path / "x.npy", 10, 3)
    for rows in ([7, 8, 9, 0], [4, 2, 3], [1, 5, 6]):  # runs, a gap, reversed order
        writer.write(np.array(rows), expected[rows])
    writer.close()
    assert np.array_equal(np.load(tmp_path / "x.npy"), expected)
