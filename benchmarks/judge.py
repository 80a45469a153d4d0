"""What the judge inside synthesis does to an LLM's negatives, and what it costs.

    VLLM_CPU_KVCACHE_SPACE=4 .venv-vllm/bin/python benchmarks/judge.py --data-dir ../shared/datasets \
        [--pairs 24] [--work /tmp/syneg-judge] [--variants plain judge judge-reflect syneg] [--engine vllm|hf]

Runs `syneg synthesize` on the first `--pairs` pairs of the SciFact ablation (`benchmarks/quality.yaml`:
Qwen2.5-Coder-1.5B, k = 3; its `vllm` engine, or `hf` in bf16 with batches of 8), one variant per run
directory, each after `syneg mine` there (the judge's off-topic floor and the style reference read
the mined negatives). The variants are the ablation's syntheses (`benchmarks/quality.py`, SYNTHESES):

- plain: the judge off (`synthesize.judge=false`): one answer of k negatives, validated, as before;
- judge: k' = k + 2 candidates judged by the encoder, the k hardest that pass kept, no reflection;
- judge-reflect: the same, and one reflection round rewriting the flagged ones with the reasons;
- syneg: the same, with a mined negative shown as a style reference (the full method).

For the negatives each variant keeps it prints: pairs with a negative, negatives, the share the
miner's false-negative guard flags (scoring above the positive less 5%, base encoder), the share
within 0.9 cosine of their positive, the source-identifiability AUC against the pairs' dense-mined
negatives (logistic regression on base-model embeddings, folds by query), and the cost: output
tokens and seconds per kept negative.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from quality import SYNTHESES  # benchmarks/quality.py: this script's folder is on sys.path when run as a script

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = SYNTHESES  # the ablation's syntheses, by name
ENGINES = {"vllm": [], "hf": ["synthesize.engine=hf", "synthesize.batch_size=8"]}  # vllm: quality.yaml's settings


def measure(work: Path, data_dir: str, pairs: int, variant: str, engine: str) -> dict:
    from syneg_ray.config import load_config
    from syneg_ray.stages.mine import run_mine
    from syneg_ray.stages.synthesize import run_synthesize

    overrides = [f"run.run_dir={work / variant}", f"data.data_dir={data_dir}",
                 f"data.limit={pairs}", *ENGINES[engine], *VARIANTS[variant]]  # fmt: skip
    cfg = load_config(str(ROOT / "benchmarks" / "quality.yaml"), overrides)
    run_mine(cfg)
    started = time.perf_counter()
    summary = run_synthesize(cfg)
    return {"variant": variant, "seconds": time.perf_counter() - started, "summary": summary, **quality(cfg)}


def quality(cfg) -> dict:
    """Guard flags, near copies and the identifiability AUC of the kept negatives, under the base encoder."""
    import pyarrow.parquet as pq
    from sentence_transformers import SentenceTransformer

    from syneg_ray import probes, schema
    from syneg_ray.dataset import prepare, texts_of
    from syneg_ray.registry import resolve_model
    from syneg_ray.synthetic_store import read_synthetic

    run_dir = Path(cfg.run.run_dir)
    pairs = {(p["query_id"], p["positive_id"]): p for p in pq.read_table(run_dir / schema.PAIRS).to_pylist()}
    synthetic = [r for r in read_synthetic(run_dir / schema.SYNTHETIC, ["query_id", "positive_id", "negatives", "status"]).to_pylist()
                 if r["status"] == "ok" and (r["query_id"], r["positive_id"]) in pairs]  # fmt: skip
    mined = {(r["query_id"], r["positive_id"]): [d for d, s in zip(r["negative_ids"], r["source"], strict=True) if s == "dense"][:3]
             for r in pq.read_table(run_dir / schema.MINED).to_pylist()}  # fmt: skip
    texts = texts_of(prepare(cfg), [d for ids in mined.values() for d in ids])
    model = SentenceTransformer(resolve_model("minilm"), device="cpu")

    def embed(items: list[str]) -> np.ndarray:
        return model.encode(items, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)

    rows = [(pairs[(r["query_id"], r["positive_id"])], r["negatives"]) for r in synthetic if r["negatives"]]
    k = max((len(n) for _, n in rows), default=0)
    if not rows:
        return {"pairs_with_negative": 0, "negatives": 0}
    q, pos = embed([p["query"] for p, _ in rows]), embed([p["positive"] for p, _ in rows])
    neg = np.full((len(rows), k, q.shape[1]), np.nan, dtype=np.float32)
    for i, (_, negatives) in enumerate(rows):
        neg[i, : len(negatives)] = embed(negatives)
    flags = probes.guard_flags(q, pos, neg, cfg.mine.relative_margin)
    present = ~np.isnan(neg[..., 0])
    copies = (np.einsum("pkd,pd->pk", np.nan_to_num(neg), pos) > 0.9) & present
    features, labels, groups = [], [], []
    for i, (pair, negatives) in enumerate(rows):
        real = [texts[d] for d in mined.get((pair["query_id"], pair["positive_id"]), []) if d in texts]
        for vectors, label in ((neg[i, : len(negatives)], 1), (embed(real) if real else np.zeros((0, q.shape[1])), 0)):
            features += list(vectors)
            labels += [label] * len(vectors)
            groups += [i] * len(vectors)
    auc, spread = probes.source_auc(np.asarray(features), np.asarray(labels), np.asarray(groups))
    return {"pairs_with_negative": len(rows), "negatives": int(present.sum()), "guard_flagged": float(flags[present].mean()),
            "near_copies": float(copies[present].mean()), "auc": auc, "auc_sd": spread}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="../shared/datasets")
    parser.add_argument("--pairs", type=int, default=24)
    parser.add_argument("--work", type=Path, default=Path("/tmp/syneg-judge"))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--engine", default="vllm", choices=list(ENGINES))
    args = parser.parse_args()
    results = [measure(args.work, args.data_dir, args.pairs, v, args.engine) for v in args.variants]
    (args.work / "judge.json").write_text(json.dumps(results, indent=2, default=str))
    print("\n| variant | pairs with a negative | negatives kept | flagged by the guard | near copies | identifiability AUC "
          "| generations (reflection turns) | output tokens per kept | seconds per kept |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        s = r["summary"]
        kept = r.get("negatives", 0)
        print(f"| {r['variant']} | {r['pairs_with_negative']} of {s['pairs']} | {kept} | {r.get('guard_flagged', float('nan')):.1%} | "
              f"{r.get('near_copies', float('nan')):.1%} | {r.get('auc', float('nan')):.3f} ± {r.get('auc_sd', float('nan')):.3f} | "
              f"{s['generations']} ({s.get('reflections', 0)}) | {s['output_tokens'] / max(kept, 1):.0f} | {r['seconds'] / max(kept, 1):.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
