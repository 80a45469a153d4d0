"""`syneg tune`: Ray Tune over temperature (tau) and synthetic ratio (R), scored by dev nDCG@10.

Each trial mixes at its R and trains at its tau with the Train V2 pattern: the trial function
builds a TorchTrainer and calls fit(); a TuneReportCallback forwards each epoch's dev metrics to
Tune so ASHA can stop weak trials early. Trials link the run's synthesis and mining outputs
instead of recomputing them. The dev split is the dataset's own or carved from train queries;
test is never read.

With the run directory in object storage, a trial may run on a node that never saw it: it fetches
the shared outputs there and publishes what its train workers read (the instances, the dev qrels)
under its own URI; Tune's and Ray Train's state live at the URI (see storage.py).

    run_dir/tune/trials/<trial_id>/   one run directory per trial (its mix, train, curves)
    run_dir/tune/trials.csv           every trial: tau, R, epochs run, dev nDCG@10 and its standard error, and
                                      its difference to the best trial on the same queries, with that error
    run_dir/tune/best.yaml            the full pipeline config with the best tau and R
    run_dir/tune/heatmap.png          dev nDCG@10 over (tau, R), against the untrained model's
    run_dir/tune/base.json            the untrained model's dev nDCG@10 and standard error, scored as the trials
                                      are, and the best trial's gain over it on the same queries, with its error

The standard error is the spread of the per-query nDCG@10 over sqrt(dev queries): a dev split whose
error is as large as the gaps between trials cannot rank them (more dev queries, `data.dev_fraction`
or, for a capped training set, `data.dev_adds_unused`; or the whole corpus as dev corpus,
`train.dev_max_docs=0`, sharpen it). Every trial scores the same queries, so a difference between
two trials is known better than either score: trials.csv gives each trial's difference to the
best with the standard error of that paired difference.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from syneg_ray import metrics, schema, storage
from syneg_ray.config import MixStrategy, PipelineConfig, from_dict, to_dict, to_yaml, with_absolute_paths
from syneg_ray.errors import ConfigError, TuneError
from syneg_ray.mixing import hybrid_target
from syneg_ray.plots import plot_heatmap
from syneg_ray.runtime import link_folder
from syneg_ray.stages.train.devset import BY_QUERY

logger = logging.getLogger(__name__)

METRIC = "dev_ndcg@10"
METRIC_SE = f"{METRIC}_se"  # the standard error of METRIC over the dev queries (metrics.evaluate_run)
VS_BEST, VS_BEST_SE = f"{METRIC}_vs_best", f"{METRIC}_vs_best_se"  # a trial less the best, on the same queries, and its error
SHARED = ("pairs", "synthesize", "mine")  # stage folders every trial links instead of recomputing


def trial_config(base: PipelineConfig, temperature: float, ratio: float, run_dir: Path) -> PipelineConfig:
    """The base config with one trial's tau, R and run directory (a misspelled field fails in replace)."""
    return replace(
        base,
        run=replace(base.run, run_dir=str(run_dir)),
        mix=replace(base.mix, ratio=float(ratio)),
        train=replace(base.train, temperature=float(temperature)),
    )


def link_shared(base_run: Path, trial_run: Path) -> None:
    """Points the trial's pairs/synthesize/mine folders at the base run's (read-only sharing).

    In a mirrored run directory the folders are fetched to this node first (the driver pushed them
    before the first trial); one the run does not have (no synthesis at R = 0) is left out.
    """
    trial_run.mkdir(parents=True, exist_ok=True)
    for name in SHARED:
        source, link = base_run / name, trial_run / name
        with contextlib.suppress(FileNotFoundError):
            storage.fetch(source, marked=False)  # pushed file by file, so no folder marker: complete once pushed
        if source.exists():
            link_folder(source, link)


def publish_for_workers(trial_run: Path) -> None:
    """What a trial's train workers read, under the trial's own URI (nothing for a local run directory).

    Workers on other nodes look for the instances and the dev qrels under the trial's path, whose
    URI the shared folders (links to the base run's) do not have.
    """
    storage.publish(trial_run / schema.INSTANCES)
    if (trial_run / schema.DEV_QRELS).is_file():
        storage.publish(trial_run / schema.DEV_QRELS)


