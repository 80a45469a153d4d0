"""The pipeline's view of a BEIR dataset: pairs, the dev split and a Parquet copy of the corpus.

The corpus is read and validated once, streamed into Parquet in the cache keyed by the corpus
file's content hash, in row groups of `CORPUS_ROW_GROUP` documents. Ray actors then read their own
row ranges of it (`read_corpus_rows`): the driver learns the corpus's size from the Parquet
footer and never holds its texts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from syneg_ray import beir, schema
from syneg_ray.config import PipelineConfig, default_cache_dir
from syneg_ray.runtime import _replace_atomically, read_json, write_parquet_atomic, write_text_atomic

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prepared:
    """A resolved dataset: where it is, its corpus as Parquet, and a fingerprint for cache keys."""

    folder: Path
    corpus_parquet: Path
    fingerprint: str  # sha256 prefix of corpus.jsonl

    @property
    def n_docs(self) -> int:
        """Documents in the corpus, from the Parquet footer (no data read)."""
        return pq.ParquetFile(self.corpus_parquet).metadata.num_rows

    def doc_ids(self) -> pa.ChunkedArray:
        """Every document id, in corpus order, as one Arrow column: about 10-20 bytes a document,
        a few times less than a Python list of str, and the one corpus-sized structure the driver
        keeps (the id -> row map of the stages)."""
        return pq.read_table(self.corpus_parquet, columns=["doc_id"]).column("doc_id")


def file_digest(path: Path, chunk: int = 1 << 22) -> str:
    """sha256 of a file, streamed; remembered per (path, size, modification time) in this process,
    since every stage fingerprints the same corpus (gigabytes for the large BEIR sets)."""
    stat = path.stat()
    seen = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if seen not in _DIGESTS:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            while block := handle.read(chunk):
                digest.update(block)
        _DIGESTS[seen] = digest.hexdigest()
    return _DIGESTS[seen]


_DIGESTS: dict[tuple[str, int, int], str] = {}


def prepare(cfg: PipelineConfig) -> Prepared:
    """Resolves `data.dataset` and makes sure its validated Parquet corpus is in the cache."""
    folder = beir.resolve_dataset(cfg.data.dataset, cfg.data.data_dir, cfg.data.download)
    fingerprint = file_digest(folder / "corpus.jsonl")[:16]
    # "-g": the row-grouped layout; a cache written before it (one row group) is rewritten once
    target = default_cache_dir(cfg) / "corpus" / f"{fingerprint}-g{CORPUS_ROW_GROUP}.parquet"
    if not target.is_file():
        n = write_corpus_parquet(folder / "corpus.jsonl", target)
        logger.info("corpus: %s documents validated and cached as %s", f"{n:,}", target)
    return Prepared(folder=folder, corpus_parquet=target, fingerprint=fingerprint)


CORPUS_ROW_GROUP = 2048  # documents per Parquet row group: the unit an encoder or BM25 actor reads
CORPUS_SCHEMA = pa.schema([("doc_id", pa.string()), ("text", pa.string())])


def write_corpus_parquet(source: Path, target: Path) -> int:
    """Streams corpus.jsonl into Parquet one row group at a time (atomically); returns the document count.

    Memory stays at one row group of texts whatever the corpus size. Duplicate ids are found on the
    written id column (Arrow), and only then is the file scanned again for the line to report.
    """
    count = 0

    def write(tmp: Path) -> None:
        nonlocal count
        with pq.ParquetWriter(tmp, CORPUS_SCHEMA) as writer:
            ids: list[str] = []
            texts: list[str] = []
            for doc_id, text in beir.iter_corpus(source, unique_ids=False):
                ids.append(doc_id)
                texts.append(text)
                if len(ids) == CORPUS_ROW_GROUP:
                    writer.write_table(pa.table({"doc_id": ids, "text": texts}, schema=CORPUS_SCHEMA))
                    count, ids, texts = count + len(ids), [], []
            if ids:
                writer.write_table(pa.table({"doc_id": ids, "text": texts}, schema=CORPUS_SCHEMA))
                count += len(ids)
        column = pq.read_table(tmp, columns=["doc_id"]).column("doc_id")
        if pc.count_distinct(column).as_py() != len(column):
            tmp.unlink()
            for _ in beir.iter_corpus(source):  # raises the DataError that names the duplicate's line
                pass

    _replace_atomically(target, write)
    return count


def read_corpus_rows(path: str | Path, start: int, stop: int, columns: list[str] | None = None) -> pa.Table:
    """Rows [start, stop) of a corpus Parquet, reading only the row groups that hold them."""
    source = pq.ParquetFile(path)
    sizes = [source.metadata.row_group(i).num_rows for i in range(source.metadata.num_row_groups)]
    firsts = np.concatenate([[0], np.cumsum(sizes)])
    groups = [i for i in range(len(sizes)) if firsts[i] < stop and firsts[i + 1] > start]
    if not groups:
        return source.schema_arrow.empty_table().select(columns or source.schema_arrow.names)
    table = source.read_row_groups(groups, columns=columns)
    return table.slice(start - int(firsts[groups[0]]), stop - start)


def rows_of(doc_ids: pa.ChunkedArray, wanted: list[str]) -> np.ndarray:
    """Corpus rows of `wanted` ids (an Arrow hash lookup: no id -> row dict of the whole corpus); -1 for unknown ids."""
    found = pc.index_in(pa.array(wanted, type=pa.string()), value_set=doc_ids.combine_chunks())
    return found.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)


def texts_of(prepared: Prepared, wanted) -> dict[str, str]:
    """doc_id -> text for the `wanted` ids found in the corpus (unknown ids are left out).

    Scans the Parquet a row group at a time, so memory grows with what is wanted (the positives of
    the pairs, the negatives of the instances), not with the corpus.
    """
    value_set = pa.array(sorted(set(wanted)), pa.string())
    found: dict[str, str] = {}
    if not len(value_set):
        return found
    for batch in pq.ParquetFile(prepared.corpus_parquet).iter_batches(columns=["doc_id", "text"]):
        hits = batch.filter(pc.is_in(batch.column("doc_id"), value_set=value_set))
        found.update(zip(hits.column("doc_id").to_pylist(), hits.column("text").to_pylist(), strict=True))
    return found


def read_corpus(prepared: Prepared) -> dict[str, str]:
    """doc_id -> text of the whole corpus from the cached Parquet (fast: no JSON parse). Grows with
    the corpus: for the stages, `texts_of` the documents they need."""
    table = pq.read_table(prepared.corpus_parquet)
    return dict(zip(table.column("doc_id").to_pylist(), table.column("text").to_pylist(), strict=True))


def split_dev(query_ids: list[str], fraction: float, seed: int) -> tuple[set[str], set[str]]:
    """Seeded split of train query ids into (train, dev). Dev queries never contribute pairs."""
    ordered = sorted(query_ids)
    random.Random(seed).shuffle(ordered)
    n_dev = round(len(ordered) * fraction)
    return set(ordered[n_dev:]), set(ordered[:n_dev])


def build_pairs(cfg: PipelineConfig, prepared: Prepared, corpus: dict[str, str]) -> tuple[list[schema.Pair], beir.Qrels]:
    """Pairs of the train split (dev queries removed, `data.limit` applied) and the dev qrels."""
    split = beir.load_split(prepared.folder, cfg.data.train_split, corpus=corpus)
    train_ids, dev_ids = split_dev(list(split.qrels), cfg.data.dev_fraction, cfg.data.split_seed)
    train_qrels = {q: split.qrels[q] for q in train_ids}
    pairs: list[schema.Pair] = [
        {"query_id": q, "positive_id": d, "query": split.queries[q], "positive": corpus[d]}
        for q, d in beir.positive_pairs(train_qrels)
    ]
    if cfg.data.limit:
        pairs = pairs[: cfg.data.limit]
    return pairs, {q: split.qrels[q] for q in dev_ids}


def write_pairs(run_dir: Path, pairs: list[schema.Pair], dev_qrels: beir.Qrels) -> Path:
    """Writes pairs.parquet and dev_qrels.json into the run directory."""
    path = run_dir / schema.PAIRS
    write_parquet_atomic(path, pa.Table.from_pylist(pairs, schema=PAIR_SCHEMA))
    write_text_atomic(run_dir / schema.DEV_QRELS, json.dumps(dev_qrels, sort_keys=True))
    return path


def ensure_pairs(cfg: PipelineConfig) -> tuple[Prepared, Path]:
    """Prepares the dataset and writes the run's pairs unless pairs of the same settings exist.

    Pairs written for other settings (another `data.limit`, split, dev share, seed, corpus, or an
    edited queries or qrels file) are rebuilt, so a resumed run never trains or synthesizes on a stale list.
    """
    prepared = prepare(cfg)
    run_dir = Path(cfg.run.run_dir)
    path = run_dir / schema.PAIRS
    source = pairs_source(cfg, prepared)
    if not path.is_file() or read_json(run_dir / schema.PAIRS_SOURCE) != source:
        pairs, dev = build_pairs(cfg, prepared, read_corpus(prepared))
        # the old record goes first: a run killed before the new one is written rebuilds, whatever it resumes with
        (run_dir / schema.PAIRS_SOURCE).unlink(missing_ok=True)
        write_pairs(run_dir, pairs, dev)
        write_text_atomic(run_dir / schema.PAIRS_SOURCE, json.dumps(source, sort_keys=True))
        logger.info("pairs: %s train pairs, %s dev queries", f"{len(pairs):,}", f"{len(dev):,}")
    return prepared, path


def pairs_source(cfg: PipelineConfig, prepared: Prepared) -> dict:
    """Everything the pair list depends on: the settings and the content of corpus, queries and train qrels."""
    d = cfg.data
    queries, qrels = prepared.folder / "queries.jsonl", prepared.folder / "qrels" / f"{d.train_split}.tsv"
    return {"corpus": prepared.fingerprint, "folder": prepared.folder.name, "train_split": d.train_split,
            "queries": _digest_if_file(queries), "qrels": _digest_if_file(qrels),
            "dev_fraction": d.dev_fraction, "split_seed": d.split_seed, "limit": d.limit}  # fmt: skip


def _digest_if_file(path: Path) -> str:
    # a missing file gets "" here, so that build_pairs reports it as a DataError naming the split
    return file_digest(path)[:16] if path.is_file() else ""


PAIR_SCHEMA = schema.arrow_schema(schema.Pair)
