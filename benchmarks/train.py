"""Training benchmarks: throughput against sentence-transformers, Ray's overhead, and one SciFact epoch.

    nice .venv/bin/python benchmarks/train.py throughput --run-dir runs/bench-train [--instances 96]
    nice .venv/bin/python benchmarks/train.py scifact    --run-dir runs/bench-train [section.key=value ...]

`scifact` mines retrieved negatives with the base model by a minimal exact search of its own
(encoder.encode over the corpus + exact top-k, positives excluded, the false-negative margin of
mining.py), so the training figure depends on neither the mine stage nor its cache, mixes
them retrieved-only (R = 0), trains one epoch with Ray Train (1 worker) and reports test nDCG@10
before and after. `throughput` trains on the same instances with (1) SentenceTransformerTrainer +
MultipleNegativesRankingLoss(scale = 1/tau), (2) our bare loop, (3) our Ray Train loop: same model,
batch size, sequence length, learning rate and schedule, in one process, one after the other.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from syneg_ray import beir, metrics, schema
from syneg_ray.config import Dtype, load_config
from syneg_ray.dataset import ensure_pairs, read_corpus
from syneg_ray.encoder import EncodeOptions, encode, load_encoder
from syneg_ray.index import search_exact
from syneg_ray.registry import resolve_model

logger = logging.getLogger("bench.train")
SCIFACT = ROOT.parent / "shared" / "datasets" / "scifact"
ENC = EncodeOptions(batch_size=64, max_tokens_per_batch=8192, dtype=Dtype.BF16)  # same options before and after


def base_config(run_dir: str, extra: list[str]):
    return load_config(None, [f"run.run_dir={run_dir}", f"data.dataset={SCIFACT}", "mix.strategy=retrieved", "mix.ratio=0.0",
                              "mix.n_negatives=3", "train.batch_size=32", "train.max_seq_length=256", "train.workers=1",
                              "train.cpus_per_worker=2", "train.dev_max_docs=1000", "ray.num_cpus=2", *extra])  # fmt: skip


def test_ndcg(model, cfg, corpus: dict[str, str], doc_emb: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """nDCG@10 on SciFact test; returns the corpus embeddings too (reused for mining)."""
    prepared_folder = Path(cfg.data.dataset)
    qrels, _ = beir.read_qrels(prepared_folder, "test")
    queries = beir.read_queries(prepared_folder, keep=set(qrels))
    qids, doc_ids = sorted(queries), list(corpus)
    if doc_emb is None:
        doc_emb = encode(model, [corpus[d] for d in doc_ids], ENC)
    q_emb = encode(model, [queries[q] for q in qids], ENC)
    scores, idx = search_exact(q_emb, doc_emb, 100)
    return metrics.evaluate_run(qrels, metrics.to_run(qids, doc_ids, scores, idx))["ndcg@10"], doc_emb


def mine(cfg, model, corpus: dict[str, str], doc_emb: np.ndarray, n: int = 3, margin: float = 0.05) -> None:
    """Writes mine/negatives.parquet: top-ranked documents below (1 - margin) x the positive's score."""
    _, pairs_path = ensure_pairs(cfg)
    pairs = pq.read_table(pairs_path).to_pylist()
    doc_ids = list(corpus)
    pos_of: dict[str, set[str]] = {}
    for p in pairs:
        pos_of.setdefault(p["query_id"], set()).add(p["positive_id"])
    row = {d: i for i, d in enumerate(doc_ids)}
    q_emb = encode(model, [p["query"] for p in pairs], ENC)
    scores, idx = search_exact(q_emb, doc_emb, 60)
    out = []
    for k, p in enumerate(pairs):
        pos_score = float(q_emb[k] @ doc_emb[row[p["positive_id"]]])
        picked = [(doc_ids[j], float(s)) for s, j in zip(scores[k], idx[k]) if doc_ids[j] not in pos_of[p["query_id"]]
                  and s < (1 - margin) * pos_score][:n]  # fmt: skip
        out.append({"query_id": p["query_id"], "positive_id": p["positive_id"], "positive_ids": sorted(pos_of[p["query_id"]]),
                    "negative_ids": [d for d, _ in picked], "negative_scores": [s for _, s in picked],
                    "positive_score": pos_score, "source": ["dense"] * len(picked)})  # fmt: skip
    path = Path(cfg.run.run_dir) / schema.MINED
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(out), path)


def scifact(args) -> dict:
    from syneg_ray.stages.mix import run_mix
    from syneg_ray.stages.train.trainer import run_train

    cfg = base_config(args.run_dir, [f"train.epochs={args.epochs}", *args.overrides])
    prepared, _ = ensure_pairs(cfg)
    corpus = read_corpus(prepared)
    base = load_encoder(resolve_model("minilm"), device="cpu")
    t0 = time.perf_counter()
    before, doc_emb = test_ndcg(base, cfg, corpus)
    logger.info("base minilm test nDCG@10 %.4f (%.0f s)", before, time.perf_counter() - t0)
    mine(cfg, base, corpus, doc_emb)
    mix_stats = run_mix(cfg)
    t0 = time.perf_counter()
    summary = run_train(cfg)
    train_s = time.perf_counter() - t0
    after, _ = test_ndcg(load_encoder(summary["model"], device="cpu"), cfg, corpus)
    record = {"before_ndcg@10": before, "after_ndcg@10": after, "instances": mix_stats["instances"], "train_seconds": train_s,
              "epochs": summary["epochs"]}  # fmt: skip
    logger.info("SciFact test nDCG@10: %.4f -> %.4f after %d epoch(s)", before, after, args.epochs)
    return record


