"""`syneg evaluate`: BEIR metrics of a dense model (Ray Data encoder actors + exact search on shard actors) or BM25 (on its shard actors)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import re
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from syneg_ray import beir, metrics, schema
from syneg_ray.config import PipelineConfig
from syneg_ray.dataset import Prepared, in_corpus, prepare
from syneg_ray.errors import ConfigError, DataError

logger = logging.getLogger(__name__)


def trained_model(cfg: PipelineConfig) -> str:
    """Where the run's train stage saves its model."""
    return str(Path(cfg.run.run_dir) / schema.MODEL)


def model_to_evaluate(cfg: PipelineConfig) -> str:
    """evaluate.model, else the run's trained model when it exists, else encoder.model."""
    if cfg.evaluate.model:
        return cfg.evaluate.model
    trained = trained_model(cfg)
    return trained if (Path(trained) / "modules.json").is_file() else cfg.encoder.model


def check_not_scoring_on_training_queries(cfg: PipelineConfig, model: str) -> None:
    """Refuses to score the run's trained model on the split it was trained on: its figures would be
    memory of the training queries, not retrieval.

    Raises:
        ConfigError: `data.train_split` is the split being evaluated.
    """
    split = cfg.evaluate.split or cfg.data.eval_split
    if split == cfg.data.train_split and model == trained_model(cfg):
        raise ConfigError(
            f"data.train_split and the evaluated split are both {split!r}: the trained model would be scored on "
            "the queries it was trained on; train on another split, or evaluate another (data.eval_split, evaluate.split)"
        )


def retrieve(cfg: PipelineConfig, model: str, queries: dict[str, str], top_k: int) -> metrics.Run:
    """Top-k documents for every query with `model` ("bm25" or a dense encoder).

    Both search on shard actors over the corpus: BM25 on `mine.bm25_shards` actors that read their
    rows of the corpus Parquet; a dense model's corpus embeddings (cached, encoded by Ray actors)
    exactly on `mine.shards` actors. The driver reads no text and no corpus vector, and names only
    the documents retrieved.
    """
    from syneg_ray.services.sharded_search import BM25Shards, DenseShards

    prepared = prepare(cfg)
    query_ids = list(queries)
    query_texts = [queries[q] for q in query_ids]
    if model == "bm25":
        with contextlib.closing(BM25Shards(cfg, prepared.corpus_parquet, prepared.n_docs)) as bm25:
            scores, indices, _ = bm25.search(query_texts, top_k, [np.zeros(0, np.int64)] * len(query_texts))
    else:
        from syneg_ray.services.embed import corpus_embeddings_file, embed_corpus_and_queries

        _, query_embeddings = embed_corpus_and_queries(cfg, prepared, query_texts, model)
        exact = dataclasses.replace(cfg, mine=dataclasses.replace(cfg.mine, index="flat"))  # evaluation ranks exactly
        with contextlib.closing(DenseShards(exact, corpus_embeddings_file(cfg, prepared, model))) as shards:
            scores, indices = shards.search(query_embeddings, top_k)
    hit = np.unique(indices[indices >= 0])
    names = dict(zip(hit.tolist(), prepared.doc_ids().take(pa.array(hit)).to_pylist(), strict=True))
    return metrics.to_run(query_ids, names, scores, indices)


def judged_in_corpus(prepared: Prepared, split: str) -> set[str]:
    """The split's judged documents that the corpus holds, looked up in its id column: all that
    `beir.load_split` checks the qrels against, without a set of every corpus id."""
    qrels, _ = beir.read_qrels(prepared.folder, split)
    return in_corpus(prepared, (d for docs in qrels.values() for d in docs))


def run_evaluate(cfg: PipelineConfig) -> dict[str, float]:
    """Scores a model on `evaluate.split` and writes metrics.json and run.trec into the run directory.

    Returns:
        The metrics (nDCG@10, Recall@100, MRR@10, MAP@100).
    """
    started = time.perf_counter()
    split = cfg.evaluate.split or cfg.data.eval_split
    model = model_to_evaluate(cfg)
    check_not_scoring_on_training_queries(cfg, model)
    prepared = prepare(cfg)
    judged = beir.load_split(prepared.folder, split, corpus=judged_in_corpus(prepared, split), keep_unknown_docs=True)
    qrels, queries = judged.qrels, judged.queries
    if not qrels:  # a header-only file: every metric would be a mean over no queries
        raise DataError.at(prepared.folder / "qrels" / f"{split}.tsv", None,
                           "no judged query; add query-id, corpus-id, score rows below the header, or choose another evaluate.split")
    run = metrics.without_self_hits(retrieve(cfg, model, queries, cfg.evaluate.top_k + 1), cfg.evaluate.top_k)
    scores = metrics.evaluate_run(qrels, run)

    out = Path(cfg.run.run_dir) / "evaluate" / f"{_label(model)}-{split}"
    out.mkdir(parents=True, exist_ok=True)
    record = {"model": model, "dataset": cfg.data.dataset, "split": split, "queries": len(qrels),
              **{name: metrics.json_value(value) for name, value in scores.items()}}  # fmt: skip
    (out / "metrics.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
    metrics.write_trec(run, out / "run.trec", tag=_label(model))
    logger.info("evaluated %s on %s/%s (%d queries) in %.0f s -> %s", model, cfg.data.dataset, split, len(qrels),
                time.perf_counter() - started, out)
    logger.info("\n%s", format_table(record))
    return scores


def format_table(record: dict) -> str:
    """A small aligned table of the metrics."""
    names = list(metrics.METRICS)
    head = " | ".join(f"{n:>10}" for n in names)
    row = " | ".join(f"{record[n]:>10.4f}" for n in names)
    return f"{record['model']} on {record['dataset']}/{record['split']} ({record['queries']} queries)\n{head}\n{row}"


def _label(model: str) -> str:
    """A folder-safe name for a model: the last path component, e.g. 'model' -> parent folder name."""
    parts = [p for p in re.split(r"[\\/]", model.rstrip("/")) if p]
    name = parts[-1] if parts else model
    if name == "model" and len(parts) > 1:
        name = parts[-2]
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
