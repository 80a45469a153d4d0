"""`syneg evaluate`: BEIR metrics of a dense model (Ray Data encoder actors + exact search) or BM25."""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path

from syneg_ray import beir, metrics, schema
from syneg_ray.config import PipelineConfig
from syneg_ray.dataset import prepare, read_corpus
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


def retrieve(cfg: PipelineConfig, model: str, queries: dict[str, str], top_k: int,
             corpus: dict[str, str] | None = None) -> metrics.Run:
    """Top-k documents for every query with `model` ("bm25" or a dense encoder); `corpus` reuses one already read."""
    prepared = prepare(cfg)
    if corpus is None:
        corpus = read_corpus(prepared)
    doc_ids = list(corpus)
    query_ids = list(queries)
    query_texts = [queries[q] for q in query_ids]
    if model == "bm25":
        from syneg_ray.bm25 import BM25Index

        scores, indices = BM25Index(doc_ids, [corpus[d] for d in doc_ids]).search(query_texts, top_k)
    else:
        from syneg_ray.index import search_exact
        from syneg_ray.services.embed import embed_corpus_and_queries

        doc_embeddings, query_embeddings = embed_corpus_and_queries(cfg, prepared, query_texts, model)
        scores, indices = search_exact(query_embeddings, doc_embeddings, top_k)
    return metrics.to_run(query_ids, doc_ids, scores, indices)


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
    corpus = read_corpus(prepared)
    judged = beir.load_split(prepared.folder, split, corpus=corpus, keep_unknown_docs=True)
    qrels, queries = judged.qrels, judged.queries
    if not qrels:  # a header-only file: every metric would be a mean over no queries
        raise DataError.at(prepared.folder / "qrels" / f"{split}.tsv", None,
                           "no judged query; add query-id, corpus-id, score rows below the header, or choose another evaluate.split")
    run = metrics.without_self_hits(retrieve(cfg, model, queries, cfg.evaluate.top_k + 1, corpus=corpus), cfg.evaluate.top_k)
    scores = metrics.evaluate_run(qrels, run)

    out = Path(cfg.run.run_dir) / "evaluate" / f"{_label(model)}-{split}"
    out.mkdir(parents=True, exist_ok=True)
    record = {"model": model, "dataset": cfg.data.dataset, "split": split, "queries": len(qrels), **scores}
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
