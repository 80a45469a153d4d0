"""Config loading: defaults run, overrides apply, every kind of mistake is one line naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from syneg_ray.config import Engine, PipelineConfig, diff, from_dict, load_config, to_dict, to_yaml
from syneg_ray.errors import ConfigError


def test_defaults_round_trip_through_yaml(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(to_yaml(PipelineConfig()))
    assert load_config(path) == PipelineConfig()


def test_overrides_parse_yaml_scalars() -> None:
    cfg = load_config(None, ["train.temperature=0.02", "synthesize.engine=openai", "synthesize.openai.base_url=http://127.0.0.1:8000/v1",
                             "mine.sources=[bm25]", "data.limit=5"])
    assert cfg.train.temperature == 0.02
    assert cfg.synthesize.engine is Engine.OPENAI
    assert cfg.mine.sources == ("bm25",)
    assert cfg.data.limit == 5


def test_int_and_exponent_accepted_where_float_expected() -> None:
    assert load_config(None, ["mix.ratio=1"]).mix.ratio == 1.0
    assert load_config(None, ["train.learning_rate=1e-3"]).train.learning_rate == 0.001


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.temprature=0.1", r"unknown key train\.temprature; known keys of train:"),
        ("trian.epochs=1", r"unknown key trian; known keys of config:"),
        ("train.epochs=two", r"train\.epochs = 'two' must be an integer"),
        ("train.temperature=0", r"train\.temperature = 0\.0 must be > 0"),
        ("train.temperature=warm", r"train\.temperature = 'warm' must be a number"),
        ("mix.ratio=1.5", r"mix\.ratio = 1\.5 must be in \[0\.0, 1\.0\]"),
        ("mix.ratio=-0.1", r"mix\.ratio = -0\.1 must be in"),
        ("synthesize.engine=llamacpp", r"synthesize\.engine = 'llamacpp' is not one of hf, vllm, openai"),
        ("train.use_gpu=maybe", r"train\.use_gpu = 'maybe' must be true or false"),
        ("mine.range_max=0", r"mine\.range_max = 0 must exceed mine\.range_min = 0"),
        ("evaluate.top_k=50", r"evaluate\.top_k = 50 must be >= 100"),
        ("noequals", r"must look like section\.key=value"),
    ],
)
def test_bad_values_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_config(None, [override])
    assert "\n" not in str(info.value)


def test_bad_yaml_file_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  epochs: [1,\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:\d+: not valid YAML"):
        load_config(path)


def test_section_must_be_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="train must be a mapping"):
        from_dict({"train": 3})


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config("does/not/exist.yaml")


def test_diff_lists_changed_keys() -> None:
    old = to_dict(PipelineConfig())
    new = to_dict(load_config(None, ["train.epochs=3", "mix.ratio=0.5"]))
    assert diff(old, new) == ["mix.ratio: 0.7 -> 0.5", "train.epochs: 1 -> 3"]


def test_train_workers_share_the_machine_unless_told(monkeypatch) -> None:
    from syneg_ray.stages.train.trainer import worker_cpus

    monkeypatch.setattr("syneg_ray.runtime.smallest_node_cpus", lambda: 0.0)  # no Ray running
    monkeypatch.setattr("syneg_ray.runtime.usable_cores", lambda cpu_max=None: 8)  # this machine's cores
    assert worker_cpus(load_config(None, []).train) == 8.0  # one worker: every core
    assert worker_cpus(load_config(None, ["train.workers=3"]).train) == 2.0
    assert worker_cpus(load_config(None, ["train.workers=16"]).train) == 1.0
    assert worker_cpus(load_config(None, ["train.cpus_per_worker=1.5"]).train) == 1.5


def test_relative_paths_resolve_before_workers_change_directory(tmp_path, monkeypatch) -> None:
    from syneg_ray.config import with_absolute_paths

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "mine").mkdir(parents=True)
    cfg = with_absolute_paths(load_config(None, ["run.run_dir=runs/x", "data.data_dir=data", "data.dataset=data/mine"]))
    assert (cfg.run.run_dir, cfg.data.data_dir, cfg.data.dataset) == (
        str(tmp_path / "runs" / "x"), str(tmp_path / "data"), str(tmp_path / "data" / "mine"))
    assert with_absolute_paths(load_config(None, ["data.dataset=scifact"])).data.dataset == "scifact"  # a BEIR name stays
    # unset folders get their defaults, absolute: a worker elsewhere would look them up in its own directory
    monkeypatch.delenv("SYNEG_DATA_DIR", raising=False)
    monkeypatch.setenv("SYNEG_CACHE", "cache-here")
    defaults = with_absolute_paths(load_config(None, []))
    assert (defaults.data.data_dir, defaults.run.cache_dir) == (str(tmp_path / "datasets"), str(tmp_path / "cache-here"))
    assert with_absolute_paths(load_config(None, ["run.run_dir=s3://bucket/run"])).run.run_dir == "s3://bucket/run"


def test_pipeline_skips_what_the_mix_does_not_read_and_ignores_where_data_lives() -> None:
    from syneg_ray import pipeline

    stages = {s.name: s for s in pipeline._stages()}

    def needed(strategy: str, ratio: float = 0.7, *more: str) -> set[str]:
        cfg = load_config(None, [f"mix.strategy={strategy}", f"mix.ratio={ratio}", *more])
        return {n for n in ("synthesize", "mine") if pipeline.needed(cfg, stages[n])}

    assert needed("hybrid") == needed("hybrid", 0.0) == needed("hybrid", 1.0) == {"synthesize", "mine"}
    assert needed("retrieved") == {"mine"} and needed("random") == set()
    # synthetic-only still mines when the judge (its off-topic floor) or the style reference reads the mined negatives
    assert needed("synthetic") == needed("synthetic", 1.0, "synthesize.judge=false", "synthesize.style_reference=true") == {"synthesize", "mine"}
    assert needed("synthetic", 1.0, "synthesize.judge=false") == {"synthesize"}

    def prints(overrides: list[str]) -> dict[str, str]:
        cfg, done = load_config(None, overrides), {}
        for stage in stages.values():
            done[stage.name] = pipeline.fingerprint(cfg, stage, done)
        return done

    base = prints([])
    assert prints(["data.data_dir=/elsewhere", "data.download=false"]) == base
    moved = prints(["data.eval_split=dev"])
    assert [n for n in base if moved[n] != base[n]] == ["evaluate"]
    assert [n for n in base if prints(["mix.ratio=0.5"])[n] != base[n]] == ["mix", "train", "evaluate"]
    # a stage the mix does not read passes nothing on: the LLM's settings do not reach a retrieved-only mix
    retrieved = pipeline.fingerprints(load_config(None, ["mix.strategy=retrieved"]))
    assert retrieved["synthesize"] == "" and retrieved == pipeline.fingerprints(load_config(None, ["mix.strategy=retrieved", "synthesize.temperature=0.2"]))
    hybrid = pipeline.fingerprints(load_config(None, ["synthesize.temperature=0.2"]))
    assert [n for n in base if hybrid[n] != base[n]] == ["synthesize", "mix", "train", "evaluate"]


def test_engine_settings_live_in_their_engine_section() -> None:
    cfg = load_config(None, ["synthesize.engine=vllm", "synthesize.vllm.max_model_len=2048", "synthesize.hf.threads_per_replica=2"])
    assert cfg.synthesize.vllm.max_model_len == 2048 and cfg.synthesize.hf.threads_per_replica == 2
    with pytest.raises(ConfigError, match="unknown key synthesize.vllm.base_url"):
        load_config(None, ["synthesize.vllm.base_url=http://x/v1"])
    with pytest.raises(ConfigError, match="synthesize.openai.request_retries = -1"):
        load_config(None, ["synthesize.openai.request_retries=-1"])


def test_an_old_flat_engine_key_still_loads_under_its_new_name(tmp_path, caplog) -> None:
    """A YAML (or a run directory's config.yaml) written before the engine sections keeps working."""
    path = tmp_path / "old.yaml"
    path.write_text("synthesize:\n  engine: openai\n  base_url: http://127.0.0.1:8000/v1\n  max_model_len: 2048\n")
    with caplog.at_level("WARNING", logger="syneg_ray.config"):
        cfg = load_config(path)
    assert cfg.synthesize.openai.base_url == "http://127.0.0.1:8000/v1" and cfg.synthesize.vllm.max_model_len == 2048
    assert "synthesize.base_url is now synthesize.openai.base_url" in caplog.text
    assert load_config(None, ["synthesize.requests_per_minute=120"]).synthesize.openai.requests_per_minute == 120
    with pytest.raises(ConfigError, match="synthesize.base_url and synthesize.openai.base_url are both set"):
        load_config(path, ["synthesize.openai.base_url=http://other/v1"])


def test_moving_keys_into_engine_sections_keeps_every_pair_key() -> None:
    """The pairs a run wrote before the move are found again: the generation fingerprint of the
    defaults is the one the flat config gave (digested before the move)."""
    from syneg_ray.synthetic_store import generation_fingerprint

    # digests of the flat config at a954c6e, before synthesize.retry_short existed: with it off they
    # are the same (synthetic_store.ADDED_SETTINGS), and its default (on) writes rows of new keys
    before = ["synthesize.retry_short=false"]
    assert generation_fingerprint(load_config(None, before).synthesize) == "0a20195d65c4a087"
    vllm = load_config(None, [*before, "synthesize.engine=vllm", "synthesize.vllm.max_model_len=2048"]).synthesize
    assert generation_fingerprint(vllm) == "d6ea7eb5e8d80754"
    assert generation_fingerprint(PipelineConfig().synthesize) not in ("0a20195d65c4a087", "d6ea7eb5e8d80754")


def test_encoder_dtype_auto_follows_the_cpu_and_the_saved_config_names_the_result(monkeypatch, tmp_path) -> None:
    from syneg_ray import config

    monkeypatch.setattr(config, "cpu_has_fast_bf16", lambda: True)
    assert load_config(None, ["encoder.dtype=auto"]).encoder.dtype.value == "bf16"
    assert load_config(None, ["encoder.dtype=auto", "encoder.backend=onnx"]).encoder.dtype.value == "fp32"  # ONNX has no bf16
    monkeypatch.setattr(config, "cpu_has_fast_bf16", lambda: False)
    assert load_config(None, ["encoder.dtype=auto"]).encoder.dtype.value == "fp32"
    assert load_config(None, ["encoder.dtype=auto", "encoder.gpus_per_actor=1"]).encoder.dtype.value == "bf16"
    saved = tmp_path / "config.yaml"
    saved.write_text(to_yaml(load_config(None, ["encoder.dtype=auto"])))
    assert load_config(saved).encoder.dtype.value == "fp32"  # the file names the precision, not auto
    assert "dtype: auto" not in saved.read_text()
    for section in ("synthesize", "train"):
        with pytest.raises(ConfigError, match=f"{section}.dtype = auto is for encoder.dtype only"):
            load_config(None, [f"{section}.dtype=auto"])
