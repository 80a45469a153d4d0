"""The Python API: what `syneg_ray` exports, that each function documents itself with an example, and
that the API and the CLI run one code path."""

from __future__ import annotations

import ast
import importlib.util
import inspect
import json
import types
from pathlib import Path

import pytest

import syneg_ray
from syneg_ray import api, cli
from syneg_ray.config import PipelineConfig, load_config

# the API as the README shows it; a change here is a change users see
SIGNATURES = {
    "synthesize": "(cfg: 'PipelineConfig') -> 'dict[str, Any]'",
    "mine": "(cfg: 'PipelineConfig') -> 'dict[str, Any]'",
    "mix": "(cfg: 'PipelineConfig') -> 'dict[str, Any]'",
    "train": "(cfg: 'PipelineConfig', *, replace_other_config: 'bool' = False) -> 'Path'",
    "evaluate": "(cfg: 'PipelineConfig', model: 'str | None' = None, split: 'str | None' = None) -> 'dict[str, float]'",
    "run": "(cfg: 'PipelineConfig', *, yes: 'bool' = False) -> 'dict[str, Any]'",
    "tune": "(cfg: 'PipelineConfig') -> 'dict[str, Any]'",
    "read_instances": "(cfg: 'PipelineConfig') -> 'ray.data.Dataset'",
    "read_negatives": "(cfg: 'PipelineConfig', source: 'str' = 'mined') -> 'ray.data.Dataset'",
}


def test_every_name_in_all_exists_and_nothing_public_is_left_out() -> None:
    assert len(syneg_ray.__all__) == len(set(syneg_ray.__all__))
    missing = [n for n in syneg_ray.__all__ if not hasattr(syneg_ray, n)]
    assert missing == []
    public = {
        name for name, value in vars(syneg_ray).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
        and type(value).__module__ != "__future__"  # `from __future__ import annotations` binds a name
    }  # fmt: skip
    assert public - set(syneg_ray.__all__) == set(), "public names missing from syneg_ray.__all__"
    assert set(api.__all__) <= set(syneg_ray.__all__)


def test_every_export_is_documented_and_every_api_function_has_an_example() -> None:
    for name in syneg_ray.__all__:
        value = getattr(syneg_ray, name)
        if callable(value):
            assert inspect.getdoc(value), f"syneg_ray.{name} has no docstring"
    for name in api.__all__:
        doc = inspect.getdoc(getattr(syneg_ray, name))
        assert "Example:" in doc and f"syneg_ray.{name}(" in doc, f"syneg_ray.{name}: no example calling it"
        assert "Args:" in doc and "Returns:" in doc, f"syneg_ray.{name}: Google-style Args / Returns missing"
        example = doc.split("Example:", 1)[1].split("```python", 1)[1].split("```", 1)[0]
        ast.parse(inspect.cleandoc(example))  # the example is valid Python


def test_signatures() -> None:
    assert set(SIGNATURES) == set(api.__all__)
    for name, expected in SIGNATURES.items():
        assert str(inspect.signature(getattr(syneg_ray, name))) == expected, name


def test_every_command_has_its_api_function_and_an_existing_target() -> None:
    """Each CLI command is an API function of the same name, and each COMMANDS target is a function
    taking the config first (read from the source: importing the stages would load torch)."""
    assert cli.COMMANDS is api.COMMANDS
    for command, (target, _) in api.COMMANDS.items():
        assert command in api.__all__
        module, _, function = target.partition(":")
        tree = ast.parse(Path(importlib.util.find_spec(module).origin).read_text(encoding="utf-8"))
        defs = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
        assert function in defs, target
        assert defs[function].args.args[0].arg == "cfg", target


def test_train_and_tune_are_the_api_functions_and_their_stages_live_under_stages() -> None:
    import syneg_ray.stages.train.state
    import syneg_ray.stages.tune

    assert syneg_ray.train is api.train and syneg_ray.tune is api.tune  # no submodule of the package shadows them
    assert syneg_ray.stages.train.state.__name__ == "syneg_ray.stages.train.state"


CALLS: list[tuple[PipelineConfig, dict]] = []


def stand_in_stage(cfg: PipelineConfig, **kwargs) -> dict:
    CALLS.append((cfg, kwargs))
    return {"instances": 3}


def test_the_cli_and_the_api_run_one_code_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(api.COMMANDS, "mix", (f"{__name__}:stand_in_stage", "a stand-in"))
    CALLS.clear()
    run_dir = str(tmp_path / "run")
    assert cli.main(["mix", "--run-dir", run_dir, "mix.ratio=0.25"]) == 0
    assert syneg_ray.mix(load_config(None, [f"run.run_dir={run_dir}", "mix.ratio=0.25"])) == {"instances": 3}
    assert len(CALLS) == 2 and CALLS[0] == CALLS[1]


def test_evaluate_bm25_through_the_api(tiny_cfg: PipelineConfig) -> None:
    """A real stage end to end through `syneg_ray.evaluate`: BM25 on the SciFact subset (no Ray, no model)."""
    scores = syneg_ray.evaluate(tiny_cfg, model="bm25", split="test")
    assert set(scores) == {"ndcg@10", "recall@100", "mrr@10", "map@100", "ndcg@10_se"}
    assert 0.3 < scores["ndcg@10"] <= 1.0  # BM25 on SciFact scores about 0.66
    saved = json.loads((Path(tiny_cfg.run.run_dir) / "evaluate" / "bm25-test" / "metrics.json").read_text())
    assert saved["model"] == "bm25" and saved["split"] == "test" and saved["ndcg@10"] == pytest.approx(scores["ndcg@10"])


def test_read_negatives_names_the_stage_to_run_first(tmp_path: Path) -> None:
    cfg = load_config(None, [f"run.run_dir={tmp_path}"])
    with pytest.raises(syneg_ray.DataError, match="run `syneg mine`"):
        syneg_ray.read_negatives(cfg)
    with pytest.raises(syneg_ray.DataError, match="run `syneg mix`"):
        syneg_ray.read_instances(cfg)
    with pytest.raises(ValueError, match="'dense' is not one of"):
        syneg_ray.read_negatives(cfg, "dense")


def stand_in_pipeline(cfg: PipelineConfig, yes: bool = False) -> dict:
    scores = {"ndcg@10": 0.6451, "recall@100": 0.925, "mrr@10": 0.6102, "map@100": 0.5998}
    return {"mix": {"instances": 16}, "evaluate": {"base": scores, "trained": {**scores, "ndcg@10": 0.7}}}


def test_syneg_run_ends_with_the_metric_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setitem(api.COMMANDS, "run", (f"{__name__}:stand_in_pipeline", "a stand-in"))
    monkeypatch.setattr(api, "NEEDS", {})  # the stand-in plots nothing
    assert cli.main(["run", "--run-dir", str(tmp_path / "run")]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-4:]
    assert last[0].split() == ["|", "model", "|", "ndcg@10", "|", "recall@100", "|", "mrr@10", "|", "map@100", "|"]
    assert last[2].split()[1:4] == ["base", "|", "0.6451"] and last[3].split()[1:4] == ["trained", "|", "0.7000"]
