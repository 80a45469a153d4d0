"""`syneg run`: mine -> synthesize -> mix -> train -> evaluate into one run directory, then a report.

A stage that finishes writes `<stage>/_COMPLETE.json` holding a fingerprint of the config sections
it read and of the stages it read from. On the next run a stage whose fingerprint matches is
skipped; one that was cut off (no marker) is rerun, and since every stage resumes from what it
already wrote, nothing finished is redone. Changing a section reruns that stage and everything
downstream of it; a model trained under the old config is replaced. Where the dataset is found
(`data.data_dir`, `data.download`) is not part of any fingerprint, and the evaluation split only of
evaluate's. Synthesis and mining are skipped when the mix strategy reads neither's output.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from syneg_ray import remote
from syneg_ray.config import DATA_LOCATION_KEYS, PipelineConfig, to_dict
from syneg_ray.runtime import read_json, write_text_atomic

logger = logging.getLogger(__name__)

MARKER = "_COMPLETE.json"


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[PipelineConfig], Any]
    sections: tuple[str, ...]  # config sections the stage reads
    upstream: tuple[str, ...]  # stages whose outputs it reads
    ignored: tuple[str, ...] = ("data.eval_split",)  # keys of those sections that do not change its output


def _stages() -> list[Stage]:
    # Imported here so `syneg --help` stays fast and a missing optional engine only fails its stage.
    from syneg_ray.stages.mine import run_mine
    from syneg_ray.stages.mix import run_mix
    from syneg_ray.stages.synthesize import run_synthesize
    from syneg_ray.stages.train.trainer import run_train

    def train(cfg: PipelineConfig) -> Any:
        # the pipeline reran mix or changed train: the model it holds is of another config
        return run_train(cfg, replace_other_config=True)

    return [
        Stage("mine", run_mine, ("data", "encoder", "mine"), ()),
        # the judge scores with the encoder and the miner's guard margins, takes its off-topic floor
        # from the mined scores and (synthesize.style_reference) a mined document as a model of style
        Stage("synthesize", run_synthesize, ("data", "encoder", "mine", "synthesize"), ("mine",),
              ignored=("data.eval_split", "synthesize.answer_cache")),  # a stored answer is the one the engine gives
        Stage("mix", run_mix, ("data", "mix"), ("synthesize", "mine")),
        Stage("train", train, ("data", "encoder", "train"), ("mix",)),
        Stage("evaluate", run_evaluate_pair, ("data", "encoder", "evaluate"), ("train",), ignored=()),
    ]


def needed(cfg: PipelineConfig, stage: Stage) -> bool:
    """False for synthesis or mining when nothing downstream reads their output.

    Mining also runs for a mix without retrieved negatives when synthesis reads it: the judge's
    off-topic floor is the pair's k-th mined score, and the style reference a mined document.
    """
    from syneg_ray.stages.mix import sources_needed

    synthetic, retrieved = sources_needed(cfg)
    s = cfg.synthesize
    return {"synthesize": synthetic, "mine": retrieved or (synthetic and (s.judge or s.style_reference))}.get(stage.name, True)


def fingerprint(cfg: PipelineConfig, stage: Stage, upstream: dict[str, str]) -> str:
    """Hash of the sections a stage reads, the root seed, and its upstream stages' fingerprints."""
    tree = to_dict(cfg)
    for dotted in (*(f"data.{k}" for k in DATA_LOCATION_KEYS), *stage.ignored):
        section, key = dotted.split(".")
        tree[section].pop(key, None)
    payload = {"seed": tree["run"]["seed"], **{s: tree[s] for s in stage.sections}, "upstream": [upstream[u] for u in stage.upstream]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def fingerprints(cfg: PipelineConfig) -> dict[str, str]:
    """Every stage's fingerprint under `cfg`, upstream first: what a stage's marker must hold for
    `syneg run` to skip it (and what a benchmark that lays out run directories itself keys them by).

    A stage that does not run (`needed`: the mix reads nothing of it) has none, so its settings do
    not reach the stages after it: a retrieved-only mix is not redone when the LLM's settings change.
    """
    done: dict[str, str] = {}
    for stage in _stages():
        done[stage.name] = fingerprint(cfg, stage, done) if needed(cfg, stage) else ""
    return done


def read_marker(folder: Path) -> dict | None:
    return read_json(folder / MARKER)


def complete(folder: Path, key: str) -> dict | None:
    """The stage's record in `folder` when it finished under the fingerprint `key`, else None."""
    marker = read_marker(folder)
    return marker if marker and marker.get("fingerprint") == key else None


def mark_complete(folder: Path, key: str, seconds: float, summary: Any) -> dict:
    """Writes the stage's marker last, in one atomic write: "done" only when whole."""
    record = {"fingerprint": key, "seconds": seconds, "summary": summary}
    write_text_atomic(folder / MARKER, json.dumps(record, indent=2, default=str))
    return record


def run_evaluate_pair(cfg: PipelineConfig) -> dict[str, dict[str, float]]:
    """Scores the base encoder and the trained model on the eval split (the corpus embeddings of the base are cached).

    Returns {} for user data without evaluation pairs (`data.eval_pairs` unset): there is nothing to score.
    """
    from dataclasses import replace

    from syneg_ray import schema
    from syneg_ray.dataset import prepare
    from syneg_ray.stages.evaluate import run_evaluate

    split = cfg.evaluate.split or cfg.data.eval_split
    if cfg.data.pairs and not (prepare(cfg).folder / "qrels" / f"{split}.tsv").is_file():
        logger.info("evaluate: skipped, the data has no %s qrels (set data.eval_pairs to evaluate)", split)
        return {}
    trained = str(Path(cfg.run.run_dir) / schema.MODEL)
    base = cfg.train.model or cfg.encoder.model
    return {
        "base": run_evaluate(replace(cfg, evaluate=replace(cfg.evaluate, model=base))),
        "trained": run_evaluate(replace(cfg, evaluate=replace(cfg.evaluate, model=trained))),
    }


def run_pipeline(cfg: PipelineConfig, yes: bool = False) -> dict[str, Any]:
    """Runs every stage that is not already complete for this config, then writes report.md.

    Before any stage runs, prints the plan (pairs, LLM pairs, instances, steps, time per stage;
    plan.py) and refuses a plan longer than `run.max_hours` unless `yes`.

    Returns:
        {stage: summary} for the stages that ran, and the evaluation metrics.

    Raises:
        PlanError: the plan exceeds run.max_hours and `yes` is False.
    """
    import sys

    from syneg_ray import plan
    from syneg_ray.dataset import ensure_pairs
    from syneg_ray.runtime import init_ray, stage_dir
    from syneg_ray.stages.evaluate import check_not_scoring_on_training_queries, trained_model

    check_not_scoring_on_training_queries(cfg, trained_model(cfg))  # before hours of work, not after
    run_dir = Path(cfg.run.run_dir)
    stage_dir(cfg, "pairs")  # saves the resolved config
    prepared, pairs_path = ensure_pairs(cfg)
    stages = _stages()
    keys = fingerprints(cfg)
    finished = {s.name: marker for s in stages if (marker := complete(run_dir / s.name, keys[s.name]))}
    running = {s.name for s in stages if needed(cfg, s) and s.name not in finished}
    estimate = plan.estimate(cfg, plan.counts_of(cfg, prepared, pairs_path), running, plan.load_rates(cfg.run.cache_dir))
    sys.stdout.write(estimate.render(cfg.run.max_hours))
    sys.stdout.flush()
    plan.check_limit(estimate, cfg.run.max_hours, yes)
    init_ray(cfg)
    summaries: dict[str, Any] = {}
    timings: dict[str, float] = {}
    for stage in stages:
        if not needed(cfg, stage):
            logger.info("%s: skipped, mix.strategy=%s reads nothing of it", stage.name, cfg.mix.strategy.value)
            continue
        marker = finished.get(stage.name)
        if marker:
            logger.info("%s: complete for this config, skipped", stage.name)
            summaries[stage.name] = marker.get("summary")
            timings[stage.name] = marker.get("seconds", 0.0)
            continue
        logger.info("%s: running", stage.name)
        started = time.perf_counter()
        summary = stage.run(cfg)
        timings[stage.name] = time.perf_counter() - started
        summaries[stage.name] = summary
        mark_complete(run_dir / stage.name, keys[stage.name], timings[stage.name], summary)
        if rates := plan.save_rates(cfg.run.cache_dir, measured := plan.measured_rates(cfg, stage.name, summary)):
            logger.info("%s: measured %s; the next plan on this host uses it (%s)", stage.name,
                        ", ".join(f"{k} = {v:.3g}" for k, v in measured.items()), rates)  # fmt: skip
        remote.push(cfg)  # a run directory in object storage gets each stage as it finishes, its marker last
    from syneg_ray.report import write_report

    report = write_report(cfg, summaries, timings)
    logger.info("pipeline done in %.0f s; report: %s", sum(timings.values()), report)
    return summaries
