"""The judge inside synthesis: parse each generation and score its negatives with the base encoder.

    LLM step (engines/) --> map_batches(JudgeUDF, its own actor pool) --> rows with judge columns

Each judge actor loads `encoder.model` once (torch or ONNX Runtime, as the encoder actors do),
parses the LLM's answer (`parsing.parse`, or `parsing.parse_rewrites` in a reflection turn) and
encodes the queries (with `encoder.query_prompt`) and the positives and candidates (with
`encoder.document_prompt`) of its batch, then gives each candidate a verdict (`judging.verdicts`).
The driver only reads the columns back and decides what follows (`rounds.py`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa

from syneg_ray import judging, parsing, rounds
from syneg_ray.config import Backend, EncoderConfig, PipelineConfig
from syneg_ray.engines.base import OUTPUT_SCHEMA

# query texts, document texts -> (query embeddings (n_q, dim), document embeddings (n_d, dim))
EncodeFn = Callable[[list[str], list[str]], tuple[np.ndarray, np.ndarray]]

JUDGED_SCHEMA = pa.schema(
    [*OUTPUT_SCHEMA,
     ("candidates", pa.list_(pa.string())),  # round 0: the valid negatives; round r: the rewrites, "" where invalid
     ("parse_reasons", pa.list_(pa.string())),  # round 0: one per rejected candidate; round r: per rewrite, "" if valid
     ("reasoning", pa.string()),
     ("query_scores", pa.list_(pa.float32())),  # cos(query, candidate); nan when not scored
     ("positive_similarities", pa.list_(pa.float32())),  # cos(candidate, positive)
     ("positive_score", pa.float32()),  # cos(query, positive)
     ("verdicts", pa.list_(pa.string()))]  # judging verdict per candidate, or the parse reason of an invalid rewrite
)  # fmt: skip


def _parsed(row: dict[str, Any], limits: parsing.Limits) -> tuple[list[str], list[str], str]:
    """(candidates, parse reasons, reasoning) of one generated row."""
    n = int(row["k"])
    if int(row["round"]) == 0:
        if row.get("engine_error"):
            return [], [rounds.ENGINE_ERROR], ""
        carried = tuple(rounds.carried_of(row)["candidates"])  # a new candidate that repeats one is a duplicate
        parsed = parsing.parse(row["generated_text"], row["query"], row["positive"], limits, carried)
        return parsed.negatives, parsed.reasons, parsed.reasoning
    if row.get("engine_error"):
        return [""] * n, [rounds.ENGINE_ERROR] * n, ""
    pool = json.loads(row["pool"])
    asked = set(rounds.flagged(pool))
    others = tuple(t for i, t in enumerate(pool["candidates"]) if i not in asked)
    rewrites = parsing.parse_rewrites(row["generated_text"], n, row["query"], row["positive"], limits, others)
    return rewrites.texts, rewrites.reasons, rewrites.reasoning


def examine(rows: list[dict[str, Any]], limits: parsing.Limits, rule: judging.Rule, encode: EncodeFn | None) -> list[dict[str, Any]]:
    """The rows with the judge columns (`JUDGED_SCHEMA`): parsed candidates, their scores and verdicts.

    Args:
        rows: generated work rows (engine output).
        limits: validation thresholds.
        rule: the judge's thresholds.
        encode: the encoder; None = the judge is off (no scores, every valid candidate `ok`).
    """
    parsed = [_parsed(r, limits) for r in rows]
    texts = [[t for t in cands if t] for cands, _, _ in parsed]
    scored = encode is not None and any(texts)
    if scored:
        q_emb, d_emb = encode([r["query"] for r in rows], [r["positive"] for r in rows] + [t for ts in texts for t in ts])
        offset = len(rows)
    out = []
    for i, (row, (cands, reasons, reasoning)) in enumerate(zip(rows, parsed, strict=True)):
        n = len(cands)
        q_scores, sims, pos_score = np.full(n, np.nan), np.full(n, np.nan), math.nan
        filled = [j for j, t in enumerate(cands) if t]
        if scored and filled:
            vectors = d_emb[offset : offset + len(filled)]  # (n_filled, dim)
            offset += len(filled)
            pos_score = float(judging.cosines(q_emb[i : i + 1], d_emb[i : i + 1])[0])
            q_scores[filled] = judging.cosines(np.repeat(q_emb[i : i + 1], len(filled), 0), vectors)
            sims[filled] = judging.cosines(np.repeat(d_emb[i : i + 1], len(filled), 0), vectors)
        judged = judging.verdicts(q_scores[filled], pos_score, sims[filled], rule, float(row["floor"]))
        verdicts = [reasons[j] or "" for j in range(n)] if int(row["round"]) else [""] * n
        for j, v in zip(filled, judged, strict=True):
            verdicts[j] = v
        out.append({**row, "candidates": cands, "parse_reasons": reasons, "reasoning": reasoning,
                    "query_scores": q_scores.tolist(), "positive_similarities": sims.tolist(),
                    "positive_score": pos_score, "verdicts": verdicts})  # fmt: skip
    return out


class JudgeUDF:
    """Ray Data callable class: the encoder loaded once per actor; generated rows in, judged rows out."""

    def __init__(self, model_path: str, encoder: EncoderConfig, backend: str, onnx_path: str, threads: int,
                 limits: parsing.Limits, rule: judging.Rule) -> None:  # fmt: skip
        from syneg_ray.services.embed import encode_options, open_encoder

        if Backend(backend) is Backend.TORCH:  # ONNX Runtime sets its own threads and never imports torch
            import torch

            torch.set_num_threads(threads)
        self.model = open_encoder(model_path, Backend(backend), onnx_path, threads, encoder.max_seq_length, encoder.dtype)
        self.query_options = encode_options(encoder, encoder.query_prompt)
        self.document_options = encode_options(encoder, encoder.document_prompt)
        self.limits, self.rule = limits, rule

    def encode(self, queries: list[str], documents: list[str]) -> tuple[np.ndarray, np.ndarray]:
        from syneg_ray.encoder import encode

        return encode(self.model, queries, self.query_options), encode(self.model, documents, self.document_options)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return pa.Table.from_pylist(examine(batch.to_pylist(), self.limits, self.rule, self.encode), schema=JUDGED_SCHEMA)


def build(cfg: PipelineConfig, limits: parsing.Limits) -> Callable[[Any], Any]:
    """The judge step `Dataset -> Dataset`: `map_batches(JudgeUDF)` on `synthesize.judge_actors` actors.

    Call before Ray starts: an ONNX backend exports the model here, apart from Ray's processes.
    """
    from syneg_ray.config import default_cache_dir
    from syneg_ray.registry import resolve_model
    from syneg_ray.services.embed import backend_of, onnx_file, prepare_onnx

    s, e = cfg.synthesize, cfg.encoder
    model_path = resolve_model(e.model, default_cache_dir(cfg))
    backend = backend_of(e, model_path)
    onnx_path = str(onnx_file(cfg, model_path))
    if backend is Backend.ONNX:
        prepare_onnx(model_path, onnx_path, e.dtype)
    rule = judging.Rule.of(cfg.mine, s.judge_max_positive_similarity)

    def step(ds: Any) -> Any:
        import ray.data

        return ds.map_batches(
            JudgeUDF,
            fn_constructor_kwargs={"model_path": model_path, "encoder": e, "backend": backend.value, "onnx_path": onnx_path,
                                   "threads": max(1, int(s.judge_cpus)), "limits": limits, "rule": rule},
            batch_size=None,  # a whole engine batch per call: its rows are committed together
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=s.judge_actors),
            num_cpus=s.judge_cpus,
            num_gpus=e.gpus_per_actor,
        )

    return step
