"""A real Ray head on 127.0.0.1, a tiny pipeline submitted with `ray job submit`, its outputs checked."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head(tmp_path: Path):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    gcs, dashboard = free_port(), free_port()
    temp = Path("/tmp") / f"ray-{gcs}"  # Ray's socket paths must stay short
    subprocess.run(
        [BIN / "ray", "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}", "--num-cpus=4",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
         f"--dashboard-agent-listen-port={free_port()}",  # the default (52365) clashes with any other Ray here
         "--object-store-memory=1000000000", f"--temp-dir={temp}", "--disable-usage-stats"],
        check=True, env=env, capture_output=True, timeout=120,
    )
    address = f"http://127.0.0.1:{dashboard}"
    try:
        yield address, env
    finally:
        stop_cluster(temp)


def stop_cluster(temp: Path) -> None:
    """Kills only this head's processes (`ray stop` would take down every Ray cluster on the machine)."""
    mine = [p for p in psutil.process_iter(["cmdline"]) if str(temp) in " ".join(p.info["cmdline"] or [])]
    for proc in mine:
        proc.kill()
    psutil.wait_procs(mine, timeout=30)


def test_pipeline_runs_as_a_ray_job(ray_head, tmp_path: Path, scifact_small: Path) -> None:
    address, env = ray_head
    run_dir = tmp_path / "run"
    runtime_env = {
        "env_vars": {"RAY_AUTH_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false", "SYNEG_CACHE": str(tmp_path / "cache")},
        "excludes": ["runs/", ".venv*/", ".cache/", "*.npy", ".git/"],
    }
    overrides = [
        f"run.run_dir={run_dir}", f"data.dataset={scifact_small}", "data.limit=8", "data.dev_fraction=0.2",
        "synthesize.negatives_per_pair=2", "synthesize.max_new_tokens=200", "mine.num_negatives=3",
        "mix.n_negatives=2", "train.batch_size=4", "encoder.actors=1",
    ]
    command = [BIN / "ray", "job", "submit", "--address", address, "--working-dir", str(ROOT),
               "--runtime-env-json", json.dumps(runtime_env), "--entrypoint-num-cpus=1", "--",
               sys.executable, "-m", "syneg_ray", "run", *overrides]  # fmt: skip
    for _ in range(30):  # the head accepts requests a few seconds before its job agent can take one
        result = subprocess.run(command, env=env, check=False, capture_output=True, text=True, timeout=1500)
        if "No available agent" not in result.stderr:
            break
        time.sleep(2)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "succeeded" in result.stdout
    assert pq.read_table(run_dir / "mix" / "instances.parquet").num_rows > 0
    assert (run_dir / "train" / "model" / "modules.json").is_file()
    assert json.loads((run_dir / "evaluate" / "train-test" / "metrics.json").read_text())["queries"] == 20
    assert (run_dir / "report.md").read_text().startswith("# syneg-ray run")
