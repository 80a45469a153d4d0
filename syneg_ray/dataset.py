"""The pipeline's view of a BEIR dataset: pairs, the dev split and a Parquet copy of the corpus.

The corpus is read and validated once, streamed into Parquet in the cache keyed by the corpus
file's content hash, in row groups of `CORPUS_ROW_GROUP` documents. Ray actors then read their own
row ranges of it (`read_corpus_rows`), and a stage that needs scattered texts reads them by row
(`open_docstore`): the driver learns the corpus's size from the Parquet footer and never holds its
texts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from syneg_ray import beir, docstore, schema, storage
from syneg_ray.config import PipelineConfig, default_cache_dir
from syneg_ray.errors import DataError
from syneg_ray.runtime import _replace_atomically, read_json, write_text_atomic

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prepared:
    """A resolved dataset: where it is, its corpus as Parquet, and a fingerprint for cache keys."""

    folder: Path
    corpus_parquet: Path
    fingerprint: str  # sha256 prefix of corpus.jsonl
    # user data (data.pairs) whose pairs gave negatives: {query_id, positive_id, negative_ids} rows, else None
    given_negatives: Path | None = None

    @property
    def n_docs(self) -> int:
        """Documents in the corpus, from the Parquet footer (no data read)."""
        return pq.ParquetFile(self.corpus_parquet).metadata.num_rows

    def doc_ids(self) -> pa.ChunkedArray:
        """Every document id, in corpus order, as one Arrow column: about 10-20 bytes a document,
        a few times less than a Python list of str, and the one corpus-sized structure the driver
        keeps (the id -> row map of the stages)."""
        ids = pq.ParquetFile(self.corpus_parquet, pre_buffer=False).read(columns=["doc_id"]).column("doc_id")
        pa.default_memory_pool().release_unused()  # the read's buffers, which the allocator would keep
        return ids


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
    """Resolves the data and makes sure its validated Parquet corpus is in the cache.

    The data is `data.dataset` (a BEIR folder or name), or, when `data.pairs` is set, the user's
    files, converted once into a BEIR folder in the cache (`userdata.convert`).

    Raises:
        DataError: the data is missing or malformed (the message names file, line or row, and the fix).
    """
    given_negatives = None
    if cfg.data.pairs:
        from syneg_ray import userdata  # imported here: it reads this module's file_digest

        converted = userdata.convert(cfg.data, default_cache_dir(cfg))
        folder, given_negatives = converted.folder, converted.given_negatives
    else:
        folder = beir.resolve_dataset(cfg.data.dataset, cfg.data.data_dir, cfg.data.download)
    fingerprint = file_digest(folder / "corpus.jsonl")[:16]
    # "-g": the row-grouped layout; a cache written before it (one row group) is rewritten once
    target = default_cache_dir(cfg) / "corpus" / f"{fingerprint}-g{CORPUS_ROW_GROUP}.parquet"

    def build(path: Path) -> None:
        n = write_corpus_parquet(folder / "corpus.jsonl", path)
        logger.info("corpus: %s documents validated and cached as %s", f"{n:,}", path)

    storage.ensure(target, build)  # with the cache in object storage: built once, fetched by other nodes
    return Prepared(folder=folder, corpus_parquet=target, fingerprint=fingerprint, given_negatives=given_negatives)


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


def rows_of(doc_ids: pa.ChunkedArray | pa.Array, wanted: list[str]) -> np.ndarray:
    """Corpus rows of `wanted` ids; -1 for unknown ids.

    The corpus's ids are probed against a hash of the wanted ones (Arrow), not the other way round:
    no id -> row map of the whole corpus is built, so a call costs one pass over the id column and
    memory for the wanted ids (a stage calls this once per block).
    """
    wanted = pa.array(wanted, type=pa.string())
    unique = pc.unique(wanted)
    position = pc.index_in(doc_ids, value_set=unique)  # per corpus row: its place in `unique`, null if not wanted
    hits = pc.is_valid(position)
    row_of_unique = np.full(len(unique), -1, dtype=np.int64)
    found = pc.filter(position, hits)
    row_of_unique[np.asarray(found.to_numpy(zero_copy_only=False), dtype=np.int64)] = np.flatnonzero(
        hits.to_numpy(zero_copy_only=False))  # fmt: skip
    return row_of_unique[pc.index_in(wanted, value_set=unique).to_numpy(zero_copy_only=False).astype(np.int64)]


def open_docstore(prepared: Prepared) -> docstore.DocStore:
    """The corpus's texts by row (`docstore`), written once beside the cached corpus Parquet."""
    target = prepared.corpus_parquet.with_suffix(".texts")

    def build(path: Path) -> None:
        def write(tmp: Path) -> None:
            batches = (b.column("text").to_pylist() for b in scan_corpus(prepared.corpus_parquet, ["text"]))
            docstore.write(batches, tmp)

        _replace_atomically(path, write)

    storage.ensure(target, build)
    return docstore.DocStore(target)


