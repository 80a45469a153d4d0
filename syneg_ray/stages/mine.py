"""Mine stage: dense (Ray Data encoder actors + faiss) and BM25 candidates -> mining.select_negatives -> Parquet.

    pairs.parquet {query_id, positive_id, query} + corpus Parquet {doc_id, text}
      -> embed: corpus (cached; Ray actors read its rows) and queries (to a file the driver reads a
                block of rows at a time), when dense is a source or guards BM25
      -> open the sources: dense shard actors that read their rows of the cached embeddings
         (DenseShards), corpus-sharded BM25 actors (BM25Shards), both up for the whole stage;
         pyserini (in the driver) and the user's given negatives are answered whole when opened
      -> per block of SELECT_BLOCK pairs, in pair order: every source searches the block's
         distinct queries, lexical hits are scored by the encoder for the guard (mine.guard_scorer;
         by default when dense is a source), mining.select_negatives picks each pair's negatives
         (window, positives, guard against the pair's own positive by default, sampling,
         combination), and the block's MinedRows are appended to run_dir/mine/negatives.parquet

The driver holds ids, the positives' rows and one block's hits: no document text, no corpus vector,
and no per-query array of the whole training set.

Candidate depth per query is range_max + the most positives (text duplicates included) any
query has, so excluding positives never shrinks the window, as in the peer implementation.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from itertools import chain
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from syneg_ray import beir, mining, schema
from syneg_ray.config import PipelineConfig
from syneg_ray.dataset import Prepared, ensure_pairs, rows_of, scan_corpus
from syneg_ray.errors import ConfigError, DataError
from syneg_ray.services.embed import RowFile
from syneg_ray.services.sharded_search import BM25Shards, DenseShards

logger = logging.getLogger(__name__)

SELECT_BLOCK = 8192  # pairs per selection block: bounds the (block, k) boolean masks and the rows held before writing
POSITIVE_BLOCK = 4096  # queries per block when positives are scored by the encoder: (block, widest query) rows


@dataclass(frozen=True)
class MineInputs:
    """Queries, their positives and the corpus's ids: what the driver holds (no document text).

    Sizes: the query lists grow with the training set; `doc_ids` (Arrow) and `groups` (8 bytes a
    document) are the only corpus-sized structures, the id -> row map the stage needs.
    """

    query_ids: list[str]  # unique train queries, in pair order
    query_texts: list[str]
    positives: list[np.ndarray]  # per query, sorted corpus rows of ALL its positives (qrels score > 0)
    pair_query: np.ndarray  # (n_pairs,) each pair's index into query_ids
    pair_positive: np.ndarray  # (n_pairs,) each pair's positive as a corpus row (-1: not in the corpus)
    doc_ids: pa.ChunkedArray  # corpus order
    groups: np.ndarray | None  # text-group id per document (mine.dedup_text)
    depth: int  # candidates retrieved per query
    corpus_parquet: Path  # the texts, read by the actors that need them
    fingerprint: str  # corpus content hash (cache keys)


def load_inputs(cfg: PipelineConfig, prepared: Prepared, pairs_path: Path) -> tuple[MineInputs, pa.Table]:
    """Reads pairs, the corpus's ids and the split's qrels into row-indexed arrays."""
    pairs = pq.read_table(pairs_path, columns=["query_id", "positive_id", "query"])
    doc_ids = prepared.doc_ids()
    qrels, _ = beir.read_qrels(prepared.folder, cfg.data.train_split)
    texts = dict(zip(pairs.column("query_id").to_pylist(), pairs.column("query").to_pylist(), strict=True))
    query_ids = list(texts)  # dict keeps first-seen order
    # Every judged-relevant document of the query, not just the pairs kept after data.limit.
    docs = [sorted({d for d, rel in qrels.get(q, {}).items() if rel > 0} | pair_pos)
            for q, pair_pos in _pair_positives(pairs).items()]  # fmt: skip
    rows = rows_of(doc_ids, [d for ds in docs for d in ds])
    bounds = np.cumsum([0, *map(len, docs)])
    positives = [np.sort(r[r >= 0]) for r in np.split(rows, bounds[1:-1])] if docs else []
    qpos = {q: i for i, q in enumerate(query_ids)}
    pair_query = np.array([qpos[q] for q in pairs.column("query_id").to_pylist()], dtype=np.int64)
    pair_positive = rows_of(doc_ids, pairs.column("positive_id").to_pylist())
    groups = text_groups(prepared.corpus_parquet) if cfg.mine.dedup_text else None
    group_sizes = np.bincount(groups) if groups is not None else None
    widest = max((_expanded(p, groups, group_sizes) for p in positives), default=0)
    inputs = MineInputs(
        query_ids,
        [texts[q] for q in query_ids],
        positives,
        pair_query,
        pair_positive,
        doc_ids,
        groups,
        cfg.mine.range_max + widest,
        prepared.corpus_parquet,
        prepared.fingerprint,
    )
    return inputs, pairs.select(["query_id", "positive_id"])  # the query texts are in `inputs`, once a query


def text_groups(corpus_parquet: Path) -> np.ndarray:
    """mining.text_groups over the corpus: each text becomes a 64-bit digest of its folded form, so
    memory is 8 bytes a document, not the texts. The digests are computed once per corpus (a scan of
    every text: about 40 s at 1M documents on 2 cores) and cached beside its Parquet."""
    from syneg_ray import storage
    from syneg_ray.runtime import _replace_atomically

    target = corpus_parquet.with_name(corpus_parquet.stem + ".digests-v1.npy")  # v1: mining.text_digests as it is

    def build(path: Path) -> None:
        digests = [mining.text_digests(batch.column("text").to_pylist()) for batch in scan_corpus(corpus_parquet, ["text"])]
        every = np.concatenate(digests) if digests else np.zeros(0, np.int64)

        def write(tmp: Path) -> None:
            with tmp.open("wb") as out:
                np.save(out, every)

        _replace_atomically(path, write)

    return mining.groups_of(np.load(storage.ensure(target, build)))


def _pair_positives(pairs: pa.Table) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for q, d in zip(pairs.column("query_id").to_pylist(), pairs.column("positive_id").to_pylist(), strict=True):
        out.setdefault(q, set()).add(d)
    return out


def _expanded(rows: np.ndarray, groups: np.ndarray | None, group_sizes: np.ndarray | None) -> int:
    """Documents a query's positives occupy in a ranking, text duplicates included.

    `group_sizes` (np.bincount of `groups`) makes this O(positives) per query, not O(corpus).
    """
    if groups is None or group_sizes is None:
        return len(rows)
    return int(group_sizes[np.unique(groups[rows])].sum())


class Embedded:
    """The encoder's view of the inputs: the query vectors (in memory, or in a file read a block of
    rows at a time), and the corpus's on the dense shard actors (`DenseShards`), which start on
    first use and stop with `close`.

    `open_shards` makes the object that answers `search(queries, k)` and `score(queries, rows)`;
    the stage passes DenseShards over the embedding cache, a test may pass one over an array.
    """

    def __init__(self, queries: np.ndarray | RowFile, open_shards: Callable[[], DenseShards]):
        self.queries = queries
        self._open_shards = open_shards
        self._shards: DenseShards | None = None

    @property
    def shards(self) -> DenseShards:
        if self._shards is None:
            self._shards = self._open_shards()
        return self._shards

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), dim) float32: the vectors of query `rows`."""
        if isinstance(self.queries, np.ndarray):
            return np.asarray(self.queries[rows], dtype=np.float32)
        return self.queries.rows(rows)

    def positive_scores(self, vectors: np.ndarray, positives: list[np.ndarray]) -> list[np.ndarray]:
        """Per query, the score of each positive (sorted corpus rows), scored on the shard actors a
        block of queries at a time (a block is as wide as its widest query)."""
        out: list[np.ndarray] = []
        for start in range(0, len(positives), POSITIVE_BLOCK):
            block = positives[start : start + POSITIVE_BLOCK]
            rows = np.full((len(block), max(map(len, block), default=0)), -1, dtype=np.int64)
            for i, p in enumerate(block):
                rows[i, : len(p)] = p
            scored = self.shards.score(vectors[start : start + len(block)], rows)
            out += [scored[i, : len(p)] for i, p in enumerate(block)]
        return out

    def close(self) -> None:
        if self._shards is not None:
            self._shards.close()
            self._shards = None


