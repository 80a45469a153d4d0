"""Exactly-once storage of synthesize results: committed Parquet parts, read back deduplicated by key.

Each batch of finished rows becomes one part file written to a temporary folder and renamed into
place (atomic on one filesystem), named by a hash of its keys, so a batch written twice replaces
itself. Readers see only whole parts; a killed run leaves at most an ignored temporary file.
Pairs that need a retry are logged the same way in a sibling `attempts/` folder, so a rerun
continues their attempt count instead of starting over. With the judge on, every judged round of a
pair (its first answer, then each reflection turn) is committed to `rounds/` before anything that
follows from it, so a rerun goes on from the last committed round and never asks for it again.
Each committed batch's seconds and output tokens are appended to `cost.jsonl`, so the cost of a
synthesis resumed over several invocations is the sum of its batches, not the last invocation's.

The driver never holds the pairs' keys as strings: the sets it needs (this config's pairs, the
finished ones) are `KeySet`s of 16-byte digests, and the parts are read one at a time, so its
bookkeeping stays in tens of MB at millions of pairs.
"""

from __future__ import annotations

import functools
import hashlib
import json
import operator
import os
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from syneg_ray import attributes, prompts, schema
from syneg_ray.config import PipelineConfig, SynthesizeConfig

SYNTHETIC_SCHEMA = schema.arrow_schema(schema.SyntheticRow)

ATTEMPT_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("attempts", pa.int64()),
        ("prompt_tokens", pa.int64()),
        ("output_tokens", pa.int64()),
        ("reject_reasons", pa.list_(pa.string())),
        # JSON of the candidates the attempt kept ({candidates, query_scores, positive_similarities,
        # verdicts}), which the next attempt's pool starts from (`synthesize.retry_short`); "" or null: none
        ("carried", pa.string()),
    ]
)


# One row per pair, attempt and round: the pair's negatives after that round was judged (what a
# rerun resumes from) and the round's reflection record, one list entry per rewritten negative.
_SCORES = pa.list_(pa.float32())
ROUND_SCHEMA = pa.schema(
    [("key", pa.string()), ("query_id", pa.string()), ("positive_id", pa.string()), ("domain", pa.string()),
     ("difficulty", pa.string()), ("length", pa.string()), ("seed", pa.int64()), ("attempt", pa.int64()),
     ("round", pa.int64()),  # 0 = the first answer; r >= 1 = the r-th reflection turn
     ("chat", pa.string()),  # the JSON messages of this round's request
     ("answer", pa.string()),  # the LLM's raw answer to them (the next turn quotes it)
     ("reasoning", pa.string()),  # the first answer's reasoning
     ("candidates", pa.list_(pa.string())), ("query_scores", _SCORES), ("positive_similarities", _SCORES),
     ("verdicts", pa.list_(pa.string())), ("positive_score", pa.float32()), ("floor", pa.float32()),
     ("carried_count", pa.int64()),  # the pool's first n candidates came from an earlier attempt (retry_short): never asked again
     ("prompt_tokens", pa.int64()), ("output_tokens", pa.int64()),  # over every attempt and round so far
     ("reject_reasons", pa.list_(pa.string())),
     ("rewritten", pa.list_(pa.int64())),  # which candidates this round rewrote (empty in round 0)
     ("originals", pa.list_(pa.string())), ("reasons", pa.list_(pa.string())), ("rewrites", pa.list_(pa.string())),
     ("rewrite_query_scores", _SCORES), ("rewrite_positive_similarities", _SCORES),
     ("rewrite_verdicts", pa.list_(pa.string()))]  # a judge verdict, "unchanged" (the original handed back), or the parse reason of a rejected rewrite
)  # fmt: skip
REFLECTION_FIELDS = ("originals", "reasons", "rewrites", "rewrite_query_scores", "rewrite_positive_similarities",
                     "rewrite_verdicts")  # fmt: skip


