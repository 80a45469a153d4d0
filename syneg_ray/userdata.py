"""The user's own data: corpus and (query, positive[, negatives]) files converted once into a BEIR folder.

Inputs are Parquet, JSONL, CSV/TSV or a folder written by `datasets.Dataset.save_to_disk`, with the
column names of `DataConfig`. `convert` validates them (one-line `DataError`s naming file, row and
column) and writes, under the cache, a folder keyed by the content of the files and the mapping:

    corpus.jsonl, queries.jsonl, qrels/train.tsv [, qrels/dev.tsv, qrels/test.tsv] [, given_negatives.parquet]

so `dataset.prepare` and every stage after it read it as any BEIR folder. The corpus is streamed a
batch at a time: the driver keeps its ids (an Arrow column) and the texts the pairs name, never a
map of every text. Pairs files are held whole; they are the small side.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass, fields
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from syneg_ray import storage
from syneg_ray.config import DataConfig
from syneg_ray.errors import DataError
from syneg_ray.userfiles import Source, column_error, open_source, strings

logger = logging.getLogger(__name__)

VERSION = 1  # bump when the converted layout changes: old cache entries are then rebuilt
SPLITS = {"pairs": "train", "dev_pairs": "dev", "eval_pairs": "test"}  # config key -> qrels split written
GIVEN_NEGATIVES = "given_negatives.parquet"
GIVEN_NEGATIVES_SCHEMA = pa.schema([("query_id", pa.string()), ("positive_id", pa.string()), ("negative_ids", pa.list_(pa.string()))])
_DEFAULTS = {f.name: f.default for f in fields(DataConfig)}


@dataclass(frozen=True)
class Converted:
    """A converted folder and, when the pairs gave negatives, their Parquet."""

    folder: Path
    given_negatives: Path | None


@dataclass
class _Row:
    """One pairs row, before its positive and negatives are resolved to document ids."""

    source: Path
    number: int  # 1-based row of the file
    query_id: str
    query: str
    positive_id: str  # "" when given as text
    positive: str
    negatives: list[str]


def convert(data: DataConfig, cache_dir: Path) -> Converted:
    """Converts the files of `data` into a BEIR folder under `cache_dir/userdata`, once per content.

    Args:
        data: the data config with `pairs` set (and optionally corpus, dev_pairs, eval_pairs).
        cache_dir: the run's cache root.

    Returns:
        The folder and, when the pairs had negatives, the path of given_negatives.parquet.

    Raises:
        DataError: a file is missing, unreadable or of an unsupported type, a column is missing, or a
            row is invalid (empty text or query, duplicate document id, unknown positive_id, a
            negatives cell that is not a list).
        MissingExtraError: a `datasets` folder is given and the package is not installed.
    """
    sources = {key: open_source(_readable(key, path)) for key, path in data.files().items()}
    folder = cache_dir / "userdata" / _key(data, sources)
    if not (folder / "corpus.jsonl").is_file():
        tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            _write_folder(data, sources, tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        try:
            os.replace(tmp, folder)  # whole or absent: a conversion killed midway is redone
        except OSError:  # another process converted the same content first
            shutil.rmtree(tmp, ignore_errors=True)
    negatives = folder / GIVEN_NEGATIVES
    return Converted(folder=folder, given_negatives=negatives if negatives.is_file() else None)


def _readable(key: str, location: str) -> Path:
    """The local path of a data file: itself, or for a URI (`s3://`, `gs://`) this node's copy,
    downloaded once and again when the object changes (a folder is taken whole by its listing:
    files that other tools uploaded have no publication marker).

    Raises:
        DataError: the URI names nothing.
    """
    if not storage.is_uri(location):
        return Path(location)
    try:
        return storage.fetch(storage.local_path(location), marked=False)
    except FileNotFoundError:
        raise DataError(f"{location}: not found in object storage; check data.{key} (and AWS_ENDPOINT_URL / "
                        "credentials for a bucket outside AWS)") from None


def _key(data: DataConfig, sources: dict[str, Source]) -> str:
    """Content of every file, the column mapping and the layout version, hashed."""
    mapping = {k: getattr(data, k) for k in _DEFAULTS if k.endswith("_column")}
    payload = {"version": VERSION, "columns": mapping, "files": {k: s.digest() for k, s in sorted(sources.items())}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _write_folder(data: DataConfig, sources: dict[str, Source], out: Path) -> None:
    (out / "qrels").mkdir(parents=True)
    rows = {key: _read_pairs(data, sources[key], with_negatives=key == "pairs") for key in SPLITS if key in sources}
    queries = _queries(rows)
    wanted = {t for split in rows.values() for r in split for t in (r.positive, *r.negatives) if t}
    corpus = _Corpus(out / "corpus.jsonl", wanted)
    try:
        if "corpus" in sources:
            corpus.copy(data, sources["corpus"])
            corpus.look_up({r.positive_id for split in rows.values() for r in split if r.positive_id}
                           | {t for r in rows["pairs"] for t in r.negatives})
        judged = {key: [(r.query_id, corpus.resolve_positive(r)) for r in split] for key, split in rows.items()}
        given: dict[tuple[str, str], dict[str, None]] = {}  # (query, positive) -> negative ids, in order, once each
        for r, pair in zip(rows["pairs"], judged["pairs"], strict=True):
            if r.negatives:
                given.setdefault(pair, {}).update(dict.fromkeys(d for t in r.negatives if (d := corpus.resolve_negative(t)) != pair[1]))
    finally:
        corpus.close()
    with (out / "queries.jsonl").open("w", encoding="utf-8") as handle:
        handle.writelines(json.dumps({"_id": q, "text": t}) + "\n" for q, t in queries.items())
    for key, pairs in judged.items():
        lines = ["query-id\tcorpus-id\tscore\n", *(f"{q}\t{d}\t1\n" for q, d in dict.fromkeys(pairs))]
        (out / "qrels" / f"{SPLITS[key]}.tsv").write_text("".join(lines), encoding="utf-8")
    if given:
        table = {"query_id": [q for q, _ in given], "positive_id": [p for _, p in given], "negative_ids": [list(n) for n in given.values()]}
        pq.write_table(pa.table(table, schema=GIVEN_NEGATIVES_SCHEMA), out / GIVEN_NEGATIVES)
    counts = ", ".join(f"{len(set(p)):,} {SPLITS[k]} pairs" for k, p in judged.items())
    logger.info("user data: %s documents, %s of them added from texts the pairs name (ids gen-<hash>); %s queries; %s%s",
                f"{corpus.count:,}", f"{len(corpus.added):,}", f"{len(queries):,}", counts,
                f"; given negatives for {len(given):,} pairs" if given else "")


def _column(data: DataConfig, name: str, found: list[str], required: bool) -> str:
    """The configured column `name` when the file has it; "" for an optional column left at its default and absent.

    Raises:
        KeyError: (the column) when it is absent and required or renamed in the config; `_columns` words the error.
    """
    column = getattr(data, name)
    if column and column in found:
        return column
    if column and (required or column != _DEFAULTS[name]):
        raise KeyError(column)
    return ""


def _columns(data: DataConfig, source: Source, required: tuple[str, ...], optional: tuple[str, ...]) -> dict[str, str]:
    """config field -> column of `source` for the fields it has; raises the missing-column error."""
    found = source.columns()
    try:
        return {name: _column(data, name, found, name in required) for name in (*required, *optional)}
    except KeyError as exc:
        raise DataError(f"{source.path}: missing column {exc.args[0]!r}; columns found: {', '.join(found) or 'none'}; "
                        f"rename it in the file or set data.{_field_of(data, exc.args[0])}") from None


def _field_of(data: DataConfig, column: str) -> str:
    return next(k for k in _DEFAULTS if k.endswith("_column") and getattr(data, k) == column)


def _read_pairs(data: DataConfig, source: Source, with_negatives: bool) -> list[_Row]:
    """Every row of a pairs file, validated. Negatives are only read from the training pairs."""
    optional = ("query_id_column", "positive_column", "positive_id_column") + (("negatives_column",) if with_negatives else ())
    cols = _columns(data, source, ("query_column",), optional)
    if not (cols["positive_column"] or cols["positive_id_column"]):
        found = ", ".join(source.columns())
        raise DataError(f"{source.path}: missing column {data.positive_column or data.positive_id_column!r} (the positive's text) "
                        f"or {data.positive_id_column!r} (its corpus id); columns found: {found}; set data.positive_column")
    rows: list[_Row] = []
    for first, batch in source.batches([c for c in cols.values() if c]):
        values = {name: strings(batch, col, source, first) if name != "negatives_column" else None
                  for name, col in cols.items() if col}  # fmt: skip
        negatives = batch.column(cols["negatives_column"]).to_pylist() if cols.get("negatives_column") else None
        for i in range(batch.num_rows):
            number = first + i
            query = values["query_column"][i] or ""
            if not query.strip():
                raise column_error(source, number, cols["query_column"], "empty query; give every pair its query text or drop the row")
            query_id = values["query_id_column"][i] if "query_id_column" in values else _derived_id("q", query)
            _check_id(query_id, source, number, cols["query_id_column"], "query")
            positive_id = (values["positive_id_column"][i] if "positive_id_column" in values else "") or ""
            if positive_id:
                _check_id(positive_id, source, number, cols["positive_id_column"], "document")
            positive = (values["positive_column"][i] if "positive_column" in values else "") or ""
            if not positive_id and not positive.strip():
                column = cols["positive_column"] or cols["positive_id_column"]
                raise column_error(source, number, column, "empty text of the positive; give its text or its corpus id, or drop the row")
            cell = negatives[i] if negatives is not None else None
            rows.append(_Row(source.path, number, query_id, query, positive_id, positive,
                             _negatives(cell, source, number, cols.get("negatives_column", ""))))
    if not rows:
        raise DataError(f"{source.path}: no rows; a pairs file needs at least one (query, positive) row")
    return rows


def _negatives(cell: object, source: Source, number: int, column: str) -> list[str]:
    """A negatives cell as a list of non-empty strings (ids or texts). CSV cells hold a JSON list."""
    if cell is None:
        return []
    if isinstance(cell, str) and source.kind in ("csv", "tsv"):
        try:
            cell = json.loads(cell) if cell.strip() else []
        except json.JSONDecodeError:
            pass
    if not isinstance(cell, list):
        raise column_error(source, number, column, f"the negatives cell is a {type(cell).__name__}, not a list; "
                           "give a list of document ids or texts (in CSV a JSON list such as [\"d1\", \"d2\"])")
    out = []
    for item in cell:
        if isinstance(item, int) and not isinstance(item, bool):
            item = str(item)
        if not isinstance(item, str) or not item.strip():
            raise column_error(source, number, column, f"negative {item!r} is not a non-empty string; give document ids or texts")
        out.append(item)
    return out


def _queries(rows: dict[str, list[_Row]]) -> dict[str, str]:
    """query_id -> text over every pairs file; one id must keep one text."""
    queries: dict[str, str] = {}
    for split in rows.values():
        for r in split:
            if queries.setdefault(r.query_id, r.query) != r.query:
                raise DataError(f"{r.source}: row {r.number}: query id {r.query_id!r} has another text in an earlier row; "
                                "give each query id one text")
    return queries


def _check_id(value: str | None, source: Source, row: int, column: str, what: str) -> None:
    """An id must be non-empty and free of tabs and line breaks, which would break the qrels' TSV."""
    if not value:
        raise column_error(source, row, column, f"empty {what} id; fill it, or drop the row")
    if any(c in value for c in "\t\r\n"):
        raise column_error(source, row, column, f"{what} id {value!r} holds a tab or line break; remove it")


