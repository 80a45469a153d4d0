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
negatives cost. The driver holds nothing of the cache between rounds: a round reads every part's
digest column (16 bytes an answer) and then the texts of only the parts that hold its requests, so
its memory is bounded by the round, not by the cache.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from syneg_ray import prompts
from syneg_ray import synthetic_store as store
from syneg_ray.config import SynthesizeConfig
from syneg_ray.engines.base import Generation, schema_min_chars, with_generation

SCHEMA = pa.schema([("request", pa.binary(16)), ("generated_text", pa.string()), ("prompt_tokens", pa.int64()),
                    ("output_tokens", pa.int64()), ("seconds", pa.float64())])


def request_digest(row: dict[str, Any], s: SynthesizeConfig) -> bytes:
    """The 16-byte digest of what decides a work row's answer (see the module docstring)."""
    min_chars = schema_min_chars(row, s)
    request = {
        "engine": s.engine.value, "model": s.model, "dtype": s.dtype.value, "temperature": s.temperature, "top_p": s.top_p,
        "presence_penalty": s.presence_penalty, "max_model_len": s.vllm.max_model_len,
        "schema_min_length": s.openai.schema_min_length, "max_tokens": int(row["max_tokens"]),
        "grammar": prompts.json_schema(int(row["k"]), min_chars), "seed": int(row["gen_seed"]), "chat": row["chat"],
    }  # fmt: skip
    return hashlib.blake2b(json.dumps(request, sort_keys=True).encode(), digest_size=16).digest()


def request_of(row: dict[str, Any]) -> tuple[str, int, int]:
    """A work or output row's place in its synthesis: its pair, attempt and reflection round (one request each)."""
    return row["key"], int(row["attempt"]), int(row["round"])


@dataclass(frozen=True)
class Split:
    """A round's work divided by the cache."""

    todo: list[dict]  # the work rows to send to the engine
    reused: list[dict]  # the output rows of the work the cache answered
    digests: dict[tuple[str, int, int], bytes]  # the request digest of every todo row, by `request_of`
    seconds: dict[tuple[str, int, int], float]  # what each reused answer once cost, by `request_of`


class AnswerCache:
    """The answers stored in `folder`; `split` takes a round's stored answers out of its work, `add` stores new ones."""

    def __init__(self, folder: Path, s: SynthesizeConfig) -> None:
        self.folder, self.s = folder, s

    def __len__(self) -> int:
        return sum(pq.ParquetFile(part).metadata.num_rows for part in store.part_files(self.folder))

    def split(self, work: list[dict]) -> Split:
        """Divides `work` into the rows to generate and the rows answered from the cache; each
        request is hashed once here and its digest carried to `add`."""
        digests = {request_of(row): request_digest(row, self.s) for row in work}
        found = self._answers(set(digests.values()))
        todo, reused, seconds = [], [], {}
        for row in work:
            answer = found.get(digests[request_of(row)])
            if answer is None:
                todo.append(row)
                continue
            reused.append(with_generation(row, Generation(answer["generated_text"], answer["prompt_tokens"], answer["output_tokens"])))
            seconds[request_of(row)] = answer["seconds"]
        return Split(todo, reused, {request_of(r): digests[request_of(r)] for r in todo}, seconds)

    def _answers(self, wanted: set[bytes]) -> dict[bytes, dict]:
        """The stored answers to the requests `wanted`, by digest: the digest column of every part,
        then the rows of the parts that hold one."""
        if not wanted:
            return {}
        wanted_array = pa.array(sorted(wanted), pa.binary(16))
        found: dict[bytes, dict] = {}
        for part in store.part_files(self.folder):
            digests = pq.read_table(part, columns=["request"]).column("request")
            if not pc.any(pc.is_in(digests, wanted_array)).as_py():
                continue
            table = pq.read_table(part, filters=pc.field("request").isin(wanted_array))
            found.update((row["request"], row) for row in table.to_pylist())
        return found

    def add(self, rows: list[dict], seconds: float, split: Split) -> None:
        """Stores the answers of one engine batch (`rows`, output rows of `split.todo`) that took
        `seconds`, each with an equal share of them; rows the engine answered with an error are not stored."""
        answered = [r for r in rows if not r.get("engine_error")]
        if not answered:
            return
        share = seconds / len(answered)
        entries = [{"request": split.digests[request_of(r)], "generated_text": r["generated_text"], "prompt_tokens": int(r["prompt_tokens"]),
                    "output_tokens": int(r["output_tokens"]), "seconds": share} for r in answered]  # fmt: skip
        store.write_part(self.folder, entries, SCHEMA, id_columns=("request",))
