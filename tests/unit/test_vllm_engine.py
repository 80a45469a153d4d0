"""The `vllm` engine's settings, built without vLLM installed (the engine itself runs in benchmarks and the ablation)."""

from __future__ import annotations

import pytest

from syneg_ray.config import Dtype, SynthesizeConfig, VLLMEngineConfig
from syneg_ray.engines import vllm
from syneg_ray.engines.base import SamplingSpec
from syneg_ray.engines.vllm import engine_kwargs, row_sampling_params, runtime_env, sampling_params
from syneg_ray.errors import ConfigError


def test_cpu_replicas_keep_no_core_for_the_scheduler(monkeypatch) -> None:
    monkeypatch.delenv("VLLM_CPU_NUM_OF_RESERVED_CPU", raising=False)
    monkeypatch.setattr(vllm, "TCMALLOC_PATHS", ())
    assert runtime_env(SynthesizeConfig(engine="vllm")) == {"env_vars": {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}}
    monkeypatch.setenv("VLLM_CPU_NUM_OF_RESERVED_CPU", "1")  # the user's choice wins
    assert runtime_env(SynthesizeConfig(engine="vllm"))["env_vars"]["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "1"
    assert runtime_env(SynthesizeConfig(engine="vllm", gpus_per_replica=1.0)) is None


def test_cpu_replicas_load_tcmalloc_where_the_machine_has_it(monkeypatch, tmp_path) -> None:
    library = tmp_path / "libtcmalloc_minimal.so.4"
    library.write_bytes(b"")
    monkeypatch.setattr(vllm, "TCMALLOC_PATHS", (str(tmp_path / "absent.so"), str(library)))
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.delenv("TCMALLOC_AGGRESSIVE_DECOMMIT", raising=False)
    monkeypatch.setenv("TCMALLOC_RELEASE_RATE", "2")  # the user's value wins
    env = runtime_env(SynthesizeConfig(engine="vllm"))["env_vars"]
    assert env["LD_PRELOAD"] == str(library)
    # freed pages go back to the system: the grammar's memory does not stay at its peak
    assert env["TCMALLOC_AGGRESSIVE_DECOMMIT"] == "t" and env["TCMALLOC_RELEASE_RATE"] == "2"
    monkeypatch.setenv("LD_PRELOAD", "/opt/jemalloc.so")  # the user's own preload: not replaced, and inherited
    env = runtime_env(SynthesizeConfig(engine="vllm"))["env_vars"]
    assert "LD_PRELOAD" not in env and "TCMALLOC_AGGRESSIVE_DECOMMIT" not in env
    monkeypatch.delenv("LD_PRELOAD")
    assert runtime_env(SynthesizeConfig(engine="vllm", gpus_per_replica=1.0)) is None  # CUDA's allocator on GPU


def test_engine_kwargs_follow_the_config() -> None:
    cpu = engine_kwargs(SynthesizeConfig(engine="vllm", dtype=Dtype.BF16, batch_size=24, vllm=VLLMEngineConfig(max_model_len=2048)))
    assert cpu["dtype"] == "bfloat16" and cpu["max_num_seqs"] == 24 and cpu["max_model_len"] == 2048
    assert cpu["enforce_eager"] is True  # no CUDA graphs on CPU
    # seeded requests on CPU: whole prompts in one step, and a step fits the longest prompt
    assert cpu["enable_chunked_prefill"] is False and cpu["max_num_batched_tokens"] == 2048
    assert engine_kwargs(SynthesizeConfig(engine="vllm", vllm=VLLMEngineConfig(max_model_len=8192)))["max_num_batched_tokens"] == 8192
    gpu = engine_kwargs(SynthesizeConfig(engine="vllm", gpus_per_replica=1.0, vllm=VLLMEngineConfig(tensor_parallel_size=2)))
    assert "enforce_eager" not in gpu and gpu["tensor_parallel_size"] == 2
    assert "enable_chunked_prefill" not in gpu and "max_num_batched_tokens" not in gpu


def test_sampling_params_constrain_the_answer_to_k_negatives() -> None:
    params = sampling_params(SamplingSpec(max_new_tokens=300, temperature=0.7, top_p=0.9), k=3, seed=None)
    schema = params["structured_outputs"]["json"]
    assert params["max_tokens"] == 300 and "seed" not in params
    assert schema["properties"]["negatives"]["minItems"] == 3
    assert sampling_params(SamplingSpec(max_new_tokens=8, temperature=0.0, top_p=1.0), k=1, seed=5)["seed"] == 5
    held = sampling_params(SamplingSpec(max_new_tokens=300, temperature=0.7, top_p=0.9), k=3, seed=None, min_chars=300)
    assert held["structured_outputs"]["json"]["properties"]["negatives"]["items"]["minLength"] == 300
    assert "presence_penalty" not in held
    spec = SamplingSpec(max_new_tokens=300, temperature=0.7, top_p=0.9, presence_penalty=0.8)
    assert sampling_params(spec, k=3, seed=None)["presence_penalty"] == 0.8


def test_the_grammar_holds_validations_floor_up_to_its_cap() -> None:
    row = {"max_tokens": 256, "gen_seed": 1, "k": 3, "positive": "word " * 100}

    def min_length(**settings) -> int:
        params = row_sampling_params(row, SynthesizeConfig(engine="vllm", **settings))
        return params["structured_outputs"]["json"]["properties"]["negatives"]["items"]["minLength"]

    assert min_length() == 180  # 0.2 x 100 words at 9 characters a word
    assert min_length(schema_min_length_cap=128) == 128  # where xgrammar's parse keeps no history
    assert min_length(schema_min_length_cap=500) == 180  # a cap above the floor leaves it
    with pytest.raises(ConfigError, match="synthesize.schema_min_length_cap"):
        SynthesizeConfig(engine="vllm", schema_min_length_cap=-1)


def test_every_row_carries_its_own_seed_on_cpu_and_gpu() -> None:
    row = {"max_tokens": 256, "gen_seed": 1234, "k": 3, "positive": "word " * 100}
    for gpus in (0.0, 1.0):
        assert row_sampling_params(row, SynthesizeConfig(engine="vllm", gpus_per_replica=gpus))["seed"] == 1234