def embed_inputs(cfg: PipelineConfig, prepared: Prepared, inputs: MineInputs, query_file: Path | None = None) -> Embedded:
    """Encodes the corpus (cached, on Ray actors) and the queries (into `query_file` when they go to
    the actors); the corpus vectors stay in the cache file, which the dense shard actors read their rows of."""
    from syneg_ray.services.embed import corpus_embeddings_file, embed_corpus_and_queries

    _, queries = embed_corpus_and_queries(cfg, prepared, inputs.query_texts, query_target=query_file)
    embeddings = corpus_embeddings_file(cfg, prepared)
    return Embedded(queries, lambda: DenseShards(cfg, embeddings))


@dataclass
class QueryBlock:
    """The distinct queries of one block of pairs: what every source searches for, and the dense
    scores they share (computed once a block, on first use)."""

    rows: np.ndarray  # ascending indices into MineInputs.query_ids
    texts: list[str]
    positives: list[np.ndarray]  # per query, sorted corpus rows of all its positives
    embedded: Embedded | None

    @cached_property
    def vectors(self) -> np.ndarray:
        return self.embedded.vectors(self.rows)

    @cached_property
    def dense_positive_scores(self) -> list[np.ndarray]:
        return self.embedded.positive_scores(self.vectors, self.positives)


