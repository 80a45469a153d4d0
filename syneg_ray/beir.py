"""BEIR datasets: find, download, read and validate a folder of corpus.jsonl, queries.jsonl, qrels/<split>.tsv.

Every reader streams its file once, line by line, and raises `DataError` naming file and line on
the first malformed row, so a bad corpus fails in seconds with a message the user can act on.
Query metadata is never read: in SciFact it holds the gold evidence labels.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import urllib.error
import urllib.request
import zipfile
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

from syneg_ray import storage
from syneg_ray.config import data_root
from syneg_ray.errors import DataError

logger = logging.getLogger(__name__)

BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip"
BEIR_DATASETS = (
    "arguana", "climate-fever", "cqadupstack", "dbpedia-entity", "fever", "fiqa", "hotpotqa",
    "msmarco", "nfcorpus", "nq", "quora", "scidocs", "scifact", "trec-covid", "webis-touche2020",
)  # fmt: skip

Qrels = dict[str, dict[str, int]]  # qrels[query_id][doc_id] = graded relevance (0, 1, 2, ...)


@dataclass(frozen=True)
class BeirSplit:
    """One split of a BEIR dataset as plain dicts: what evaluation and mining need."""

    corpus: dict[str, str]  # doc_id -> document text (title + " " + text); evaluation of a dense model passes only the ids
    queries: dict[str, str]  # query_id -> query text, only the split's queries
    qrels: Qrels  # only the split's judgements


def document_text(title: str, text: str) -> str:
    """BEIR's rule: `title + " " + text` when the title is non-empty, else `text`."""
    title = title.strip()
    return f"{title} {text}" if title else text


def resolve_dataset(name_or_path: str, data_dir: str = "", download: bool = True) -> Path:
    """Finds a BEIR folder by path or by name under the data directory, downloading it if allowed.

    Args:
        name_or_path: a folder holding corpus.jsonl, or a BEIR dataset name such as `scifact`.
        data_dir: where named datasets live; "" means $SYNEG_DATA_DIR, else ./datasets.
        download: fetch a missing named dataset from BEIR's public URL.

    Raises:
        DataError: the folder does not exist and cannot be downloaded.
    """
    if storage.is_uri(name_or_path):
        return _fetched(storage.local_path(name_or_path))
    as_path = Path(name_or_path).expanduser()
    if (as_path / "corpus.jsonl").is_file():
        return _fetched(as_path)
    root = data_root(data_dir)
    folder = root / name_or_path
    if storage.uri_of(folder) is not None:  # a data_dir in object storage
        return _fetched(folder)
    if (folder / "corpus.jsonl").is_file():
        return folder
    if name_or_path not in BEIR_DATASETS:
        raise DataError(
            f"{folder}: no corpus.jsonl; {name_or_path!r} is neither a BEIR folder nor a BEIR dataset name "
            f"({', '.join(BEIR_DATASETS)}); set data.data_dir or SYNEG_DATA_DIR"
        )
    if not download:
        raise DataError(f"{folder}: dataset {name_or_path!r} is missing and data.download is false")
    _download(name_or_path, root)
    return folder


def _fetched(folder: Path) -> Path:
    """A BEIR folder made readable on this node: fetched when it mirrors object storage (data.data_dir
    or data.dataset a URI); a dataset uploaded by other tools has no completion marker."""
    try:
        return storage.fetch(folder, marked=False)
    except FileNotFoundError as exc:
        raise DataError(f"{exc}; upload the BEIR folder (corpus.jsonl, queries.jsonl, qrels/) there") from None


