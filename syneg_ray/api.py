"""The Python API: one function per `syneg` command, run through the same code path as the CLI.

Each function takes a `PipelineConfig` (from `load_config`), runs the command's run_* function
exactly as `syneg <command>` does (optional modules checked first, an s3:// or gs:// run directory
mirrored locally and copied back) and returns what the command produced. Ray is started or joined
on first use (`runtime.init_ray`: `ray.address`, else a local Ray sized for this machine), quiet
unless `SYNEG_VERBOSE=1`; `logging.basicConfig(level=logging.INFO)` shows each stage's summary line.

Example:
    ```python
    import syneg_ray

    cfg = syneg_ray.load_config("configs/scifact.yaml", ["mix.ratio=0.5"])
    syneg_ray.synthesize(cfg)
    syneg_ray.mine(cfg)
    syneg_ray.mix(cfg)
    model_dir = syneg_ray.train(cfg)
    metrics = syneg_ray.evaluate(cfg, model=str(model_dir))
    ```
"""

from __future__ import annotations

import importlib
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from syneg_ray import schema
from syneg_ray.config import PipelineConfig

if TYPE_CHECKING:
    import ray.data

__all__ = ["evaluate", "mine", "mix", "read_instances", "read_negatives", "run", "synthesize", "train", "tune"]

# command -> ("module:function", help); each function takes the PipelineConfig and returns a summary.
# The CLI's subcommands are built from this table, so a command and its Python function cannot drift.
COMMANDS = {
    "run": ("syneg_ray.pipeline:run_pipeline", "synthesize -> mine -> mix -> train -> evaluate into one run directory"),
    "synthesize": ("syneg_ray.stages.synthesize:run_synthesize", "LLM-written hard negatives for every train pair"),
    "mine": ("syneg_ray.stages.mine:run_mine", "retrieved hard negatives (dense ANN and BM25)"),
    "mix": ("syneg_ray.stages.mix:run_mix", "training instances from synthetic and retrieved negatives at ratio R"),
    "train": ("syneg_ray.stages.train.trainer:run_train", "InfoNCE fine-tuning with Ray Train"),
    "evaluate": ("syneg_ray.stages.evaluate:run_evaluate", "BEIR metrics of a model (or bm25) on a split"),
    "tune": ("syneg_ray.stages.tune:run_tune", "Ray Tune over temperature and R, scored on the dev split"),
}

# optional modules a command needs at its end, checked before it starts (a missing one would
# otherwise stop it after the training it plots)
NEEDS = {"run": ("matplotlib",), "train": ("matplotlib",), "tune": ("matplotlib",)}


def call(command: str, cfg: PipelineConfig, **kwargs: Any) -> Any:
    """Runs one command's run_* function on `cfg`: the body of `syneg <command>` and of every API function.

    Args:
        command: a key of COMMANDS.
        cfg: the resolved config.
        **kwargs: passed to the run_* function (`yes` for run, `replace_other_config` for train).

    Returns:
        What the run_* function returns.

    Raises:
        MissingExtraError: an optional module the command needs is not installed.

    Example:
        >>> call("mix", load_config(None, ["run.run_dir=runs/a"]))  # doctest: +SKIP
    """
    from syneg_ray.extras import check
    from syneg_ray.remote import local_run_dir

    check(*NEEDS.get(command, ()))
    module, _, function = COMMANDS[command][0].partition(":")
    with local_run_dir(cfg) as local_cfg:  # an s3:// or gs:// run directory is mirrored, then copied back
        return getattr(importlib.import_module(module), function)(local_cfg, **kwargs)


def synthesize(cfg: PipelineConfig) -> dict[str, Any]:
    """LLM-written hard negatives for every train pair (`syneg synthesize`), resumable.

    Writes `run_dir/synthesize/negatives.parquet` (a folder of part files); pairs already done are
    not generated again.

    Args:
        cfg: the pipeline config; reads its `data`, `synthesize` and `ray` sections.

    Returns:
        Summary: pairs, ok, failed, valid_rate, valid_json_rate, negatives, output_tokens,
        tokens_per_s, rejects, and `output`, the path of the Parquet folder.

    Raises:
        EngineError: the engine failed as a whole (model cannot load, server unreachable).

    Example:
        ```python
        import syneg_ray

        cfg = syneg_ray.load_config(overrides=["data.dataset=scifact", "data.limit=16"])
        summary = syneg_ray.synthesize(cfg)
        print(summary["valid_rate"], summary["output"])
        ```
    """
    return call("synthesize", cfg)


