"""Probes of an LLM's negatives, shared by the ablation (quality.py) and the judge benchmark (judge.py).

Of the synthetic negatives a mix under `cfg` would use (this config's LLM, prompt version and pair
keys, the mix's own reader), under the encoder opened as the miner opens it:

- the share the false-negative guard flags: above their own positive (strict), and within the
  miner's relative margin of it (`probes.guard_flags`);
- the share of near copies of their positive (cosine above `synthesize.judge_max_positive_similarity`);
- the source-identifiability AUC: a logistic regression telling them from as many dense-mined
  negatives of the same pairs, folds grouped by query (`probes.source_auc`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from syneg_ray.config import PipelineConfig


def measure(cfg: PipelineConfig, synthetic: Path, mined: Path) -> dict:
    """Probes the synthetic negatives in `synthetic` (a synthesis folder's negatives) of the pairs in
    `cfg`'s run directory against the dense negatives in `mined` (a mine file) of the same pairs."""
    from syneg_ray import probes, schema
    from syneg_ray.dataset import prepare, texts_of
    from syneg_ray.encoder import encode
    from syneg_ray.registry import resolve_model
    from syneg_ray.services.embed import encode_options, local_encoder
    from syneg_ray.stages.mix import SyntheticBlocks

    columns = ["query_id", "positive_id", "query", "positive"]
    pairs = pq.read_table(Path(cfg.run.run_dir) / schema.PAIRS, columns=columns).to_pylist()
    synthesized, _ = SyntheticBlocks(cfg, synthetic).of(pairs)
    k = cfg.synthesize.negatives_per_pair
    rows = [(p, negs.texts[:k]) for p in pairs if (negs := synthesized.get((p["query_id"], p["positive_id"]))) and negs.texts]
    if not rows:
        raise SystemExit(f"{synthetic}: no synthetic negative of this config's LLM and settings for the pairs of {cfg.run.run_dir}")
    table = pq.read_table(mined, columns=["query_id", "positive_id", "negative_ids", "source"]).to_pylist()
    dense = {(r["query_id"], r["positive_id"]): [d for d, s in zip(r["negative_ids"], r["source"], strict=True) if s == "dense"]
             for r in table}  # fmt: skip
    # as many retrieved negatives as synthetic ones per pair: a balanced probe
    retrieved_ids = [dense.get((p["query_id"], p["positive_id"]), [])[: len(texts)] for p, texts in rows]
    corpus_texts = texts_of(prepare(cfg), [d for ids in retrieved_ids for d in ids])

    encoder = local_encoder(cfg, resolve_model(cfg.encoder.model, cfg.run.cache_dir or None))
    as_query = encode_options(cfg.encoder, cfg.encoder.query_prompt)
    as_document = encode_options(cfg.encoder, cfg.encoder.document_prompt)
    query = encode(encoder, [p["query"] for p, _ in rows], as_query)
    positive = encode(encoder, [p["positive"] for p, _ in rows], as_document)
    flat = encode(encoder, [t for _, texts in rows for t in texts], as_document)
    negatives = np.full((len(rows), k, flat.shape[1]), np.nan, dtype=np.float32)
    present = np.zeros((len(rows), k), dtype=bool)
    start = 0
    for i, (_, texts) in enumerate(rows):
        negatives[i, : len(texts)] = flat[start : start + len(texts)]
        present[i, : len(texts)] = True
        start += len(texts)
    strict = probes.guard_flags(query, positive, negatives)
    margin = probes.guard_flags(query, positive, negatives, cfg.mine.relative_margin)
    similarity = np.einsum("nkd,nd->nk", np.nan_to_num(negatives), positive)
    copies = (similarity > cfg.synthesize.judge_max_positive_similarity) & present

    real_texts = [corpus_texts[d] for ids in retrieved_ids for d in ids if d in corpus_texts]
    real_groups = [p["query_id"] for (p, _), ids in zip(rows, retrieved_ids, strict=True) for d in ids if d in corpus_texts]
    real = encode(encoder, real_texts, as_document)
    synthetic_groups = [p["query_id"] for p, texts in rows for _ in texts]
    n = len(flat)
    auc, auc_std = probes.source_auc(np.vstack([flat, real]), np.r_[np.ones(n), np.zeros(len(real))],
                                     np.array(synthetic_groups + real_groups), seed=cfg.run.seed)  # fmt: skip
    return {
        "model": cfg.encoder.model, "llm": cfg.synthesize.model, "pairs": len(rows), "synthetic_negatives": n,
        "full_pairs": sum(len(texts) == k for _, texts in rows),  # pairs holding all k
        "retrieved_negatives": len(real), "guard_share_strict": float(strict[present].mean()), "guard_share_margin": float(margin[present].mean()),
        "relative_margin": cfg.mine.relative_margin, "near_copies": float(copies[present].mean()), "source_auc": auc, "source_auc_std": auc_std,
    }  # fmt: skip
