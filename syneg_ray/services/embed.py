"""Ray Data encoder actors and the on-disk embedding cache shared by evaluation and mining.

    pieces: corpus row ranges (CorpusFile) or a few hundred texts (queries, small lists)
      --blocks cut by the driver--> map_batches(EncodeUDF, actor pool; each actor reads its corpus rows)
      --> corpus rows written into a .npy at their offsets, query rows into memory

Each actor loads the encoder once, reads the texts of its corpus pieces from the Parquet itself and
packs them into length-sorted, token-budget batches (encoder.py). The driver holds no document
text: it sends row ranges and writes the vectors into the .npy as they stream back (plain writes,
not a memory map), and it opens no model of its own while the pool runs. Embeddings are cached under
`<cache>/embeddings/` keyed by (model weights, corpus content, dtype, max length, prompt).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from tqdm.auto import tqdm

from syneg_ray import onnx_backend, storage
from syneg_ray.config import Backend, Dtype, EncoderConfig, PipelineConfig, cpu_has_fast_bf16, default_cache_dir
from syneg_ray.dataset import CORPUS_ROW_GROUP, Prepared, file_digest, read_corpus_rows
from syneg_ray.encoder import EncodeOptions, embedding_dimension, encode, load_encoder
from syneg_ray.errors import ConfigError
from syneg_ray.extras import install_hint
from syneg_ray.registry import resolve_model
from syneg_ray.runtime import shared_cores

logger = logging.getLogger(__name__)

ROWS_PER_ACTOR_CALL = 512  # rows handed to an actor at once; it re-batches them by token budget
POOL_QUERIES = 10_000  # more queries than this go to the actor pool even when the corpus is cached


def backend_of(e: EncoderConfig, model_path: str) -> Backend:
    """The backend `auto` stands for: ONNX Runtime for fp32 on CPU actors when installed and the model's
    modules allow it (`onnx_backend.unsupported`), else torch. int8 runs only on ONNX Runtime.

    Raises:
        ConfigError: int8 for a model, or an install, that ONNX Runtime cannot serve.
    """
    if e.dtype is Dtype.INT8:
        reason = _why_not_onnx(model_path)
        if reason:
            raise ConfigError(f"encoder.dtype = int8 runs on ONNX Runtime: {reason}; use encoder.dtype=fp32")
        return Backend.ONNX
    if e.backend is not Backend.AUTO:
        return e.backend
    on_cpu = e.gpus_per_actor == 0
    onnx = on_cpu and e.dtype is Dtype.FP32 and not _why_not_onnx(model_path)
    return Backend.ONNX if onnx else Backend.TORCH


def _why_not_onnx(model_path: str) -> str:
    """Why ONNX Runtime cannot encode with the model at `model_path` here, or "" when it can."""
    return onnx_backend.unsupported(model_path) or ("" if onnx_backend.available() else f"onnxruntime is not installed ({install_hint('onnxruntime')})")


def cpus_per_actor(e: EncoderConfig, smallest_node_cpus: float | None = None) -> float:
    """CPUs (and threads) of one encoder actor: as configured, else the cores shared by the actors
    (runtime.shared_cores: this machine's, at most the smallest node's).

    One actor with every core beats several 1-core actors on a small machine: the threads scale as
    well, and each actor holds its own copy of the model and runtime.
    """
    return e.cpus_per_actor or float(shared_cores(e.actors, smallest_node_cpus))


def onnx_file(cfg: PipelineConfig, model_path: str) -> Path:
    """Where the model's exported transformer is cached (one file per model weights, in fp32)."""
    return default_cache_dir(cfg) / "onnx" / f"{model_fingerprint(model_path)}.onnx"


def prepare_onnx(model_path: str, onnx_path: str, dtype: Dtype = Dtype.FP32) -> Path:
    """The ONNX graph an encoder of `dtype` runs: the fp32 export, or its int8 twin; each made once
    (with the cache in object storage, once in the cluster: other nodes fetch it)."""
    exported = storage.ensure(Path(onnx_path), lambda path: onnx_backend.export(model_path, path))
    if dtype is not Dtype.INT8:
        return exported
    return storage.ensure(onnx_backend.quantized_path(exported), lambda path: onnx_backend.quantized(exported))