# Settings that change what the LLM writes for a pair or what validation and the judge keep of it.
# The others (batch size, replicas, CPUs, retries, server address, rate limits) change how, not what.
# Each is digested under its last name, so a setting that moved into an engine's section keeps the
# fingerprint (and the pairs written under it) it had before the move.
GENERATION_SETTINGS = (
    "engine", "negatives_per_pair", "max_new_tokens", "temperature", "top_p", "presence_penalty", "dtype",
    "vllm.max_model_len", "openai.schema_min_length", "attribute_pools", "min_length_ratio", "max_length_ratio",
    "near_duplicate", "candidates", "judge", "judge_max_positive_similarity", "reflect_rounds", "style_reference",
    "retry_short", "schema_min_length_cap",
)  # fmt: skip
# Settings added after rows were written, with the value that behaves as before they existed: at
# that value a setting stays out of the digest, so those rows keep their keys.
ADDED_SETTINGS = {"retry_short": False, "schema_min_length_cap": 0}


@functools.lru_cache(maxsize=8)
def generation_fingerprint(s: SynthesizeConfig) -> str:
    """A digest of `GENERATION_SETTINGS` (and of the attribute pools file's content, when one is named)."""
    values = {path.rpartition(".")[2]: operator.attrgetter(path)(s) for path in GENERATION_SETTINGS}
    values = {name: str(v) for name, v in values.items() if name not in ADDED_SETTINGS or v != ADDED_SETTINGS[name]}
    if s.attribute_pools and Path(s.attribute_pools).is_file():
        values["attribute_pools_content"] = hashlib.sha256(Path(s.attribute_pools).read_bytes()).hexdigest()
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


def settings_fingerprint(cfg: PipelineConfig) -> str:
    """`generation_fingerprint`, and with the judge on, the judge's settings outside the synthesize
    section: the encoder that scores and the miner's guard margins it applies."""
    own = generation_fingerprint(cfg.synthesize)
    if not cfg.synthesize.judge:
        return own
    e, m = cfg.encoder, cfg.mine
    judge = [e.model, e.query_prompt, e.document_prompt, e.max_seq_length, m.relative_margin, m.absolute_margin, m.max_score]
    return own + hashlib.sha256(json.dumps(judge).encode()).hexdigest()[:8]


def pair_key(cfg: PipelineConfig, query_id: str, positive_id: str) -> str:
    """The key under which this config's synthesis of one pair is stored: it names the prompt
    version, the LLM, the pair's seed and the generation and judge settings, so rows written under
    other settings never pass for this config's (a rerun with new settings writes new rows; the old
    ones stay, and count again if the settings come back)."""
    seed = attributes.pair_seed(cfg.run.seed, query_id, positive_id)
    return prompts.pair_key(query_id, positive_id, prompts.PROMPT_VERSION, cfg.synthesize.model, seed,
                            settings_fingerprint(cfg))


COST_LOG = "cost.jsonl"


def log_cost(out: Path, fingerprint: str, seconds: float, generations: int, output_tokens: int, reused: int = 0) -> None:
    """Appends one committed batch's cost (wall seconds since the previous batch or the round's
    start, so an engine's start-up counts) under the settings `fingerprint` it was written with.
    `reused` of the batch's generations came from the answer cache (answer_cache.py), and their
    seconds are those they cost when they were generated.

    Appended after the batch is committed: a kill in between loses the line, never counts a batch
    twice (a committed batch is not generated again), and `logged_cost` then reports the log as short.
    """
    line = {"fingerprint": fingerprint, "seconds": round(seconds, 3), "generations": generations, "output_tokens": output_tokens,
            **({"reused": reused} if reused else {})}
    with (out / COST_LOG).open("a", encoding="utf-8") as log:
        log.write(json.dumps(line) + "\n")


def logged_cost(out: Path, fingerprint: str) -> dict[str, float]:
    """Sums of the cost log's lines written under `fingerprint`: seconds, generations, output_tokens, reused."""
    totals = {"seconds": 0.0, "generations": 0, "output_tokens": 0, "reused": 0}
    path = out / COST_LOG
    for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else []:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill mid-write
            continue
        if entry.get("fingerprint") == fingerprint:
            for name in totals:
                totals[name] += entry.get(name, 0)  # a line from before the answer cache has no `reused`
    return totals


