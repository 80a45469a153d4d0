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
from syneg_ray.engines.base import WORK_COLUMNS, Generation, light_processor, messages_of, with_generation
from syneg_ray.errors import EngineError


def _headers(cfg: SynthesizeConfig) -> dict[str, str]:
    key = os.environ.get(cfg.api_key_env, "")
    return {"Authorization": f"Bearer {key}"} if key else {}


def check_server(cfg: SynthesizeConfig, timeout: float = 5.0) -> list[str]:
    """GETs `{base_url}/models`; returns the served model ids.

    Raises:
        EngineError: the server is unreachable or does not speak the OpenAI API.
    """
    url = cfg.base_url.rstrip("/") + "/models"
    request = urllib.request.Request(url, headers=_headers(cfg))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        raise EngineError(f"openai engine: {url} answered HTTP {exc.code} {exc.reason}; check synthesize.base_url "
                          f"(it should end in /v1) and the API key in ${cfg.api_key_env}") from None
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise EngineError(f"openai engine: cannot reach {cfg.base_url} ({reason}); start the server "
                          "or fix synthesize.base_url") from None
    except json.JSONDecodeError:
        raise EngineError(f"openai engine: {url} did not answer JSON; is {cfg.base_url} an OpenAI-compatible /v1 URL?") from None
    return [m.get("id", "") for m in body.get("data", []) if isinstance(m, dict)]


def payload(cfg: SynthesizeConfig, model: str, messages: list[dict[str, str]], k: int, seed: int,
            max_tokens: int) -> dict[str, Any]:
    """The chat-completions request body: JSON-schema response format, sampling, seed, token budget."""
    body = {
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": cfg.temperature,
        "top_p": cfg.top_p,
        "seed": seed,
        "response_format": {"type": "json_schema", "json_schema": {"name": "hard_negatives", "schema": prompts.json_schema(k), "strict": True}},
    }
    if cfg.presence_penalty:
        body["presence_penalty"] = cfg.presence_penalty
    return body


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
    """One direct request (no Ray), for the one-off domain proposal; '' on a non-answer."""
    check_server(cfg)
    body = {"model": model, "messages": messages, "max_tokens": max_new_tokens, "temperature": 0.0,
            "response_format": {"type": "json_object"}}
    request = urllib.request.Request(cfg.base_url.rstrip("/") + "/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json", **_headers(cfg)})
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            return generation_of(json.loads(response.read().decode("utf-8"))).text
    except (urllib.error.URLError, OSError, json.JSONDecodeError):
        return ""


def build(cfg: SynthesizeConfig, model: str) -> Any:
    """The `openai` engine step: preprocess rows into payloads, POST them, postprocess the replies."""
    check_server(cfg)  # fail in a second with the URL, not after Ray's retries
    from ray.data.llm import HttpRequestProcessorConfig, build_processor

    # Ray's qps is per actor and an integer: split the budget across replicas, at least 1/s each
    qps = max(1, cfg.requests_per_minute // 60 // cfg.replicas) if cfg.requests_per_minute else None
    config = HttpRequestProcessorConfig(
        url=cfg.base_url.rstrip("/") + "/chat/completions",
        headers=_headers(cfg),
        qps=qps,
        max_retries=cfg.request_retries,
        base_retry_wait_time_in_s=1.0,
        batch_size=cfg.batch_size,
        concurrency=cfg.replicas,
        # fractional CPUs: an HTTP actor holding a whole CPU on a small box starves the other stages
        http_request_stage={"num_cpus": min(cfg.cpus_per_replica, 0.25)},
    )

    def preprocess(row: dict[str, Any]) -> dict[str, Any]:
        return {"payload": payload(cfg, model, messages_of(row), int(row["k"]), int(row["gen_seed"]), int(row["max_tokens"]))}

    def postprocess(row: dict[str, Any]) -> dict[str, Any]:
        return with_generation({name: row[name] for name in WORK_COLUMNS}, generation_of(row.get("http_response")))

    return light_processor(build_processor, config, preprocess, postprocess)