def open_encoder(model_path: str, backend: Backend, onnx_path: str, threads: int = 0, max_seq_length: int = 0,
                 dtype: Dtype = Dtype.FP32):
    """The encoder `encoder.encode` runs: the sentence-transformers model, or its torch-free ONNX Runtime twin.

    Opened in actors on any node: a model in the run directory or the cache is fetched from object
    storage when this node lacks it (storage.fetch).
    """
    model_path = str(storage.fetch(model_path))
    if backend is Backend.ONNX:
        return onnx_backend.OnnxEncoder(model_path, prepare_onnx(model_path, onnx_path, dtype), threads, max_seq_length)
    return load_encoder(model_path, max_seq_length=max_seq_length)


def local_encoder(cfg: PipelineConfig, model_path: str):
    """The configured encoder, opened in this process, with the backend and precision the actors
    use: for queries (few) and for diagnostics that encode a few hundred texts (probes, plots).
    Encode with `encode_options(cfg.encoder, prompt)`."""
    e = cfg.encoder
    return open_encoder(model_path, backend_of(e, model_path), str(onnx_file(cfg, model_path)),
                        max_seq_length=e.max_seq_length, dtype=e.dtype)


@dataclass(frozen=True)
class CorpusFile:
    """A corpus Parquet whose `text` column the encoder actors read themselves, a row range a call."""

    path: str
    n_docs: int


class EncodeUDF:
    """Callable class for `map_batches`: loads the encoder once per actor.

    Piece schema: {row: int64 first output row, stop: int64, texts: list<str>} -> {row: int64, embedding: float32[dim]}.
    A piece with no texts is the corpus rows [row, stop) of `corpus_path`, read here and given
    `document_prompt`; texts of other pieces come with their prompts already.
    """

    def __init__(self, model_path: str, options: EncodeOptions, threads: int, max_seq_length: int = 0,
                 backend: str = "torch", onnx_path: str = "", corpus_path: str = "", document_prompt: str = ""):
        if Backend(backend) is Backend.TORCH:  # the ONNX backend sets its own threads and never imports torch
            import torch

            torch.set_num_threads(threads)
        self.model = open_encoder(model_path, Backend(backend), onnx_path, threads, max_seq_length, options.dtype)
        self.options = options
        self.corpus_path, self.document_prompt = corpus_path, document_prompt

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts: list[str] = []
        for start, stop, inline in zip(batch["row"], batch["stop"], batch["texts"], strict=True):
            if len(inline):
                texts += list(inline)
            else:
                corpus = read_corpus_rows(str(storage.fetch(self.corpus_path)), int(start), int(stop), ["text"]).column("text").to_pylist()
                texts += [self.document_prompt + t for t in corpus]
        rows = np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in zip(batch["row"], batch["stop"], strict=True)])
        return {"row": rows, "embedding": encode(self.model, texts, self.options)}


def encode_options(encoder: EncoderConfig, prompt: str) -> EncodeOptions:
    return EncodeOptions(
        batch_size=encoder.batch_size,
        max_tokens_per_batch=encoder.max_tokens_per_batch,
        max_seq_length=encoder.max_seq_length,
        dtype=encoder.dtype,
        prompt=prompt,
    )


def model_fingerprint(model_path: str) -> str:
    """Content hash of a local model's weights and configs; the id itself for a hub model."""
    folder = Path(model_path)
    if not folder.is_dir():
        return hashlib.sha256(model_path.encode()).hexdigest()[:16]
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix in {".safetensors", ".bin", ".json", ".txt"}:
            digest.update(path.relative_to(folder).as_posix().encode())
            digest.update(file_digest(path).encode())
    return digest.hexdigest()[:16]


def cache_path(cfg: PipelineConfig, model_path: str, corpus_fingerprint: str) -> Path:
    e = cfg.encoder
    key = json.dumps([model_fingerprint(model_path), corpus_fingerprint, e.dtype.value, e.max_seq_length, e.document_prompt,
                      backend_of(e, model_path).value])
    return default_cache_dir(cfg) / "embeddings" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.npy"


def corpus_embeddings_file(cfg: PipelineConfig, prepared: Prepared, model: str | None = None) -> Path:
    """Where `embed_corpus` keeps the corpus embeddings of `model` (default `cfg.encoder.model`): a
    float32 .npy whose rows follow the corpus Parquet."""
    return cache_path(cfg, resolve_model(model or cfg.encoder.model, default_cache_dir(cfg)), prepared.fingerprint)