def grid(cfg: PipelineConfig) -> tuple[list[float], list[float]]:
    """tau on a log grid and R on a linear grid, `tune.grid_points` each; an axis whose range is one value holds it.

    Hybrid mixing gives every instance floor(R * n + 0.5) synthetic negatives (at least one of each
    kind when 0 < R < 1), so R values that come to the same count train identical models (R = 0.5
    and 0.75 at n = 3 both give 2): the grid keeps the first R of each count and runs one trial for it.
    """
    t, n = cfg.tune, cfg.tune.grid_points
    taus = np.geomspace(t.temperature_min, t.temperature_max, n if t.temperature_min < t.temperature_max else 1)
    ratios = np.linspace(t.ratio_min, t.ratio_max, n if t.ratio_min < t.ratio_max else 1).round(3).tolist()
    if cfg.mix.strategy is MixStrategy.HYBRID:
        by_count: dict[int, float] = {}
        for ratio in ratios:
            count = hybrid_target(ratio, cfg.mix.n_negatives)
            if count in by_count:
                logger.info("tune grid: R %g trains as R %g (%d synthetic of %d negatives per instance); one trial for both",
                            ratio, by_count[count], count, cfg.mix.n_negatives)  # fmt: skip
            by_count.setdefault(count, ratio)
        ratios = list(by_count.values())
    return taus.round(5).tolist(), ratios


def param_space(cfg: PipelineConfig) -> dict[str, Any]:
    from ray import tune

    t = cfg.tune
    if t.searcher == "grid":
        taus, ratios = grid(cfg)
        return {"temperature": tune.grid_search(taus), "ratio": tune.grid_search(ratios)}
    # a held axis is a constant: Tune's samplers refuse an empty range, and every trial would draw the same value
    temperature = tune.loguniform(t.temperature_min, t.temperature_max) if t.temperature_min < t.temperature_max else t.temperature_min
    ratio = tune.uniform(t.ratio_min, t.ratio_max) if t.ratio_min < t.ratio_max else t.ratio_min
    return {"temperature": temperature, "ratio": ratio}


def _trial(params: dict[str, float], base: dict, model_path: str) -> None:
    """One Tune trial: mix at R, then Ray Train at tau; metrics reach Tune through the callback."""
    from ray import tune

    from syneg_ray.stages.mix import run_mix
    from syneg_ray.stages.train.trainer import build_trainer, require_one_batch

    base_cfg = from_dict(base)
    trial_run = Path(base_cfg.run.run_dir) / "tune" / "trials" / tune.get_context().get_trial_id()
    link_shared(Path(base_cfg.run.run_dir), trial_run)
    cfg = trial_config(base_cfg, params["temperature"], params["ratio"], trial_run)
    # e.g. R = 1 with fewer synthetic negatives than n per pair: fail the trial, not report the untrained model
    require_one_batch(cfg, run_mix(cfg)["instances"], trial_run / schema.INSTANCES)
    publish_for_workers(trial_run)
    build_trainer(cfg, trial_run / schema.INSTANCES, model_path, trial_run / "train", callbacks=[_scored_reports()]).fit()


def _scored_reports():  # -> ray.tune.integration.ray_train.TuneReportCallback
    """Forwards to Tune the epochs' reports that hold a dev score.

    With `train.dev_every` > 1 or 0 the epochs between carry none, and Tune's strict metric check
    and its searchers (Optuna reads every result's metric) refuse such a report; without ASHA
    (`require_dev_scores`) a trial is ranked by its last report, which always holds one.
    """
    from ray.tune.integration.ray_train import TuneReportCallback

    class ScoredReports(TuneReportCallback):
        def after_report(self, run_context, metrics, checkpoint) -> None:
            if METRIC in metrics[0]:
                super().after_report(run_context, metrics, checkpoint)

    return ScoredReports()


