"""Every engine of the config has its registry entry, whose module builds the engine step."""

from __future__ import annotations

import importlib.util

from syneg_ray import engines
from syneg_ray.config import Engine, load_config


def test_every_engine_is_registered_with_a_module_that_builds_it() -> None:
    assert set(engines.ENGINES) == set(Engine)
    for spec in engines.ENGINES.values():
        assert importlib.util.find_spec(spec.module) is not None, spec.module


def test_a_failed_engine_is_named_with_what_to_check() -> None:
    cfg = load_config(None, ["synthesize.engine=openai", "synthesize.openai.base_url=http://127.0.0.1:9/v1"]).synthesize
    try:
        raise RuntimeError("wrapped") from ConnectionError("connection refused\nmore detail")
    except RuntimeError as exc:
        line = engines.describe_failure(cfg, exc)
    assert line.startswith("openai engine failed at http://127.0.0.1:9/v1: ConnectionError: connection refused;")
    assert line.endswith(engines.ENGINES[Engine.OPENAI].hint) and "\n" not in line