def embed_corpus(cfg: PipelineConfig, prepared: Prepared, model: str | None = None) -> np.ndarray:
    """Corpus embeddings (n_docs, dim), rows in corpus Parquet order; computed once per (model, corpus).

    Args:
        cfg: the pipeline config (encoder section, cache dir, Ray settings).
        prepared: the dataset, with its Parquet corpus.
        model: model name or path; default `cfg.encoder.model`.

    Returns:
        A read-only memory map of the cached float32 array.
    """
    return embed_corpus_and_queries(cfg, prepared, [], model)[0]


def embed_corpus_and_queries(cfg: PipelineConfig, prepared: Prepared, queries: list[str], model: str | None = None,
                             query_target: Path | None = None) -> tuple[np.ndarray, np.ndarray | RowFile]:  # fmt: skip
    """The corpus embeddings (as `embed_corpus`) and those of `queries` (n_queries, dim): in memory,
    or, when they go to the actor pool and `query_target` is given, written there and read by row.

    When the actor pool runs anyway (the corpus is not cached) or the queries are many, the queries
    ride on it: the driver then never opens a model, and a large training set's queries (MS MARCO
    has half a million) are encoded by the cluster's actors, not by one driver process. A few
    queries against a cached corpus are encoded here, as a pool would take longer to start.
    """
    model_path = resolve_model(model or cfg.encoder.model, default_cache_dir(cfg))
    target = cache_path(cfg, model_path, prepared.fingerprint)
    if target.is_file() or storage.published(target):  # with the cache in object storage, another node's encoding counts
        storage.fetch(target)
        logger.info("corpus embeddings: cache hit %s", target.name)
        corpus = np.load(target, mmap_mode="r")
        if not queries:
            return corpus, np.zeros((0, corpus.shape[1]), np.float32)
        if len(queries) <= POOL_QUERIES:
            return corpus, encode_queries_here(cfg, model_path, queries)
        return corpus, encode_on_pool(cfg, model_path, [], None, queries, query_target=query_target).queries
    documents = CorpusFile(str(prepared.corpus_parquet), prepared.n_docs)
    return encode_on_pool(cfg, model_path, documents, target, queries, query_target=query_target)


class PoolOutput(NamedTuple):
    documents: np.ndarray  # (n_documents, dim): a read-only memory map of the target file
    queries: np.ndarray | RowFile  # (n_queries, dim), in memory, or in the query_target file


def slow_bf16(e: EncoderConfig) -> str:
    """A warning when bf16 was asked for CPU actors on a CPU (the driver's) that emulates it; "" otherwise."""
    if e.dtype is not Dtype.BF16 or e.gpus_per_actor > 0 or cpu_has_fast_bf16():
        return ""
    return ("encoder.dtype = bf16 on a CPU without AVX512_BF16 or AMX: torch emulates it, several times slower "
            "than fp32 (benchmarks/RESULTS.md); use encoder.dtype=auto, fp32 or int8 unless the actors' nodes have them")


def encode_with_ray(cfg: PipelineConfig, model_path: str, texts: list[str], prompt: str, target: Path) -> np.ndarray:
    """Encodes `texts` (each after `prompt`) on a Ray Data actor pool into the .npy file `target` (written atomically)."""
    return encode_on_pool(cfg, model_path, texts, target, [], document_prompt=prompt).documents