@dataclass(frozen=True)
class Source:
    """One source's hits for a block of queries, and the scores of each query's positives on the
    scale the guard judges those hits by (aligned with QueryBlock.positives): the guard's reference
    is taken from them per pair."""

    candidates: mining.Candidates  # one row per query; positive_scores holds each query's lowest
    guard_positive_scores: list[np.ndarray]


def judged_by_encoder(source: Source, block: QueryBlock) -> Source:
    """A lexical source's hits with their dense scores, and the guard's reference on that scale.

    The shard actors score the hits (pads score nan); the driver sends query vectors and hit rows.
    """
    cand = source.candidates
    dense = block.embedded.shards.score(block.vectors, cand.indices)
    pos = block.dense_positive_scores
    return Source(mining.Candidates(cand.source, cand.scores, cand.indices, _reference(pos), dense), pos)


def _reference(pos_scores: list[np.ndarray]) -> np.ndarray:
    """The guard's reference per query: its lowest positive score (nan for a query without positives)."""
    return np.array([float(s.min()) if len(s) else np.nan for s in pos_scores], dtype=np.float32)


class Searcher(Protocol):
    """One mining source, open for the stage: `search` answers a block of queries with its hits and
    the positives' scores on its own scale (a mined row's positive_score, when it is the first source)."""

    def search(self, block: QueryBlock) -> tuple[Source, list[np.ndarray]]: ...

    def close(self) -> None: ...


class DenseSearch:
    """Exact / IVF / HNSW search on the dense shard actors (`Embedded.shards`)."""

    def __init__(self, cfg: PipelineConfig, inputs: MineInputs, prepared: Prepared, embedded: Embedded | None):
        self.embedded, self.depth = embedded, inputs.depth

    def search(self, block: QueryBlock) -> tuple[Source, list[np.ndarray]]:
        scores, indices = self.embedded.shards.search(block.vectors, self.depth)
        pos = block.dense_positive_scores
        return Source(mining.Candidates("dense", scores, indices, _reference(pos)), pos), pos

    def close(self) -> None:  # the shards are the Embedded's, which the stage closes
        pass


