"""A real local Ray, started as the stages start it, runs a small Ray Data job in the driver and one
inside a task (as a Tune trial does): by default neither prints anything of Ray's; -v brings it back."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# stdout is a pipe here: the case where Ray Data logs a block of progress lines every ten seconds
SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    from syneg_ray.config import load_config
    from syneg_ray.runtime import init_ray, setup_logging

    setup_logging(verbose="-v" in sys.argv)
    init_ray(load_config(None, ["ray.num_cpus=2", "ray.object_store_gb=0.2"]))
    import ray

    def slow(batch):
        time.sleep(0.2)
        return batch

    def job():
        return len(ray.data.range(8, override_num_blocks=4).map_batches(slow, batch_size=2).take_all())

    print("driver rows", job(), flush=True)
    print("worker rows", ray.get(ray.remote(job).remote()), flush=True)
    time.sleep(1.5)  # log_to_driver copies a worker's output on a poll: give it the time to arrive
    """
)

RAY_CHATTER = ("Running Dataset", "Total Progress", "Starting execution", "execution finished", "Progress bars",
               "Started a local Ray")


def run_job(tmp_path: Path, *flags: str) -> list[str]:
    script = tmp_path / "ray_data_job.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("SYNEG_VERBOSE", "RAY_ADDRESS")}
    result = subprocess.run([sys.executable, str(script), *flags], cwd=ROOT, env=env, capture_output=True, text=True, check=False,
                            timeout=180)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return (result.stdout + result.stderr).splitlines()


def test_ray_data_jobs_print_nothing_of_rays_by_default(tmp_path: Path) -> None:
    lines = run_job(tmp_path)
    assert lines == ["driver rows 8", "worker rows 8"], "\n".join(lines[:40])


@pytest.mark.slow
def test_verbose_brings_ray_data_progress_back(tmp_path: Path) -> None:
    """The counterpart: the strings the default test looks for are the ones Ray prints."""
    text = "\n".join(run_job(tmp_path, "-v"))
    assert all(s in text for s in ("Running Dataset", "Total Progress", "Starting execution", "Started a local Ray")), text[-3000:]
