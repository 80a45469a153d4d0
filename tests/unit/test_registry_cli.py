"""Model names, the public API and the CLI's one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import syneg_ray
from syneg_ray.cli import main
from syneg_ray.errors import ModelNotFoundError
from syneg_ray.registry import REGISTRY, resolve_model


def test_public_api_is_exported() -> None:
    names = syneg_ray.__all__
    assert len(set(names)) == len(names) and [n for n in names if not hasattr(syneg_ray, n)] == []  # a star import works
    api = {n: getattr(syneg_ray, n) for n in names}
    errors = [n for n in names if n.endswith("Error")]
    assert "SynegError" in errors and len(errors) >= 5
    assert all(isinstance(api[n], type) and issubclass(api[n], syneg_ray.SynegError) for n in errors)
    assert isinstance(api["load_config"](None, []), api["PipelineConfig"]) and callable(api["resolve_model"])
    assert isinstance(api["__version__"], str) and api["__version__"][0].isdigit()


def test_minilm_resolves_to_a_local_sentence_transformers_folder() -> None:
    assert (Path(resolve_model("minilm")) / "modules.json").is_file()


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(ModelNotFoundError, match="unknown model 'minilmm'.*known names: .*minilm.*smollm2-135m"):
        resolve_model("minilmm")


def test_paths_and_hub_ids_pass_through(tmp_path: Path) -> None:
    assert resolve_model(str(tmp_path)) == str(tmp_path)
    assert resolve_model("BAAI/bge-base-en-v1.5") == "BAAI/bge-base-en-v1.5"
    assert set(REGISTRY) >= {"minilm", "mpnet", "smollm2-135m"}


def test_cli_config_error_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "--print-config", "train.temperature=-1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "train.temperature = -1.0 must be > 0" in err and "Traceback" not in err


def test_cli_print_config_applies_shortcuts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "--model", "bm25", "--split", "dev", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "model: bm25" in out and "split: dev" in out


def test_synthesize_limit_synthesizes_that_many_pairs(capsys: pytest.CaptureFixture[str]) -> None:
    """The embedded default caps synthesis at 5 pairs; `syneg synthesize --limit 64` asks for 64."""
    assert main(["synthesize", "--limit", "64", "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert "limit: 64" in printed and "max_pairs: 0" in printed
    assert main(["synthesize", "--limit", "64", "synthesize.max_pairs=4", "--print-config"]) == 0
    assert "max_pairs: 4" in capsys.readouterr().out  # an explicit override still wins
    assert main(["run", "--limit", "64", "--print-config"]) == 0
    assert "max_pairs: 5" in capsys.readouterr().out  # the pipeline keeps its cap


def test_cli_data_error_has_no_traceback(tmp_path: Path) -> None:
    (tmp_path / "corpus.jsonl").write_text('{"_id": "d1", "text": "x"}\n{"_id": "d1", "text": "y"}\n')
    result = subprocess.run(
        [sys.executable, "-m", "syneg_ray", "evaluate", "--model", "bm25", "--dataset", str(tmp_path),
         f"run.run_dir={tmp_path / 'run'}", f"run.cache_dir={tmp_path / 'cache'}"],
        check=False, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert "corpus.jsonl:2: duplicate _id 'd1'" in result.stderr
    assert "Traceback" not in result.stderr


def test_split_names_the_pairs_split_outside_evaluate() -> None:
    """`syneg synthesize --dataset scifact --split train --limit 64` reads its pairs from train;
    `evaluate --split` keeps naming the split it scores."""
    from syneg_ray.cli import build_parser, resolve

    cfg = resolve(build_parser().parse_args(["synthesize", "--dataset", "scifact", "--split", "train", "--limit", "64"]))
    assert (cfg.data.train_split, cfg.data.limit, cfg.synthesize.max_pairs) == ("train", 64, 0)
    cfg = resolve(build_parser().parse_args(["mine", "--split", "dev"]))
    assert (cfg.data.train_split, cfg.evaluate.split) == ("dev", "")
    cfg = resolve(build_parser().parse_args(["evaluate", "--split", "dev"]))
    assert (cfg.data.train_split, cfg.evaluate.split) == ("train", "dev")


def test_synthesize_with_a_missing_split_fails_before_ray_starts(scifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        sys.modules["ray"].shutdown()  # an earlier test's Ray in this process would make the check below meaningless
    argv = ["synthesize", "--dataset", str(scifact), "--split", "dev", "--limit", "4", "--run-dir", str(tmp_path / "run")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "split 'dev' not found; available splits: test, train" in err
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()
