"""`syneg <command>`: load the config, set up logging and Ray, call one run_* function.

    syneg run        [--config pipeline.yaml] [--yes] [section.key=value ...]   the whole pipeline
                     (prints its plan first; refuses one over run.max_hours unless --yes)
    syneg synthesize | mine | mix | train | evaluate | tune             one stage
    syneg models                                                         the bundled model names

    syneg --version                                                      the installed version

`python -m syneg_ray ...` is the same command (the Ray job entrypoint uses it).
Shortcut flags (--dataset, --model, --split, ...) are sugar for the matching overrides.
Each command is one function of the Python API (api.py: COMMANDS, `syneg_ray.mine(cfg)`, ...), called
the same way. Ray's own output is off unless -v; `syneg run` ends with the metric table.
Every SynegError is printed as one line without a traceback, exit code 2. SIGTERM (`ray job stop`,
a pod eviction) unwinds like Ctrl-C: `finally` blocks and `with` exits run (a mirrored s3:// run
directory is copied back), exit code 143.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from syneg_ray import signals
from syneg_ray.api import COMMANDS, call
from syneg_ray.config import Engine, PipelineConfig, load_config, to_yaml
from syneg_ray.errors import SynegError

logger = logging.getLogger("syneg_ray")

# --flag -> override key
SHORTCUTS = {
    "dataset": "data.dataset",
    "data_dir": "data.data_dir",
    "split": None,  # resolved per command below
    "model": None,  # resolved per command below
    "run_dir": "run.run_dir",
    "limit": "data.limit",
    "seed": "run.seed",
    "engine": "synthesize.engine",
}
MODEL_KEY = {"evaluate": "evaluate.model", "synthesize": "synthesize.model", "train": "train.model", "mine": "encoder.model"}
SPLIT_KEY = {"evaluate": "evaluate.split"}  # every other command reads its pairs from data.train_split

SMOKE_TEST = [  # a config that finishes in a minute or two on a laptop
    "data.limit=16",
    "synthesize.negatives_per_pair=2",
    "synthesize.max_new_tokens=256",
    "mix.n_negatives=2",
    "train.batch_size=8",
    "tune.num_samples=2",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="syneg", description="SyNeg hard negatives and dense retriever training on Ray")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--config", help="pipeline YAML (any subset of its sections)")
        p.add_argument("overrides", nargs="*", metavar="section.key=value", help="e.g. train.temperature=0.02")
        p.add_argument("--dataset", help="BEIR name or folder (data.dataset)")
        p.add_argument("--data-dir", dest="data_dir", help="folder of BEIR datasets (data.data_dir)")
        p.add_argument("--run-dir", dest="run_dir", help="output folder (run.run_dir)")
        p.add_argument("--limit", type=int, help="use only the first N train pairs (data.limit)")
        p.add_argument("--seed", type=int, help="root seed (run.seed)")
        if name in MODEL_KEY:
            p.add_argument("--model", help=f"model name, path or 'bm25' ({MODEL_KEY[name]})")
        if name == "evaluate":
            p.add_argument("--split", help="qrels split to score (evaluate.split)")
        else:
            p.add_argument("--split", help="qrels split the (query, positive) pairs come from (data.train_split)")
        if name == "synthesize":
            p.add_argument("--engine", choices=[e.value for e in Engine], help="synthesize.engine")
        p.add_argument("--smoke-test", action="store_true", help="tiny sizes: a quick end-to-end check")
        p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
        if name == "run":
            p.add_argument("--yes", action="store_true", help="start even when the plan exceeds run.max_hours")
        p.add_argument("-v", "--verbose", action="store_true",
                       help="debug logs, and Ray's own output: its INFO logs and Ray Data's progress per operator")
    sub.add_parser("models", help="list the bundled model names")
    return parser


def version() -> str:
    """The installed distribution's version (pyproject.toml's), or "unknown" when run from a bare checkout."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("syneg-ray")
    except PackageNotFoundError:
        return "unknown"


def resolve(args: argparse.Namespace) -> PipelineConfig:
    """The config a command runs with: file, then --smoke-test sizes, then shortcut flags, then overrides."""
    overrides = list(SMOKE_TEST) if args.smoke_test else []
    for flag, key in SHORTCUTS.items():
        value = getattr(args, flag, None)
        if value is None:
            continue
        if key is None:
            key = MODEL_KEY[args.command] if flag == "model" else SPLIT_KEY.get(args.command, "data.train_split")
        overrides.append(f"{key}={value}")
    if args.command == "synthesize" and args.limit is not None:
        overrides.append("synthesize.max_pairs=0")  # `synthesize --limit N` means N pairs, not the default cap
    return load_config(args.config, [*overrides, *args.overrides])


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "models":
        from syneg_ray.registry import REGISTRY

        for name, model in REGISTRY.items():
            sys.stdout.write(f"{name:22s} {model.description}\n{'':22s} install: {model.install}\n")
        return 0
    from syneg_ray.runtime import setup_logging

    setup_logging(args.verbose)
    previous = signals.install()  # SIGTERM (ray job stop, pod eviction) unwinds: the cleanups below run
    try:
        cfg = resolve(args)
        if args.print_config:
            sys.stdout.write(to_yaml(cfg))
            return 0
        result = call(args.command, cfg, **({"yes": args.yes} if args.command == "run" else {}))  # the API's path too
        if args.command == "run":
            _print_metrics(result)
    except SynegError as exc:
        sys.stderr.write(f"syneg {args.command}: error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"syneg {args.command}: interrupted; rerun the same command to resume\n")
        return 130
    except signals.Terminated as exc:
        sys.stderr.write(f"syneg {args.command}: terminated (signal {exc.signum}); rerun the same command to resume\n")
        return exc.code
    finally:
        signals.restore(previous)
    return 0


def _print_metrics(summaries: dict) -> None:
    """The run's metric table, last on stdout: the answer a run is for, after the logs of how it went."""
    from syneg_ray.report import metrics_table

    table = metrics_table((summaries or {}).get("evaluate") or {})
    if table:
        sys.stdout.write(f"\n{table}\n")
        sys.stdout.flush()


if __name__ == "__main__":
    raise SystemExit(main())