def encode_on_pool(cfg: PipelineConfig, model_path: str, documents: list[str] | CorpusFile, target: Path | None,
                   queries: list[str], document_prompt: str | None = None,
                   query_target: Path | None = None) -> PoolOutput:  # fmt: skip
    """Encodes documents into the .npy file `target` (written atomically) and queries into memory (or
    into the .npy file `query_target`, read back as a `RowFile`), in one pass of a Ray Data actor pool.

    `documents` is a list of texts, or a `CorpusFile` whose rows the actors read themselves (the
    driver then never holds them). Each side gets its prompt from `cfg.encoder` (`document_prompt`
    overrides the documents' one), prefixed exactly as `encoder.iter_encode` would, so one pool
    serves both sides.
    `target` may be None only when there are no documents; no file is written for none (as before
    for an empty corpus), and their embeddings are an empty (0, dim) array.
    """
    import ray

    from syneg_ray.runtime import init_ray

    n_docs = documents.n_docs if isinstance(documents, CorpusFile) else len(documents)
    if n_docs and target is None:
        raise ValueError("encode_on_pool: documents need a target file")
    e = cfg.encoder
    backend = backend_of(e, model_path)
    if slow := slow_bf16(e):
        logger.warning(slow)
    if backend is Backend.ONNX:
        # Done before Ray starts, so the export's peak (torch, tracing: about 1.3 GB for MiniLM)
        # stays apart from Ray's daemons and the actors.
        prepare_onnx(model_path, str(onnx_file(cfg, model_path)), e.dtype)
    init_ray(cfg)
    cpus = cpus_per_actor(e)
    doc_prompt = e.document_prompt if document_prompt is None else document_prompt
    if not n_docs + len(queries):  # no batch will arrive to tell the width
        width = embedding_dimension(local_encoder(cfg, model_path))
        return PoolOutput(np.zeros((0, width), np.float32), np.zeros((0, width), np.float32))
    pieces = _pieces(documents, doc_prompt, e.query_prompt, queries)
    blocks = max(e.actors * 4, len(pieces) // 8 + 1)  # enough blocks to keep every actor busy
    bounds = np.linspace(0, len(pieces), min(blocks, len(pieces)) + 1).astype(int)
    # The driver cuts the blocks itself: a repartition task would need a CPU beside the actors, which
    # a node whose CPUs the actors fill (a Tune trial holds a share too) never frees, and Ray Data
    # starts the actors first, so that task would wait forever. The blocks are small: a corpus piece
    # is two integers, and only queries (bounded by the training set) travel as text.
    ds = ray.data.from_arrow([pieces.slice(int(a), int(b - a)) for a, b in itertools.pairwise(bounds)])
    del pieces
    ds = ds.map_batches(
        EncodeUDF,
        fn_constructor_kwargs={
            "model_path": model_path,
            "options": encode_options(e, ""),  # the prompts are in the texts already
            "threads": max(1, int(cpus)),
            "max_seq_length": e.max_seq_length,
            "backend": backend.value,
            "onnx_path": str(onnx_file(cfg, model_path)),
            "corpus_path": documents.path if isinstance(documents, CorpusFile) else "",
            "document_prompt": doc_prompt,
        },
        batch_size=1,  # one piece a call: a corpus row group or ROWS_PER_ACTOR_CALL texts
        compute=ray.data.ActorPoolStrategy(size=e.actors),
        num_cpus=cpus,
        num_gpus=e.gpus_per_actor,
    )
    # A piece is a corpus row group (2,048 documents): on a slow or shared CPU (bf16 emulated on an
    # AVX2 CPU took over 30 minutes for one) Ray Data's no-progress limit (30 minutes by default)
    # would fail the whole encoding as hung. An actor that fails still ends it with its error.
    ds.context.execution_no_progress_timeout_s = -1
    partial = target.with_name(target.stem + f".{os.getpid()}.partial.npy") if n_docs else None
    out = query_out = None  # opened at the first batch, whose width is the model's: the driver never loads the model
    # one progress line for the whole encoding (Ray Data's own progress is off unless -v)
    bar = tqdm(total=n_docs + len(queries), desc="encode", unit="text", unit_scale=True, mininterval=10)
    for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
        bar.update(len(batch["row"]))
        vectors = np.stack(batch["embedding"]) if batch["embedding"].dtype == object else batch["embedding"]
        if query_out is None:
            width = vectors.shape[1]
            query_out = _RowWriter(query_target, len(queries), width) if query_target else np.empty((len(queries), width), np.float32)
            if partial:
                out = _RowWriter(partial, n_docs, width)
        is_doc = batch["row"] < n_docs
        if out is not None:
            out.write(batch["row"][is_doc], vectors[is_doc])
        if isinstance(query_out, _RowWriter):
            query_out.write(batch["row"][~is_doc] - n_docs, vectors[~is_doc])
        else:
            query_out[batch["row"][~is_doc] - n_docs] = vectors[~is_doc]
    bar.close()
    assert query_out is not None  # texts is not empty, so a batch arrived
    logger.info("encoded %s documents and %s queries with %s %s actors", f"{n_docs:,}", f"{len(queries):,}", e.actors,
                backend.value)  # fmt: skip
    if isinstance(query_out, _RowWriter):
        query_out.close()
        query_out = RowFile(query_target)
    if out is None:  # queries only
        return PoolOutput(np.zeros((0, query_out.shape[1]), np.float32), query_out)
    out.close()
    os.replace(partial, target)
    storage.publish(target)
    return PoolOutput(np.load(target, mmap_mode="r"), query_out)


class _RowWriter:
    """Writes rows of a float32 (n, dim) .npy in place as they arrive, in any order.

    Plain writes at each row's offset rather than a memory map: the file's pages then stay in the
    page cache and out of the driver's own memory, where a memory-mapped output counts every page
    the driver writes (1.5 GB at a million 384-dimensional vectors).
    """

    def __init__(self, path: Path, n: int, dim: int):
        path.parent.mkdir(parents=True, exist_ok=True)
        header = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, dim))  # header and size
        self.offset, self.row_bytes = header.offset, dim * 4
        del header
        self.fd = os.open(path, os.O_WRONLY)

    def write(self, rows: np.ndarray, vectors: np.ndarray) -> None:
        order = np.argsort(rows, kind="stable")
        rows, vectors = rows[order], np.ascontiguousarray(vectors[order], dtype=np.float32)
        at = 0
        for run in _runs(rows):  # one write each
            os.pwrite(self.fd, vectors[at : at + len(run)].tobytes(), self.offset + int(run[0]) * self.row_bytes)
            at += len(run)

    def close(self) -> None:
        os.fsync(self.fd)
        os.close(self.fd)


