"""Synthesis throughput: the Ray Data pipeline against the same engine called directly, same prompts.

    python benchmarks/synthesis.py --engine hf --pairs 16
    VLLM_CPU_KVCACHE_SPACE=1 .venv-vllm/bin/python benchmarks/synthesis.py --engine vllm --pairs 16

Both sides get the prompts the stage builds (prompts.py, the SciFact attribute pools) and their
answers go through parsing.py. Reported per side: output tokens/s (model load excluded and
included), valid-JSON rate (answers holding a JSON object) and valid rate (answers with at least
one valid negative); efficiency = pipeline tok/s / direct tok/s. Prints one JSON object.

`--threads 1` on a 2-core machine gives the generator one core on both sides and leaves the other
to Ray's own processes, as a cluster node with cores to spare does.

`--rounds 2` runs the sides in the order direct, pipeline, pipeline, direct. On a shared VM the
same batch can take 10-20% longer an hour later, and one side run after the other folds that
drift into the ratio; alternating cancels a steady drift. The sides' seconds and tokens are summed
over the rounds.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

logger = logging.getLogger("benchmarks.synthesis")


def work_rows(args: argparse.Namespace, run_dir: Path) -> tuple[list[dict], object]:
    from syneg_ray import attributes
    from syneg_ray.config import load_config
    from syneg_ray.dataset import ensure_pairs
    from syneg_ray.stages.synthesize import plan

    overrides = [f"run.run_dir={run_dir}", f"data.dataset={args.dataset}", f"data.limit={args.pairs}",
                 f"synthesize.engine={args.engine}", f"synthesize.negatives_per_pair={args.k}",
                 f"synthesize.max_new_tokens={args.max_new_tokens}", f"synthesize.batch_size={args.batch_size}",
                 f"synthesize.dtype={args.dtype}", f"synthesize.cpus_per_replica={args.cpus}",
                 f"synthesize.hf.threads_per_replica={args.threads}"]
    # Ray keeps its own default size (cores + 1 logical CPUs): the vllm processor's tokenizer and
    # template actors need a share beside the engine's bundle, and a 2-CPU Ray left them none (a hang).
    if args.data_dir:
        overrides.append(f"data.data_dir={args.data_dir}")
    cfg = load_config(None, overrides)
    import pyarrow.parquet as pq

    _, path = ensure_pairs(cfg)
    pools = attributes.pools_for(cfg.data.dataset) or attributes.GENERIC
    rows, _ = plan(pq.read_table(path).to_pylist(), cfg, pools, set(), {})
    return rows, cfg


def score(rows: list[dict], texts: list[str], tokens: int, seconds: float, load_seconds: float) -> dict:
    from syneg_ray import parsing

    parsed = [parsing.parse(t, r["query"], r["positive"]) for r, t in zip(rows, texts, strict=True)]
    return {
        "answers": len(texts), "output_tokens": tokens, "seconds": round(seconds, 2), "load_seconds": round(load_seconds, 2),
        "tokens_per_s": round(tokens / seconds, 2), "tokens_per_s_incl_load": round(tokens / (seconds + load_seconds), 2),
        "valid_json_rate": round(sum(parsing.extract_object(t) is not None for t in texts) / len(texts), 3),
        "valid_rate": round(sum(p.ok for p in parsed) / len(parsed), 3),
    }


def direct_hf(rows: list[dict], cfg) -> dict:
    from syneg_ray.engines.base import SamplingSpec, messages_of
    from syneg_ray.engines.hf import HFGenerator, threads_for
    from syneg_ray.registry import resolve_model

    s = cfg.synthesize
    start = time.perf_counter()
    gen = HFGenerator(resolve_model(s.model), s.dtype, threads_for(s))
    load = time.perf_counter() - start
    spec = SamplingSpec(max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p,
                        presence_penalty=s.presence_penalty)  # as the pipeline's actors get it
    texts, tokens, start = [], 0, time.perf_counter()
    for i in range(0, len(rows), s.batch_size):
        batch = rows[i:i + s.batch_size]
        outs = gen.generate([messages_of(r) for r in batch], s.negatives_per_pair, spec, [r["gen_seed"] for r in batch], [len(r["positive"].split()) for r in batch],
                            [r["max_tokens"] for r in batch])
        texts += [o.text for o in outs]
        tokens += sum(o.output_tokens for o in outs)
    return score(rows, texts, tokens, time.perf_counter() - start, load)


def direct_vllm(rows: list[dict], cfg) -> dict:
    from vllm import LLM, SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    from syneg_ray.engines.base import messages_of
    from syneg_ray.engines.vllm import engine_kwargs, row_sampling_params, runtime_env
    from syneg_ray.registry import resolve_model

    s = cfg.synthesize
    os.environ.update((runtime_env(s) or {}).get("env_vars", {}))  # the settings the pipeline's engine actor gets
    start = time.perf_counter()
    kwargs = {k: v for k, v in engine_kwargs(s).items() if k not in ("pipeline_parallel_size",)}
    llm = LLM(model=resolve_model(s.model), **kwargs)
    load = time.perf_counter() - start
    # exactly what the pipeline sends each row: its budget, the grammar with its length floor, its seed
    params = []
    for r in rows:
        p = row_sampling_params(r, s)
        params.append(SamplingParams(**{k: v for k, v in p.items() if k != "structured_outputs"},
                                     structured_outputs=StructuredOutputsParams(**p["structured_outputs"])))
    start = time.perf_counter()
    outs = llm.chat([messages_of(r) for r in rows], params, use_tqdm=False)
    seconds = time.perf_counter() - start
    # stop the engine before the pipeline starts its own: two engines would share the cores
    shutdown = getattr(getattr(llm.llm_engine, "engine_core", None), "shutdown", None)
    if shutdown is not None:
        shutdown()
    del llm
    return score(rows, [o.outputs[0].text for o in outs], sum(len(o.outputs[0].token_ids) for o in outs), seconds, load)


def pipeline(rows: list[dict], cfg) -> dict:
    import ray

    from syneg_ray import engines
    from syneg_ray.registry import resolve_model
    from syneg_ray.runtime import init_ray
    from syneg_ray.stages.synthesize import work_dataset

    init_ray(cfg)
    ray.data.DataContext.get_current().enable_progress_bars = False
    step = engines.build(cfg.synthesize, resolve_model(cfg.synthesize.model))
    ds = step(work_dataset(rows, cfg.synthesize.batch_size))  # the stage's own blocking
    start, first, out = time.perf_counter(), None, []
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        first = first or time.perf_counter()  # the first answer: the actor has loaded its model by now
        out += batch.to_pylist()
    total = time.perf_counter() - start
    by_key = {r["key"]: r for r in out}
    ordered = [by_key[r["key"]] for r in rows]
    tokens = sum(r["output_tokens"] for r in ordered)
    result = score(rows, [r["generated_text"] for r in ordered], tokens, total, 0.0)
    result["note"] = "tokens_per_s includes actor start and model load (not separable inside Ray)"
    result["seconds_to_first_batch"] = round(first - start, 2) if first else None
    return result


def combine(runs: list[dict]) -> dict:
    """One side's rounds as one figure: seconds and tokens summed, rates averaged, each round kept."""
    if len(runs) == 1:
        return runs[0]
    tokens = sum(r["output_tokens"] for r in runs)
    seconds = sum(r["seconds"] for r in runs)
    load = sum(r["load_seconds"] for r in runs)
    return {
        "answers": sum(r["answers"] for r in runs), "output_tokens": tokens, "seconds": round(seconds, 2),
        "load_seconds": round(load, 2), "tokens_per_s": round(tokens / seconds, 2),
        "tokens_per_s_incl_load": round(tokens / (seconds + load), 2),
        "valid_json_rate": round(sum(r["valid_json_rate"] for r in runs) / len(runs), 3),
        "valid_rate": round(sum(r["valid_rate"] for r in runs) / len(runs), 3),
        "rounds": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=["hf", "vllm"], default="hf")
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--cpus", type=float, default=1.0, help="logical CPUs per LLM actor")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads of the hf engine on both sides; 0 = every core. Fewer threads than cores "
                             "leave Ray's bookkeeping a core of its own, as on a node with spare cores")
    parser.add_argument("--dataset", default="scifact")
    parser.add_argument("--data-dir", default=os.environ.get("SYNEG_DATA_DIR", ""))
    parser.add_argument("--rounds", type=int, default=1,
                        help="rounds of both sides, alternating their order (2 = direct, pipeline, pipeline, direct)")
    parser.add_argument("--out", help="also write the JSON result here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    with tempfile.TemporaryDirectory(prefix="synth-bench-") as tmp:
        rows, cfg = work_rows(args, Path(tmp))
        measure = {"direct": direct_hf if args.engine == "hf" else direct_vllm, "pipeline": pipeline}
        runs: dict[str, list[dict]] = {"direct": [], "pipeline": []}
        for round_ in range(args.rounds):
            for side in ("direct", "pipeline") if round_ % 2 == 0 else ("pipeline", "direct"):
                runs[side].append(measure[side](rows, cfg))
                logger.info("round %d, %s: %s", round_ + 1, side, runs[side][-1])
    direct, piped = combine(runs["direct"]), combine(runs["pipeline"])
    result = {
        "engine": args.engine, "model": cfg.synthesize.model, "pairs": len(rows), "k": args.k,
        "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size, "dtype": args.dtype,
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.python_version()}",
        "rounds": args.rounds, "direct": direct, "pipeline": piped,
        "efficiency": round(piped["tokens_per_s"] / direct["tokens_per_s_incl_load"], 3),
        "efficiency_vs_direct_without_load": round(piped["tokens_per_s"] / direct["tokens_per_s"], 3),
    }
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    logger.info("result:\n%s", text)


if __name__ == "__main__":
    main()