class BM25Search:
    """Corpus-sharded BM25 on actors that stay up for the stage (`BM25Shards`), each hit judged by
    the encoder too when `mine.dense_guard`."""

    def __init__(self, cfg: PipelineConfig, inputs: MineInputs, prepared: Prepared, embedded: Embedded | None):
        self.shards = BM25Shards(cfg, inputs.corpus_parquet, len(inputs.doc_ids))
        self.depth, self.dense_guard = inputs.depth, cfg.mine.dense_guard

    def search(self, block: QueryBlock) -> tuple[Source, list[np.ndarray]]:
        scores, indices, pos = self.shards.search(block.texts, self.depth, block.positives)
        source = Source(mining.Candidates("bm25", scores, indices, _reference(pos)), pos)
        return (judged_by_encoder(source, block) if self.dense_guard else source), pos

    def close(self) -> None:
        self.shards.close()


class Precomputed:
    """A source answered for every query when the stage opens it, then served a block at a time:
    pyserini's Lucene (in this process) and the user's given negatives (bounded by the user's file)."""

    def __init__(self, source: Source, own_scores: list[np.ndarray], judge: bool):
        self.source, self.own_scores, self.judge = source, own_scores, judge

    def search(self, block: QueryBlock) -> tuple[Source, list[np.ndarray]]:
        c, rows = self.source.candidates, block.rows
        part = Source(mining.Candidates(c.source, c.scores[rows], c.indices[rows], c.positive_scores[rows]),
                      [self.source.guard_positive_scores[q] for q in rows.tolist()])  # fmt: skip
        return (judged_by_encoder(part, block) if self.judge else part), [self.own_scores[q] for q in rows.tolist()]

    def close(self) -> None:
        pass


def pyserini_search(cfg: PipelineConfig, inputs: MineInputs, prepared: Prepared, embedded: Embedded | None) -> Precomputed:
    """Lucene BM25 through pyserini (optional extra `syneg-ray[pyserini]`); the index is cached per corpus."""
    from syneg_ray.bm25 import pyserini_search as search
    from syneg_ray.config import default_cache_dir

    folder = default_cache_dir(cfg) / "lucene" / inputs.fingerprint
    positives = [np.sort(p) for p in inputs.positives]
    # pyserini's Lucene runs in this process and indexes from Python lists: the one source that
    # still holds the corpus in the driver (bm25 is the sharded one)
    corpus = pq.read_table(inputs.corpus_parquet)
    scores, indices, pos_scores = search(
        corpus.column("doc_id").to_pylist(),
        corpus.column("text").to_pylist(),
        inputs.query_texts,
        inputs.depth,
        positives,
        folder,
        cfg.mine.bm25_k1,
        cfg.mine.bm25_b,
    )
    source = Source(mining.Candidates("pyserini", scores, indices, _reference(pos_scores)), pos_scores)
    return Precomputed(source, pos_scores, judge=cfg.mine.dense_guard)


TRUSTED = 1e30  # the guard's reference for given negatives not judged by the encoder (finite: inf - inf * margin is nan)


