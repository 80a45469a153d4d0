"""A real three-node Ray cluster on this machine whose nodes share no files, with the dataset, the
cache and the run directory on a real S3-compatible server (loopback).

The head has no CPU, so `ray job submit --entrypoint-num-cpus=1` puts the driver on a worker node.
Each worker node runs in a mount namespace of its own with a private tmpfs on /tmp, where its Ray
session, its runtime_env working dir and every mirror (`storage.node_dir`) live: no node can read
another's local files, so whatever a stage's actors or train workers need must come from the bucket.
Train workers need two CPUs and each worker node has three, so the two ranks land on two nodes.
Every node uses the head's temp-dir path (each in its own /tmp): some of Ray's processes on a
worker node look for its sockets under the path the head registered.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from syneg_ray import schema
from tests.conftest import S3_ENV
from tests.integration.test_job_submit import free_port, stop_cluster

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow

if shutil.which("unshare") is None or os.geteuid() != 0:
    pytest.skip("needs unshare and root for private /tmp mounts", allow_module_level=True)


def _wait_for_nodes(gcs: int, n: int, env: dict) -> None:
    probe = f"import ray; ray.init(address='127.0.0.1:{gcs}', logging_level='ERROR'); print(sum(x['Alive'] for x in ray.nodes()))"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120, check=False)
        if out.stdout.strip().splitlines()[-1:] == [str(n)]:
            return
        time.sleep(2)
    pytest.fail(f"the cluster did not reach {n} nodes: {out.stdout[-500:]} {out.stderr[-1500:]}")


@pytest.fixture
def cluster(s3_server: str):
    """Head (0 CPU) + two worker nodes with private /tmp; yields (dashboard address, client env)."""
    env = {**os.environ, **S3_ENV, "AWS_ENDPOINT_URL": s3_server, "RAY_AUTH_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}
    gcs, dashboard = free_port(), free_port()
    temp = Path("/tmp") / f"ray-{gcs}"
    subprocess.run(
        [BIN / "ray", "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}", "--num-cpus=0",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
         f"--dashboard-agent-listen-port={free_port()}", "--object-store-memory=500000000", f"--temp-dir={temp}",
         "--disable-usage-stats"],
        check=True, env=env, capture_output=True, timeout=120,
    )  # fmt: skip
    workers = []
    for _ in range(2):
        start = (f"mount -t tmpfs tmpfs /tmp && exec {BIN / 'ray'} start --address=127.0.0.1:{gcs} --node-ip-address=127.0.0.1 "
                 f"--num-cpus=3 --object-store-memory=500000000 --dashboard-agent-listen-port={free_port()} "
                 f"--metrics-export-port={free_port()} --temp-dir={temp} --disable-usage-stats --block")  # fmt: skip
        workers.append(subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", start], env=env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))  # fmt: skip
    try:
        _wait_for_nodes(gcs, 3, env)
        yield f"http://127.0.0.1:{dashboard}", env
    finally:
        for worker in workers:
            tree = [worker, *psutil.Process(worker.pid).children(recursive=True)] if worker.poll() is None else []
            for proc in tree:
                proc.kill()
            psutil.wait_procs([psutil.Process(p.pid) for p in tree if psutil.pid_exists(p.pid)], timeout=30)
        stop_cluster(temp)


def _bucket(server: str, name: str) -> pafs.S3FileSystem:
    fs = pafs.S3FileSystem(endpoint_override=server, access_key=S3_ENV["AWS_ACCESS_KEY_ID"],
                           secret_key=S3_ENV["AWS_SECRET_ACCESS_KEY"], region=S3_ENV["AWS_DEFAULT_REGION"],
                           allow_bucket_creation=True)  # fmt: skip
    fs.create_dir(name)
    return fs


def _keys(fs: pafs.S3FileSystem, prefix: str) -> list[str]:
    return [i.path for i in fs.get_file_info(pafs.FileSelector(prefix, recursive=True, allow_not_found=True))
            if i.type == pafs.FileType.File]  # fmt: skip


def _read(fs: pafs.S3FileSystem, key: str) -> bytes:
    with fs.open_input_stream(key) as stream:
        return stream.read()


def _submit(address: str, env: dict, server: str, overrides: list[str], wait: bool = True,
            command: str = "run") -> subprocess.CompletedProcess:  # fmt: skip
    runtime_env = {
        "env_vars": {**S3_ENV, "AWS_ENDPOINT_URL": server, "RAY_AUTH_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false",
                     "RAY_JOB_STOP_WAIT_TIME_S": "120"},  # as jobs/runtime_env.yaml: time for the push after SIGTERM
        "excludes": ["runs/", ".venv*/", ".cache/", "*.npy", ".git/", "datasets/"],
    }
    command = [BIN / "ray", "job", "submit", "--address", address, "--working-dir", str(ROOT),
               "--runtime-env-json", json.dumps(runtime_env), "--entrypoint-num-cpus=1",
               *([] if wait else ["--no-wait"]), "--", sys.executable, "-m", "syneg_ray", command,
               *(["--yes"] if command == "run" else []), *overrides]  # fmt: skip
    for _ in range(30):  # the head accepts requests a few seconds before its job agent can take one
        result = subprocess.run(command, env=env, check=False, capture_output=True, text=True, timeout=1800)
        if "No available agent" not in result.stderr:
            return result
        time.sleep(2)
    return result


def _job_id(submitted: subprocess.CompletedProcess) -> str:
    found = re.search(r"raysubmit_[A-Za-z0-9]+", submitted.stdout + submitted.stderr)
    assert found, submitted.stdout[-2000:] + submitted.stderr[-2000:]
    return found.group(0)


def _job_logs(address: str, env: dict, submitted: subprocess.CompletedProcess) -> str:
    """The failed job's own log (the submit output holds only its last lines), for the assertion message."""
    job = _job_id(submitted)
    logs = subprocess.run([BIN / "ray", "job", "logs", "--address", address, job], env=env, capture_output=True, text=True, timeout=120, check=False)
    return "\n".join(line for line in logs.stdout.splitlines() if "libpython" not in line)[-15000:]