def _download(name: str, root: Path) -> None:
    url = BEIR_URL.format(name=name)
    logger.info("downloading %s from %s", name, url)
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            payload = response.read()
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise DataError(
            f"{root / name}: dataset missing and download from {url} failed ({exc}); "
            f"download and unzip it into {root} by hand, or set data.data_dir"
        ) from None
    root.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(io.BytesIO(payload)) as archive:
            archive.extractall(root)
    except zipfile.BadZipFile as exc:  # an HTML error page or a truncated download
        raise DataError(
            f"{root / name}: dataset missing and {url} did not return a valid zip ({exc}); "
            f"retry, or download and unzip it into {root} by hand, or set data.data_dir"
        ) from None


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict]]:
    """Yields (1-based line number, object) for every non-blank line, validating encoding and JSON."""
    if not path.is_file():
        raise DataError.at(path, None, "file not found; a BEIR folder needs corpus.jsonl and queries.jsonl")
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raise DataError.at(path, 1, "starts with a UTF-8 byte-order mark; save the file as UTF-8 without BOM")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError.at(path, number, f"not UTF-8 (byte {exc.start}); re-encode the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError.at(path, number, f"broken JSON ({exc.msg}, column {exc.colno}); fix or drop the line") from None
            if not isinstance(row, dict):
                raise DataError.at(path, number, "a JSON object with _id and text is expected")
            yield number, row


def _required_str(row: dict, key: str, path: Path, number: int) -> str:
    value = row.get(key)
    if not isinstance(value, str):
        raise DataError.at(path, number, f"row has no string {key!r}; every row needs '_id' and 'text'")
    return value


def iter_corpus(path: Path, unique_ids: bool = True) -> Iterator[tuple[str, str]]:
    """Yields (doc_id, document text) from corpus.jsonl, validated, with duplicate ids rejected.

    `unique_ids=False` skips the duplicate check, whose set of every id grows with the corpus; the
    caller then checks the ids itself (dataset.prepare does, on the Parquet it writes).
    """
    seen: set[str] = set()
    empty = True
    for number, row in _jsonl_rows(path):
        doc_id = _required_str(row, "_id", path, number)
        text = _required_str(row, "text", path, number)
        title = row.get("title") or ""
        if not isinstance(title, str):
            raise DataError.at(path, number, "'title' must be a string")
        if unique_ids:
            if doc_id in seen:
                raise DataError.at(path, number, f"duplicate _id {doc_id!r}; document ids must be unique")
            seen.add(doc_id)
        empty = False
        yield doc_id, document_text(title, text)
    if empty:
        raise DataError.at(path, None, "the corpus is empty; it needs at least one document")


def read_corpus(folder: Path) -> dict[str, str]:
    """doc_id -> document text for the whole corpus (plain dict; dataset.py caches it as Parquet for the Ray stages)."""
    return dict(iter_corpus(folder / "corpus.jsonl"))


def read_queries(folder: Path, keep: set[str] | None = None) -> dict[str, str]:
    """query_id -> text, only for ids in `keep` when given. Metadata is never read."""
    path = folder / "queries.jsonl"
    queries: dict[str, str] = {}
    for number, row in _jsonl_rows(path):
        query_id = _required_str(row, "_id", path, number)
        text = _required_str(row, "text", path, number)
        if query_id in queries:
            raise DataError.at(path, number, f"duplicate _id {query_id!r}; query ids must be unique")
        if keep is None or query_id in keep:
            queries[query_id] = text
    return queries


def read_qrels(folder: Path, split: str) -> tuple[Qrels, dict[str, int]]:
    """Reads qrels/<split>.tsv (header, then query-id, corpus-id, score; CRLF allowed).

    Returns:
        qrels[query_id][doc_id] = score, and the 1-based line of each query's first row (for errors).
    """
    path = folder / "qrels" / f"{split}.tsv"
    if not path.is_file():
        found = sorted(p.stem for p in (folder / "qrels").glob("*.tsv"))
        raise DataError.at(path, None, f"split {split!r} not found; available splits: {', '.join(found) or 'none'}")
    qrels: Qrels = {}
    first_line: dict[str, int] = {}
    raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        raise DataError.at(path, 1, "starts with a UTF-8 byte-order mark; save the file as UTF-8 without BOM")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError.at(path, line, "not UTF-8; re-encode the file as UTF-8") from None
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    for number, fields in enumerate(reader, start=1):
        if not fields or (number == 1 and not _is_judgement(fields)):
            continue  # BEIR's header (query-id, corpus-id, score); a file without one starts with data
        if len(fields) != 3:
            raise DataError.at(path, number, f"expected 3 tab-separated fields (query-id, corpus-id, score), got {len(fields)}")
        query_id, doc_id, score = fields
        try:
            qrels.setdefault(query_id, {})[doc_id] = int(score)
        except ValueError:
            raise DataError.at(path, number, f"score {score!r} is not an integer") from None
        first_line.setdefault(query_id, number)
    return qrels, first_line


def _is_judgement(fields: list[str]) -> bool:
    """True when a first qrels line is a judgement, not a header: three fields with a numeric score.

    A score that is a number but not an integer (`1.5`) makes it a judgement, so a file without a
    header whose first grade is fractional fails with its line, instead of losing that row as a header.
    """
    if len(fields) != 3:
        return False
    try:
        float(fields[2])
    except ValueError:
        return False
    return True


def load_split(folder: Path, split: str, corpus: Collection[str] | None = None, keep_unknown_docs: bool = False) -> BeirSplit:
    """Reads and cross-checks one split: every qrels row must name a known query and document.

    Args:
        folder: the BEIR folder.
        split: qrels file name without `.tsv`.
        corpus: an already-read corpus to reuse (it is the expensive part), or only its ids.
        keep_unknown_docs: for evaluation: keep judgements of documents missing from the corpus,
            with a warning, unless no judged document at all is in the corpus. BEIR's own test
            qrels hold a few (ArguAna), and BEIR scores them as relevant documents never retrieved.

    Raises:
        DataError: any malformed file, or a qrels row naming an unknown query or (unless kept) document.
    """
    qrels, first_line = read_qrels(folder, split)
    if corpus is None:
        corpus = read_corpus(folder)
    queries = read_queries(folder, keep=set(qrels))
    qrels_path = folder / "qrels" / f"{split}.tsv"
    unknown: list[tuple[str, str]] = []  # (query_id, doc_id) of judged documents missing from the corpus
    for query_id, docs in qrels.items():
        if query_id not in queries:
            raise DataError.at(qrels_path, first_line[query_id], f"query {query_id!r} is not in queries.jsonl")
        unknown += [(query_id, d) for d in docs if d not in corpus]
        if unknown and not keep_unknown_docs:
            break
    if unknown:
        line = _line_of(qrels_path, *unknown[0])
        problem = f"document {unknown[0][1]!r} is not in corpus.jsonl"
        judged = sum(map(len, qrels.values()))
        if not keep_unknown_docs:
            raise DataError.at(qrels_path, line, problem)
        if len(unknown) == judged:
            raise DataError.at(qrels_path, line, f"{problem}, nor is any other judged document; qrels and corpus must come from the same dataset")
        logger.warning("%s: %d of %d judged documents are not in corpus.jsonl (the first at line %s); they count as "
                       "relevant but are never retrieved", qrels_path, len(unknown), judged, line)  # fmt: skip
    return BeirSplit(corpus=corpus, queries=queries, qrels=qrels)


def _line_of(path: Path, query_id: str, doc_id: str) -> int | None:
    """The line of a (query, doc) row; only called for a document missing from the corpus."""
    with path.open(encoding="utf-8", newline="") as handle:
        for number, line in enumerate(handle, start=1):
            fields = line.rstrip("\r\n").split("\t")
            if fields[:2] == [query_id, doc_id]:
                return number
    return None


def positive_pairs(qrels: Qrels) -> list[tuple[str, str]]:
    """(query_id, positive_id) for every judgement with score > 0, in a stable order."""
    return [(q, d) for q in sorted(qrels) for d in sorted(qrels[q]) if qrels[q][d] > 0]