def given_search(cfg: PipelineConfig, inputs: MineInputs, prepared: Prepared, embedded: Embedded | None) -> Precomputed:
    """The negatives the user's own pairs came with (`data.negatives_column`), as one more source.

    Each query's row holds the given negatives of all its pairs, in the order given (scored by
    descending rank, so the window counts them in that order). They carry no retrieval score: with
    `mine.guard_scorer` dense (the default when dense is a source) the encoder judges them like any
    hit; otherwise they are taken as given (the reference is TRUSTED, which every score passes).
    """
    if prepared.given_negatives is None:
        raise DataError.at(prepared.folder, None, "mine.sources names `given`, but the data has no given negatives; set "
                                                  "data.negatives_column to the pairs' negatives column, or drop `given`")  # fmt: skip
    table = pq.read_table(prepared.given_negatives, columns=["query_id", "negative_ids"])
    qpos = {q: i for i, q in enumerate(inputs.query_ids)}
    per_query: list[dict[str, None]] = [{} for _ in inputs.query_ids]  # ordered sets: first mention first
    for q, negatives in zip(table.column("query_id").to_pylist(), table.column("negative_ids").to_pylist(), strict=True):
        if q in qpos:
            per_query[qpos[q]].update(dict.fromkeys(negatives))
    k = max(inputs.depth, max(map(len, per_query), default=0))
    rows = rows_of(inputs.doc_ids, [d for ids in per_query for d in ids])  # one lookup for every query, -1 if unknown
    bounds = np.cumsum([0, *map(len, per_query)])
    indices = np.full((len(per_query), k), -1, dtype=np.int64)
    for i in range(len(per_query)):
        indices[i, : bounds[i + 1] - bounds[i]] = rows[bounds[i] : bounds[i + 1]]
    scores = np.where(indices >= 0, -np.arange(k, dtype=np.float32)[None, :], -np.inf).astype(np.float32)
    trusted = [np.full(len(p), TRUSTED, dtype=np.float32) for p in inputs.positives]
    unscored = [np.full(len(p), np.nan, dtype=np.float32) for p in inputs.positives]  # no score of its own for the positives
    source = Source(mining.Candidates("given", scores, indices, _reference(trusted)), trusted)
    return Precomputed(source, unscored, judge=embedded is not None)  # the encoder orders them when it ran


# mine.sources name -> opens the source for the stage; config.MINE_SOURCES names the same set
# (tests/unit/test_mine_sources.py).
SOURCES: dict[str, Callable[[PipelineConfig, MineInputs, Prepared, Embedded | None], Searcher]] = {
    "dense": DenseSearch,
    "bm25": BM25Search,
    "pyserini": pyserini_search,
    "given": given_search,
}


@dataclass(frozen=True)
class Block:
    """One block of pairs, selected: the pairs' slice, their Selected, the block's counters, and the
    scores of its queries' positives under the first source (a mined row's positive_score)."""

    pairs: slice
    selected: list[mining.Selected]
    stats: mining.MineStats
    first_positive_scores: dict[int, np.ndarray]  # query index -> scores aligned with MineInputs.positives[query]


def select_blocks(cfg: PipelineConfig, searchers: dict[str, Searcher], inputs: MineInputs,
                  embedded: Embedded | None, seconds: dict[str, float]) -> Iterator[Block]:  # fmt: skip
    """Searches, judges and selects the pairs a block at a time, in pair order, with a progress bar.

    A block's distinct queries are searched by every source (in `mine.sources` order), and its
    pairs expanded into (block, k) arrays, so memory is bounded by SELECT_BLOCK, not by the number
    of pairs or queries. A query whose pairs straddle two blocks is searched in both (the same
    hits: search is per query). One generator draws every block's random samples, so the result
    does not depend on SELECT_BLOCK. `seconds` gathers each source's time.
    """
    rng = np.random.default_rng(cfg.run.seed)
    n = len(inputs.pair_query)
    for start in tqdm(range(0, n, SELECT_BLOCK), desc="mine", unit="block", disable=n <= SELECT_BLOCK):
        block = slice(start, min(start + SELECT_BLOCK, n))
        query_rows, pair_positive = inputs.pair_query[block], inputs.pair_positive[block]
        queries, local = np.unique(query_rows, return_inverse=True)
        local = local.reshape(-1)
        qblock = QueryBlock(queries, [inputs.query_texts[q] for q in queries.tolist()],
                            [inputs.positives[q] for q in queries.tolist()], embedded)  # fmt: skip
        candidates, first = [], None
        for name in cfg.mine.sources:
            t0 = time.perf_counter()
            source, own = searchers[name].search(qblock)
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - t0
            guard = dict(zip(queries.tolist(), source.guard_positive_scores, strict=True))
            reference = mining.pair_references(guard, inputs.positives, query_rows, pair_positive, cfg.mine.guard_reference)
            candidates.append(source.candidates.take(local, reference))
            first = first if first is not None else dict(zip(queries.tolist(), own, strict=True))
        positives = [inputs.positives[q] for q in query_rows.tolist()]
        selected, stats = mining.select_negatives(candidates, positives, cfg.mine, rng, inputs.groups)
        yield Block(block, selected, stats, first)


