"""ONNX Runtime backend of the encoding kernel: a sentence-transformers model without torch. No Ray.

On CPUs, PyTorch runs a BERT layer as a dozen small kernels (the attention's matmuls, softmax and
masking, GELU, residual + LayerNorm). onnxruntime's transformer optimizer fuses them into a few
(Attention, BiasGelu, SkipLayerNormalization), which is where the time goes once batches are
length-sorted. The transformer (module 0 of a sentence-transformers model) is exported once per
model, optimized and cached, in a child process: the only place this backend loads torch.

At encode time the model's own `tokenizer.json` runs on the `tokenizers` library and its Pooling
and Normalize modules are redone in numpy, so an encoder process holds onnxruntime, tokenizers and
the graph (about 300 MB for MiniLM) instead of torch, transformers and sentence-transformers (about
700 MB more), and it is ready in a second instead of ten.

    tokenizer.json (tokenizers) -> ORT session (last_hidden_state) -> Pooling, Normalize (numpy) -> embedding

`encoder.dtype = int8` runs the same graph after dynamic quantization (`quantized`): about twice
as fast on CPUs with integer dot-product instructions, at a cosine of about 0.995 to fp32.

Models with other modules (Dense, a custom head) or without a fast tokenizer run on the torch
backend; `unsupported(path)` says why.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from syneg_ray import extras
from syneg_ray.errors import ConfigError

logger = logging.getLogger(__name__)

OPSET = 17


def available() -> bool:
    """True when onnxruntime is installed (the `onnx` extra: pip install 'syneg-ray[onnx]').

    Looked up, not imported: the driver asks this before it starts encoder actors, and importing
    onnxruntime there would keep about 20 MB it never uses resident for the whole run.
    """
    return importlib.util.find_spec("onnxruntime") is not None


@contextlib.contextmanager
def _eager_attention(auto_model: Any):
    """Exports attention as plain matmuls + softmax (the pattern ORT fuses), not as SDPA."""
    config = auto_model.config
    before = getattr(config, "_attn_implementation", None)
    config._attn_implementation = "eager"
    try:
        yield
    finally:
        config._attn_implementation = before


def input_names(model: Any) -> list[str]:
    """The transformer inputs that `model.preprocess` produces, in the exported order."""
    names = model.tokenizer.model_input_names  # e.g. [input_ids, token_type_ids, attention_mask]
    return [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in names]


def export(model_path: str, target: Path) -> Path:
    """Exports the transformer of the model at `model_path` to `target` (optimized ONNX) unless it is there.

    Several actors may start at once on a node: a file lock makes one of them export while the
    others wait, and the file appears atomically. The export runs in a child process: tracing
    and optimizing take about 700 MB that an actor would otherwise keep for its whole life.

    Raises:
        ConfigError: the model has modules this backend cannot run (`unsupported`), or the export
            failed (an architecture the exporter cannot trace).
    """
    check_supported(model_path)
    extras.check("onnxruntime", "onnx")  # before the child, which would fail on them with a traceback
    return _make_in_child(["export", model_path], target, f"exporting {model_path}", "set encoder.backend=torch")


def quantized_path(fp32_path: Path) -> Path:
    return fp32_path.with_name(f"{fp32_path.stem}.int8.onnx")


def quantized(fp32_path: Path) -> Path:
    """The int8 twin of an exported transformer (`<name>.int8.onnx` beside it), made once.

    Dynamic quantization: weights become int8 per output channel, activations are quantized per
    batch at run time, and the MatMuls and fused Attention run as integer kernels (VNNI or AMX
    where the CPU has them). Per channel matters: per-tensor scales lost 6% cosine to fp32 on MiniLM,
    per-channel about 0.5% (benchmarks/RESULTS.md, Mining).
    """
    target = quantized_path(fp32_path)
    extras.check("onnxruntime", "onnx")
    return _make_in_child(["quantize", str(fp32_path)], target, f"quantizing {fp32_path.name}", "use encoder.dtype=fp32")


def _make_in_child(args: list[str], target: Path, what: str, fix: str) -> Path:
    """Runs `python -m syneg_ray.onnx_backend ARGS TARGET` under a lock on `target`, unless `target` exists."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.is_file():
            cmd = [sys.executable, "-m", "syneg_ray.onnx_backend", *args, str(target)]
            child = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if child.returncode or not target.is_file():
                last = (child.stderr.strip().splitlines() or ["no output"])[-1]
                raise ConfigError(f"encoder.backend = onnx: {what} failed ({last}); {fix}")
    return target


