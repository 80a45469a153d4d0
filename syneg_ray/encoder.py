"""Encoding kernel: length-sorted, token-budget batches through any sentence-transformers model. No Ray.

Why not `SentenceTransformer.encode`: it sorts by character length and uses a fixed batch size, so
batches of short texts waste the budget and long ones pad to the longest. Here texts are sorted
by *token* length and packed until `max_tokens_per_batch` padded tokens, which keeps every forward
pass about the same cost. The same function runs inside a Ray Data actor (services/embed.py), a
training job, or bare on a GPU machine for benchmarks.

The encoder is a SentenceTransformer, run here with torch, or an `onnx_backend.OnnxEncoder`, which
tokenizes and embeds by itself without torch. Torch is imported only for the former, so a process
that encodes on ONNX Runtime never loads it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from syneg_ray.config import Dtype

logger = logging.getLogger(__name__)

# Padded tokens per forward pass when the options leave it at 0. On CPUs a batch of 1024 tokens is
# as fast as one of 8192 and its activations take about 400 MB less (benchmarks/RESULTS.md, Mining);
# GPUs need the larger batch to fill.
CPU_TOKENS_PER_BATCH = 1024
GPU_TOKENS_PER_BATCH = 8192


@dataclass(frozen=True)
class EncodeOptions:
    """What shapes a forward pass; copied from EncoderConfig so the kernel stays config-agnostic."""

    batch_size: int = 64  # upper bound on texts per forward pass
    max_tokens_per_batch: int = 0  # padded tokens per forward pass; 0 = 1024 on CPU, 8192 on GPU
    max_seq_length: int = 0  # truncate at this many tokens; 0 = the model's current limit
    dtype: Dtype = Dtype.FP32
    prompt: str = ""  # prefix for every text (e.g. "query: ")


def prefixed(prompt: str, texts: Sequence[str]) -> list[str]:
    """`texts` each after `prompt`: THE way a prompt meets a text, in encoding, training and dev scoring alike."""
    return [prompt + t for t in texts] if prompt else list(texts)


def load_encoder(path: str, device: str | None = None, max_seq_length: int = 0):  # -> SentenceTransformer
    """Loads a sentence-transformers model in eval mode on `device` (default: cuda if present)."""
    import torch
    from sentence_transformers import SentenceTransformer

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = SentenceTransformer(path, device=device)
    if max_seq_length:
        model.max_seq_length = max_seq_length
    return model.eval()


def plan_batches(lengths: np.ndarray, batch_size: int, max_tokens: int) -> list[np.ndarray]:
    """Groups text indices, longest first, into batches of at most `batch_size` texts and `max_tokens` padded tokens.

    Args:
        lengths: token length per text.
        batch_size: most texts per batch.
        max_tokens: most padded tokens per batch (rows x longest row); a single longer text gets its own batch.

    Returns:
        Index arrays; together they cover every index exactly once.
    """
    order = np.argsort(-lengths, kind="stable")
    batches, start = [], 0
    while start < len(order):
        longest = max(int(lengths[order[start]]), 1)  # sorted: the first row of a batch is its longest
        size = max(1, min(batch_size, max_tokens // longest))
        batches.append(order[start : start + size])
        start += size
    return batches


class _TorchRunner:
    """Drives a SentenceTransformer through the two calls `iter_encode` needs, truncating at
    `max_seq_length` (0: the model's current limit, which a training session may have lowered)."""

    def __init__(self, model, dtype: Dtype, max_seq_length: int = 0) -> None:
        self.model, self.dtype, self.max_seq_length = model, dtype, max_seq_length

    @contextlib.contextmanager
    def _truncating(self) -> Iterator[None]:
        """The model reads `max_seq_length` tokens for the block; its own limit is restored after,
        so encoding in the middle of training leaves the training limit as it was."""
        own = self.model.max_seq_length
        self.model.max_seq_length = self.max_seq_length or own
        try:
            yield
        finally:
            self.model.max_seq_length = own

    def token_lengths(self, texts: Sequence[str]) -> np.ndarray:
        """Token count of each text after truncation, special tokens included."""
        limit = self.max_seq_length or self.model.max_seq_length or 512
        ids = self.model.tokenizer(list(texts), add_special_tokens=True, truncation=True, max_length=limit)["input_ids"]
        return np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(texts))

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        model = self.model
        autocast = (torch.autocast(device_type=model.device.type, dtype=torch.bfloat16) if self.dtype is Dtype.BF16
                    else contextlib.nullcontext())
        with torch.inference_mode(), autocast, self._truncating():
            features = model.preprocess(list(texts))
            features = {k: v.to(model.device) if isinstance(v, torch.Tensor) else v for k, v in features.items()}
            embeddings = model(features)["sentence_embedding"]  # (batch, dim), normalized if the model says so
            return embeddings.float().cpu().numpy()


def _runner(model, options: EncodeOptions):
    """The model itself when it tokenizes and embeds on its own (OnnxEncoder, which truncates at
    the limit it was loaded with), else torch driving it at the options' limit."""
    if hasattr(model, "embed") and hasattr(model, "token_lengths"):
        return model
    return _TorchRunner(model, options.dtype, options.max_seq_length)


def iter_encode(model, texts: Sequence[str], options: EncodeOptions) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yields (indices, float32 embeddings) per batch, in planned (length-sorted) order."""
    texts = prefixed(options.prompt, texts)
    runner = _runner(model, options)
    on_gpu = getattr(getattr(model, "device", None), "type", "cpu") == "cuda"  # an OnnxEncoder runs on CPU
    budget = options.max_tokens_per_batch or (GPU_TOKENS_PER_BATCH if on_gpu else CPU_TOKENS_PER_BATCH)
    batches = plan_batches(runner.token_lengths(texts), options.batch_size, budget)
    for index in batches:
        yield index, runner.embed([texts[i] for i in index])


def encode(model, texts: Sequence[str], options: EncodeOptions = EncodeOptions()) -> np.ndarray:
    """Encodes `texts` into a float32 array (len(texts), dim), rows in input order."""
    if not texts:
        return np.zeros((0, embedding_dimension(model)), dtype=np.float32)
    out: np.ndarray | None = None
    for index, embeddings in iter_encode(model, texts, options):
        if out is None:
            out = np.empty((len(texts), embeddings.shape[1]), dtype=np.float32)
        out[index] = embeddings
    assert out is not None
    return out


def embedding_dimension(model) -> int:
    """Output size of a sentence-transformers model (the method was renamed in v6)."""
    getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return int(getter())