def mine(cfg: PipelineConfig) -> dict[str, Any]:
    """Retrieved hard negatives for every train pair (`syneg mine`): dense ANN and/or BM25, per `mine.sources`.

    Args:
        cfg: the pipeline config; reads its `data`, `encoder` and `mine` sections.

    Returns:
        Summary: queries, pairs, avg_negatives, skipped_share, short_queries, empty_queries,
        per_source, seconds, and `path`, the written `run_dir/mine/negatives.parquet`.

    Example:
        ```python
        import syneg_ray

        cfg = syneg_ray.load_config(overrides=["data.dataset=scifact", "mine.sources=[bm25]"])
        summary = syneg_ray.mine(cfg)
        print(f"{summary['avg_negatives']:.1f} negatives per query -> {summary['path']}")
        ```
    """
    return call("mine", cfg)


def mix(cfg: PipelineConfig) -> dict[str, Any]:
    """Training instances from synthetic and retrieved negatives at ratio `mix.ratio` (`syneg mix`).

    Writes `run_dir/mix/instances.parquet` and `run_dir/mix/stats.json`.

    Args:
        cfg: the pipeline config; reads its `data` and `mix` sections.

    Returns:
        The mix statistics (strategy, ratio, n_negatives, instances, realized ratio, ...), as in stats.json.

    Raises:
        DataError: an input the strategy needs is missing or malformed.

    Example:
        ```python
        import syneg_ray

        cfg = syneg_ray.load_config("configs/scifact.yaml", ["mix.strategy=hybrid", "mix.ratio=0.5"])
        stats = syneg_ray.mix(cfg)
        instances = syneg_ray.read_instances(cfg)  # a ray.data.Dataset of the written rows
        ```
    """
    return call("mix", cfg)


def train(cfg: PipelineConfig, *, replace_other_config: bool = False) -> Path:
    """InfoNCE fine-tuning with Ray Train on the mixed instances (`syneg train`), resumable.

    Args:
        cfg: the pipeline config; reads its `data`, `encoder` and `train` sections.
        replace_other_config: when `run_dir/train` holds a run of another config, delete it and
            train anew instead of raising ResumeError.

    Returns:
        The folder of the trained sentence-transformers model (`run_dir/train/model`); its
        training summary is `summary.json` beside it.

    Raises:
        ResumeError: `run_dir/train` holds a run of another config and `replace_other_config` is False.

    Example:
        ```python
        import syneg_ray
        from sentence_transformers import SentenceTransformer

        cfg = syneg_ray.load_config("configs/scifact.yaml")
        model_dir = syneg_ray.train(cfg)
        model = SentenceTransformer(str(model_dir))
        ```
    """
    return Path(call("train", cfg, replace_other_config=replace_other_config)["model"])


def evaluate(cfg: PipelineConfig, model: str | None = None, split: str | None = None) -> dict[str, float]:
    """BEIR metrics of a model on a qrels split (`syneg evaluate`).

    Writes `metrics.json` and `run.trec` into `run_dir/evaluate/<model>-<split>/`.

    Args:
        cfg: the pipeline config; reads its `data`, `encoder` and `evaluate` sections.
        model: a bundled name, a model folder, or "bm25"; None keeps `evaluate.model` (by default
            the run's trained model when there is one, else `encoder.model`).
        split: the qrels split to score; None keeps `evaluate.split` (by default `data.eval_split`).

    Returns:
        The metrics: nDCG@10, Recall@100, MRR@10, MAP@100.

    Raises:
        ConfigError: scoring the run's trained model on the split it was trained on.

    Example:
        ```python
        import syneg_ray

        cfg = syneg_ray.load_config(overrides=["data.dataset=scifact"])
        scores = syneg_ray.evaluate(cfg, model="bm25", split="test")
        print(f"nDCG@10 {scores['ndcg@10']:.4f}")
        ```
    """
    changes = {k: v for k, v in (("model", model), ("split", split)) if v is not None}
    return call("evaluate", replace(cfg, evaluate=replace(cfg.evaluate, **changes)) if changes else cfg)


