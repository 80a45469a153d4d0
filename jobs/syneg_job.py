"""Entrypoint for `ray job submit`: run one stage (or the whole pipeline) on the cluster.

    ray job submit --address http://HEAD:8265 --working-dir . --runtime-env jobs/runtime_env.yaml -- \
        python jobs/syneg_job.py mine --config configs/scifact.yaml run.run_dir=s3://bucket/runs/scifact

The run directory may be a local path shared by the nodes or a pyarrow URI (s3://, gs://): then
it is mirrored into the driver's local disk for the stage and the results are copied back, which
serves a single-node job; Ray Train workers on other nodes need the shared path.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from syneg_ray.cli import COMMANDS
from syneg_ray.config import load_config
from syneg_ray.errors import SynegError
from syneg_ray.remote import local_run_dir
from syneg_ray.runtime import init_ray, setup_logging


def main() -> int:
    parser = argparse.ArgumentParser(description="run a syneg-ray stage as a Ray job")
    parser.add_argument("stage", choices=sorted(COMMANDS))
    parser.add_argument("--config")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    setup_logging()
    try:
        with local_run_dir(load_config(args.config, args.overrides)) as cfg:
            init_ray(cfg)  # inside a job RAY_ADDRESS is set: this joins the job's cluster
            module, _, function = COMMANDS[args.stage][0].partition(":")
            getattr(importlib.import_module(module), function)(cfg)
    except SynegError as exc:
        sys.stderr.write(f"syneg job {args.stage}: error: {exc}\n")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
