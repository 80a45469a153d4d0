"""`syneg mix`: join the synthetic and mined negatives of each pair into training instances (mixing.py rules).

Inputs are plain Parquet in the run directory, so a test (or a user) can replace synthesis or
mining by a small hand-written file:
    synthesize/negatives.parquet  {key, query_id, positive_id, negatives: list<str>, status?}  (file or folder)
                                  (rows that `syneg synthesize` wrote under another LLM or prompt
                                  version are ignored; this seed's row of a pair wins over another seed's)
    mine/negatives.parquet        {query_id, positive_id, negative_ids: list<str>, source: list<str>, positive_ids?}
Output: mix/instances.parquet (schema.Instance rows) and mix/stats.json.

The pairs are mixed MIX_BLOCK at a time: the driver holds one block's pairs, negatives, texts and
instances, and appends the block to the output, so its memory does not grow with the pairs.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from syneg_ray import mixing, probes, prompts, schema, synthetic_store
from syneg_ray.config import MixStrategy, PipelineConfig
from syneg_ray.dataset import corpus_rows, ensure_pairs, open_docstore
from syneg_ray.docstore import DocStore
from syneg_ray.errors import DataError
from syneg_ray.runtime import _replace_atomically, write_text_atomic

logger = logging.getLogger(__name__)

SYNTHETIC_COLUMNS = ("key", "query_id", "positive_id", "negatives")
MINED_COLUMNS = ("query_id", "positive_id", "negative_ids", "source")
INSTANCE_SCHEMA = schema.arrow_schema(schema.Instance)
INSTANCE_ROW_GROUP = 1024  # instances per Parquet row group
# Pairs mixed at once. The driver holds one block's pairs, negatives and instances with their texts,
# and the Arrow and Parquet copies of a row group while it is written (at 3 negatives of 50-300
# words, measured on 10k pairs: the mix's peak was 335 MB with blocks of 2,048 and row groups of
# 4,096, 242 MB with both 1,024 and Arrow's unused memory given back a block at a time). A block
# costs its own size plus one pass over the corpus's ids (about 40 ms at 1M documents) and a read of
# the input files that hold its pairs (`SyntheticBlocks`, `MinedBlocks`), so blocks can be small.
MIX_BLOCK = 1024
# Parquet's pre-buffering reads ahead whole column chunks and Arrow's allocator keeps them: a read
# of the pairs alongside the blocks grew the mix's memory by 70 MB over 100k pairs with it, 6 without.
NO_PRE_BUFFER = ds.ParquetFragmentScanOptions(pre_buffer=False)
JUDGE_COLUMNS = ("negative_scores", "positive_score")  # written by synthesis with the judge on
OPTIONAL_COLUMNS = ("status", "positive_ids", "model", "prompt_version", *JUDGE_COLUMNS)
SYNTHETIC_HINT = "run `syneg synthesize` first, or use mix.strategy=retrieved"
MINED_HINT = "run `syneg mine` first, or use mix.strategy=synthetic"
# An input file holding rows of more blocks than this is split by block once (`split_by_block`):
# read for each block instead, it would cost its size that many times; split, about three times.
SPILL_WIDER_THAN = 3
SPILL_WRITERS = 256  # block files open at once while a file is split
SPILL_BUFFER = 64 << 20  # bytes of rows held while a file is split


def _read(path: Path, required: tuple[str, ...], hint: str) -> list[dict]:
    if not path.exists():
        raise DataError.at(path, None, f"not found; {hint}")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:  # an interrupted write, or not Parquet at all
        raise _unreadable(path, exc) from None
    return table.select(_columns(path, table.column_names, required, OPTIONAL_COLUMNS)).to_pylist()


def _columns(path: Path, names: Sequence[str], required: tuple[str, ...], optional: tuple[str, ...]) -> list[str]:
    """`required` (else a DataError) and those of `optional` a file with columns `names` has."""
    missing = set(required) - set(names)
    if missing:
        raise DataError.at(path, None, f"missing columns {sorted(missing)}; expected {list(required)}")
    return list(required) + [c for c in optional if c in names]


def _unreadable(path: Path, exc: Exception) -> DataError:
    return DataError.at(path, None, f"not a readable Parquet file ({' '.join(str(exc).split())}); "
                                    f"delete the damaged file and rerun `syneg {path.parent.name}` to rewrite it")


def _dataset(path: Path, required: tuple[str, ...], optional: tuple[str, ...],
             hint: str) -> tuple[ds.Dataset, list[str]]:  # fmt: skip
    """The Parquet file or folder at `path`, opened as `pq.read_table` opens it (its rows come in the
    same order), and the columns to read of it; checked before any row is read."""
    if not path.exists():
        raise DataError.at(path, None, f"not found; {hint}")
    try:
        dataset = ds.dataset(path, format="parquet", partitioning="hive")
    except (pa.ArrowInvalid, OSError) as exc:
        raise _unreadable(path, exc) from None
    return dataset, _columns(path, dataset.schema.names, required, optional)


def _scan(dataset: ds.Dataset, path: Path, columns: list[str],
          where: ds.Expression | None = None) -> Iterator[pa.RecordBatch]:  # fmt: skip
    """The rows of `dataset` in file order, MIX_BLOCK at most a batch; a damaged part is a DataError naming it."""
    try:
        yield from dataset.to_batches(columns=columns, filter=where, batch_size=MIX_BLOCK, fragment_scan_options=NO_PRE_BUFFER)
    except (pa.ArrowInvalid, OSError) as exc:
        raise _unreadable(path, exc) from None


def read_synthetic(path: Path, llm: tuple[str, str] | None = None,
                   current_keys: frozenset[str] = frozenset()) -> dict[mixing.PairKey, mixing.SyntheticNegs]:
    """(query_id, positive_id) -> valid synthetic negatives of every pair in the file (`select_synthetic`'s rules)."""
    synthetic, stale = select_synthetic(_read(path, SYNTHETIC_COLUMNS, SYNTHETIC_HINT), llm, current_keys)
    if stale:
        logger.info("%s: %d rows of another LLM or prompt version ignored", path, stale)
    return synthetic


def select_synthetic(rows: Iterable[dict], llm: tuple[str, str] | None,
                     current_keys: frozenset[str]) -> tuple[dict[mixing.PairKey, mixing.SyntheticNegs], int]:
    """(query_id, positive_id) -> valid synthetic negatives of the pairs `rows` name (in file order);
    failed rows count as none. Also returns how many rows were of another LLM or prompt version.

    Rows that `syneg synthesize` wrote carry their LLM and prompt version. When `llm` (model,
    prompt version) is given, rows of another LLM or prompt are skipped: after such a change the old
    rows stay on disk (nothing written is lost) but must not be mixed in. Of the rest, a pair's row
    under `current_keys` (this run's seed and generation settings) wins over one written under
    another key, which is used only when the pair has no row at all under this run's keys, not
    even a failed one (runs at several training seeds may share one synthesis). A hand-written
    file without those columns is read whole.
    """
    current, other, stale = {}, {}, 0
    judged: set[mixing.PairKey] = set()  # pairs with a row under this run's keys, failed ones included
    for row in rows:
        if llm is not None and row.get("prompt_version") and (row.get("model"), row["prompt_version"]) != llm:
            stale += 1
            continue
        pair = (row["query_id"], row["positive_id"])
        if row["key"] in current_keys:
            judged.add(pair)
        if row.get("status", "ok") != "ok":
            continue
        into = current if row["key"] in current_keys else other
        if negs := _negatives_of(row, judged_here=into is current):
            into[pair] = negs
    return {**{pair: negs for pair, negs in other.items() if pair not in judged}, **current}, stale


def _negatives_of(row: dict, judged_here: bool) -> mixing.SyntheticNegs | None:
    """A row's non-blank negatives, with the judge's scores when the row is this run's (its key
    names this run's encoder and margins) and has them; None when no negative is left."""
    texts = list(row["negatives"] or ())
    scores = list(row.get("negative_scores") or ()) if judged_here else []
    if len(scores) != len(texts):  # a row without scores (judge off, older files) or hand-written
        scores = []
    kept = [j for j, t in enumerate(texts) if t and t.strip()]
    if not kept:
        return None
    positive = row.get("positive_score")
    return mixing.SyntheticNegs(row["key"], tuple(texts[j] for j in kept), tuple(float(scores[j]) for j in kept) if scores else (),
                                math.nan if positive is None or not scores else float(positive))  # fmt: skip


def read_mined(path: Path, corpus: dict[str, str]) -> tuple[dict[mixing.PairKey, list[tuple[str, str]]], dict[str, set[str]]]:
    """(query_id, positive_id) -> [(doc_id, source)] and query_id -> positives recorded by mining.

    Raises:
        DataError: a negative id not in the corpus, or negative_ids and source of unequal length (file and row).
    """
    mined, positives = {}, {}
    for number, row in enumerate(_read(path, MINED_COLUMNS, MINED_HINT), start=1):
        negatives = _mined_negatives(path, number, row)
        unknown = [d for d, _ in negatives if d not in corpus]
        if unknown:
            raise _unknown_id(path, number, unknown[0])
        mined[(row["query_id"], row["positive_id"])] = negatives
        positives.setdefault(row["query_id"], set()).update(row.get("positive_ids") or ())
    return mined, positives


def _mined_negatives(path: Path, number: int, row: dict) -> list[tuple[str, str]]:
    """[(doc_id, source)] of one mined row (`number`, 1-based, in the file)."""
    ids, sources = list(row["negative_ids"] or ()), list(row["source"] or ())
    if len(ids) != len(sources):
        raise DataError.at(path, number, f"{len(ids)} negative_ids but {len(sources)} source entries")
    return list(zip(ids, sources, strict=True))


def _unknown_id(path: Path, number: int, doc_id: str) -> DataError:
    return DataError.at(path, number, f"unknown negative id {doc_id!r}: not in the corpus (mined on another dataset?)")


class SyntheticBlocks:
    """The synthetic negatives of one block of pairs at a time (`select_synthetic`'s rules).

    Synthesis writes a folder of parts in no pair order, several rows a pair (other seeds, LLMs,
    retries). A first pass over the parts' id columns indexes which parts hold each pair; a block
    then reads only the parts that hold its pairs, filtered in Arrow, in the folder's order.
    Scanning the whole folder for every block instead cost blocks x parts: at a million pairs about
    1,000 blocks x 4,000 parts (`benchmarks/synthesis_scale.py`). The parts are named by path, not
    held as Arrow fragments: a fragment that has been read keeps its file's metadata, about 60 KB a
    part of synthesis, 240 MB at a million pairs.

    A part is small, but a hand-written file may hold every pair: read for each block, one file of
    a million pairs is read a thousand times. Given the run's pairs' blocks (`block_of`, built
    when first called) and a `spill` folder, a file holding rows of more than SPILL_WIDER_THAN
    blocks is split by block once (`split_by_block`); its files stand in its place in the folder's order.
    """

    def __init__(self, cfg: PipelineConfig, path: Path, block_of: Callable[[], _BlockOf] | None = None,
                 spill: Path | None = None) -> None:  # fmt: skip
        self.cfg, self.path = cfg, path
        optional = ("status", "model", "prompt_version", *JUDGE_COLUMNS)
        self.dataset, self.columns = _dataset(path, SYNTHETIC_COLUMNS, optional, SYNTHETIC_HINT)
        self.llm = (cfg.synthesize.model, prompts.PROMPT_VERSION)
        self.files: list[str] = []
        digests: list[np.ndarray] = []
        try:
            for number, file in enumerate(self.dataset.files):
                ids = pq.read_table(file, columns=["query_id", "positive_id"], filesystem=self.dataset.filesystem, pre_buffer=False)
                held = _batch_digests(ids)
                if spill is not None and block_of is not None and len(held) > MIX_BLOCK:
                    block_of_row = block_of()(held)
                    if len(np.unique(block_of_row[block_of_row >= 0])) > SPILL_WIDER_THAN:
                        reader = pq.ParquetFile(file, filesystem=self.dataset.filesystem, pre_buffer=False, buffer_size=1 << 20)
                        split = split_by_block(lambda r=reader: r.iter_batches(batch_size=MIX_BLOCK, columns=self.columns),
                                               block_of_row, spill, f"synthetic-{number:06d}")  # fmt: skip
                        logger.info("%s: rows of %d blocks of pairs, split by block once rather than read for each", file, len(split))
                        self.files += [str(part) for part in split.values()]
                        digests += [held[block_of_row == block] for block in split]
                        continue
                self.files.append(file)
                digests.append(held)
        except (pa.ArrowInvalid, OSError) as exc:
            raise _unreadable(path, exc) from None
        self.index = _PairIndex.of(digests)

    def of(self, pairs: Sequence[schema.Pair]) -> tuple[dict[mixing.PairKey, mixing.SyntheticNegs], int]:
        """The block's pairs -> their synthetic negatives, and the count of their rows of another LLM or prompt version."""
        keys = {(p["query_id"], p["positive_id"]) for p in pairs}
        holding = ds.FileSystemDataset.from_paths([self.files[i] for i in self.index.files_of(keys)], self.dataset.schema,
                                                  self.dataset.format, self.dataset.filesystem)  # fmt: skip
        queries = pc.field("query_id").isin(pa.array(sorted({q for q, _ in keys}), pa.string()))
        rows = [row for batch in _scan(holding, self.path, self.columns, queries)
                for row in batch.to_pylist() if (row["query_id"], row["positive_id"]) in keys]  # fmt: skip
        # a row is this run's when its key is one of the block's pairs' keys under this run's settings
        current = frozenset(synthetic_store.pair_key(self.cfg, q, d) for q, d in keys)
        return select_synthetic(rows, self.llm, current)


def split_by_block(scan: Callable[[], Iterable[pa.RecordBatch]], block_of_row: np.ndarray, folder: Path, stem: str,
                   numbered: bool = False) -> dict[int, Path]:  # fmt: skip
    """The rows of a scan as a Parquet file for each block of pairs they hold, each in scan order;
    returns block -> file, in block order.

    Args:
        scan: the rows, in the same order each time it is called (a pass for each SPILL_WRITERS blocks).
        block_of_row: the block of each row's pair (`_BlockOf`), -1 for a row of no pair of the run (left out).
        numbered: add each row's 1-based number in the scan as `_row`, for errors that name it.
    """
    folder.mkdir(parents=True, exist_ok=True)
    wanted = np.unique(block_of_row[block_of_row >= 0])
    for start in range(0, len(wanted), SPILL_WRITERS):
        group = wanted[start : start + SPILL_WRITERS]
        with closing(_BlockFiles(folder, stem)) as out:
            row = 0
            for batch in scan():
                of_batch = block_of_row[row : row + batch.num_rows]
                if numbered:
                    batch = batch.append_column("_row", pa.array(np.arange(row + 1, row + 1 + batch.num_rows)))
                row += batch.num_rows
                for block in np.intersect1d(of_batch, group).tolist():
                    out.add(block, batch.take(pa.array(np.flatnonzero(of_batch == block))))  # a compact copy: sized honestly
            out.finish()
    return {block: _BlockFiles.path(folder, stem, block) for block in wanted.tolist()}


class _BlockFiles:
    """A Parquet file a block, written a row group at a time: the rows added are held until they
    pass SPILL_BUFFER bytes, then the block holding the most is written out."""

    def __init__(self, folder: Path, stem: str) -> None:
        self.folder, self.stem = folder, stem
        self.writers: dict[int, pq.ParquetWriter] = {}
        self.held: dict[int, list[pa.RecordBatch]] = {}
        self.size: dict[int, int] = {}
        self.total = 0  # of self.size

    @staticmethod
    def path(folder: Path, stem: str, block: int) -> Path:
        return folder / f"{stem}-{block:09d}.parquet"

    def add(self, block: int, rows: pa.RecordBatch) -> None:
        self.held.setdefault(block, []).append(rows)
        self.size[block] = self.size.get(block, 0) + rows.nbytes
        self.total += rows.nbytes
        while self.total > SPILL_BUFFER:
            self._write_out(max(self.size, key=self.size.__getitem__))

    def _write_out(self, block: int) -> None:
        table = pa.Table.from_batches(self.held.pop(block))
        self.total -= self.size.pop(block)
        if block not in self.writers:
            self.writers[block] = pq.ParquetWriter(self.path(self.folder, self.stem, block), table.schema)
        self.writers[block].write_table(table)

    def finish(self) -> None:
        """Writes out what is held."""
        for block in list(self.held):
            self._write_out(block)

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()


@dataclass(frozen=True)
class _PairIndex:
    """Which files of a dataset hold rows of a pair: a (16-byte pair digest, file number) entry per
    row, sorted by digest: 20 bytes a row."""

    digests: np.ndarray  # S16, sorted
    files: np.ndarray  # int32, the file of each digest's row

    @classmethod
    def of(cls, files: list[np.ndarray]) -> _PairIndex:
        """From the pair digests of each file's rows, by file number."""
        digests = np.concatenate([np.empty(0, "S16"), *files])
        numbers = np.concatenate([np.empty(0, np.int32), *(np.full(len(d), n, np.int32) for n, d in enumerate(files))])
        order = np.argsort(digests, kind="stable")
        return cls(digests[order], numbers[order])

    def files_of(self, keys: Iterable[mixing.PairKey]) -> list[int]:
        """The numbers of the files holding any of the pairs `keys`, in dataset order."""
        wanted = _pair_digests(keys)
        first, last = np.searchsorted(self.digests, wanted, "left"), np.searchsorted(self.digests, wanted, "right")
        return sorted({int(n) for a, b in zip(first.tolist(), last.tolist(), strict=True) for n in self.files[a:b]})


@dataclass(frozen=True)
class _BlockOf:
    """The block of the run's pairs (MIX_BLOCK of them in pair order, as `pair_blocks` reads them)
    that each pair digest falls in: 20 bytes a pair."""

    digests: np.ndarray  # S16, sorted
    blocks: np.ndarray  # int32, the block of each digest's pair

    @classmethod
    def of(cls, pairs_path: Path) -> _BlockOf:
        digests = _pair_digests(_pair_keys(pairs_path))
        order = np.argsort(digests, kind="stable")
        return cls(digests[order], (order // MIX_BLOCK).astype(np.int32))

    def __call__(self, digests: np.ndarray) -> np.ndarray:
        """Each digest's block, -1 for a pair that is not the run's."""
        if not len(self.digests):
            return np.full(len(digests), -1, np.int32)
        at = np.minimum(np.searchsorted(self.digests, digests), len(self.digests) - 1)
        return np.where(self.digests[at] == digests, self.blocks[at], -1)


def _pair_digests(keys: Iterable[mixing.PairKey]) -> np.ndarray:
    return synthetic_store.digest(f"{q}\x1f{d}" for q, d in keys)


def _batch_digests(ids: pa.RecordBatch | pa.Table) -> np.ndarray:
    """The pair digest of each row of a batch with query_id and positive_id."""
    return _pair_digests(zip(ids.column("query_id").to_pylist(), ids.column("positive_id").to_pylist(), strict=True))


class MinedBlocks:
    """The mined negatives of one block of pairs at a time, with each row's 1-based number in the file.

    `syneg mine` writes one row per pair, in pair order: such a file (checked on its id columns
    first) is read alongside the pairs, once in all. A file in another order or with other rows
    (hand-written) is split by block once when it holds rows of more than SPILL_WIDER_THAN blocks
    and a `spill` folder is given (`split_by_block`, its row numbers kept), else filtered by each
    block's pairs, a scan of it per block; either way a pair's last row wins, as in `read_mined`.
    """

    def __init__(self, path: Path, pairs_path: Path, spill: Path | None = None, block_of: Callable[[], _BlockOf] | None = None) -> None:
        self.path = path
        # positive_ids are left unread: only the random strategy excludes positives, and it reads no mine file
        self.dataset, self.columns = _dataset(path, MINED_COLUMNS, (), MINED_HINT)
        self.rows = _Rows(_scan(self.dataset, path, self.columns)) if self._in_pair_order(pairs_path) else None
        self.first = 1  # the file row of the next block's first pair, when read alongside the pairs
        self.blocks: _BlockOf | None = None
        self.split: dict[int, Path] = {}
        if self.rows is None and spill is not None and self.dataset.count_rows() > MIX_BLOCK:
            held = np.concatenate([np.empty(0, "S16"), *(_batch_digests(b) for b in _scan(self.dataset, path, ["query_id", "positive_id"]))])
            blocks = block_of() if block_of is not None else _BlockOf.of(pairs_path)
            block_of_row = blocks(held)
            if len(np.unique(block_of_row[block_of_row >= 0])) > SPILL_WIDER_THAN:
                self.blocks = blocks
                self.split = split_by_block(lambda: _scan(self.dataset, path, self.columns), block_of_row, spill, "mined", numbered=True)
                logger.info("%s: not in pair order; rows of %d blocks of pairs, split by block once rather than read for each",
                            path, len(self.split))  # fmt: skip

    def _in_pair_order(self, pairs_path: Path) -> bool:
        keys = ["query_id", "positive_id"]
        if self.dataset.count_rows() != pq.ParquetFile(pairs_path).metadata.num_rows:
            return False
        mined = _Rows(_scan(self.dataset, self.path, keys))
        for batch in pq.ParquetFile(pairs_path, pre_buffer=False).iter_batches(batch_size=MIX_BLOCK, columns=keys):
            rows = mined.take(batch.num_rows)
            if not all(rows.column(k).equals(pa.chunked_array([batch.column(k)])) for k in keys):
                return False
        pa.default_memory_pool().release_unused()
        return True

    def of(self, pairs: Sequence[schema.Pair]) -> dict[mixing.PairKey, tuple[int, list[tuple[str, str]]]]:
        """The block's pairs -> (file row, [(doc_id, source)]) of those the file has."""
        if self.rows is not None:
            rows = enumerate(self.rows.take(len(pairs)).to_pylist(), start=self.first)
            self.first += len(pairs)
            return {(row["query_id"], row["positive_id"]): (n, _mined_negatives(self.path, n, row)) for n, row in rows}
        if self.blocks is not None:
            (block,) = self.blocks(_pair_digests([(pairs[0]["query_id"], pairs[0]["positive_id"])])).tolist()
            part = self.split.get(block)
            rows = pq.read_table(part).to_pylist() if part is not None else []
            return {(row["query_id"], row["positive_id"]): (row["_row"], _mined_negatives(self.path, row["_row"], row)) for row in rows}
        wanted = {(p["query_id"], p["positive_id"]) for p in pairs}
        queries = pa.array(sorted({q for q, _ in wanted}), pa.string())
        found, first = {}, 1  # first: the file row of the batch's first row
        for batch in _scan(self.dataset, self.path, self.columns):
            hits = np.flatnonzero(pc.is_in(batch.column("query_id"), value_set=queries).to_numpy(zero_copy_only=False))
            for at, row in zip(hits.tolist(), batch.take(pa.array(hits)).to_pylist(), strict=True):
                key, number = (row["query_id"], row["positive_id"]), first + at
                if key in wanted:
                    found[key] = (number, _mined_negatives(self.path, number, row))
            first += batch.num_rows
        return found


class _Rows:
    """The next n rows of a stream of record batches, whatever the batches' sizes."""

    def __init__(self, batches: Iterator[pa.RecordBatch]) -> None:
        self.batches = batches
        self.pending: list[pa.RecordBatch] = []

    def take(self, n: int) -> pa.Table:
        held = sum(b.num_rows for b in self.pending)
        while held < n and (batch := next(self.batches, None)) is not None:
            self.pending.append(batch)
            held += batch.num_rows
        if not self.pending:
            return pa.table({})
        table = pa.Table.from_batches(self.pending)
        self.pending = table.slice(n).to_batches()
        return table.slice(0, n)


def _corpus_lookup(doc_ids: pa.Array, store: DocStore, named: set[str], wanted: set[str]) -> tuple[set[str], dict[str, str]]:
    """Which of the ids `named` are corpus documents, and the texts of those of them `wanted`:
    one pass over the id column and one read per wanted text, so a block costs its own size plus
    a pass over the ids, not a scan of the corpus's texts."""
    rows = corpus_rows(doc_ids, named)
    wanted = [doc for doc in rows if doc in wanted]
    return set(rows), dict(zip(wanted, store.texts([rows[doc] for doc in wanted]), strict=True))


class _CorpusIds(Sequence[str]):
    """Every corpus document id, in corpus order, as a sequence of str over one Arrow column: a few
    times smaller than a list of str."""

    def __init__(self, ids: pa.Array) -> None:
        self.ids = ids

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, row: int) -> str:  # the draws index it with numpy integers
        return self.ids[int(row)].as_py()


def pair_blocks(pairs_path: Path) -> Iterator[list[schema.Pair]]:
    """The run's pairs, MIX_BLOCK at most at a time, in pair order."""
    for batch in pq.ParquetFile(pairs_path, pre_buffer=False).iter_batches(batch_size=MIX_BLOCK):
        yield batch.to_pylist()


@dataclass
class _BlockMix:
    """Mixes the pairs a block at a time: looks up the block's negatives and texts, and mixes them."""

    doc_ids: pa.Array  # the corpus's ids, in corpus order: the one corpus-sized structure held (10-20 bytes an id)
    store: DocStore  # the corpus's texts by row
    mixer: mixing.Mixer
    synthetic: SyntheticBlocks | None
    mined: MinedBlocks | None
    flagged: dict[mixing.PairKey, tuple[bool, ...]]  # the guard's flags (`guard_synthetic`)
    stale: int = 0  # synthetic rows of another LLM or prompt version, of every block so far

    def instances(self, pairs: list[schema.Pair]) -> list[schema.Instance]:
        """The instances of the next block of pairs.

        Raises:
            DataError: a mined id of the block not in the corpus (the file may be another dataset's).
        """
        synthetic: dict[mixing.PairKey, mixing.SyntheticNegs] = {}
        if self.synthetic is not None:
            synthetic, stale = self.synthetic.of(pairs)
            synthetic, self.stale = mixing.drop_flagged(synthetic, self.flagged), self.stale + stale
        mined = self.mined.of(pairs) if self.mined is not None else {}
        kept = self.mixer.choose(pairs, synthetic, {key: negatives for key, (_, negatives) in mined.items()})
        # every mined id of the block is checked, the texts are read of the chosen documents only
        chosen = mixing.corpus_ids(kept)
        named = {doc for _, negatives in mined.values() for doc, _ in negatives}
        found, texts = _corpus_lookup(self.doc_ids, self.store, named | chosen, chosen)
        for number, negatives in sorted(mined.values(), key=lambda numbered: numbered[0]):
            unknown = [doc for doc, _ in negatives if doc not in found]
            if unknown:
                raise _unknown_id(self.mined.path, number, unknown[0])
        return mixing.with_texts(kept, texts)


def write_instances(out: Path, blocks: Iterable[list[schema.Instance]]) -> None:
    """Writes the blocks of instances into `out`, through a temporary file renamed into place at the
    end: a reader, or a rerun after a kill, never finds a part of them under that name.

    Row groups hold INSTANCE_ROW_GROUP instances whatever the blocks' sizes: the unit Ray Data reads
    into a training block and the driver validates at once, so neither grows with the instances.
    """

    def write(tmp: Path) -> None:
        try:
            with pq.ParquetWriter(tmp, INSTANCE_SCHEMA) as writer:
                pending: list[schema.Instance] = []  # fewer than a row group, carried to the next block
                for instances in blocks:
                    pending += instances
                    full = len(pending) - len(pending) % INSTANCE_ROW_GROUP
                    if full:
                        _append(writer, pending[:full])
                        pending = pending[full:]
                if pending:
                    _append(writer, pending)
        except BaseException:
            tmp.unlink(missing_ok=True)  # a failed or interrupted mix leaves nothing behind, under any name
            raise

    _replace_atomically(out, write)


def _append(writer: pq.ParquetWriter, instances: list[schema.Instance]) -> None:
    writer.write_table(pa.Table.from_pylist(instances, schema=INSTANCE_SCHEMA), row_group_size=INSTANCE_ROW_GROUP)
    pa.default_memory_pool().release_unused()  # else the allocator keeps every block's peak for reuse


def _pair_keys(pairs_path: Path) -> Iterator[mixing.PairKey]:
    """(query_id, positive_id) of every pair, in pair order, read without the texts."""
    for batch in pq.ParquetFile(pairs_path, pre_buffer=False).iter_batches(batch_size=MIX_BLOCK, columns=["query_id", "positive_id"]):
        yield from zip(batch.column("query_id").to_pylist(), batch.column("positive_id").to_pylist(), strict=True)


def sources_needed(cfg: PipelineConfig) -> tuple[bool, bool]:
    """(reads synthetic negatives, reads retrieved negatives) for the strategy and R.

    Hybrid reads both at every R: a source that runs short is topped up from the other one
    (mixing.py), so even at R = 0 or 1 the other source keeps a pair from being dropped.
    """
    s, r = cfg.mix.strategy, cfg.mix.ratio
    if s is MixStrategy.RANDOM:
        return False, False
    if s is MixStrategy.HYBRID:
        return True, True
    if s is MixStrategy.SYNTHETIC or (s is MixStrategy.DIRECT and r == 1.0):
        return True, False
    if s is MixStrategy.RETRIEVED or r == 0.0:
        return False, True
    return True, True


def _missing_top_up(cfg: PipelineConfig, run_dir: Path) -> str:
    """The source a hybrid mix at R = 0 or 1 reads only to top up the other, when its file is
    missing ("" otherwise): the mix then goes on without it rather than failing."""
    if cfg.mix.strategy is not MixStrategy.HYBRID or 0.0 < cfg.mix.ratio < 1.0:
        return ""
    source, path = ("synthetic", run_dir / schema.SYNTHETIC) if cfg.mix.ratio == 0.0 else ("retrieved", run_dir / schema.MINED)
    if path.exists():
        return ""
    logger.info("hybrid R=%g: no %s negatives to top up from (%s missing)", cfg.mix.ratio, source, path)
    return source


def guard_synthetic(cfg: PipelineConfig, pairs_path: Path, synthetic: SyntheticBlocks,
                    folder: Path) -> tuple[dict[mixing.PairKey, tuple[bool, ...]], int]:  # fmt: skip
    """Flags the synthetic negatives the false-negative guard drops: (query_id, positive_id) -> a flag
    per negative, for the pairs with a flagged one (`mixing.drop_flagged` drops them), and the count flagged.

    The base encoder (`encoder.model`) scores each negative against its query, as the miner scores a
    retrieved candidate; a negative above the positive's score less `mine.relative_margin` is dropped.
    Negatives the judge kept in synthesis carry those scores already (their key names this run's
    encoder and margins) and are guarded from them. Any others are encoded on the encoder actors, in
    one pass, their flags cached (`<cache>/guard/`) by the texts, the encoder and the margin.
    """
    from syneg_ray.config import default_cache_dir
    from syneg_ray.registry import resolve_model

    # Negatives the judge scored in synthesis are guarded from those scores, a block at a time. The
    # rest (synthesis with the judge off, hand-written files) are encoded on the actors in one pass
    # and cached by all their texts, so the driver holds those texts, gathered a block of pairs at a time.
    flagged: dict[mixing.PairKey, tuple[bool, ...]] = {}
    from_scores = n_flagged = 0
    guarded: list[dict] = []
    negatives: list[tuple[str, ...]] = []
    for pairs in pair_blocks(pairs_path):
        block, _ = synthetic.of(pairs)
        for p in pairs:
            pair = (p["query_id"], p["positive_id"])
            if (negs := block.get(pair)) is None:
                continue
            if negs.judged:
                flags = tuple(bool(f) for f in probes.flags_from_scores(negs.positive_score, negs.scores, cfg.mine.relative_margin))
                from_scores += len(flags)
                n_flagged += sum(flags)
                if any(flags):
                    flagged[pair] = flags
            else:
                guarded.append(p)
                negatives.append(negs.texts)
    encoded = sum(len(texts) for texts in negatives)
    if guarded:
        model_path = resolve_model(cfg.encoder.model, default_cache_dir(cfg))
        # The flags depend on the texts, the encoder and the margin only, not on R, tau or the seed:
        # cached, so Tune's trials and reruns with another R score the negatives once.
        cached = _guard_cache_path(cfg, model_path, guarded, negatives)
        if cached.is_file():
            flags = np.array(json.loads(cached.read_text(encoding="utf-8")), dtype=bool)
        else:
            flags = _guard_flags(cfg, model_path, guarded, negatives, folder)
            write_text_atomic(cached, json.dumps(flags.tolist()))  # makes the folder
        flagged |= {(p["query_id"], p["positive_id"]): tuple(bool(f) for f in row[: len(texts)])
                    for p, texts, row in zip(guarded, negatives, flags, strict=True) if row.any()}  # fmt: skip
        n_flagged += int(flags.sum())
    total = from_scores + encoded
    if total:
        logger.info("false-negative guard dropped %d of %d synthetic negatives (%.1f%%; %d scored by the judge in "
                    "synthesis, %d encoded here)", n_flagged, total, 100 * n_flagged / total, from_scores, encoded)  # fmt: skip
    return flagged, n_flagged


def _guard_cache_path(cfg: PipelineConfig, model_path: str, guarded: list[dict], negatives: list[tuple[str, ...]]) -> Path:
    from syneg_ray.config import default_cache_dir
    from syneg_ray.services.embed import backend_of, model_fingerprint

    e = cfg.encoder
    key = json.dumps([model_fingerprint(model_path), e.dtype.value, e.max_seq_length, e.query_prompt, e.document_prompt,
                      backend_of(e, model_path).value, cfg.mine.relative_margin,
                      [(p["query"], p["positive"], list(n)) for p, n in zip(guarded, negatives, strict=True)]])  # fmt: skip
    return default_cache_dir(cfg) / "guard" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"


def _guard_flags(cfg: PipelineConfig, model_path: str, guarded: list[dict], negatives: list[tuple[str, ...]],
                 folder: Path) -> np.ndarray:  # fmt: skip
    """(pairs, k) True where a negative scores above its positive less the margin; texts encoded on the encoder actors."""
    from syneg_ray.services.embed import encode_on_pool

    k = max(len(n) for n in negatives)
    documents = [p["positive"] for p in guarded] + [t for n in negatives for t in n]
    encoded = encode_on_pool(cfg, model_path, documents, folder / "guard-documents.npy", [p["query"] for p in guarded])
    doc_emb, query_emb = np.asarray(encoded.documents), encoded.queries
    (folder / "guard-documents.npy").unlink()  # scores are all it was for
    neg_emb = np.full((len(guarded), k, doc_emb.shape[1]), np.nan, dtype=np.float32)  # nan pads pairs with fewer than k
    row = len(guarded)
    for i, texts in enumerate(negatives):
        neg_emb[i, : len(texts)] = doc_emb[row : row + len(texts)]
        row += len(texts)
    return probes.guard_flags(query_emb, doc_emb[: len(guarded)], neg_emb, cfg.mine.relative_margin)


def run_mix(cfg: PipelineConfig) -> dict:
    """Writes mix/instances.parquet for the run's pairs, MIX_BLOCK pairs at a time; returns the mix statistics.

    Raises:
        DataError: an input the strategy needs is missing or malformed.
    """
    started = time.perf_counter()
    run_dir = Path(cfg.run.run_dir)
    prepared, pairs_path = ensure_pairs(cfg)
    n_pairs = pq.ParquetFile(pairs_path).metadata.num_rows
    need_syn, need_ret = sources_needed(cfg)
    missing = _missing_top_up(cfg, run_dir)
    need_syn, need_ret = need_syn and missing != "synthetic", need_ret and missing != "retrieved"
    # both inputs are opened (their columns checked) before the guard's encoding and the first block
    out = run_dir / schema.INSTANCES
    spill = out.parent / ".by-block"  # input files of many blocks' pairs, split by block (`split_by_block`)
    shutil.rmtree(spill, ignore_errors=True)  # what a killed mix left
    try:
        # the pairs' blocks, built once when the first input that needs them asks (20 bytes a pair)
        block_of = functools.cache(lambda: _BlockOf.of(pairs_path))
        synthetic = SyntheticBlocks(cfg, run_dir / schema.SYNTHETIC, block_of, spill) if need_syn else None
        mined = MinedBlocks(run_dir / schema.MINED, pairs_path, spill, block_of) if need_ret else None
        out.parent.mkdir(parents=True, exist_ok=True)
        flagged, guarded_out = {}, 0
        if cfg.mix.guard_synthetic and synthetic is not None:
            flagged, guarded_out = guard_synthetic(cfg, pairs_path, synthetic, out.parent)
        doc_ids = prepared.doc_ids().combine_chunks()
        if cfg.mix.strategy is MixStrategy.RANDOM:
            # Needed whole: a draw indexes every corpus id, and excludes every positive of the pair's
            # query, whose pairs may sit in other blocks. Ids only: an Arrow column of the corpus ids,
            # and a set entry a pair.
            mixer = mixing.Mixer(cfg.mix, cfg.run.seed, n_pairs, mixing.query_positives(_pair_keys(pairs_path)),
                                 _CorpusIds(doc_ids))  # fmt: skip
        else:
            mixer = mixing.Mixer(cfg.mix, cfg.run.seed, n_pairs)  # direct holds its choice: a byte a pair
        with closing(open_docstore(prepared)) as store:
            blocks = _BlockMix(doc_ids, store, mixer, synthetic, mined, flagged)
            write_instances(out, (blocks.instances(pairs) for pairs in pair_blocks(pairs_path)))
        if blocks.stale:
            logger.info("%s: %d rows of another LLM or prompt version ignored", synthetic.path, blocks.stale)
        stats = mixer.stats
        record = {"strategy": cfg.mix.strategy.value, "ratio": cfg.mix.ratio, "n_negatives": cfg.mix.n_negatives,
                  "synthetic_guarded_out": guarded_out, **stats.as_dict()}
        write_text_atomic(out.parent / "stats.json", json.dumps(record, indent=2))
        logger.info(
            "mixed %s instances (%s R=%.2f, n=%d) from %s pairs in %.1f s: realized R %.3f (%.3f over the %s instances "
            "with synthetic negatives); %s kept short of n, %s dropped (fewer than %d); %s synthetic slots filled with retrieved "
            "negatives, %s retrieved slots with synthetic -> %s",
            f"{stats.instances:,}", cfg.mix.strategy.value, cfg.mix.ratio, cfg.mix.n_negatives, f"{stats.pairs:,}",
            time.perf_counter() - started, stats.realized_ratio, stats.realized_ratio_with_synthetic, f"{stats.with_synthetic:,}",
            f"{stats.short:,}", f"{stats.dropped_short:,}", cfg.mix.min_negatives, f"{stats.borrowed_synthetic:,}",
            f"{stats.borrowed_retrieved:,}", out,
        )  # fmt: skip
        warning = realized_ratio_warning(cfg, stats)
        if warning:
            logger.warning(warning)
        return record
    finally:
        shutil.rmtree(spill, ignore_errors=True)


def realized_ratio_warning(cfg: PipelineConfig, stats: mixing.MixStats) -> str:
    """A line saying the run trains on far fewer synthetic negatives than mix.ratio asks for, or ""."""
    if cfg.mix.strategy not in (MixStrategy.HYBRID, MixStrategy.DIRECT) or stats.realized_ratio >= cfg.mix.ratio / 2:
        return ""
    return (f"realized R {stats.realized_ratio:.3f} is below half of mix.ratio = {cfg.mix.ratio}: most pairs have no "
            f"(guarded) synthetic negatives ({stats.with_synthetic:,} of {stats.instances:,} instances have any); "
            "raise synthesize.max_pairs to synthesize more pairs")