MINED_SCHEMA = schema.arrow_schema(schema.MinedRow)


def mined_table(
    pairs: pa.Table, inputs: MineInputs, ids: pa.Array, block: slice, selected: list[mining.Selected],
    first_pos: Mapping[int, np.ndarray] | Sequence[np.ndarray],
) -> pa.Table:  # fmt: skip
    """The MinedRows of one block of pairs (`selected` holds the block's pairs in order), as an
    Arrow table; positive_score is the pair's positive under the first source (`first_pos`: the
    scores of the block's queries' positives, by query index).

    `ids` is the corpus's doc_id column as one array: every id of the block is named by one take.
    """
    query_rows = inputs.pair_query[block]
    first_score = mining.pair_positive_scores(first_pos, inputs.positives, query_rows, inputs.pair_positive[block])
    columns = {
        "query_id": pairs.column("query_id")[block].cast(pa.string()),
        "positive_id": pairs.column("positive_id")[block].cast(pa.string()),
        "positive_ids": _named(ids, [inputs.positives[q] for q in query_rows.tolist()]),
        "negative_ids": _named(ids, [s.indices for s in selected]),
        "negative_scores": _lists([s.scores for s in selected], pa.float32()),
        "positive_score": pa.array(first_score, pa.float32()),
        "source": _lists([s.sources for s in selected], pa.string()),
    }
    return pa.Table.from_arrays([columns[f.name] for f in MINED_SCHEMA], schema=MINED_SCHEMA)


def _offsets(lists: list) -> pa.Array:
    """Arrow list offsets of `lists`: where each one starts in their concatenation, and the end."""
    return pa.array(np.concatenate([[0], np.cumsum([len(v) for v in lists], dtype=np.int64)]), pa.int32())


def _lists(lists: list[list], value_type: pa.DataType) -> pa.ListArray:
    """A list array of Python lists (empty lists stay empty, never null)."""
    return pa.ListArray.from_arrays(_offsets(lists), pa.array(list(chain.from_iterable(lists)), value_type))


def _named(ids: pa.Array, corpus_rows: list) -> pa.ListArray:
    """A list array of the doc ids of lists of corpus rows."""
    flat = np.concatenate([np.asarray(r, dtype=np.int64) for r in corpus_rows] or [np.zeros(0, np.int64)])
    return pa.ListArray.from_arrays(_offsets(corpus_rows), ids.take(pa.array(flat)).cast(pa.string()))