def corpus_rows(doc_ids: pa.ChunkedArray | pa.Array, ids) -> dict[str, int]:
    """doc_id -> corpus row for those of `ids` that are corpus documents (one `rows_of` pass)."""
    ids = sorted(set(ids))
    return {doc: row for doc, row in zip(ids, rows_of(doc_ids, ids).tolist(), strict=True) if row >= 0}


def in_corpus(prepared: Prepared, ids) -> set[str]:
    """Those of `ids` that are corpus documents (one pass over the corpus's id column)."""
    return set(corpus_rows(prepared.doc_ids(), ids))


def texts_of(prepared: Prepared, wanted) -> dict[str, str]:
    """doc_id -> text for the `wanted` ids found in the corpus (unknown ids are left out): one pass
    over the id column and one read a text (`open_docstore`), so memory grows with what is wanted,
    not with the corpus."""
    found = corpus_rows(prepared.doc_ids(), wanted)
    if not found:
        return {}
    with closing(open_docstore(prepared)) as store:
        return dict(zip(found, store.texts(list(found.values())), strict=True))


def scan_corpus(path: str | Path, columns: list[str]):  # -> Iterator[pa.RecordBatch]
    """The corpus Parquet a row group at a time, in memory that does not grow with the corpus.

    Two defaults of Arrow would make it grow: pre-buffering reads ahead whole column chunks, and the
    allocator keeps freed blocks for reuse. Measured over the texts of a generated corpus, the peak
    above the start of the scan: 156 MB at 100k documents and 879 MB at 1M with `iter_batches`; 43 MB
    at both without pre-buffering and with the allocator's unused memory given back each row group.
    """
    source = pq.ParquetFile(path, pre_buffer=False)
    pool = pa.default_memory_pool()
    try:
        for group in range(source.num_row_groups):
            yield from source.read_row_group(group, columns=columns).to_batches(max_chunksize=CORPUS_ROW_GROUP)
            pool.release_unused()
    finally:
        pool.release_unused()


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


def dev_split_name(cfg: PipelineConfig, folder: Path) -> str:
    """The qrels split the dev queries come from, or "" for the carve of `data.dev_fraction` of the train queries.

    auto: qrels/dev.tsv when the folder has one and neither train nor evaluation reads it.
    """
    d = cfg.data
    if d.dev_split == "carve":
        return ""
    if d.dev_split != "auto":
        return d.dev_split
    has_dev = (folder / "qrels" / "dev.tsv").is_file()
    return "dev" if has_dev and "dev" not in (d.train_split, d.eval_split) else ""


def describe_dev(cfg: PipelineConfig, folder: Path) -> str:
    """Where the dev queries come from, in words (the plan and the pairs' log line say it)."""
    name = dev_split_name(cfg, folder)
    source = f"the {name} split" if name else f"carved from {cfg.data.train_split}"
    return source + (" and the train queries left without a pair" if cfg.data.dev_adds_unused else "")


def configured_dev_split(cfg: PipelineConfig) -> str:
    """`dev_split_name` for a dataset that may not be on disk yet (no download): "" (the carve) when it is not."""
    if cfg.data.pairs:  # user data: its dev split is data.dev_pairs, converted to qrels/dev.tsv
        return "dev" if cfg.data.dev_pairs and cfg.data.dev_split != "carve" else ""
    try:
        folder = beir.resolve_dataset(cfg.data.dataset, cfg.data.data_dir, download=False)
    except DataError:
        return "" if cfg.data.dev_split in ("auto", "carve") else cfg.data.dev_split
    return dev_split_name(cfg, folder)


