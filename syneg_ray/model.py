"""The bi-encoder being trained: one SentenceTransformer whose weights serve queries and documents. No Ray.

Training goes through `DualEncoder` (an `nn.Module` returning the pooled embedding tensor), so DDP
can wrap it; saving goes through the SentenceTransformer inside, so the result loads with
`SentenceTransformer(path)` and `syneg evaluate` scores it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from syneg_ray.encoder import prefixed

logger = logging.getLogger(__name__)


class DualEncoder(nn.Module):
    """Shared-weight bi-encoder: the same SentenceTransformer embeds queries and documents."""

    def __init__(self, st: nn.Module, max_seq_length: int = 0, query_prompt: str = "", document_prompt: str = "") -> None:
        """`max_seq_length` truncates texts in training only (0 = the model's own limit).

        The model keeps declaring its own limit when saved: a model trained on 128-token heads
        still reads 256 tokens at search time, as its base did, so base and trained models are
        evaluated alike.

        `query_prompt` and `document_prompt` (encoder.query_prompt / document_prompt) prefix the texts
        `tokenize_queries` and `tokenize_documents` get, as mining and evaluation prefix them, so the
        model trains on the inputs it is searched with.
        """
        super().__init__()
        self.st = st
        self.query_prompt, self.document_prompt = query_prompt, document_prompt
        self.declared_max_seq_length = st.max_seq_length
        if max_seq_length:
            st.max_seq_length = max_seq_length

    def save(self, folder: str | Path) -> Path:
        """Saves the SentenceTransformer with the limit it declared before training (see `save_model`)."""
        return save_model(self.st, folder, max_seq_length=self.declared_max_seq_length)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """Tokenized features -> (N, H) pooled embeddings (normalized if the model ends in Normalize)."""
        return self.st(features)["sentence_embedding"]  # (N, H)

    def tokenize(self, texts: Sequence[str], device: torch.device | str) -> dict[str, torch.Tensor]:
        """Pads to the longest text of the call and truncates at the model's max_seq_length."""
        features = self.st.preprocess(list(texts))
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in features.items()}

    def tokenize_queries(self, texts: Sequence[str], device: torch.device | str) -> dict[str, torch.Tensor]:
        """`tokenize` of each query after `query_prompt`."""
        return self.tokenize(prefixed(self.query_prompt, texts), device)

    def tokenize_documents(self, texts: Sequence[str], device: torch.device | str) -> dict[str, torch.Tensor]:
        """`tokenize` of each document after `document_prompt`."""
        return self.tokenize(prefixed(self.document_prompt, texts), device)

    def freeze_unused(self, device: torch.device | str) -> list[str]:
        """Stops training the parameters the embedding never uses (e.g. BERT's pooler under mean pooling).

        DDP fails on parameters without gradients unless find_unused_parameters=True, which costs a
        graph traversal every step; one probe backward here finds them once.

        Returns:
            The names of the frozen parameters.
        """
        self.zero_grad(set_to_none=True)
        self(self.tokenize(["probe"], device)).sum().backward()
        unused = [n for n, p in self.named_parameters() if p.requires_grad and p.grad is None]
        for name, param in self.named_parameters():
            param.grad = None
            if name in unused:
                param.requires_grad_(False)
        return unused


def load_model(path: str, device: torch.device | str = "cpu"):  # -> SentenceTransformer
    """Loads a sentence-transformers folder (or hub id) for training, in train mode on `device`."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(path), device=str(device)).train()


def save_model(st: nn.Module, folder: str | Path, max_seq_length: int = 0) -> Path:
    """Writes the SentenceTransformer in its own format (modules.json, weights, tokenizer).

    A model that does not end in Normalize is saved with one appended: training scored by cosine
    (losses.scores), while evaluation, mining and users search by inner product, which is then that
    same cosine. `max_seq_length` (0 = `st`'s current one) is the limit the saved model declares.
    `st` itself is left as it is (it may still be training).
    """
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    training_limit = st.max_seq_length
    if max_seq_length:
        st.max_seq_length = max_seq_length
    try:
        if not isinstance(list(st)[-1], Normalize):
            st = SentenceTransformer(modules=[*st, Normalize()], device=str(st.device), prompts=st.prompts,
                                     default_prompt_name=st.default_prompt_name, similarity_fn_name=st.similarity_fn_name)
        st.save(str(folder))
    finally:
        st.max_seq_length = training_limit  # the appended copy shares the Transformer module with the original
    return folder


def build_tiny(folder: str | Path, tokenizer_from: str, hidden: int = 32, layers: int = 2, seed: int = 0) -> Path:
    """A randomly initialised 2-layer BERT sentence-transformer (mean pooling + Normalize), for tests and smoke runs.

    Args:
        folder: where the sentence-transformers folder is written.
        tokenizer_from: a local model folder whose tokenizer (and vocabulary) is reused.
        hidden: hidden size; layers: transformer layers; seed: weight initialisation.

    Returns:
        The folder.
    """
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import AutoTokenizer, BertConfig, BertModel

    folder = Path(folder)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_from)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
        intermediate_size=2 * hidden, max_position_embeddings=512,
    )  # fmt: skip
    torch.manual_seed(seed)
    raw = folder.with_name(folder.name + "-hf")
    BertModel(config).save_pretrained(raw)
    tokenizer.save_pretrained(raw)
    transformer = Transformer(str(raw), max_seq_length=128)
    st = SentenceTransformer(modules=[transformer, Pooling(hidden, "mean"), Normalize()], device="cpu")
    return save_model(st, folder)