def _release_worker_groups(trials_dir: Path):  # -> ray.tune.Callback
    """A Tune callback that removes a finished trial's Ray Train placement group.

    Ray Train V2 ties a worker group's placement group to the driver, so when Tune stops a trial
    (ASHA, or the scheduler acting on its last report) the group's CPUs stay reserved and later
    trials wait for them forever (ray-project/ray#54305). Rank 0 records the group's id
    (train/loop.py); removing a group the controller already removed is harmless.
    """
    from ray.tune import Callback

    from syneg_ray.stages.train.loop import PLACEMENT_GROUP

    class ReleaseWorkerGroups(Callback):
        def on_trial_complete(self, iteration, trials, trial, **info) -> None:
            self.release(trial.trial_id)

        def on_trial_error(self, iteration, trials, trial, **info) -> None:
            self.release(trial.trial_id)

        @staticmethod
        def release(trial_id: str) -> None:
            from ray import PlacementGroupID
            from ray.util.placement_group import PlacementGroup, remove_placement_group

            path = trials_dir / trial_id / "train" / PLACEMENT_GROUP
            if not storage.published(path):  # written by the trial's rank 0, on any node
                return
            try:
                group = storage.fetch(path).read_text(encoding="utf-8").strip()
                remove_placement_group(PlacementGroup(PlacementGroupID.from_hex(group)))
            except Exception as exc:  # noqa: BLE001 - already gone with its controller
                logger.debug("placement group of trial %s: %s", trial_id, exc)

    return ReleaseWorkerGroups()


def search_alg(cfg: PipelineConfig):  # -> ray.tune.search.SearchAlgorithm | Searcher
    """The searcher, seeded from run.seed, holding `tune.max_concurrent` trials at a time.

    The limit lives here because Tune ignores TuneConfig.max_concurrent_trials (with a warning)
    when given a BasicVariantGenerator, and without a seed the random searcher draws other
    (tau, R) points on every run.
    """
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    t = cfg.tune
    if t.searcher == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return ConcurrencyLimiter(OptunaSearch(seed=cfg.run.seed), max_concurrent=t.max_concurrent)
    return BasicVariantGenerator(max_concurrent=t.max_concurrent, random_state=cfg.run.seed)


def build_tuner(cfg: PipelineConfig, model_path: str):  # -> ray.tune.Tuner
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    scheduler = ASHAScheduler(max_t=cfg.train.epochs, grace_period=1, reduction_factor=2) if cfg.tune.asha else None
    # Tune's state where every trial's node can write it: the URI of a run directory in object storage
    storage_path, storage_filesystem = storage.storage_location((Path(cfg.run.run_dir) / "tune" / "ray").resolve())
    trainable = tune.with_parameters(_trial, base=to_dict(cfg), model_path=model_path)
    # The trial function only waits on its TorchTrainer, whose workers reserve the real CPUs; Tune
    # refuses an empty request, so the trial holds a token share.
    trainable = tune.with_resources(trainable, {"CPU": 0.1})
    return tune.Tuner(
        trainable,
        param_space=param_space(cfg),
        tune_config=tune.TuneConfig(
            metric=METRIC, mode="max", num_samples=1 if cfg.tune.searcher == "grid" else cfg.tune.num_samples,
            search_alg=search_alg(cfg), scheduler=scheduler,  # the search algorithm limits concurrency
        ),
        run_config=tune.RunConfig(name="tune", storage_path=storage_path, storage_filesystem=storage_filesystem,
                                  callbacks=[_release_worker_groups(Path(cfg.run.run_dir).resolve() / "tune" / "trials")]),
    )