def select_positives(qrels: beir.Qrels, min_relevance: int = 1, per_query: int = 0, seed: int = 0) -> list[tuple[str, str]]:
    """(query_id, positive_id) with score >= min_relevance, at most `per_query` per query (0 = all).

    A capped query keeps its highest grades first; among equal grades a draw seeded by (seed, query)
    decides, so a query's choice does not depend on the other queries. The order is that of
    `beir.positive_pairs` (query, then document id), so a cap that does not bind changes nothing.
    """
    chosen: list[tuple[str, str]] = []
    for q in sorted(qrels):
        docs = sorted(d for d, rel in qrels[q].items() if rel >= min_relevance)
        if per_query and len(docs) > per_query:
            rng = random.Random(f"{seed}:{q}")
            draw = {d: rng.random() for d in docs}  # drawn in sorted order: reproducible
            docs = sorted(sorted(docs, key=lambda d: (-qrels[q][d], draw[d]))[:per_query])
        chosen += [(q, d) for d in docs]
    return chosen


def sample_pairs(pairs: list[tuple[str, str]], max_pairs: int, seed: int) -> list[tuple[str, str]]:
    """A seeded sample of at most `max_pairs` pairs, whole queries together, in the input order.

    Queries are taken in a seeded order while they fit; the query that would overflow the cap gives
    only as many of its pairs (its first ones) as are left, so at most one query is cut.
    """
    if not max_pairs or len(pairs) <= max_pairs:
        return pairs
    by_query: dict[str, list[int]] = {}
    for i, (q, _) in enumerate(pairs):
        by_query.setdefault(q, []).append(i)
    order = sorted(by_query)
    random.Random(seed).shuffle(order)
    kept: list[int] = []
    for q in order:
        room = max_pairs - len(kept)
        if room <= 0:
            break
        kept += by_query[q][:room]
    return [pairs[i] for i in sorted(kept)]


def build_pairs(cfg: PipelineConfig, prepared: Prepared) -> tuple[list[tuple[str, str]], dict[str, str], beir.Qrels]:
    """The train split's pairs, as (query_id, positive_id) in pair order, their queries' texts, and the dev qrels.

    Dev queries come from the dataset's own dev split, or are carved from the train queries
    (`data.dev_split`); either way they give no pairs. Then, in this order: positives by
    `data.min_relevance`, at most `data.max_positives_per_query` of them per query,
    `data.max_pairs` pairs sampled, and the first `data.limit` kept. With `data.dev_adds_unused`, the
    train queries those two caps leave without a pair join the dev queries.

    Which judged documents are in the corpus is one pass over the corpus's id column; no text of a
    document is read here (`write_pairs` reads the positives' a block at a time).
    """
    d = cfg.data
    dev_name = dev_split_name(cfg, prepared.folder)
    judged = [beir.read_qrels(prepared.folder, name)[0] for name in (d.train_split, dev_name) if name]
    known = in_corpus(prepared, {doc for qrels in judged for docs in qrels.values() for doc in docs})
    split = beir.load_split(prepared.folder, d.train_split, corpus=known)
    if dev_name:
        dev_qrels = read_dev_split(prepared, dev_name, known)
        overlap = set(split.qrels) & set(dev_qrels)
        if overlap:
            logger.info("pairs: %d train queries are also %s queries and give no pairs", len(overlap), dev_name)
        train_ids = set(split.qrels) - overlap
    else:
        train_ids, dev_ids = split_dev(list(split.qrels), d.dev_fraction, d.split_seed)
        dev_qrels = {q: split.qrels[q] for q in dev_ids}
    train_qrels = {q: split.qrels[q] for q in train_ids}
    eligible = select_positives(train_qrels, d.min_relevance, d.max_positives_per_query, d.split_seed)
    chosen = sample_pairs(eligible, d.max_pairs, d.split_seed)
    if d.limit:
        chosen = chosen[: d.limit]
    if d.dev_adds_unused:
        used = {q for q, _ in chosen}
        dev_qrels = {**dev_qrels, **{q: train_qrels[q] for q in dict.fromkeys(q for q, _ in eligible) if q not in used}}
    return chosen, {q: split.queries[q] for q in dict.fromkeys(q for q, _ in chosen)}, dev_qrels