def _attempts(fs: pafs.S3FileSystem, run: str) -> list[dict]:
    keys = _keys(fs, f"{run}/train/attempts")
    return [json.loads(line) for key in keys for line in _read(fs, key).decode().splitlines() if line]


def test_a_job_runs_and_resumes_across_nodes_that_share_only_s3(cluster, s3_server: str, scifact_small: Path, tmp_path: Path) -> None:
    address, env = cluster
    bucket = "syneg-cluster"
    fs = _bucket(s3_server, bucket)
    pafs.copy_files(str(scifact_small), f"{bucket}/datasets/scifact_small", source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=fs)  # fmt: skip
    run = f"{bucket}/run"
    overrides = [
        f"run.run_dir=s3://{run}", f"run.cache_dir=s3://{bucket}/cache", f"data.data_dir=s3://{bucket}/datasets",
        "data.dataset=scifact_small", "data.limit=16", "data.dev_fraction=0.2", "synthesize.max_pairs=2",
        "synthesize.negatives_per_pair=2", "synthesize.max_new_tokens=200", "mine.num_negatives=3", "mix.n_negatives=2",
        "train.batch_size=2", "train.workers=2", "train.cpus_per_worker=2", "encoder.actors=1",
    ]  # fmt: skip

    first = _submit(address, env, s3_server, [*overrides, "train.epochs=1"])
    assert first.returncode == 0, _job_logs(address, env, first)
    keys = set(_keys(fs, run))
    assert f"{run}/mix/instances.parquet" in keys and f"{run}/report.md" in keys
    assert json.loads(_read(fs, f"{run}/evaluate/train-test/metrics.json"))["queries"] == 20
    attempts = _attempts(fs, run)
    assert sorted(a["rank"] for a in attempts) == [0, 1]
    assert len({a["node"] for a in attempts}) == 2  # the ranks ran on two nodes, neither of which saw the other's files
    model = tmp_path / "model"
    pafs.copy_files(f"{run}/train/model", str(model), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    from sentence_transformers import SentenceTransformer

    assert SentenceTransformer(str(model), device="cpu").encode(["a claim"]).shape == (1, 384)
    synthesized = _read(fs, f"{run}/synthesize/_COMPLETE.json")
    synthesis_files = _keys(fs, f"{run}/synthesize")

    # A longer training (another config: the first one's model and checkpoints are removed, in the
    # bucket too) is stopped after its first checkpoint (`ray job stop`), then submitted again.
    longer = [*overrides, "train.epochs=4"]
    earlier = set(_keys(fs, f"{run}/train/ray"))
    stopped = _submit(address, env, s3_server, longer, wait=False)
    assert stopped.returncode == 0, stopped.stderr[-2000:]
    job = _job_id(stopped)
    deadline = time.monotonic() + 900
    while earlier & set(_keys(fs, f"{run}/train/ray")):  # the first training's state, removed by the second
        assert time.monotonic() < deadline, "the first training's checkpoints were not removed"
        time.sleep(0.5)
    # a checkpoint counts once Ray Train's snapshot lists it (what a new fit() restores from)
    snapshot = f"{run}/train/ray/train/checkpoint_manager_snapshot.json"
    while snapshot not in _keys(fs, f"{run}/train/ray") or not json.loads(_read(fs, snapshot)).get("checkpoint_results"):
        assert time.monotonic() < deadline, "no checkpoint of the longer training appeared"
        time.sleep(0.5)
    subprocess.run([BIN / "ray", "job", "stop", "--address", address, job], env=env, check=True, capture_output=True, timeout=120)
    assert f"{run}/train/summary.json" not in _keys(fs, run)  # stopped in the middle of training

    resumed = _submit(address, env, s3_server, longer)
    assert resumed.returncode == 0, _job_logs(address, env, resumed)
    history = json.loads(_read(fs, f"{run}/train/history.json"))
    assert len(history["epochs"]) == 4
    rank0 = sorted((a for a in _attempts(fs, run) if a["rank"] == 0), key=lambda a: a["time"])
    assert rank0[0]["start_epoch"] == 0 and rank0[-1]["start_epoch"] >= 1  # the resubmission went on from a checkpoint
    assert _read(fs, f"{run}/synthesize/_COMPLETE.json") == synthesized  # synthesis was not run again
    assert _keys(fs, f"{run}/synthesize") == synthesis_files  # no pair synthesized twice
    keys = pq.read_table(f"{run}/{schema.SYNTHETIC}", filesystem=fs, columns=["key"]).column("key").to_pylist()
    assert len(set(keys)) == 2

    # Tune on the same run directory. Its trials (0.1 CPU each) start beside the driver, where 2-CPU
    # train workers find no room, so the workers run on the other node: they read the instances and
    # dev qrels their trial published under its own URI, never the trial's local folder.
    tuning = [*overrides, "train.epochs=1", "train.workers=1", "tune.searcher=grid", "tune.grid_points=2",
              "tune.temperature_min=0.02", "tune.temperature_max=0.1", "tune.ratio_min=0", "tune.ratio_max=0",
              "tune.max_concurrent=2"]  # fmt: skip
    tuned = _submit(address, env, s3_server, tuning, command="tune")
    assert tuned.returncode == 0, _job_logs(address, env, tuned)
    trials = list(csv.DictReader(io.StringIO(_read(fs, f"{run}/tune/trials.csv").decode())))
    assert len(trials) == 2 and all(t["error"] == "" and 0.0 <= float(t["dev_ndcg@10"]) <= 1.0 for t in trials), trials
    keys = set(_keys(fs, f"{run}/tune"))
    instances = [k for k in keys if k.startswith(f"{run}/tune/trials/") and k.endswith(f"/{schema.INSTANCES}")]
    assert len(instances) == 2  # each trial's, published for its workers
    assert any(k.startswith(f"{run}/tune/ray/") for k in keys)  # Tune's own state at the URI
