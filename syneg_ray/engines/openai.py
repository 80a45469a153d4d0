"""`openai` engine: any OpenAI-compatible server through ray.data.llm's HTTP request processor.

Requests ask for JSON-schema output (`response_format`), are rate limited (requests_per_minute),
and 429/408/502-504 and connection errors are retried with exponential backoff by Ray. A reply
without `choices` (a 500 comes back as data) is a row-level engine error; an unreachable server
is an EngineError before any work starts.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any

from syneg_ray import prompts
from syneg_ray.config import SynthesizeConfig
from syneg_ray.engines.base import (
    WORK_COLUMNS,
    Generation,
    light_processor,
    messages_of,
    schema_min_chars,
    with_generation,
)
from syneg_ray.errors import ConfigError, EngineError


def _headers(cfg: SynthesizeConfig) -> dict[str, str]:
    key = os.environ.get(cfg.openai.api_key_env, "")
    return {"Authorization": f"Bearer {key}"} if key else {}


def check_server(cfg: SynthesizeConfig, timeout: float = 5.0) -> list[str]:
    """GETs `{base_url}/models`; returns the served model ids.

    Raises:
        EngineError: the server is unreachable or does not speak the OpenAI API.
    """
    url = cfg.openai.base_url.rstrip("/") + "/models"
    request = urllib.request.Request(url, headers=_headers(cfg))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        raise EngineError(f"openai engine: {url} answered HTTP {exc.code} {exc.reason}; check synthesize.openai.base_url "
                          f"(it should end in /v1) and the API key in ${cfg.openai.api_key_env}") from None
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise EngineError(f"openai engine: cannot reach {cfg.openai.base_url} ({reason}); start the server "
                          "or fix synthesize.openai.base_url") from None
    except json.JSONDecodeError:
        raise EngineError(f"openai engine: {url} did not answer JSON; is {cfg.openai.base_url} an OpenAI-compatible /v1 URL?") from None
    return [m.get("id", "") for m in body.get("data", []) if isinstance(m, dict)]


def payload(cfg: SynthesizeConfig, model: str, messages: list[dict[str, str]], k: int, seed: int,
            max_tokens: int, min_chars: int = 0) -> dict[str, Any]:
    """The chat-completions request body: JSON-schema response format (each negative at least
    `min_chars` long where > 0), sampling, seed, token budget."""
    body = {
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": cfg.temperature,
        "top_p": cfg.top_p,
        "seed": seed,
        "response_format": {"type": "json_schema", "json_schema": {"name": "hard_negatives", "schema": prompts.json_schema(k, min_chars),
                                                           "strict": True}},
    }
    if cfg.presence_penalty:
        body["presence_penalty"] = cfg.presence_penalty
    return body


def request_of(row: dict[str, Any], cfg: SynthesizeConfig, model: str) -> dict[str, Any]:
    """The request body of one work row: its chat, k, seed and token budget, and, where
    `synthesize.openai.schema_min_length` asks, validation's length floor in the schema."""
    min_chars = schema_min_chars(row, cfg) if cfg.openai.schema_min_length else 0
    return payload(cfg, model, messages_of(row), int(row["k"]), int(row["gen_seed"]), int(row["max_tokens"]), min_chars)


def generation_of(response: Any) -> Generation:
    """The answer text and token counts of one chat-completions reply (an error reply -> row error)."""
    if not isinstance(response, dict) or not response.get("choices"):
        error = response.get("error", response) if isinstance(response, dict) else response
        return Generation(text="", prompt_tokens=0, output_tokens=0, error=json.dumps(error, default=str)[:300] or "no choices")
    message = response["choices"][0].get("message") or {}
    usage = response.get("usage") or {}
    return Generation(text=message.get("content") or "", prompt_tokens=int(usage.get("prompt_tokens") or 0),
                      output_tokens=int(usage.get("completion_tokens") or 0))


def chat_once(cfg: SynthesizeConfig, model: str, messages: list[dict[str, str]], max_new_tokens: int) -> str:
    """One direct request (no Ray), for the one-off domain proposal: the answer text.

    Raises:
        EngineError: the server failed the request or answered with an error instead of a reply.
    """
    check_server(cfg)
    body = {"model": model, "messages": messages, "max_tokens": max_new_tokens, "temperature": 0.0,
            "response_format": {"type": "json_object"}}
    url = cfg.openai.base_url.rstrip("/") + "/chat/completions"
    request = urllib.request.Request(url, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json", **_headers(cfg)})
    # a failed request is not an answer: reported as one, it would pass for an LLM that proposed nothing
    hint = "check the server log and synthesize.model, or name pools in synthesize.attribute_pools to skip this request"
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            generation = generation_of(json.loads(response.read().decode("utf-8")))
    except urllib.error.HTTPError as exc:
        raise EngineError(f"openai engine: {url} answered HTTP {exc.code} {exc.reason}; {hint}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise EngineError(f"openai engine: request to {url} failed ({getattr(exc, 'reason', exc)}); {hint}") from None
    except ValueError:  # not JSON, or not UTF-8
        raise EngineError(f"openai engine: {url} did not answer JSON; {hint}") from None
    if generation.error:
        raise EngineError(f"openai engine: {url} answered with an error: {generation.error}; {hint}")
    return generation.text


def qps_per_replica(cfg: SynthesizeConfig) -> int | None:
    """`requests_per_minute` as the whole requests per second each replica may send; None = unlimited.

    Raises:
        ConfigError: the limit is below one request per second per replica.
    """
    if not cfg.openai.requests_per_minute:
        return None
    # Ray's HTTP processor takes a per-actor qps and only whole numbers: rounding a smaller budget
    # up to 1/s would send more than the limit asked for, so refuse it instead
    qps = cfg.openai.requests_per_minute // 60 // cfg.replicas
    if qps < 1:
        raise ConfigError(
            f"synthesize.openai.requests_per_minute = {cfg.openai.requests_per_minute} is below 60 x synthesize.replicas "
            f"= {60 * cfg.replicas}, the lowest limit the openai engine can enforce (1 request per second "
            "per replica); raise it, lower synthesize.replicas, or set 0 for no limit"
        )
    return qps


def build(cfg: SynthesizeConfig, model: str) -> Any:
    """The `openai` engine step: preprocess rows into payloads, POST them, postprocess the replies."""
    qps = qps_per_replica(cfg)
    check_server(cfg)  # fail in a second with the URL, not after Ray's retries
    from ray.data.llm import HttpRequestProcessorConfig, build_processor

    config = HttpRequestProcessorConfig(
        url=cfg.openai.base_url.rstrip("/") + "/chat/completions",
        headers=_headers(cfg),
        qps=qps,
        max_retries=cfg.openai.request_retries,
        base_retry_wait_time_in_s=1.0,
        batch_size=cfg.batch_size,
        concurrency=cfg.replicas,
        # fractional CPUs: an HTTP actor holding a whole CPU on a small box starves the other stages
        http_request_stage={"num_cpus": min(cfg.cpus_per_replica, 0.25)},
    )

    def preprocess(row: dict[str, Any]) -> dict[str, Any]:
        return {"payload": request_of(row, cfg, model)}

    def postprocess(row: dict[str, Any]) -> dict[str, Any]:
        return with_generation({name: row[name] for name in WORK_COLUMNS}, generation_of(row.get("http_response")))

    return light_processor(build_processor, config, preprocess, postprocess)
