"""A path whose optional dependency is missing stops with one line naming the extra to install."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from syneg_ray import cli, extras
from syneg_ray.errors import MissingExtraError, SynegError


@pytest.fixture
def without(monkeypatch):
    def hide(*modules: str) -> None:
        real = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in modules else real(name, *a))

    return hide


def test_require_names_the_extra(without) -> None:
    without("matplotlib", "faiss")
    with pytest.raises(MissingExtraError, match=r"pip install 'syneg-ray\[plots\]'$") as info:
        extras.require("matplotlib")
    assert isinstance(info.value, SynegError) and isinstance(info.value, ImportError)
    assert "\n" not in str(info.value)
    with pytest.raises(MissingExtraError, match=r"syneg-ray\[cpu\]' or pip install 'syneg-ray\[gpu\]'"):
        extras.check("faiss")


def test_require_checks_the_minimum_version() -> None:
    with pytest.raises(MissingExtraError, match=r"older than 999.0.*pip install -U 'syneg-ray\[probes\]'"):
        extras.require("sklearn", minimum="999.0")
    assert extras.require("sklearn", minimum="1.6").__name__ == "sklearn"


def test_every_extra_named_exists_in_pyproject() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    declared = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]
    optional = declared["optional-dependencies"]
    for names, _ in extras.EXTRAS.values():
        assert set(names) <= set(optional), names
    core = " ".join(declared["dependencies"])
    for moved in ("faiss", "onnx", "gguf", "matplotlib", "scikit-learn"):
        assert moved not in core, moved


def test_cli_stops_before_training_when_plots_are_missing(without, tmp_path, capsys) -> None:
    without("matplotlib")
    assert cli.main(["train", "--run-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("syneg train: error: matplotlib is not installed") and err.endswith("pip install 'syneg-ray[plots]'")
    assert "\n" not in err