def run(cfg: PipelineConfig, *, yes: bool = False) -> dict[str, Any]:
    """The whole pipeline (`syneg run`): synthesize -> mine -> mix -> train -> evaluate, then report.md.

    Resumable: a stage already complete for this config is skipped, one cut off resumes from what it
    wrote. Prints the plan (time per stage) first.

    Args:
        cfg: the pipeline config.
        yes: start even when the plan exceeds `run.max_hours`.

    Returns:
        {stage: summary} for every stage; `result["evaluate"]` holds the base and trained metrics.

    Raises:
        PlanError: the plan exceeds `run.max_hours` and `yes` is False.

    Example:
        ```python
        import syneg_ray

        cfg = syneg_ray.load_config("configs/scifact.yaml", ["run.run_dir=runs/r05", "mix.ratio=0.5"])
        result = syneg_ray.run(cfg)
        print(result["evaluate"]["trained"]["ndcg@10"])  # the table is in runs/r05/report.md
        ```
    """
    return call("run", cfg, yes=yes)


def tune(cfg: PipelineConfig) -> dict[str, Any]:
    """Ray Tune over the temperature and R, scored on the dev split (`syneg tune`).

    Writes trials.csv, best.yaml and heatmap.png under `run_dir/tune`.

    Args:
        cfg: the pipeline config; the search space is its `tune` section.

    Returns:
        {"best": {"temperature", "ratio", "ndcg@10"}, "trials": n, "base": the untrained model's dev nDCG@10}.

    Raises:
        TuneError: every trial failed.

    Example:
        ```python
        import syneg_ray

        cfg = syneg_ray.load_config("configs/scifact.yaml", ["tune.num_samples=8"])
        best = syneg_ray.tune(cfg)["best"]
        cfg = syneg_ray.load_config("runs/default/tune/best.yaml")  # train with the best settings
        ```
    """
    return call("tune", cfg)


def read_instances(cfg: PipelineConfig) -> ray.data.Dataset:
    """The training instances `mix` wrote (`run_dir/mix/instances.parquet`) as a Ray Dataset.

    Columns follow `schema.Instance`: query, positive, positive_id, negatives, negative_ids,
    negative_sources, ... Starts or joins Ray as the stages do.

    Args:
        cfg: the pipeline config; only `run.run_dir` and the `ray` section are read.

    Returns:
        A lazy `ray.data.Dataset`; nothing is read until it is consumed.

    Example:
        ```python
        import syneg_ray

        cfg = syneg_ray.load_config("configs/scifact.yaml")
        ds = syneg_ray.read_instances(cfg)
        print(ds.count(), ds.take(1)[0]["negative_sources"])
        ```
    """
    return _read_parquet(cfg, schema.INSTANCES, "run `syneg mix` (syneg_ray.mix) first")


def read_negatives(cfg: PipelineConfig, source: str = "mined") -> ray.data.Dataset:
    """The negatives a stage wrote, as a Ray Dataset: `mined` (run_dir/mine) or `synthetic` (run_dir/synthesize).

    The synthetic file holds every row synthesis committed, failed ones (status != "ok") and rows of
    other LLMs or seeds included; `mix` is what picks among them.

    Args:
        cfg: the pipeline config; only `run.run_dir` and the `ray` section are read.
        source: "mined" or "synthetic".

    Returns:
        A lazy `ray.data.Dataset` with the columns of `schema.MinedRow` or `schema.SyntheticRow`.

    Raises:
        ValueError: an unknown source.

    Example:
        ```python
        import syneg_ray

        cfg = syneg_ray.load_config("configs/scifact.yaml")
        ok = syneg_ray.read_negatives(cfg, "synthetic").filter(lambda row: row["status"] == "ok")
        print(ok.count(), syneg_ray.read_negatives(cfg, "mined").schema())
        ```
    """
    paths = {"mined": (schema.MINED, "mine"), "synthetic": (schema.SYNTHETIC, "synthesize")}
    if source not in paths:
        raise ValueError(f"read_negatives: source {source!r} is not one of {sorted(paths)}")
    relative, command = paths[source]
    return _read_parquet(cfg, relative, f"run `syneg {command}` (syneg_ray.{command}) first")


def _read_parquet(cfg: PipelineConfig, relative: str, hint: str) -> ray.data.Dataset:
    import ray.data

    from syneg_ray.errors import DataError
    from syneg_ray.runtime import init_ray

    path = Path(cfg.run.run_dir) / relative
    if not path.exists():
        raise DataError.at(path, None, f"not written yet; {hint}")
    init_ray(cfg)  # before Ray Data would start a default Ray of its own
    return ray.data.read_parquet(str(path))