def run_tune(cfg: PipelineConfig) -> dict[str, Any]:
    """Searches tau and R, then writes trials.csv, best.yaml and heatmap.png under run_dir/tune.

    Synthesis and mining run first when their outputs are missing; existing outputs are shared
    as they are (run `syneg synthesize` again first to finish a partial synthesis).

    Returns:
        {"best": {"temperature", "ratio", METRIC}, "trials": n, "base": the untrained model's dev nDCG@10}
    """
    from syneg_ray.dataset import ensure_pairs
    from syneg_ray.registry import resolve_model
    from syneg_ray.remote import push
    from syneg_ray.runtime import init_ray, stage_dir

    require_dev_scores(cfg)
    given = cfg  # config.yaml and best.yaml keep the user's config, paths as the user wrote them
    out = stage_dir(given, "tune").resolve()
    cfg = with_absolute_paths(cfg)  # Tune runs every trial in a working directory of its own
    run_dir = Path(cfg.run.run_dir)
    ensure_pairs(cfg)
    init_ray(cfg)
    _ensure_inputs(cfg, run_dir)
    push(cfg)  # in object storage, the shared outputs must be there before a trial on another node fetches them
    model_path = resolve_model(cfg.train.model or cfg.encoder.model, cfg.run.cache_dir or None)
    results = build_tuner(cfg, model_path).fit()
    rows = trial_rows(results)
    by_query = {row["trial_id"]: trial_by_query(run_dir / "tune" / "trials", row) for row in rows}
    best = compare_to_best(rows, by_query)
    write_trials(rows, out / "trials.csv")
    if best is None:
        raise TuneError(f"all {len(rows)} trials failed; their errors are in {out / 'trials.csv'} and under {out / 'ray'}")
    best_config = trial_config(given, best["temperature"], best["ratio"], Path(given.run.run_dir))
    (out / "best.yaml").write_text(to_yaml(best_config), encoding="utf-8")
    scores = base_dev_metrics(cfg, model_path)
    base, base_se = scores.get("ndcg@10", math.nan), scores.get("ndcg@10_se", math.nan)
    best_by_query = by_query[best["trial_id"]]
    gain, gain_se, _ = metrics.paired_difference(best_by_query, scores.get(BY_QUERY, {})) if best_by_query else (math.nan, math.nan, 0)
    record = {METRIC: base, METRIC_SE: base_se, "best_gain": gain, "best_gain_se": gain_se}  # the gain: best trial less this model
    (out / "base.json").write_text(json.dumps({k: metrics.json_value(v) for k, v in record.items()}) + "\n", encoding="utf-8")
    plot_heatmap(rows, out / "heatmap.png", base, METRIC)
    logger.info("tune: %d trials; best tau %.4f, R %.2f: dev nDCG@10 %.4f ± %.4f (± the standard error over the dev queries); "
                "%+.4f ± %.4f over the untrained model's %.4f on the same queries%s -> %s", len(rows), best["temperature"],
                best["ratio"], best[METRIC], best[METRIC_SE], gain, gain_se, base, runner_up(rows, best), out)  # fmt: skip
    return {"best": best, "trials": len(rows), "base": base}


def runner_up(rows: list[dict[str, Any]], best: dict[str, Any]) -> str:
    """The next best trial and how far below the best it scores on the same queries, as a log phrase."""
    others = [r for r in rows if r is not best and not math.isnan(r[METRIC])]
    if not others:
        return ""
    second = max(others, key=lambda r: r[METRIC])
    return (f"; the runner-up (tau {second['temperature']:.4f}, R {second['ratio']:.2f}) is {-second[VS_BEST]:.4f} ± "
            f"{second[VS_BEST_SE]:.4f} below the best")


def base_dev_score(cfg: PipelineConfig, model_path: str) -> float:
    """The untrained model's dev nDCG@10, scored as the trials score theirs: the line a trial has to clear."""
    return float(base_dev_metrics(cfg, model_path).get("ndcg@10", math.nan))


def base_dev_metrics(cfg: PipelineConfig, model_path: str) -> dict[str, Any]:
    """The untrained model's dev metrics (`metrics.evaluate_run`'s, and its nDCG@10 per dev query under
    `BY_QUERY`), or {} when the run has no dev queries."""
    from syneg_ray.model import load_model
    from syneg_ray.stages.train.devset import load_devset
    from syneg_ray.stages.train.local import dev_scores

    dev = load_devset(cfg)
    if dev is None:  # require_dev_scores saw a dev split; a run whose dev queries all lost their documents has none
        return {}
    return dev_scores(load_model(model_path), dev, cfg)


