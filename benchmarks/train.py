"""Training benchmarks: throughput against sentence-transformers, Ray's overhead, and one SciFact epoch.

    nice .venv/bin/python benchmarks/train.py throughput --run-dir runs/bench-train [--instances 0] [--chunk 8] [--ddp]
    nice .venv/bin/python benchmarks/train.py scifact    --run-dir runs/bench-train [section.key=value ...]

`scifact` mines retrieved negatives with the base model by a minimal exact search of its own
(encoder.encode over the corpus + exact top-k, positives excluded, the false-negative margin of
mining.py), so the training figure depends on neither the mine stage nor its cache, mixes
them retrieved-only (R = 0), trains one epoch with Ray Train (1 worker) and reports test nDCG@10
before and after. `throughput` trains one whole epoch over those instances (made first if the run
directory has none) with SentenceTransformerTrainer + MultipleNegativesRankingLoss(scale = 1/tau)
and with our Ray Train loop, GradCache off and on (the peer's CachedMultipleNegativesRankingLoss
with the same mini-batch), then with our bare loop (no Ray: Ray's overhead), and with `--ddp` both
at 2 workers (the peer under torchrun): same model, batch, sequence length, learning rate and
schedule, one after the other, each timed from model load to saved model and in its loop alone.
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
    """Retrieved-only, 3 negatives in every instance (the peer's trainer reads them as 3 full columns)."""
    return load_config(None, [f"run.run_dir={run_dir}", f"data.dataset={SCIFACT}", "mix.strategy=retrieved", "mix.ratio=0.0",
                              "mix.n_negatives=3", "mix.min_negatives=3", "train.batch_size=32", "train.max_seq_length=256", "train.workers=1",
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


def make_instances(cfg, corpus: dict[str, str], base, doc_emb: np.ndarray) -> dict:
    """Mines the base model's negatives (`mine`) and mixes them retrieved-only into `cfg`'s run directory."""
    from syneg_ray.stages.mix import run_mix

    mine(cfg, base, corpus, doc_emb)
    return run_mix(cfg)


def scifact(args) -> dict:
    from syneg_ray.stages.train.trainer import run_train

    cfg = base_config(args.run_dir, [f"train.epochs={args.epochs}", *args.overrides])
    prepared, _ = ensure_pairs(cfg)
    corpus = read_corpus(prepared)
    base = load_encoder(resolve_model("minilm"), device="cpu")
    t0 = time.perf_counter()
    before, doc_emb = test_ndcg(base, cfg, corpus)
    logger.info("base minilm test nDCG@10 %.4f (%.0f s)", before, time.perf_counter() - t0)
    mix_stats = make_instances(cfg, corpus, base, doc_emb)
    t0 = time.perf_counter()
    summary = run_train(cfg)
    train_s = time.perf_counter() - t0
    after, _ = test_ndcg(load_encoder(summary["model"], device="cpu"), cfg, corpus)
    record = {"before_ndcg@10": before, "after_ndcg@10": after, "instances": mix_stats["instances"], "train_seconds": train_s,
              "epochs": summary["epochs"]}  # fmt: skip
    logger.info("SciFact test nDCG@10: %.4f -> %.4f after %d epoch(s)", before, after, args.epochs)
    return record


def throughput_config(args, name: str, chunk: int, workers: int = 1):
    """The config of one timed trainer: its own run directory holding the shared instances."""
    run_dir = Path(args.run_dir) / "throughput" / name
    cfg = base_config(str(run_dir), ["train.dev_eval=false", "train.grad_var_window=10", f"train.batch_size={args.batch // workers}",
                                     f"train.max_seq_length={args.seq}", f"train.grad_cache_chunk={chunk}",
                                     f"train.workers={workers}", f"train.cpus_per_worker={2 / workers:g}", *args.overrides])  # fmt: skip
    (run_dir / "mix").mkdir(parents=True, exist_ok=True)
    pq.write_table(pq.read_table(Path(args.run_dir) / schema.INSTANCES).slice(0, args.instances or None), run_dir / schema.INSTANCES)
    ensure_pairs(cfg)
    return cfg


def figures(epoch: dict, started: float) -> dict:
    """One of our trainers' figures: its first epoch's samples/s and loop time, and the wall time since `started`."""
    return {"samples_per_s": epoch["samples_per_s"], "loop_s": epoch["seconds"], "wall_s": time.perf_counter() - started}


def throughput(args) -> dict:
    """Each trainer for one whole epoch over the same instances, GradCache off and on: wall time from
    model load (and Ray's worker start) to the saved model, and the loop alone. With `--ddp`, the
    same at 2 workers: ours on Ray Train, the peer under torchrun (DDP, gloo), each worker 1 thread."""
    import ray

    from syneg_ray.stages.train.local import train_local
    from syneg_ray.stages.train.trainer import run_train

    instances = Path(args.run_dir) / schema.INSTANCES
    if not instances.exists():  # the SciFact epoch's instances: base-model negatives, retrieved-only
        cfg = base_config(args.run_dir, [])
        corpus = read_corpus(ensure_pairs(cfg)[0])
        base = load_encoder(resolve_model("minilm"), device="cpu")
        make_instances(cfg, corpus, base, encode(base, list(corpus.values()), ENC))
    rows = pq.read_table(instances).slice(0, args.instances or None).to_pylist()
    model = resolve_model("minilm")
    out = {"instances": len(rows) // args.batch * args.batch, "batch_size": args.batch, "max_seq_length": args.seq,
           "n_negatives": len(rows[0]["negatives"]), "grad_cache_chunk": args.chunk}  # fmt: skip
    t0 = time.perf_counter()
    ray.init(num_cpus=2, object_store_memory=1 << 30, include_dashboard=False, log_to_driver=False)
    out["ray_start_s"] = time.perf_counter() - t0
    for tag, chunk in (("", 0), ("_gradcache", args.chunk)):
        out[f"peer{tag}"] = peer(throughput_config(args, f"peer{tag}", chunk), rows, model)
        cfg = throughput_config(args, f"ray{tag}", chunk)
        t0 = time.perf_counter()
        out[f"ray{tag}"] = figures(run_train(cfg)["epochs"][0], t0)
        out[f"ray_vs_peer{tag}"] = out[f"ray{tag}"]["samples_per_s"] / out[f"peer{tag}"]["samples_per_s"]
    cfg = throughput_config(args, "bare", 0)
    t0 = time.perf_counter()
    out["bare"] = figures(train_local(cfg, rows, model, Path(cfg.run.run_dir) / "model")["epochs"][0], t0)
    out["ray_overhead_loop"] = 1 - out["ray"]["samples_per_s"] / out["bare"]["samples_per_s"]
    if args.ddp:
        cfg = throughput_config(args, "ray_2workers", 0, workers=2)
        t0 = time.perf_counter()
        out["ray_2workers"] = figures(run_train(cfg)["epochs"][0], t0)
        ray.shutdown()  # its workers' CPUs back for torchrun's
        out["peer_ddp"] = peer_ddp(args)
        out["ray_vs_peer_2workers"] = out["ray_2workers"]["samples_per_s"] / out["peer_ddp"]["samples_per_s"]
    return out


def peer(cfg, rows: list[dict], model_path: str, ddp: bool = False) -> dict:
    """SentenceTransformerTrainer + MultipleNegativesRankingLoss (CachedMultipleNegativesRankingLoss
    when `train.grad_cache_chunk` is set, with that mini-batch) on the same instances, batch, sequence
    length and schedule; under torchrun (`ddp`) the in-batch negatives are gathered across devices as ours are."""
    import datasets
    import torch
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.losses import (
        CachedMultipleNegativesRankingLoss,
        MultipleNegativesRankingLoss,
    )

    t = cfg.train
    torch.set_num_threads(int(t.cpus_per_worker))
    t0 = time.perf_counter()
    st = SentenceTransformer(model_path, device="cpu")
    st.max_seq_length = t.max_seq_length
    n = len(rows[0]["negatives"])
    columns = {"anchor": [r["query"] for r in rows], "positive": [r["positive"] for r in rows]}
    columns.update({f"negative_{j + 1}": [r["negatives"][j] for r in rows] for j in range(n)})
    args = SentenceTransformerTrainingArguments(
        output_dir=str(Path(cfg.run.run_dir) / "peer"), num_train_epochs=1, per_device_train_batch_size=t.batch_size,
        learning_rate=t.learning_rate, warmup_steps=t.warmup_ratio,  # a float = ratio in transformers 5
        max_grad_norm=t.max_grad_norm, ddp_backend="gloo" if ddp else None,
        save_strategy="no", report_to="none", dataloader_drop_last=True, logging_steps=1000, seed=cfg.run.seed, use_cpu=True,
    )  # fmt: skip
    scale = 1.0 / t.temperature
    loss = (CachedMultipleNegativesRankingLoss(st, scale=scale, mini_batch_size=t.grad_cache_chunk, gather_across_devices=ddp)
            if t.grad_cache_chunk else MultipleNegativesRankingLoss(st, scale=scale, gather_across_devices=ddp))  # fmt: skip
    trainer = SentenceTransformerTrainer(model=st, args=args, train_dataset=datasets.Dataset.from_dict(columns), loss=loss)
    result = trainer.train()
    st.save(str(Path(cfg.run.run_dir) / "peer-model"))  # ours saves its model too
    used = len(rows) // (t.batch_size * t.workers) * t.batch_size * t.workers
    return {"samples_per_s": used / result.metrics["train_runtime"], "loop_s": result.metrics["train_runtime"],
            "wall_s": time.perf_counter() - t0}  # fmt: skip


def peer_ddp(args) -> dict:
    """The peer on 2 processes under torchrun (this script's `peer-rank`); rank 0's figures, the
    wall time as seen from here (process start and model load included, as Ray's worker start is in ours)."""
    import subprocess

    result = Path(args.run_dir) / "throughput" / "peer_ddp.json"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533", __file__, "peer-rank",
               "--run-dir", args.run_dir, "--instances", str(args.instances), "--batch", str(args.batch), "--seq", str(args.seq),
               *args.overrides]  # fmt: skip
    t0 = time.perf_counter()
    subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return {**json.loads(result.read_text()), "wall_s": time.perf_counter() - t0}


def peer_rank(args) -> dict:
    """One torchrun process of `peer_ddp`: rank 0 writes the figures."""
    cfg = throughput_config(args, f"peer_ddp_rank{os.environ['RANK']}", 0, workers=2)
    rows = pq.read_table(Path(args.run_dir) / schema.INSTANCES).slice(0, args.instances or None).to_pylist()
    out = peer(cfg, rows, resolve_model("minilm"), ddp=True)
    if os.environ["RANK"] == "0":
        (Path(args.run_dir) / "throughput" / "peer_ddp.json").write_text(json.dumps(out))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["scifact", "throughput", "peer-rank"])
    parser.add_argument("--run-dir", default="runs/bench-train")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--instances", type=int, default=0, help="throughput: the first N instances (0 = all: a whole epoch)")
    parser.add_argument("--batch", type=int, default=16, help="throughput: instances a step, over all workers")
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--chunk", type=int, default=8, help="throughput: GradCache's texts a forward (ours), mini-batch (the peer's)")
    parser.add_argument("--ddp", action="store_true", help="throughput: also 2 workers, ours on Ray Train, the peer under torchrun")
    parser.add_argument("overrides", nargs="*", help="section.key=value config overrides, e.g. train.grad_cache_chunk=64")
    args = parser.parse_intermixed_args()
    from syneg_ray.runtime import setup_logging

    setup_logging()
    if args.what == "peer-rank":
        peer_rank(args)
        return
    record = scifact(args) if args.what == "scifact" else throughput(args)
    path = Path(args.run_dir) / f"bench-{args.what}.json"
    path.write_text(json.dumps(record, indent=2), encoding="utf-8")
    print(json.dumps({k: v for k, v in record.items() if k != "epochs"}, indent=2))


if __name__ == "__main__":
    main()
