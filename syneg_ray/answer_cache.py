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
negatives cost.

A round finds its requests through the index (`index/`): files of (digest, part) pairs, one for
every `INDEX_EVERY` parts, merged into one when there are more than `INDEX_FILES` of them. A
synthesis of a million pairs writes a part per engine batch, tens of thousands of them: without
the index every round would open every one. A round reads the index, the digest column of the few
parts not yet in it, and then the texts of only the parts that hold its requests. The driver holds
nothing of the cache between rounds; within one, the index's digest and part name of every answer.
A kill while the index is written leaves parts listed twice or not yet listed: both read right.
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
INDEX_SCHEMA = pa.schema([("request", pa.binary(16)), ("part", pa.string())])
INDEX_EVERY = 64  # parts a round leaves out of the index; at more it indexes them
INDEX_FILES = 16  # index files a round leaves apart; at more it merges them into one


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
        self.index_folder = folder / "index"

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
        """The stored answers to the requests `wanted`, by digest: the index and the digest column
        of each part not yet in it, then the rows of the parts that hold one."""
        if not wanted:
            return {}
        wanted_array = pa.array(sorted(wanted), pa.binary(16))
        index, index_files = self._read_index()
        indexed = set(pc.unique(index.column("part")).to_pylist())
        holding = set(pc.unique(index.filter(pc.is_in(index.column("request"), wanted_array)).column("part")).to_pylist())
        unindexed = []
        for part in store.part_files(self.folder):
            if part.name in indexed:
                continue
            digests = pq.read_table(part, columns=["request"]).column("request")
            unindexed.append(pa.table({"request": digests, "part": pa.repeat(part.name, len(digests))}, schema=INDEX_SCHEMA))
            if pc.any(pc.is_in(digests, wanted_array)).as_py():
                holding.add(part.name)
        found: dict[bytes, dict] = {}
        for name in sorted(holding):
            if (self.folder / name).exists():  # an index may outlive a part someone deleted
                table = pq.read_table(self.folder / name, filters=pc.field("request").isin(wanted_array))
                found.update((row["request"], row) for row in table.to_pylist())
        self._index(unindexed, index, index_files)
        return found

    def _read_index(self) -> tuple[pa.Table, list[Path]]:
        """Every (digest, part) pair of the index, and the files that hold them."""
        while True:
            index_files = store.part_files(self.index_folder)
            try:
                tables = [pq.read_table(f, schema=INDEX_SCHEMA) for f in index_files]
            except FileNotFoundError:  # another synthesis sharing the cache merged them away: list again
                continue
            return pa.concat_tables([INDEX_SCHEMA.empty_table(), *tables]), index_files

    def _index(self, unindexed: list[pa.Table], index: pa.Table, index_files: list[Path]) -> None:
        """Adds the digests of `unindexed` parts to the index when there are enough of them, and
        merges the index files (`index`, read from `index_files`) into one when there are too many."""
        if len(unindexed) >= INDEX_EVERY:
            index_files.append(self._commit_index(pa.concat_tables(unindexed)))
            index = pa.concat_tables([index, *unindexed])
        if len(index_files) > INDEX_FILES:
            merged = self._commit_index(index)
            for f in index_files:  # after the merged file is in place, so a kill here lists parts twice, never not at all
                if f != merged:
                    f.unlink(missing_ok=True)

    def _commit_index(self, table: pa.Table) -> Path:
        """Commits `table` as an index file named by the parts it lists (the same parts, the same name)."""
        names = sorted(pc.unique(table.column("part")).to_pylist())
        return store.commit_table(self.index_folder, table, f"part-{store.name_digest(names)}")

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
