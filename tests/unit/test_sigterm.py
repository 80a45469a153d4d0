"""SIGTERM (`ray job stop`, a pod eviction) unwinds the CLI: `finally` blocks and `with` exits run,
exit code 143. Each test runs the real `cli.main` in a subprocess and signals it mid-stage."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from syneg_ray import signals

ROOT = Path(__file__).resolve().parents[2]

# The real CLI with one stage swapped for a function that blocks inside try/finally.
SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from syneg_ray import cli

    folder = Path(sys.argv[1])

    def stage(cfg):
        if os.environ.get("WITH_RAY"):
            from syneg_ray.runtime import init_ray

            init_ray(cfg)  # ray.init installs its own SIGTERM handler; init_ray must put the CLI's back
        try:
            (folder / "started").write_text("")  # inside the try: a SIGTERM right after it still unwinds through it
            time.sleep(120)
        finally:
            (folder / "finally").write_text("ran")

    cli.COMMANDS["mix"] = ("__main__:stage", "a stage that waits")
    raise SystemExit(cli.main(sys.argv[2:]))
    """
)


def run_and_terminate(tmp_path: Path, extra_args: list[str], env: dict[str, str], wait_s: float) -> subprocess.CompletedProcess:
    script = tmp_path / "cli_with_slow_stage.py"
    script.write_text(SCRIPT)
    args = [sys.executable, str(script), str(tmp_path), "mix", "--run-dir", str(tmp_path / "run"), *extra_args]
    proc = subprocess.Popen(args, cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + wait_s
    while not (tmp_path / "started").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"the stage never started (rc {proc.returncode}): {err[-2000:]}")
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def test_sigterm_runs_finally_and_exits_143(tmp_path: Path) -> None:
    result = run_and_terminate(tmp_path, [], {}, wait_s=60)
    assert (tmp_path / "finally").exists(), f"rc {result.returncode}: {result.stderr[-2000:]}"
    assert result.returncode == 143, result.stderr[-2000:]
    assert "syneg mix: terminated (signal 15); rerun the same command to resume" in result.stderr


def test_sigterm_after_ray_init_still_unwinds(tmp_path: Path) -> None:
    """ray.init replaces the SIGTERM handler (sys.exit(15), or kill Ray's processes and exit 1):
    init_ray reinstalls the CLI's, so the exit stays 143 and the cleanups still run."""
    result = run_and_terminate(tmp_path, ["ray.num_cpus=1", "ray.object_store_gb=0.1"], {"WITH_RAY": "1"}, wait_s=120)
    assert (tmp_path / "finally").exists(), f"rc {result.returncode}: {result.stderr[-2000:]}"
    assert result.returncode == 143, result.stderr[-2000:]


def test_keep_reinstalls_the_handler_another_library_replaced() -> None:
    previous = signal.getsignal(signal.SIGTERM)
    try:
        signals.install()
        assert signals.installed()
        signal.signal(signal.SIGTERM, lambda signum, frame: None)  # what ray.init does
        signals.keep(True)
        assert signals.installed()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signals.keep(False)  # not ours before the call: left alone
        assert not signals.installed()
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_terminated_is_a_system_exit_with_code_143() -> None:
    exc = signals.Terminated()
    assert isinstance(exc, SystemExit) and not isinstance(exc, Exception)
    assert exc.code == 143
