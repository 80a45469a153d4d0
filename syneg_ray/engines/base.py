"""What every LLM engine shares: the generation columns it adds and the row -> request helpers.

An engine is a function `Dataset -> Dataset` that reads the `chat` column (JSON chat messages, a
multi-turn conversation in a reflection round), `gen_seed` and `k` (which may differ from row to
row), and adds `generated_text`, `prompt_tokens` and `output_tokens` while keeping
every input column. hf.py (`HFGenerator`) and openai.py (`chat_once`) also expose a direct
(non-Ray) call; vllm.py has none: the benchmark builds `vllm.LLM` itself from `engine_kwargs`, and
the one-off direct answer of a vllm run comes from `HFGenerator` (engines.complete).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from syneg_ray import parsing, prompts
from syneg_ray.config import SynthesizeConfig

# The columns of the dataset every engine receives and must keep (`chat` holds the JSON messages,
# `max_tokens` the answer's output-token budget: `prompts.answer_budget`).
WORK_SCHEMA = pa.schema(
    [("key", pa.string()), ("query_id", pa.string()), ("positive_id", pa.string()), ("query", pa.string()),
     ("positive", pa.string()), ("domain", pa.string()), ("difficulty", pa.string()), ("length", pa.string()),
     ("seed", pa.int64()), ("gen_seed", pa.int64()), ("attempt", pa.int64()), ("k", pa.int64()), ("max_tokens", pa.int64()),
     ("chat", pa.string()),
     ("prior_prompt_tokens", pa.int64()), ("prior_output_tokens", pa.int64()), ("prior_reasons", pa.list_(pa.string())),
     # the judge's: 0 = a first answer, r = the r-th reflection turn (`chat` then holds the whole
     # conversation and `k` the negatives to rewrite); the pool it rewrites (JSON; in a first answer,
     # the candidates carried from the pair's earlier attempt, or ""); the off-topic floor
     ("round", pa.int64()), ("pool", pa.string()), ("floor", pa.float64())]
)
WORK_COLUMNS = tuple(WORK_SCHEMA.names)
# ... and the columns it adds.
OUTPUT_SCHEMA = pa.schema(
    [*WORK_SCHEMA, ("generated_text", pa.string()), ("prompt_tokens", pa.int64()), ("output_tokens", pa.int64()),
     ("engine_error", pa.string())]
)


@dataclass(frozen=True)
class Generation:
    """One raw answer of the LLM with its token counts."""

    text: str
    prompt_tokens: int
    output_tokens: int
    error: str = ""  # a row-level engine error (e.g. the server answered 500 for this request)


@dataclass(frozen=True, kw_only=True)
class SamplingSpec:
    """Sampling settings shared by all engines."""

    max_new_tokens: int
    temperature: float
    top_p: float
    presence_penalty: float = 0.0  # subtracted from the logit of every token the answer already holds


def limits_of(cfg: SynthesizeConfig) -> parsing.Limits:
    """Validation thresholds from the config: what the stage validates against and an engine may decode toward.
    A first answer keeps up to k' (`candidates`) valid negatives, among which the judge's selection keeps k."""
    return parsing.Limits(min_ratio=cfg.min_length_ratio, max_ratio=cfg.max_length_ratio,
                          near_duplicate=cfg.near_duplicate, max_negatives=cfg.candidates)


def min_chars_of(row: dict[str, Any], cfg: SynthesizeConfig) -> int:
    """Validation's length floor for a row's negatives, in characters: what a JSON schema's `minLength` holds them to."""
    return prompts.negative_min_chars(limits_of(cfg).shortest(len(str(row["positive"]).split())))


def schema_min_chars(row: dict[str, Any], cfg: SynthesizeConfig) -> int:
    """The `minLength` an answer grammar holds each negative to: validation's floor (`min_chars_of`),
    at most `synthesize.schema_min_length_cap` characters when that is set."""
    floor = min_chars_of(row, cfg)
    return min(floor, cfg.schema_min_length_cap) if cfg.schema_min_length_cap else floor


def messages_of(row: dict[str, Any]) -> list[dict[str, str]]:
    """The chat messages a row carries (stored as a JSON string to keep Arrow columns flat)."""
    return json.loads(row["chat"])


def with_generation(row: dict[str, Any], gen: Generation) -> dict[str, Any]:
    """The input row plus the generation columns."""
    return {
        **{name: row[name] for name in WORK_COLUMNS},
        "generated_text": gen.text,
        "prompt_tokens": int(gen.prompt_tokens),
        "output_tokens": int(gen.output_tokens),
        "engine_error": gen.error,
    }


def light_processor(build_processor, config, preprocess, postprocess):
    """A ray.data.llm processor (a callable Dataset -> Dataset) whose pre/postprocess maps reserve 0.1 CPU.

    They are light Python maps; at the default of a whole CPU each, they and the engine actor
    hold every CPU of a 2-CPU Ray and the pipeline deadlocks.
    """
    light = {"num_cpus": 0.1}
    return build_processor(config, preprocess=preprocess, postprocess=postprocess,
                           preprocess_map_kwargs=light, postprocess_map_kwargs=light)