def write_part(folder: Path, rows: list[dict], schema: pa.Schema, id_columns: tuple[str, ...] = ("key",)) -> Path | None:
    """Commits `rows` as one part file (tmp + rename); returns its path, or None for no rows.

    The file is named by the rows' `id_columns`: the same rows written again replace their part,
    and rows of another identity (the same pairs in a later round) get a part of their own.
    """
    if not rows:
        return None
    ids = sorted("\x1f".join(str(r[c]) for c in id_columns) for r in rows)
    return commit_table(folder, pa.Table.from_pylist(rows, schema=schema), f"part-{name_digest(ids)}")


def name_digest(ids: list[str]) -> str:
    """A file name's digest of the identities it holds: the same identities, the same name."""
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:20]


def commit_table(folder: Path, table: pa.Table, stem: str) -> Path:
    """Writes `table` as `folder/stem.parquet` whole or not at all (tmp + rename); returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    # the temporary file lives outside the folder so dataset readers never list it
    tmp_dir = folder.parent / f".{folder.name}.tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    tmp = tmp_dir / f"{stem}-{uuid.uuid4().hex[:8]}.parquet"
    pq.write_table(table, tmp)
    target = folder / f"{stem}.parquet"
    os.replace(tmp, target)
    return target


@dataclass(frozen=True)
class KeySet:
    """A set of pair keys held as sorted 16-byte digests (blake2b): 16 bytes a key where a Python set
    of the 64-character keys costs about 150, so a million pairs take 16 MB. Two keys share a digest
    with a chance of about 1e-27 at a million pairs."""

    digests: np.ndarray  # dtype S16, sorted, unique

    @classmethod
    def of(cls, keys: Iterable[str]) -> KeySet:
        return cls(np.unique(digest(keys)))

    @classmethod
    def union(cls, sets: Iterable[KeySet]) -> KeySet:
        return cls(np.unique(np.concatenate([np.empty(0, "S16"), *(k.digests for k in sets)])))

    def holds(self, keys: Iterable[str]) -> np.ndarray:
        """A boolean mask: which of `keys` are in the set."""
        wanted = digest(keys)
        if not len(self.digests):
            return np.zeros(len(wanted), dtype=bool)
        at = np.minimum(np.searchsorted(self.digests, wanted), len(self.digests) - 1)
        return self.digests[at] == wanted

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and bool(self.holds([key])[0])

    def __len__(self) -> int:
        return len(self.digests)


def digest(keys: Iterable[str]) -> np.ndarray:
    """Each key's 16-byte blake2b digest, in order (dtype S16)."""
    return np.array([hashlib.blake2b(k.encode(), digest_size=16).digest() for k in keys], dtype="S16")


READ_BATCH = 8192  # rows read at once where a stage goes through a whole output


def part_files(folder: Path) -> list[Path]:
    """The committed parts of `folder`, in name order (none when it does not exist)."""
    return sorted(folder.glob("part-*.parquet")) if folder.is_dir() else []


def read_parts(folder: Path, schema: pa.Schema, columns: list[str] | None = None, skip: KeySet | None = None) -> pa.Table:
    """Every committed part of `folder` as one table (empty with `schema` when there is none),
    less the rows whose key is in `skip` (left out as each part is read, so only the rows kept
    are ever held together)."""
    wanted = (columns or schema.names) if not skip else list(dict.fromkeys([*(columns or schema.names), "key"]))
    tables = []
    for part in part_files(folder):
        table = pq.read_table(part, columns=wanted, schema=schema)
        if skip:
            table = table.filter(pa.array(~skip.holds(table.column("key").to_pylist())))
        tables.append(table.select(columns or schema.names))
    return pa.concat_tables(tables) if tables else schema.empty_table().select(columns or schema.names)


def part_batches(folder: Path, schema: pa.Schema, columns: list[str]) -> Iterator[pa.RecordBatch]:
    """`columns` of the committed parts of `folder` (null where a part lacks one), READ_BATCH rows
    at most at a time, streamed from each part's pages: a part of any size (a hand-written file of
    every pair) is never held whole, nor a whole row group of it."""
    wanted = pa.schema([schema.field(c) for c in columns])
    for part in part_files(folder):
        reader = pq.ParquetFile(part, pre_buffer=False, buffer_size=1 << 20)
        present = [c for c in columns if c in reader.schema_arrow.names]
        for batch in reader.iter_batches(batch_size=READ_BATCH, columns=present):
            yield pa.RecordBatch.from_arrays([batch.column(f.name).cast(f.type) if f.name in present else pa.nulls(batch.num_rows, f.type)
                                              for f in wanted], schema=wanted)  # fmt: skip


