"""Synthesize stage: pairs -> prompts -> LLM engine (Ray Data) -> parsed, validated negatives.

Glue only: prompts.py builds the messages, engines/ generate, parsing.py validates and
synthetic_store.py commits each batch exactly once. A pair with no valid negative is retried with
a new seed up to `synthesize.max_retries` times, then recorded as failed. Rerunning skips every
finished key, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from syneg_ray import attributes, engines, parsing, prompts, schema
from syneg_ray import synthetic_store as store
from syneg_ray.config import Engine, PipelineConfig, SynthesizeConfig
from syneg_ray.engines.base import WORK_SCHEMA, limits_of
from syneg_ray.errors import EngineError, SynegError

logger = logging.getLogger(__name__)

ENGINE_ERROR = "engine_error"  # reject reason of a request the engine answered with an error
POOLS_FILE = "attribute_pools.yaml"


def finished_keys(rows: list[dict]) -> set[str]:
    """Keys a rerun skips: pairs that are ok, or failed on what the LLM wrote.

    A pair whose every attempt was an engine error (a server outage, a request refused) was never
    judged, so a rerun tries it again; its attempt count goes on from the log (one more attempt).
    """
    return {r["key"] for r in rows if r["status"] == "ok" or any(x != ENGINE_ERROR for x in r["reject_reasons"])}


def plan(pairs: list[dict], cfg: PipelineConfig, pools: attributes.Pools, done: set[str],
         attempts: dict[str, dict]) -> tuple[list[dict], int]:
    """Work rows for every unfinished pair (continuing logged attempts) and the count of finished pairs."""
    s = cfg.synthesize
    rows, finished = [], 0
    for pair in pairs:
        seed = attributes.pair_seed(cfg.run.seed, pair["query_id"], pair["positive_id"])
        key = store.pair_key(cfg, pair["query_id"], pair["positive_id"])
        if key in done:
            finished += 1
            continue
        draw = attributes.draw(pools, seed)
        prior = attempts.get(key, {"attempts": 0, "prompt_tokens": 0, "output_tokens": 0, "reject_reasons": []})
        attempt = min(prior["attempts"], s.max_retries)
        rows.append({
            **pair, **draw, "key": key, "seed": seed, "attempt": attempt, "gen_seed": prompts.attempt_seed(seed, attempt),
            "k": s.negatives_per_pair,
            "max_tokens": prompts.answer_budget(s.max_new_tokens, s.negatives_per_pair, len(pair["positive"].split()), s.min_length_ratio),
            "chat": json.dumps(prompts.build_messages(pair["query"], pair["positive"], draw, s.negatives_per_pair)),
            "prior_prompt_tokens": prior["prompt_tokens"], "prior_output_tokens": prior["output_tokens"],
            "prior_reasons": list(prior["reject_reasons"]),
        })
    return rows, finished


def finish(row: dict[str, Any], cfg: SynthesizeConfig, limits: parsing.Limits) -> tuple[dict, parsing.Parsed]:
    """Parses one generated row into an output row (status ok, failed, or retry)."""
    if row.get("engine_error"):
        parsed = parsing.Parsed(reasons=[ENGINE_ERROR])
    else:
        parsed = parsing.parse(row["generated_text"], row["query"], row["positive"], limits)
    attempts = int(row["attempt"]) + 1
    status = "ok" if parsed.ok else ("failed" if attempts > cfg.max_retries else "retry")
    out = {
        "key": row["key"], "query_id": row["query_id"], "positive_id": row["positive_id"], "negatives": parsed.negatives,
        "domain": row["domain"], "difficulty": row["difficulty"], "length": row["length"], "reasoning": parsed.reasoning,
        "model": cfg.model, "engine": cfg.engine.value, "prompt_version": prompts.PROMPT_VERSION, "seed": int(row["seed"]),
        "attempts": attempts, "prompt_tokens": int(row["prior_prompt_tokens"]) + int(row["prompt_tokens"]),
        "output_tokens": int(row["prior_output_tokens"]) + int(row["output_tokens"]), "status": status,
        "reject_reasons": [*list(row["prior_reasons"]), *parsed.reasons],
    }
    return out, parsed


def resolve_pools(cfg: PipelineConfig, model: str, out_dir: Path) -> attributes.Pools:
    """Pools from `synthesize.attribute_pools`, else built in, else derived once by the LLM and stored.

    Only pools the LLM proposed are stored: when its answer holds no usable domains, this run uses
    the generic pools and a rerun asks again. An engine that fails the request raises EngineError.
    """
    if cfg.synthesize.attribute_pools:
        return attributes.load_pools(cfg.synthesize.attribute_pools)
    builtin = attributes.pools_for(cfg.data.dataset)
    if builtin is not None:
        return builtin
    stored = out_dir / POOLS_FILE
    if stored.is_file():
        return attributes.load_pools(stored)
    from syneg_ray import dataset

    corpus = pq.read_table(dataset.prepare(cfg).corpus_parquet, columns=["text"]).column("text").to_pylist()
    sample = random.Random(cfg.run.seed).sample(corpus, min(12, len(corpus)))
    text = engines.complete(cfg.synthesize, model, prompts.domain_messages(sample))
    domains = parsing.parse_domains(text)
    if len(domains) < 2:
        # not stored: a stored file is reused by every rerun, which would then never ask the LLM again
        logger.warning("the LLM proposed no usable domains (%r); using generic pools for this run (not saved; "
                       "name pools in synthesize.attribute_pools to choose them)", text[:200])
        return attributes.GENERIC
    pools = attributes.Pools(domains=tuple(domains))
    attributes.save_pools(pools, stored)
    logger.info("attribute pools derived by the LLM: %s (saved to %s; override with synthesize.attribute_pools)",
                ", ".join(pools.domains), stored)
    return pools


def work_dataset(work: list[dict], batch_size: int):  # -> ray.data.Dataset
    """The work rows as a Dataset of one block per engine batch.

    A map task hands its output on only when its whole block is done, so a single block would
    commit nothing (and show no progress) until the round had finished.
    """
    import ray.data

    table = pa.Table.from_pylist(work, schema=WORK_SCHEMA)
    return ray.data.from_arrow([table.slice(i, batch_size) for i in range(0, len(work), batch_size)])


def run_round(work: list[dict], step: engines.EngineFn, cfg: SynthesizeConfig, out: Path, bar: Any,
              totals: Counter) -> list[dict]:
    """One pass of the engine over `work`; commits finished rows, logs retries; returns rows to retry."""
    limits = limits_of(cfg)
    ds = step(work_dataset(work, cfg.batch_size))
    retry: list[dict] = []
    by_key = {w["key"]: w for w in work}
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        finished, again = [], []
        for row in batch.to_pylist():
            result, parsed = finish(row, cfg, limits)
            totals["generations"] += 1
            totals["engine_errors"] += bool(row.get("engine_error"))
            totals["invalid_json"] += parsing.INVALID_JSON in parsed.reasons
            totals["output_tokens"] += int(row["output_tokens"])
            totals.update(f"reject:{r}" for r in parsed.reasons)
            (again if result["status"] == "retry" else finished).append(result)
        store.write_part(out / "attempts", [{k: r[k] for k in store.ATTEMPT_SCHEMA.names} for r in again], store.ATTEMPT_SCHEMA)
        store.write_part(out / Path(schema.SYNTHETIC).name, finished, store.SYNTHETIC_SCHEMA)
        bar.update(len(finished))
        for r in again:
            retry.append({**by_key[r["key"]], "attempt": r["attempts"], "gen_seed": prompts.attempt_seed(r["seed"], r["attempts"]),
                          "prior_prompt_tokens": r["prompt_tokens"], "prior_output_tokens": r["output_tokens"],
                          "prior_reasons": r["reject_reasons"]})
    if totals["generations"] and totals["engine_errors"] == totals["generations"]:
        raise EngineError(f"{cfg.engine.value} engine answered every request with an error; check the server log")
    return retry


def run_synthesize(cfg: PipelineConfig) -> dict:
    """Writes validated synthetic negatives for every train pair into `run_dir/synthesize/negatives.parquet`.

    Returns:
        Summary: pairs, ok, failed, valid_rate, valid_json_rate, negatives, output_tokens, tokens_per_s, rejects.

    Raises:
        EngineError: the engine failed as a whole (model cannot load, server unreachable).
    """
    from tqdm.auto import tqdm

    from syneg_ray.dataset import ensure_pairs
    from syneg_ray.registry import resolve_model
    from syneg_ray.runtime import init_ray, stage_dir

    s = cfg.synthesize
    _, pairs_path = ensure_pairs(cfg)  # a bad dataset or split fails here, before Ray starts
    init_ray(cfg)
    out = stage_dir(cfg, "synthesize")
    model = s.model if s.engine is Engine.OPENAI else resolve_model(s.model, cfg.run.cache_dir or None)
    pools = resolve_pools(cfg, model, out)
    pairs = pq.read_table(pairs_path).to_pylist()
    if s.max_pairs:
        pairs = pairs[: s.max_pairs]
    parts = Path(cfg.run.run_dir) / schema.SYNTHETIC
    done = finished_keys(store.read_synthetic(parts, ["key", "status", "reject_reasons"]).to_pylist())
    work, finished = plan(pairs, cfg, pools, done, store.latest_attempts(out / "attempts"))
    logger.info("synthesize: %d pairs, %d already done, %d to generate with %s %s (prompt %s)",
                len(pairs), finished, len(work), s.engine.value, s.model, prompts.PROMPT_VERSION)
    totals: Counter = Counter()
    start = time.perf_counter()
    if work:
        step = engines.build(s, model)
        with tqdm(total=len(pairs), initial=finished, desc="synthesize", unit="pair") as bar:
            while work:
                try:
                    work = run_round(work, step, s, out, bar, totals)
                except SynegError:
                    raise
                except Exception as exc:  # Ray wraps engine crashes; say which engine and what to do
                    raise EngineError(engines.describe_failure(s, exc)) from exc
    return summarize(cfg, pairs, parts, totals, time.perf_counter() - start)


def summarize(cfg: PipelineConfig, pairs: list[dict], parts: Path, totals: Counter, seconds: float) -> dict:
    """Counts over the whole output (not just this invocation) and the one summary line."""
    keys = {store.pair_key(cfg, p["query_id"], p["positive_id"]) for p in pairs}
    table = store.read_synthetic(parts, ["key", "status", "negatives"])
    rows = [r for r in table.to_pylist() if r["key"] in keys]
    ok = sum(r["status"] == "ok" for r in rows)
    gens = totals["generations"]
    summary = {
        "pairs": len(pairs), "ok": ok, "failed": len(rows) - ok, "valid_rate": ok / len(pairs) if pairs else 0.0,
        "negatives": sum(len(r["negatives"]) for r in rows), "generations": gens,
        "valid_json_rate": (gens - totals["invalid_json"] - totals["engine_errors"]) / gens if gens else None,
        "output_tokens": totals["output_tokens"], "seconds": round(seconds, 1),
        "tokens_per_s": totals["output_tokens"] / seconds if seconds > 0 and gens else None,
        "rejects": {k.split(":", 1)[1]: v for k, v in sorted(totals.items()) if k.startswith("reject:")},
        "output": str(parts),
    }
    tps = f"{summary['tokens_per_s']:.1f} output tok/s" if summary["tokens_per_s"] else "nothing generated"
    logger.info("synthesized %d pairs: %d ok (valid rate %.1f%%), %d failed, %d negatives; %s; rejects %s",
                len(pairs), ok, 100 * summary["valid_rate"], summary["failed"], summary["negatives"], tps,
                summary["rejects"] or "none")
    return summary
