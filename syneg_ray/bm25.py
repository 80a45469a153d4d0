"""BM25 retrieval with bm25s (Lucene-style scoring, sparse matrices, no JVM). No Ray."""

from __future__ import annotations

import logging

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


def _stemmer():
    try:
        import Stemmer
    except ImportError:
        logger.info("PyStemmer not installed: BM25 runs without stemming (pip install PyStemmer for +1-2 nDCG)")
        return None
    return Stemmer.Stemmer("english").stemWords