def _export_unlocked(model: Any, target: Path) -> None:
    import torch

    auto_model = model[0].auto_model
    names = input_names(model)

    class Hidden(torch.nn.Module):
        """The transformer with positional inputs and one output, as the exporter wants it."""

        def __init__(self) -> None:
            super().__init__()
            self.auto_model = auto_model

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            return self.auto_model(**dict(zip(names, inputs, strict=True))).last_hidden_state

    sample = model.tokenizer(["an example", "a longer example sentence"], padding=True, return_tensors="pt")
    raw = target.with_name(f"{target.stem}.{os.getpid()}.raw.onnx")
    axes = {name: {0: "batch", 1: "tokens"} for name in [*names, "last_hidden_state"]}
    with torch.inference_mode(), _eager_attention(auto_model):
        torch.onnx.export(Hidden().eval(), tuple(sample[n] for n in names), str(raw), input_names=names,
                          output_names=["last_hidden_state"], dynamic_axes=axes, opset_version=OPSET, dynamo=False)
    partial = target.with_name(f"{target.stem}.{os.getpid()}.partial.onnx")
    try:
        from onnxruntime.transformers import optimizer

        config = auto_model.config
        optimized = optimizer.optimize_model(str(raw), model_type="bert", num_heads=config.num_attention_heads,
                                             hidden_size=config.hidden_size)
        optimized.save_model_to_file(str(partial))
        logger.info("exported %s to ONNX; fused: %s", type(auto_model).__name__,
                    {k: v for k, v in optimized.get_fused_operator_statistics().items() if v})
    except Exception as exc:  # noqa: BLE001 - any optimizer failure leaves a valid, unfused export to run
        logger.warning("onnxruntime's optimizer failed on %s (%s); using the plain export", type(auto_model).__name__, exc)
        os.replace(raw, partial)
    raw.unlink(missing_ok=True)
    os.replace(partial, target)


# Pooling modes of sentence-transformers' Pooling module that `pool` implements, in its concatenation order.
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "lasttoken")
_LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _modules(folder: Path) -> list[tuple[str, Path]]:
    """The model's module stack from modules.json: (class name, folder), e.g. [("Transformer", .), ("Pooling", 1_Pooling)]."""
    entries = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
    return [(entry["type"].rsplit(".", 1)[-1], folder / entry.get("path", "")) for entry in entries]


def pooling_modes(config: dict[str, Any]) -> tuple[str, ...]:
    """The modes a Pooling config asks for: the `pooling_mode` key, or the older `pooling_mode_*` flags (mean if none)."""
    mode = config.get("pooling_mode")
    if mode is None:
        return tuple(m for key, m in _LEGACY_POOLING_KEYS.items() if config.get(key)) or ("mean",)
    return (mode,) if isinstance(mode, str) else tuple(mode)


def unsupported(model_path: str) -> str:
    """Why the model at `model_path` cannot run on this backend, or "" when it can."""
    folder = Path(model_path)
    if not (folder / "modules.json").is_file():
        return f"{model_path} is not a local sentence-transformers folder (no modules.json)"
    if not (folder / "tokenizer.json").is_file():
        return f"{model_path} has no tokenizer.json (a fast tokenizer)"
    stack = _modules(folder)
    kinds = [kind for kind, _ in stack]
    if kinds[:2] != ["Transformer", "Pooling"] or kinds[2:] not in ([], ["Normalize"]):
        return f"{model_path} has modules {kinds}; this backend runs Transformer, Pooling and an optional Normalize"
    modes = pooling_modes(_read_json(stack[1][1] / "config.json"))
    if set(modes) - set(POOLING_MODES):
        return f"{model_path} pools with {list(modes)}; this backend pools with {list(POOLING_MODES)}"
    return ""


def check_supported(model_path: str) -> None:
    """Raises ConfigError, naming the fix, when `unsupported(model_path)` has a reason."""
    reason = unsupported(model_path)
    if reason:
        raise ConfigError(f"encoder.backend = onnx: {reason}; set encoder.backend=torch or auto")


def pool(hidden: np.ndarray, mask: np.ndarray, modes: Sequence[str]) -> np.ndarray:
    """sentence-transformers' Pooling over right-padded tokens, in numpy.

    Args:
        hidden: (batch, tokens, dim) last hidden states.
        mask: (batch, tokens) attention mask, 1 for real tokens, padding on the right.
        modes: pooling modes; their vectors are concatenated in `POOLING_MODES` order, as the module does.

    Returns:
        (batch, dim x len(modes)) float32.
    """
    weights = mask[:, :, None].astype(hidden.dtype)
    counts = np.maximum(weights.sum(axis=1), 1e-9)
    vectors = []
    for mode in POOLING_MODES:
        if mode not in modes:
            continue
        if mode == "cls":
            vectors.append(hidden[:, 0])
        elif mode == "max":
            vectors.append(np.where(weights > 0, hidden, -np.inf).max(axis=1))
        elif mode == "mean":
            vectors.append((hidden * weights).sum(axis=1) / counts)
        elif mode == "mean_sqrt_len_tokens":
            vectors.append((hidden * weights).sum(axis=1) / np.sqrt(counts))
        else:  # lasttoken: the last real token of each row
            last = np.maximum(mask.sum(axis=1) - 1, 0)
            vectors.append(hidden[np.arange(len(hidden)), last])
    return np.concatenate(vectors, axis=1).astype(np.float32, copy=False)


