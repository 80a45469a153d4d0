"""ONNX Runtime backend of the encoding kernel: the model's transformer on ORT, the rest as is. No Ray.

On CPUs, PyTorch runs a BERT layer as a dozen small kernels (the attention's matmuls, softmax and
masking, GELU, residual + LayerNorm). onnxruntime's transformer optimizer fuses them into a few
(Attention, BiasGelu, SkipLayerNormalization), which is where the time goes once batches are
length-sorted. The transformer (module 0 of a sentence-transformers model) is exported once per
model, optimized and cached; tokenization and the modules after it (Pooling, Dense, Normalize)
still run in sentence-transformers, so the embeddings are the model's own.

    SentenceTransformer.preprocess -> ORT session (last_hidden_state) -> model[1:] -> sentence_embedding
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from syneg_ray.errors import ConfigError

logger = logging.getLogger(__name__)

OPSET = 17


def available() -> bool:
    """True when onnxruntime can be imported."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


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
        ConfigError: the export failed (an architecture the exporter cannot trace).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.is_file():
            cmd = [sys.executable, "-m", "syneg_ray.onnx_backend", model_path, str(target)]
            child = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if child.returncode or not target.is_file():
                last = (child.stderr.strip().splitlines() or ["no output"])[-1]
                raise ConfigError(f"encoder.backend = onnx: exporting {model_path} failed ({last}); "
                                  "set encoder.backend=torch")
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


class OnnxEncoder:
    """A SentenceTransformer whose transformer runs on ONNX Runtime.

    It stands in for the model wherever `encoder.py` uses one (`preprocess`, `tokenizer`,
    `max_seq_length`, `device`, calling it on features); everything else is the model's.
    """

    def __init__(self, model: Any, onnx_path: Path, threads: int = 0) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or (os.cpu_count() or 1)
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.model = model
        self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self.names = [i.name for i in self.session.get_inputs()]

    def __getattr__(self, name: str) -> Any:  # only called for what this class does not define
        return getattr(self.model, name)

    def __call__(self, features: dict[str, Any]) -> dict[str, Any]:
        import torch

        feeds = {n: features[n].numpy().astype(np.int64, copy=False) for n in self.names}
        hidden = self.session.run(None, feeds)[0]  # (batch, tokens, hidden)
        features = {**features, "token_embeddings": torch.from_numpy(hidden)}
        for module in list(self.model)[1:]:  # Pooling, Dense, Normalize, ...: the model's own code
            features = module(features)
        return features


if __name__ == "__main__":  # the child process of `export`: python -m syneg_ray.onnx_backend MODEL TARGET
    from syneg_ray.encoder import load_encoder

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    _export_unlocked(load_encoder(sys.argv[1], device="cpu"), Path(sys.argv[2]))
