"""nDCG@10 on the dev split (the dataset's own qrels/dev.tsv, or queries carved from train; never test) for the model being trained. No Ray."""

from __future__ import annotations

import json
import logging
from contextlib import closing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from syneg_ray import beir, dataset, metrics, schema, storage
from syneg_ray.config import PipelineConfig
from syneg_ray.encoder import EncodeOptions, encode

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DevSet:
    """Dev queries, their qrels and the documents searched."""

    query_ids: list[str]
    query_texts: list[str]
    doc_ids: list[str]
    doc_texts: list[str]
    qrels: dict[str, dict[str, int]]


def load_devset(cfg: PipelineConfig) -> DevSet | None:
    """The run's dev split (pairs/dev_qrels.json) against the full corpus, or a seeded sample of it.

    Returns:
        None when the run has no dev queries (data.dev_fraction = 0) or dev evaluation is off.
    """
    path = Path(cfg.run.run_dir) / schema.DEV_QRELS
    if not cfg.train.dev_eval or not storage.published(path):
        return None
    path = storage.fetch(path)  # rank 0 may run on a node that never saw the run directory
    qrels = {q: docs for q, docs in json.loads(path.read_text(encoding="utf-8")).items() if docs}
    if not qrels:
        return None
    prepared = dataset.prepare(cfg)
    corpus_ids = prepared.doc_ids()
    rows = dev_corpus_rows(corpus_ids, qrels, cfg.train.dev_max_docs, cfg.data.split_seed)
    with closing(dataset.open_docstore(prepared)) as store:  # the texts searched, not the corpus's
        doc_texts = store.texts(rows)
    queries = beir.read_queries(prepared.folder, keep=set(qrels))
    query_ids = sorted(queries)
    return DevSet(query_ids, [queries[q] for q in query_ids], corpus_ids.take(rows).to_pylist(), doc_texts, qrels)


def dev_corpus_rows(corpus_ids: pa.ChunkedArray, qrels: dict[str, dict[str, int]], max_docs: int, seed: int) -> np.ndarray:
    """The corpus rows the dev queries search: every row, or (0 < `max_docs` < the corpus) the dev
    positives' rows in id order and then a seeded sample of the other rows, in corpus order, up to
    `max_docs`. Memory grows with the corpus only by a flag and an index per document: the texts are
    read for the rows picked (a whole corpus as dev corpus is as large as its texts, by choice)."""
    n = len(corpus_ids)
    if not max_docs or max_docs >= n:
        return np.arange(n)
    relevant = dataset.corpus_rows(corpus_ids, {d for docs in qrels.values() for d in docs})
    is_other = np.ones(n, dtype=bool)
    is_other[list(relevant.values())] = False
    others = np.flatnonzero(is_other)
    # seeded with the data split's seed, not the run's: runs at other seeds score the same dev corpus
    picked = np.random.default_rng(seed).permutation(len(others))[: max(0, max_docs - len(relevant))]
    return np.concatenate([np.array([relevant[d] for d in sorted(relevant)], dtype=np.int64), others[np.sort(picked)]])


BY_QUERY = "ndcg@10_by_query"  # dev_metrics: each dev query's nDCG@10, for paired comparisons (Tune)


def dev_metrics(st, dev: DevSet, options: EncodeOptions, query_prompt: str = "", document_prompt: str = "") -> dict[str, Any]:
    """Encodes dev queries and documents with `st` (eval mode, restored after) and scores by cosine.

    Queries are encoded after `query_prompt` and documents after `document_prompt` (encoder.query_prompt
    and encoder.document_prompt, as evaluation and training prefix them); `options.prompt` is ignored.

    Returns:
        `metrics.evaluate_run`'s numbers, and under `BY_QUERY` each dev query's nDCG@10.
    """
    from syneg_ray.index import search_exact

    was_training = st.training
    st.eval()  # no dropout while measuring
    try:
        q = _unit(encode(st, dev.query_texts, replace(options, prompt=query_prompt)))
        d = _unit(encode(st, dev.doc_texts, replace(options, prompt=document_prompt)))
    finally:
        st.train(was_training)
    scores, indices = search_exact(q, d, min(100, len(dev.doc_ids)), device=str(st.device) if st.device.type == "cuda" else "cpu")
    run = metrics.to_run(dev.query_ids, dev.doc_ids, scores, indices)
    means, by_query = metrics.evaluate_run_by_query(dev.qrels, run)
    return {**means, BY_QUERY: by_query}


def _unit(x: np.ndarray) -> np.ndarray:
    # training scores by cosine, so dev search does too, whether or not the model ends in Normalize
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