def _max_length(folder: Path, override: int) -> int:
    """Tokens kept per text: `override`, else the model's max_seq_length, else what its position embeddings allow."""
    if override:
        return override
    configured = _read_json(folder / "sentence_bert_config.json").get("max_seq_length")
    if configured:
        return int(configured)
    limits = [_read_json(folder / "config.json").get("max_position_embeddings"),
              _read_json(folder / "tokenizer_config.json").get("model_max_length")]
    return min((int(x) for x in limits if isinstance(x, (int, float)) and x < 1_000_000), default=512)


def _pad_id(tokenizer: Any, folder: Path) -> int:
    token = _read_json(folder / "tokenizer_config.json").get("pad_token") or "[PAD]"
    token = token.get("content", "") if isinstance(token, dict) else token
    found = tokenizer.token_to_id(token)
    return 0 if found is None else found


class OnnxEncoder:
    """A sentence-transformers model (Transformer, Pooling, optional Normalize) on ONNX Runtime, with no torch.

    `encoder.encode` drives it through `token_lengths` and `embed`, as it drives a SentenceTransformer.
    """

    def __init__(self, model_path: str, onnx_path: Path, threads: int = 0, max_seq_length: int = 0) -> None:
        from tokenizers import Tokenizer

        ort = extras.require("onnxruntime")
        check_supported(model_path)
        folder = Path(model_path)
        stack = _modules(folder)
        pooling = _read_json(stack[1][1] / "config.json")
        self.modes = pooling_modes(pooling)
        self.normalize = len(stack) == 3
        self.max_seq_length = _max_length(folder, max_seq_length)
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.no_padding()  # padding is done per batch below, to the batch's longest row
        self.tokenizer.enable_truncation(self.max_seq_length)
        self.pad_id = _pad_id(self.tokenizer, folder)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or (os.cpu_count() or 1)
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.path = Path(onnx_path)  # the graph it runs: the fp32 export or its int8 twin
        self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self.names = [i.name for i in self.session.get_inputs()]
        width = pooling.get("embedding_dimension") or pooling.get("word_embedding_dimension")
        self.dimension = int(width) * len(self.modes) if width else 0

    def get_embedding_dimension(self) -> int:
        return self.dimension or self.embed([""]).shape[1]

    def token_lengths(self, texts: Sequence[str]) -> np.ndarray:
        """Token count of each text after truncation, special tokens included."""
        encodings = self.tokenizer.encode_batch(list(texts))
        return np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(texts))

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings (len(texts), dim) float32 of one batch; normalized when the model ends in Normalize."""
        encodings = self.tokenizer.encode_batch(list(texts))
        longest = max(len(e.ids) for e in encodings)
        ids = np.full((len(texts), longest), self.pad_id, dtype=np.int64)
        mask = np.zeros_like(ids)
        types = np.zeros_like(ids)
        for row, e in enumerate(encodings):
            n = len(e.ids)
            ids[row, :n], mask[row, :n], types[row, :n] = e.ids, e.attention_mask, e.type_ids
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        hidden = self.session.run(None, {name: feeds[name] for name in self.names})[0]  # (batch, tokens, hidden)
        vectors = pool(hidden, mask, self.modes)
        if self.normalize:
            vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors


def _quantize_unlocked(source: Path, target: Path) -> None:
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    partial = target.with_name(f"{target.stem}.{os.getpid()}.partial.onnx")
    # The fused graph holds contrib ops (Attention, SkipLayerNormalization) that ONNX shape inference
    # cannot type; their outputs are float32.
    try:
        quantize_dynamic(str(source), str(partial), weight_type=QuantType.QInt8, per_channel=True,
                         extra_options={"DefaultTensorType": TensorProto.FLOAT})
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


if __name__ == "__main__":  # the child process of `export` and `quantized`
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    task, source, destination = sys.argv[1:4]
    if task == "export":  # python -m syneg_ray.onnx_backend export MODEL TARGET
        from syneg_ray.encoder import load_encoder

        _export_unlocked(load_encoder(source, device="cpu"), Path(destination))
    elif task == "quantize":  # python -m syneg_ray.onnx_backend quantize FP32_ONNX TARGET
        _quantize_unlocked(Path(source), Path(destination))
    else:
        sys.exit(f"unknown task {task!r}: use export or quantize")