def read_dev_split(prepared: Prepared, split: str, known: set[str] | None = None) -> beir.Qrels:
    """The qrels of the dataset's dev split, validated as evaluation validates its split (judged documents
    missing from the corpus are kept, with a warning, unless none is there).

    `known` must hold the split's judged documents that are in the corpus (build_pairs looks them
    up with the train split's in one pass); by default they are looked up here.
    """
    if known is None:
        qrels, _ = beir.read_qrels(prepared.folder, split)
        known = in_corpus(prepared, (doc for docs in qrels.values() for doc in docs))
    return beir.load_split(prepared.folder, split, corpus=known, keep_unknown_docs=True).qrels


PAIR_BLOCK = 8192  # pairs written at once: the driver holds one block's positive texts


def write_pairs(run_dir: Path, prepared: Prepared, pairs: list[tuple[str, str]], queries: dict[str, str],
                dev_qrels: beir.Qrels) -> Path:  # fmt: skip
    """Writes pairs.parquet (texts joined a block at a time, the positives' read by corpus row) and
    dev_qrels.json into the run directory, each through a temporary file."""
    path = run_dir / schema.PAIRS
    doc_ids = prepared.doc_ids()

    def write(tmp: Path) -> None:
        with closing(open_docstore(prepared)) as store, pq.ParquetWriter(tmp, PAIR_SCHEMA) as writer:
            for start in range(0, len(pairs), PAIR_BLOCK):
                block = pairs[start : start + PAIR_BLOCK]
                positives = store.texts(rows_of(doc_ids, [doc for _, doc in block]))
                rows = [{"query_id": q, "positive_id": doc, "query": queries[q], "positive": text}
                        for (q, doc), text in zip(block, positives, strict=True)]  # fmt: skip
                writer.write_table(pa.Table.from_pylist(rows, schema=PAIR_SCHEMA))

    _replace_atomically(path, write)
    write_text_atomic(run_dir / schema.DEV_QRELS, json.dumps(dev_qrels, sort_keys=True))
    return path


def ensure_pairs(cfg: PipelineConfig) -> tuple[Prepared, Path]:
    """Prepares the dataset and writes the run's pairs unless pairs of the same settings exist.

    Pairs written for other settings (another `data.limit`, cap, relevance threshold, split, dev
    split or share, seed, corpus, or an edited queries or qrels file) are rebuilt, so a resumed run never trains or synthesizes on a stale list.
    """
    prepared = prepare(cfg)
    run_dir = Path(cfg.run.run_dir)
    path = run_dir / schema.PAIRS
    source = pairs_source(cfg, prepared)
    if not path.is_file() or read_json(run_dir / schema.PAIRS_SOURCE) != source:
        pairs, queries, dev = build_pairs(cfg, prepared)
        # the old record goes first: a run killed before the new one is written rebuilds, whatever it resumes with
        storage.remove(run_dir / schema.PAIRS_SOURCE)
        write_pairs(run_dir, prepared, pairs, queries, dev)
        write_text_atomic(run_dir / schema.PAIRS_SOURCE, json.dumps(source, sort_keys=True))
        logger.info("pairs: %s train pairs, %s dev queries (%s)", f"{len(pairs):,}", f"{len(dev):,}", describe_dev(cfg, prepared.folder))
    return prepared, path


def pairs_source(cfg: PipelineConfig, prepared: Prepared) -> dict:
    """Everything the pair list depends on: the settings and the content of corpus, queries, train and dev qrels."""
    d = cfg.data
    queries, qrels = prepared.folder / "queries.jsonl", prepared.folder / "qrels" / f"{d.train_split}.tsv"
    dev = dev_split_name(cfg, prepared.folder)
    return {"corpus": prepared.fingerprint, "folder": prepared.folder.name, "train_split": d.train_split,
            "queries": _digest_if_file(queries), "qrels": _digest_if_file(qrels),
            "dev_split": dev or "carve", "dev_qrels": _digest_if_file(prepared.folder / "qrels" / f"{dev}.tsv") if dev else "",
            "dev_fraction": d.dev_fraction, "split_seed": d.split_seed, "limit": d.limit,
            "min_relevance": d.min_relevance, "max_positives_per_query": d.max_positives_per_query,
            "max_pairs": d.max_pairs,
            # only when set: pairs written before the setting existed are not rebuilt for it
            **({"dev_adds_unused": True} if d.dev_adds_unused else {})}  # fmt: skip


def _digest_if_file(path: Path) -> str:
    # a missing file gets "" here, so that build_pairs reports it as a DataError naming the split
    return file_digest(path)[:16] if path.is_file() else ""


PAIR_SCHEMA = schema.arrow_schema(schema.Pair)
