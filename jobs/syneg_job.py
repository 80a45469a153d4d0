"""Kept for older submit commands: `python jobs/syneg_job.py STAGE ...` is `python -m syneg_ray STAGE ...`.

The job entrypoint is the CLI itself; declare its resources so the driver runs on a worker node, not
on the head (the cluster files give the head no CPU):

    ray job submit --address http://HEAD:8265 --working-dir . --runtime-env jobs/runtime_env.yaml \\
        --entrypoint-num-cpus=1 --entrypoint-memory=8000000000 -- \\
        python -m syneg_ray run --config configs/scifact.yaml run.run_dir=/mnt/shared/runs/scifact

`--entrypoint-num-cpus=1` (a RayJob: `entrypointNumCpus: 1`) makes Ray schedule the driver on a node
with a free CPU; `--entrypoint-memory` (bytes; RayJob `entrypointMemory`) reserves the memory the
driver's own work needs (BM25, single-shard search, writing embeddings, evaluation). Inside a job
RAY_ADDRESS is set, so every stage joins the job's cluster. SIGTERM from `ray job stop` unwinds the
stage (exit code 143): a mirrored s3:// or gs:// run directory is copied back before the exit, in
the RAY_JOB_STOP_WAIT_TIME_S grace period (Ray's default is 3 s; jobs/runtime_env.yaml sets 120).
"""

from __future__ import annotations

from syneg_ray.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
