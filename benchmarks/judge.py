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

For the negatives each variant keeps it prints what `benchmarks/probing.py` measures (the ablation's
probes): pairs with a negative, negatives, the share the miner's false-negative guard flags (scoring
above the positive less 5%, base encoder), the share within 0.9 cosine of their positive, the
source-identifiability AUC against the pairs' dense-mined negatives (logistic regression on
base-model embeddings, folds by query); and the cost: output tokens and seconds per kept negative.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import probing  # benchmarks/probing.py and quality.py: this script's folder is on sys.path
from quality import SYNTHESES

from syneg_ray import schema

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = SYNTHESES  # the ablation's syntheses, by name
ENGINES = {"vllm": [], "hf": ["synthesize.engine=hf", "synthesize.batch_size=8"]}  # vllm: quality.yaml's settings


def run_variant(work: Path, data_dir: str, pairs: int, variant: str, engine: str) -> dict:
    from syneg_ray.config import load_config
    from syneg_ray.stages.mine import run_mine
    from syneg_ray.stages.synthesize import run_synthesize

    overrides = [f"run.run_dir={work / variant}", f"data.data_dir={data_dir}",
                 f"data.limit={pairs}", *ENGINES[engine], *VARIANTS[variant]]  # fmt: skip
    cfg = load_config(str(ROOT / "benchmarks" / "quality.yaml"), overrides)
    run_mine(cfg)
    started = time.perf_counter()
    summary = run_synthesize(cfg)
    run_dir = Path(cfg.run.run_dir)
    probes = probing.measure(cfg, run_dir / schema.SYNTHETIC, run_dir / schema.MINED)
    return {"variant": variant, "seconds": time.perf_counter() - started, "summary": summary, **probes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="../shared/datasets")
    parser.add_argument("--pairs", type=int, default=24)
    parser.add_argument("--work", type=Path, default=Path("/tmp/syneg-judge"))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--engine", default="vllm", choices=list(ENGINES))
    args = parser.parse_args()
    results = [run_variant(args.work, args.data_dir, args.pairs, v, args.engine) for v in args.variants]
    (args.work / "judge.json").write_text(json.dumps(results, indent=2, default=str))
    print("\n| variant | pairs with a negative (with all k) | negatives kept (a pair) | flagged by the guard | near copies "
          "| identifiability AUC | generations (reflection turns) | output tokens per kept | seconds per kept |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        s = r["summary"]
        kept = r["synthetic_negatives"]
        print(f"| {r['variant']} | {r['pairs']} of {s['pairs']} ({r['full_pairs']}) | {kept} ({kept / r['pairs']:.2f}) | "
              f"{r['guard_share_margin']:.1%} | {r['near_copies']:.1%} | "
              f"{r['source_auc']:.3f} ± {r['source_auc_std']:.3f} | {s['generations']} ({s.get('reflections', 0)}) | "
              f"{s['output_tokens'] / max(kept, 1):.0f} | {r['seconds'] / max(kept, 1):.1f} |")  # fmt: skip

if __name__ == "__main__":
    main()