@contextmanager
def parquet_writer(path: Path, arrow_schema: pa.Schema) -> Iterator[pq.ParquetWriter]:
    """A ParquetWriter on a temporary file beside `path`, renamed into place when the block ends
    and deleted if it raises: a reader, or a rerun after a crash, never finds half a file under
    `path`, while the rows are written as they come."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with pq.ParquetWriter(tmp, arrow_schema) as writer:
            yield writer
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # gone already after the rename


def write_mined(path: Path, cfg: PipelineConfig, searchers: dict[str, Searcher], inputs: MineInputs, pairs: pa.Table,
                embedded: Embedded | None, seconds: dict[str, float]) -> mining.MineStats:  # fmt: skip
    """Searches, selects and appends each block of pairs' rows to the Parquet at `path`, in pair order
    (the mix stage reads the file alongside the pairs), so the driver holds one block's rows at a time.

    Returns:
        The counters summed over all blocks.
    """
    stats = mining.MineStats()
    ids = inputs.doc_ids.combine_chunks()
    with parquet_writer(path, MINED_SCHEMA) as writer:
        for block in select_blocks(cfg, searchers, inputs, embedded, seconds):
            writer.write_table(mined_table(pairs, inputs, ids, block.pairs, block.selected, block.first_positive_scores))
            stats.merge(block.stats)
    return stats


def check_actor_room(cfg: PipelineConfig) -> None:
    """The dense and BM25 shard actors run side by side for the whole stage: on a Ray of one node
    (a laptop), refuse settings whose actors could never all start (the stage would wait forever)."""
    import ray

    from syneg_ray.runtime import _single_node_ray, init_ray

    m = cfg.mine
    actors = (m.shards if "dense" in m.sources or m.dense_guard else 0) + (m.bm25_shards if "bm25" in m.sources else 0)
    if not actors:
        return
    init_ray(cfg)
    cpus = ray.cluster_resources().get("CPU", 0)
    if _single_node_ray() and actors * m.shard_cpus > cpus:
        raise ConfigError(f"mining needs {actors} shard actors (mine.shards + mine.bm25_shards) of mine.shard_cpus = "
                          f"{m.shard_cpus} CPUs at once, {actors * m.shard_cpus:g} in all, but this Ray has {cpus:g}; "
                          "lower mine.shard_cpus or the shard counts")  # fmt: skip


def run_mine(cfg: PipelineConfig) -> dict:
    """`syneg mine`: retrieved hard negatives for every train pair into run_dir/mine/negatives.parquet.

    Returns:
        Summary: queries, pairs, avg_negatives (a pair), skipped_share, short_pairs, empty_pairs, per_source,
        seconds, path.
    """
    from syneg_ray.runtime import stage_dir

    started = time.perf_counter()
    prepared, pairs_path = ensure_pairs(cfg)
    inputs, pairs = load_inputs(cfg, prepared, pairs_path)
    path = stage_dir(cfg, "mine") / Path(schema.MINED).name
    # the queries' vectors, read a block at a time; ".partial": never pushed with the run directory
    query_file = path.with_name(f".query-vectors.{os.getpid()}.npy.partial")
    seconds: dict[str, float] = {}
    embedded, searchers = None, {}
    try:
        check_actor_room(cfg)
        if "dense" in cfg.mine.sources or cfg.mine.dense_guard:
            t0 = time.perf_counter()
            embedded = embed_inputs(cfg, prepared, inputs, query_file)
            seconds["encode"] = time.perf_counter() - t0
        for name in cfg.mine.sources:
            t0 = time.perf_counter()
            searchers[name] = SOURCES[name](cfg, inputs, prepared, embedded)
            seconds[name] = time.perf_counter() - t0  # opening: BM25's index, pyserini's whole search
        stats = write_mined(path, cfg, searchers, inputs, pairs, embedded, seconds)
    finally:
        for searcher in searchers.values():
            searcher.close()
        if embedded is not None:
            embedded.close()
        query_file.unlink(missing_ok=True)
    summary = {
        "queries": len(inputs.query_ids), "pairs": stats.rows, "avg_negatives": stats.negatives / max(stats.rows, 1),
        "skipped_share": stats.skipped_share, "short_pairs": stats.short, "empty_pairs": stats.empty,
        "guard_reference": cfg.mine.guard_reference.value, "per_source": stats.per_source,
        "seconds": {**{k: round(v, 2) for k, v in seconds.items()}, "total": round(time.perf_counter() - started, 2)},
        "path": str(path),
    }  # fmt: skip
    logger.info(
        "mined %s pairs (%s queries): %.1f negatives a pair; %.1f%% of candidates skipped by the guard (against the %s); "
        "%s pairs short of %d, %s with none; seconds %s",
        f"{stats.rows:,}", f"{len(inputs.query_ids):,}", summary["avg_negatives"], 100 * stats.skipped_share,
        "pair's positive" if cfg.mine.guard_reference.value == "pair" else "query's lowest positive",
        f"{stats.short:,}", cfg.mine.num_negatives, f"{stats.empty:,}", summary["seconds"],
    )  # fmt: skip
    return summary