def _runs(rows: np.ndarray) -> list[np.ndarray]:
    """Sorted `rows` cut into runs of consecutive rows (each read or written at once)."""
    return [run for run in np.split(rows, np.flatnonzero(np.diff(rows) != 1) + 1) if len(run)]


class RowFile:
    """Rows of a float32 (n, dim) .npy read on demand with plain reads, so the file's pages stay in
    the page cache and out of the reader's memory (a memory map would count each page it touched).

    Example:
        >>> vectors = RowFile(path)  # doctest: +SKIP
        >>> vectors.rows(np.array([4, 5, 6, 90]))  # (4, dim): one read for 4-6, one for 90
    """

    def __init__(self, path: Path):
        header = np.load(path, mmap_mode="r")  # the header only
        self.path, self.shape, self.offset = Path(path), header.shape, header.offset
        if header.dtype != np.float32 or len(self.shape) != 2:
            raise ValueError(f"{path}: not a float32 (n, dim) array")
        del header

    def __len__(self) -> int:
        return self.shape[0]

    def rows(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), dim) float32 in the order given; runs of consecutive rows are read at once."""
        rows = np.asarray(rows, dtype=np.int64)
        dim = self.shape[1]
        out = np.empty((len(rows), dim), dtype=np.float32)
        order = np.argsort(rows, kind="stable")
        fd = os.open(self.path, os.O_RDONLY)
        try:
            at = 0
            for run in _runs(rows[order]):
                data = os.pread(fd, len(run) * dim * 4, self.offset + int(run[0]) * dim * 4)
                out[order[at : at + len(run)]] = np.frombuffer(data, dtype=np.float32).reshape(len(run), dim)
                at += len(run)
        finally:
            os.close(fd)
        return out


def _pieces(documents: list[str] | CorpusFile, document_prompt: str, query_prompt: str, queries: list[str]):  # -> pa.Table
    """The pool's work list: rows [row, stop) of the output, each a corpus range or inline texts."""
    import pyarrow as pa

    starts, stops, texts = [], [], []
    if isinstance(documents, CorpusFile):  # ranges on the Parquet's row groups, so each read is one group
        for start in range(0, documents.n_docs, CORPUS_ROW_GROUP):
            starts.append(start)
            stops.append(min(start + CORPUS_ROW_GROUP, documents.n_docs))
            texts.append([])
        offset = documents.n_docs
        inline: list[str] = []
    else:
        offset = 0
        inline = [document_prompt + t for t in documents]
    inline += [query_prompt + q for q in queries]
    for start in range(0, len(inline), ROWS_PER_ACTOR_CALL):
        chunk = inline[start : start + ROWS_PER_ACTOR_CALL]
        starts.append(offset + start)
        stops.append(offset + start + len(chunk))
        texts.append(chunk)
    return pa.table({"row": pa.array(starts, pa.int64()), "stop": pa.array(stops, pa.int64()),
                     "texts": pa.array(texts, pa.list_(pa.string()))})  # fmt: skip


def embed_queries(cfg: PipelineConfig, texts: list[str], model: str | None = None) -> np.ndarray:
    """Query embeddings in the driver process (see `embed_corpus_and_queries` for when they ride on the actors)."""
    return encode_queries_here(cfg, resolve_model(model or cfg.encoder.model, default_cache_dir(cfg)), texts)


def encode_queries_here(cfg: PipelineConfig, model_path: str, texts: list[str]) -> np.ndarray:
    return encode(local_encoder(cfg, model_path), texts, encode_options(cfg.encoder, cfg.encoder.query_prompt))