def keys_where(folder: Path, schema: pa.Schema, columns: list[str], where: Callable[[dict], bool]) -> KeySet:
    """The keys of the rows of `folder` for which `where(row)` holds (a row holds `key` and `columns`)."""
    sets = [KeySet.of(r["key"] for r in batch.to_pylist() if where(r)) for batch in part_batches(folder, schema, ["key", *columns])]
    return KeySet.union(sets)


def read_synthetic(folder: Path, columns: list[str] | None = None) -> pa.Table:
    """The synthesize output with one row per key (an "ok" row wins over a "failed" one, and of two
    failed rows the one with more attempts, written by a later rerun).

    Args:
        folder: `run_dir / schema.SYNTHETIC`, a folder of part files.
        columns: columns to return (default all); `key`, `status` and `attempts` are read regardless.
    """
    wanted = list(dict.fromkeys(["key", "status", "attempts", *(columns or SYNTHETIC_SCHEMA.names)]))
    table = one_per_key(read_parts(folder, SYNTHETIC_SCHEMA, wanted))
    return table.select(columns) if columns else table


def one_per_key(table: pa.Table) -> pa.Table:
    """The row of each `key` that a reader keeps: "ok" over "failed", then the most `attempts` (a
    failed pair's later rerun), ordered by key. Any column type of `key` works, digests included."""
    if table.num_rows == 0:
        return table
    table = table.take(pc.sort_indices(table, sort_keys=[("key", "ascending"), ("status", "descending"), ("attempts", "descending")]))
    key = table.column("key").combine_chunks()
    first = pc.not_equal(key.slice(1), key.slice(0, len(key) - 1))
    return table.filter(pa.concat_arrays([pa.array([True]), first]))


def latest_attempts(folder: Path, skip: KeySet | None = None) -> dict[str, dict]:
    """key -> the attempt-log row with the most attempts (where a retried pair left off), for every key not in `skip`."""
    latest: dict[str, dict] = {}
    for row in read_parts(folder, ATTEMPT_SCHEMA, skip=skip).to_pylist():
        if row["key"] not in latest or row["attempts"] > latest[row["key"]]["attempts"]:
            latest[row["key"]] = row
    return latest


def latest_rounds(folder: Path, skip: KeySet | None = None) -> dict[str, dict]:
    """key -> the pair's last committed round (highest attempt, then round): where a rerun goes on;
    for every key not in `skip` (the finished pairs, whose rounds are the bulk of the folder)."""
    latest: dict[str, dict] = {}
    for row in read_parts(folder, ROUND_SCHEMA, skip=skip).to_pylist():
        seen = latest.get(row["key"])
        if seen is None or (row["attempt"], row["round"]) > (seen["attempt"], seen["round"]):
            latest[row["key"]] = row
    return latest


def read_reflections(folder: Path) -> pa.Table:
    """The reflection record: one row per (key, attempt, round, rewritten negative `index`) with its
    `original` text, the `reason` the LLM was given, the `rewrite` ("" when the answer held no valid
    one), its `query_score`, `positive_similarity` and `verdict` (a judge verdict or a parse reason)."""
    table = read_parts(folder, ROUND_SCHEMA, ["key", "attempt", "round", "rewritten", *REFLECTION_FIELDS])
    names = dict(zip(REFLECTION_FIELDS, ("original", "reason", "rewrite", "query_score", "positive_similarity", "verdict"),
                     strict=True))
    rows = [
        {"key": r["key"], "attempt": r["attempt"], "round": r["round"], "index": index,
         **{names[name]: r[name][i] for name in REFLECTION_FIELDS}}
        for r in table.to_pylist() for i, index in enumerate(r["rewritten"] or [])
    ]  # fmt: skip
    fields = [ROUND_SCHEMA.field(n) for n in ("key", "attempt", "round")] + [pa.field("index", pa.int64())]
    fields += [pa.field(names[n], ROUND_SCHEMA.field(n).type.value_type) for n in REFLECTION_FIELDS]
    return pa.Table.from_pylist(rows, schema=pa.schema(fields))