def throughput(args) -> dict:
    import ray

    from syneg_ray.stages.train.local import train_local
    from syneg_ray.stages.train.trainer import run_train

    src = Path(args.run_dir) / schema.INSTANCES
    rows = pq.read_table(src).to_pylist()[: args.instances]
    sub_dir = Path(args.run_dir) / "throughput"
    cfg = base_config(str(sub_dir), ["train.dev_eval=false", "train.grad_var_window=10", f"train.batch_size={args.batch}",
                                     f"train.max_seq_length={args.seq}", *args.overrides])  # fmt: skip
    (sub_dir / "mix").mkdir(parents=True, exist_ok=True)
    pq.write_table(pq.read_table(src).slice(0, args.instances), sub_dir / schema.INSTANCES)
    ensure_pairs(cfg)
    model = resolve_model("minilm")
    n_used = len(rows) // cfg.train.batch_size * cfg.train.batch_size
    out = {"instances": n_used, "batch_size": cfg.train.batch_size, "max_seq_length": cfg.train.max_seq_length,
           "n_negatives": len(rows[0]["negatives"])}  # fmt: skip
    out["peer_st_trainer"] = peer(cfg, rows, model)
    t0 = time.perf_counter()
    bare = train_local(cfg, rows, model, sub_dir / "bare-model")
    out["ours_bare"] = {"samples_per_s": bare["epochs"][0]["samples_per_s"], "loop_s": bare["epochs"][0]["seconds"],
                        "wall_s": time.perf_counter() - t0}  # fmt: skip
    ray.init(num_cpus=2, object_store_memory=1 << 30, include_dashboard=False, log_to_driver=False)
    t0 = time.perf_counter()
    summary = run_train(cfg)
    out["ours_ray"] = {"samples_per_s": summary["epochs"][0]["samples_per_s"], "loop_s": summary["epochs"][0]["seconds"],
                       "wall_s": time.perf_counter() - t0}  # fmt: skip
    out["ray_vs_peer"] = out["ours_ray"]["samples_per_s"] / out["peer_st_trainer"]["samples_per_s"]
    out["ray_overhead_loop"] = 1 - out["ours_ray"]["samples_per_s"] / out["ours_bare"]["samples_per_s"]
    return out


def peer(cfg, rows: list[dict], model_path: str) -> dict:
    """SentenceTransformerTrainer + MNRL on the same instances, batch, sequence length and schedule."""
    import datasets
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    st = SentenceTransformer(model_path, device="cpu")
    st.max_seq_length = cfg.train.max_seq_length
    n = len(rows[0]["negatives"])
    columns = {"anchor": [r["query"] for r in rows], "positive": [r["positive"] for r in rows]}
    columns.update({f"negative_{j + 1}": [r["negatives"][j] for r in rows] for j in range(n)})
    args = SentenceTransformerTrainingArguments(
        output_dir=str(Path(cfg.run.run_dir) / "peer"), num_train_epochs=1, per_device_train_batch_size=cfg.train.batch_size,
        learning_rate=cfg.train.learning_rate, warmup_steps=cfg.train.warmup_ratio,  # a float = ratio in transformers 5
        max_grad_norm=cfg.train.max_grad_norm,
        save_strategy="no", report_to="none", dataloader_drop_last=True, logging_steps=1000, seed=cfg.run.seed, use_cpu=True,
    )  # fmt: skip
    trainer = SentenceTransformerTrainer(model=st, args=args, train_dataset=datasets.Dataset.from_dict(columns),
                                         loss=MultipleNegativesRankingLoss(st, scale=1.0 / cfg.train.temperature))  # fmt: skip
    t0 = time.perf_counter()
    result = trainer.train()
    wall = time.perf_counter() - t0
    used = len(rows) // cfg.train.batch_size * cfg.train.batch_size
    return {"samples_per_s": used / result.metrics["train_runtime"], "loop_s": result.metrics["train_runtime"], "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["scifact", "throughput"])
    parser.add_argument("--run-dir", default="runs/bench-train")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--instances", type=int, default=96)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("overrides", nargs="*", help="section.key=value config overrides, e.g. train.grad_cache_chunk=64")
    args = parser.parse_intermixed_args()
    from syneg_ray.runtime import setup_logging

    setup_logging()
    record = scifact(args) if args.what == "scifact" else throughput(args)
    path = Path(args.run_dir) / f"bench-{args.what}.json"
    path.write_text(json.dumps(record, indent=2), encoding="utf-8")
    print(json.dumps({k: v for k, v in record.items() if k != "epochs"}, indent=2))


if __name__ == "__main__":
    main()
