"""The LLM's answers stored by request, so syntheses that ask the same question pay for its answer once.

A request is everything that decides an answer (`request_digest`): the engine, the model and its
dtype, the sampling settings, the answer's JSON grammar and token budget, the chat, and the
request's own seed. Every request is seeded (`prompts.attempt_seed`), so an engine answers the same
request with the same text, up to the floating-point differences that batching can make: a stored
answer is an answer the engine gives that request. What the judge then does with an answer (its
margins, reflection rounds, selection) is not part of the request. Two syntheses that differ only
there, as the rows of an ablation do (judged, then judged and reflected), share every first answer
and every retry they both ask for, and the second generates only what the first never asked:
its reflection turns. A style reference changes the chat, so nothing of such a synthesis is shared.

The cache is a folder of Parquet parts, committed like the synthesis's own (`synthetic_store.write_part`:
a temporary file renamed into place), so a kill leaves whole parts. Each answer keeps its share of
the seconds of the engine batch that wrote it, so a synthesis that reuses it still reports what its
negatives cost. The driver holds the stored requests' digests (16 bytes an answer) and reads texts
only for the digests a round asks for.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from syneg_ray import prompts
from syneg_ray import synthetic_store as store
from syneg_ray.config import SynthesizeConfig
from syneg_ray.engines.base import Generation, min_chars_of, with_generation

SCHEMA = pa.schema([("request", pa.binary(16)), ("generated_text", pa.string()), ("prompt_tokens", pa.int64()),
                    ("output_tokens", pa.int64()), ("seconds", pa.float64())])


def request_digest(row: dict[str, Any], s: SynthesizeConfig) -> bytes:
    """The 16-byte digest of what decides a work row's answer (see the module docstring)."""
    min_chars = min_chars_of(row, s)
    request = {
        "engine": s.engine.value, "model": s.model, "dtype": s.dtype.value, "temperature": s.temperature, "top_p": s.top_p,
        "presence_penalty": s.presence_penalty, "max_model_len": s.vllm.max_model_len,
        "schema_min_length": s.openai.schema_min_length, "max_tokens": int(row["max_tokens"]),
        "grammar": prompts.json_schema(int(row["k"]), min_chars), "seed": int(row["gen_seed"]), "chat": row["chat"],
    }  # fmt: skip
    return hashlib.blake2b(json.dumps(request, sort_keys=True).encode(), digest_size=16).digest()


class AnswerCache:
    """The answers stored in `folder`; `split` takes a round's stored answers out of its work, `add` stores new ones."""

    def __init__(self, folder: Path, s: SynthesizeConfig) -> None:
        self.folder, self.s = folder, s
        digests = [b.column("request").to_numpy(zero_copy_only=False).astype("S16")
                   for b in store.part_batches(folder, SCHEMA, ["request"])]  # fmt: skip
        self.stored = np.unique(np.concatenate([np.empty(0, "S16"), *digests]))

    def __len__(self) -> int:
        return len(self.stored)

    def split(self, work: list[dict]) -> tuple[list[dict], list[dict], dict[bytes, float]]:
        """(the work rows to generate, the output rows of those answered from the cache, and the
        seconds each reused answer once cost, by request digest)."""
        digests = [request_digest(row, self.s) for row in work]
        hit = np.isin(np.array(digests, dtype="S16"), self.stored) if len(self.stored) else np.zeros(len(work), bool)
        if not hit.any():
            return work, [], {}
        wanted = pa.array({d for d, h in zip(digests, hit) if h}, pa.binary(16))
        found: dict[bytes, dict] = {}
        for batch in store.part_batches(self.folder, SCHEMA, SCHEMA.names):
            for row in batch.filter(pc.is_in(batch.column("request"), wanted)).to_pylist():
                found[row["request"]] = row
        todo, reused = [], []
        for row, d in zip(work, digests):
            if d not in found:
                todo.append(row)
                continue
            answer = found[d]
            reused.append(with_generation(row, Generation(answer["generated_text"], answer["prompt_tokens"], answer["output_tokens"])))
        return todo, reused, {d: found[d]["seconds"] for d in found}

    def add(self, rows: list[dict], seconds: float) -> None:
        """Stores the answers of one engine batch (`rows`, with their generation columns) that took
        `seconds`, each with an equal share of them; rows the engine answered with an error are not stored."""
        answered = [r for r in rows if not r.get("engine_error")]
        if not answered:
            return
        share = seconds / len(answered)
        entries = [{"request": request_digest(r, self.s), "generated_text": r["generated_text"], "prompt_tokens": int(r["prompt_tokens"]),
                    "output_tokens": int(r["output_tokens"]), "seconds": share} for r in answered]  # fmt: skip
        store.write_part(self.folder, entries, SCHEMA, id_columns=("request",))
        self.stored = np.union1d(self.stored, np.array([e["request"] for e in entries], dtype="S16"))