def _derived_id(prefix: str, text: str) -> str:
    """A stable id from a text: the same text gets the same id in every run and every file."""
    return f"{prefix}-{hashlib.sha256(text.encode('utf-8')).hexdigest()[:16]}"


class _Corpus:
    """Writes corpus.jsonl from the corpus file, then adds the documents the pairs give only as text.

    Holds the corpus's ids as Arrow chunks (the duplicate check and the id lookups), the ids of
    the `wanted` texts (the pairs' positives and negatives) found in it, and the added documents.
    """

    def __init__(self, path: Path, wanted: set[str]) -> None:
        self.handle = path.open("w", encoding="utf-8")
        self.wanted = pa.array(sorted(wanted), pa.string())
        self.by_text: dict[str, str] = {}  # wanted text -> id of its first corpus document
        self.ids = pa.array([], pa.string())
        self.added: dict[str, str] = {}  # id -> text of documents added from the pairs
        self.found_ids: set[str] = set()  # ids the pairs name that are in the corpus file
        self.source: Source | None = None
        self.count = 0

    def copy(self, data: DataConfig, source: Source) -> None:
        """Streams the corpus file into corpus.jsonl, validating every row."""
        cols = _columns(data, source, ("doc_id_column", "text_column"), ("title_column",))
        chunks: list[pa.Array] = []
        for first, batch in source.batches([c for c in cols.values() if c]):
            ids = strings(batch, cols["doc_id_column"], source, first)
            texts = strings(batch, cols["text_column"], source, first)
            titles = strings(batch, cols["title_column"], source, first) if cols["title_column"] else [None] * batch.num_rows
            for i, (doc_id, text, title) in enumerate(zip(ids, texts, titles, strict=True)):
                _check_id(doc_id, source, first + i, cols["doc_id_column"], "document")
                if not (text or "").strip() and not (title or "").strip():
                    raise column_error(source, first + i, cols["text_column"], "empty text; fill it or drop the document")
                self.handle.write(json.dumps({"_id": doc_id, "title": title or "", "text": text or ""}) + "\n")
            column = pa.array(ids, pa.string())
            chunks.append(column)
            hits = pc.is_in(pa.array(texts, pa.string()), value_set=self.wanted).to_pylist()
            for doc_id, text, hit in zip(ids, texts, hits, strict=True):
                if hit:
                    self.by_text.setdefault(text, doc_id)
            self.count += batch.num_rows
        self.ids = pa.chunked_array(chunks, pa.string()).combine_chunks() if chunks else self.ids
        counts = pc.value_counts(self.ids)
        repeated = counts.filter(pc.greater(counts.field("counts"), 1))
        if len(repeated):  # the second occurrence's row, from the id column: no second read of the file
            doc_id = repeated[0]["values"].as_py()
            row = pc.indices_nonzero(pc.equal(self.ids, doc_id))[1].as_py() + 1
            raise column_error(source, row, cols["doc_id_column"], f"duplicate document id {doc_id!r}; document ids must be unique")
        if not self.count:
            raise DataError(f"{source.path}: no rows; the corpus needs at least one document")
        self.source = source

    def look_up(self, candidates: set[str]) -> None:
        """Notes which of `candidates` (given positive ids, negatives that may be ids) are corpus ids: one Arrow lookup."""
        values = pa.array(sorted(candidates), pa.string())
        self.found_ids = set(values.filter(pc.is_in(values, value_set=self.ids)).to_pylist())

    def known(self, doc_id: str) -> bool:
        return doc_id in self.found_ids or doc_id in self.added

    def resolve_positive(self, row: _Row) -> str:
        """The positive's document id: its given id, the corpus document with its text, or a new document."""
        if row.positive_id:
            if self.known(row.positive_id):
                return row.positive_id
            if self.source is not None or not row.positive.strip():
                where = f"the corpus ({self.source.path})" if self.source else "the corpus (no data.corpus: only documents given by text)"
                raise DataError(f"{row.source}: row {row.number}, column 'positive_id': document {row.positive_id!r} is not in "
                                f"{where}; fix the id, or give the positive's text instead")
            return self._add(row.positive, row.positive_id)
        return self.by_text.get(row.positive) or self._add(row.positive)

    def resolve_negative(self, value: str) -> str:
        """A given negative's document id: a corpus id as it is, else the document with that text, else a new one."""
        if self.known(value):
            return value
        return self.by_text.get(value) or self._add(value)

    def _add(self, text: str, doc_id: str = "") -> str:
        doc_id = doc_id or _derived_id("gen", text)
        if doc_id not in self.added:
            self.added[doc_id] = text
            self.handle.write(json.dumps({"_id": doc_id, "title": "", "text": text}) + "\n")
            self.count += 1
        return doc_id

    def close(self) -> None:
        self.handle.close()

