"""Host memory of the vllm engine's answer grammar per live request, by the cap on its length floor.

    .venv-vllm/bin/python benchmarks/grammar_memory.py --data-dir ../shared/datasets --pairs 32 --caps 0 128 none

vLLM checks every decoding step of a structured answer against an xgrammar matcher, one per
request, in its scheduler process (EngineCore), and a matcher lives as long as its request. The
vllm engine's grammar holds each negative to validation's length floor (`minLength`, from the
positive's length), at most `synthesize.schema_min_length_cap` characters. This benchmark builds
the grammars the engine sends for the first `--pairs` SciFact train pairs under each cap (`none`:
no floor in the grammar, the openai engine's default), feeds each matcher an answer as the LLM
writes it (a reasoning and k' real corpus documents about as long as the positive, each at least
the floor), keeps every matcher alive as the engine keeps a batch's, and reports the process's
resident memory growth per request, the grammar's compile seconds, and the mask seconds per
token. Each cap runs in a process of its own, so one cap's freed memory is not reused by the next.
Each cap's memory is given as a ratio to the default (cap 0, the whole floor); `none` is
the floor left out. Prints one JSON object.

The engine runs batch after batch, and a request's matcher is freed when it ends. With
`--batches N` every batch's matchers are freed before the next is built, and each row also gives
the resident memory at each batch's end (held) and after its matchers are freed, under each
`--allocators`: glibc's, TCMalloc preloaded as the engine preloads it on CPU, and TCMalloc told to
hand freed pages back (`syneg_ray.engines.vllm.TCMALLOC_RELEASE`, what the engine sets with it):

    .venv-vllm/bin/python benchmarks/grammar_memory.py --data-dir ../shared/datasets --pairs 16 --caps 0 --batches 3 --allocators glibc tcmalloc tcmalloc-release
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def answers(args: argparse.Namespace, cap: int | None) -> list[tuple[dict, str]]:
    """(the grammar's JSON schema, the answer) for each pair, under `cap` (None: no floor)."""
    import pyarrow.parquet as pq

    from syneg_ray import attributes, prompts
    from syneg_ray.config import load_config
    from syneg_ray.dataset import ensure_pairs, read_corpus
    from syneg_ray.engines.base import schema_min_chars
    from syneg_ray.stages.synthesize import plan

    with tempfile.TemporaryDirectory() as run_dir:
        cfg = load_config(None, [f"run.run_dir={run_dir}", f"data.data_dir={args.data_dir}", f"data.limit={args.pairs}",
                                 "synthesize.engine=vllm", f"synthesize.schema_min_length_cap={cap or 0}"])  # fmt: skip
        prepared, path = ensure_pairs(cfg)
        rows, _ = plan(pq.read_table(path).to_pylist(), cfg, attributes.pools_for("scifact"), set(), {})
        corpus = read_corpus(prepared)
    # Documents with no quote or backslash, in ASCII: xgrammar 0.2.8's counted string refuses an
    # escaped quote (the token ` \\"`), so under a floor the LLM cannot write one either
    texts = sorted((t for t in corpus.values() if t.isascii() and '"' not in t and '\\' not in t), key=len)
    result = []
    for row in rows:
        floor = 0 if cap is None else schema_min_chars(row, cfg.synthesize)
        k = int(row["k"])
        # k' corpus documents of about the positive's length, as the prompt asks, none below the floor
        near = sorted((t for t in texts if len(t) >= floor and t != row["positive"]), key=lambda t: abs(len(t) - len(row["positive"])))
        answer = json.dumps({"reasoning": f"The query asks: {row['query']}", "negatives": near[:k]}, ensure_ascii=False, indent=2)
        result.append((prompts.json_schema(k, floor), answer))
    return result


def measure(args: argparse.Namespace, cap: int | None) -> dict:
    """One cap's figures, in this process (a child of `main`)."""
    import xgrammar as xgr
    from transformers import AutoTokenizer

    from syneg_ray.registry import resolve_model

    def rss_mb() -> float:
        return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 2**20

    work = answers(args, cap)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(args.model, None))
    info = xgr.TokenizerInfo.from_huggingface(tokenizer)
    # as vLLM builds them: a 512 MB compile cache, whitespace free, no rollback without speculation
    compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=True, cache_limit_bytes=512 << 20)
    compile_s, grammars = time.perf_counter(), []
    for schema, _ in work:
        grammars.append(compiler.compile_json_schema(json.dumps(schema), any_whitespace=True))
    compile_s = time.perf_counter() - compile_s
    mask = xgr.allocate_token_bitmask(1, info.vocab_size)
    answer_ids = [tokenizer(answer)["input_ids"] for _, answer in work]
    start, tokens, mask_s, held, freed = rss_mb(), 0, 0.0, [], []
    for _ in range(args.batches):
        matchers = []
        for grammar, ids in zip(grammars, answer_ids, strict=True):
            matcher = xgr.GrammarMatcher(grammar, max_rollback_tokens=0)
            for token in ids:
                began = time.perf_counter()
                matcher.fill_next_token_bitmask(mask)
                mask_s += time.perf_counter() - began
                if not matcher.accept_token(token):
                    raise SystemExit(f"the grammar refused token {tokens} of an answer it should accept (cap {cap}): "
                                     f"{tokenizer.decode([token])!r} after {tokenizer.decode(ids)[:200]!r}")
                tokens += 1
            matchers.append(matcher)  # held, as the engine holds a running request's
        held.append(rss_mb() - start)
        del matchers, matcher  # the batch's requests end
        gc.collect()
        freed.append(rss_mb() - start)
    floors = [s["properties"]["negatives"]["items"].get("minLength", 0) for s, _ in work]
    return {"cap": "none" if cap is None else cap, "allocator": args.child_allocator, "requests": len(work),
            "floor_chars_median": sorted(floors)[len(floors) // 2], "floor_chars_max": max(floors),
            "answer_tokens": tokens // args.batches, "rss_growth_mb": round(held[0], 1), "mb_per_request": round(held[0] / len(work), 2),
            "held_mb_by_batch": [round(m) for m in held], "after_free_mb_by_batch": [round(m) for m in freed],
            "compile_s_per_grammar": round(compile_s / len(work), 2), "mask_ms_per_token": round(1000 * mask_s / tokens, 3)}  # fmt: skip


def allocator_env(allocator: str) -> dict[str, str]:
    """The child's environment: glibc's allocator, or TCMalloc as the vllm engine loads it on CPU."""
    from syneg_ray.engines.vllm import TCMALLOC_RELEASE, tcmalloc

    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD" and k not in TCMALLOC_RELEASE}
    if allocator == "glibc":
        return env
    if not tcmalloc():
        raise SystemExit("TCMalloc is not installed here (apt install libtcmalloc-minimal4); use --allocators glibc")
    return env | {"LD_PRELOAD": tcmalloc()} | (TCMALLOC_RELEASE if allocator == "tcmalloc-release" else {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default="../shared/datasets")
    parser.add_argument("--pairs", type=int, default=32, help="requests held at once (the engine's batch)")
    parser.add_argument("--caps", nargs="+", default=["0", "128", "none"], help="schema_min_length_cap values; none = no floor")
    parser.add_argument("--model", default="qwen2.5-coder-1.5b", help="the LLM whose tokenizer the grammar is built for")
    parser.add_argument("--batches", type=int, default=1, help="batches of --pairs requests, each freed before the next")
    parser.add_argument("--allocators", nargs="+", default=["glibc"], choices=["glibc", "tcmalloc", "tcmalloc-release"],
                        help="tcmalloc: preloaded as the vllm engine does on CPU; tcmalloc-release: and told to return freed pages")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-allocator", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(measure(args, None if args.child == "none" else int(args.child))))
        return
    rows = []
    for allocator in args.allocators:
        for cap in args.caps:
            command = [sys.executable, __file__, "--data-dir", args.data_dir, "--pairs", str(args.pairs), "--model", args.model,
                       "--batches", str(args.batches), "--child", cap, "--child-allocator", allocator]  # fmt: skip
            child = subprocess.run(command, check=False, capture_output=True, text=True, env=allocator_env(allocator))
            if child.returncode:
                raise SystemExit(f"cap {cap} under {allocator} failed:\n{child.stderr[-3000:]}")
            rows.append(json.loads(child.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), file=sys.stderr)
    for row in rows:  # the ratio to the default, the whole floor in the grammar, under the same allocator
        uncapped = next((r for r in rows if r["cap"] == 0 and r["allocator"] == row["allocator"]), None)
        if uncapped is not None and uncapped["mb_per_request"] > 0:
            row["memory_vs_uncapped"] = round(row["mb_per_request"] / uncapped["mb_per_request"], 3)
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), platform.machine())
    flags = " ".join(sorted({f for f in cpuinfo.split() if f.startswith(("avx", "amx"))}))
    print(json.dumps({"host": model, "cpu_flags": flags, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