def require_dev_scores(cfg: PipelineConfig) -> None:
    """Trials are ranked by dev nDCG@10: without a dev split every trial would end unscored, after all of them ran."""
    if not cfg.train.dev_eval:
        raise ConfigError("tune ranks trials by dev nDCG@10, which train.dev_eval = false turns off; set train.dev_eval=true")
    if cfg.tune.asha and cfg.train.dev_every != 1:
        raise ConfigError(f"tune.asha compares trials after every epoch, which train.dev_every = {cfg.train.dev_every} does not score; "
                          "set train.dev_every=1 or tune.asha=false")
    from syneg_ray.dataset import configured_dev_split

    d = cfg.data
    carves_nothing = d.dev_fraction <= 0 and not configured_dev_split(cfg)
    adds_nothing = not (d.dev_adds_unused and (d.max_pairs or d.limit))  # without a cap every train query gives a pair
    if carves_nothing and adds_nothing:
        raise ConfigError("tune ranks trials by dev nDCG@10 and data.dev_fraction = 0 leaves no dev queries; "
                          "set data.dev_fraction (0.1 carves a tenth of the train queries)")


def _ensure_inputs(cfg: PipelineConfig, run_dir: Path) -> None:
    """Runs synthesis / mining only when their outputs are missing: trials share whatever is there."""
    from syneg_ray.stages.mine import run_mine
    from syneg_ray.stages.synthesize import run_synthesize

    if cfg.tune.ratio_max > 0 and not (run_dir / schema.SYNTHETIC).exists():
        run_synthesize(cfg)
    if cfg.tune.ratio_min < 1 and not (run_dir / schema.MINED).exists():
        run_mine(cfg)


def trial_rows(results) -> list[dict[str, Any]]:
    """One row per trial from a ResultGrid: its parameters, epochs run, last dev nDCG@10 and its standard error."""
    rows = []
    for result in results:
        reported = result.metrics or {}
        rows.append({
            "trial": os.path.basename(result.path),
            "trial_id": reported.get("trial_id", ""),  # the name of its run directory under tune/trials/
            "temperature": result.config["temperature"],
            "ratio": result.config["ratio"],
            "epochs": reported["epoch"] + 1 if "epoch" in reported else 0,  # Tune counts the reports, fewer with train.dev_every
            METRIC: float(reported.get(METRIC, float("nan"))),
            METRIC_SE: float(reported.get(METRIC_SE, float("nan"))),
            "error": str(result.error) if result.error else "",
        })  # fmt: skip
    return sorted(rows, key=lambda r: (r["temperature"], r["ratio"]))


def trial_by_query(trials_dir: Path, row: dict[str, Any]) -> dict[str, float]:
    """The trial's nDCG@10 per dev query at its last epoch, written by its rank 0 (train/loop.py); {}
    for a trial that failed before its first epoch ended."""
    from syneg_ray.stages.train.loop import DEV_BY_QUERY

    path = trials_dir / row["trial_id"] / "train" / DEV_BY_QUERY
    if not row["trial_id"] or not storage.published(path):
        return {}
    return json.loads(storage.fetch(path).read_text(encoding="utf-8"))["ndcg@10"]


def compare_to_best(rows: list[dict[str, Any]], by_query: Mapping[str, Mapping[str, float]]) -> dict[str, Any] | None:
    """Adds to every row its dev nDCG@10 less the best trial's over the same dev queries, with the
    standard error of that paired difference (`metrics.paired_difference`; nan for a trial without
    per-query scores in `by_query`, which maps trial ids to `trial_by_query`'s); returns the best row,
    or None when no trial was scored."""
    scored = [r for r in rows if not math.isnan(r[METRIC])]
    if not scored:
        return None
    best = max(scored, key=lambda r: r[METRIC])
    reference = by_query.get(best["trial_id"], {})
    for row in rows:
        own = by_query.get(row["trial_id"], {}) if reference else {}
        row[VS_BEST], row[VS_BEST_SE], _ = metrics.paired_difference(own, reference) if own else (math.nan, math.nan, 0)
    return best


def write_trials(rows: list[dict[str, Any]], path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
