"""Ray's own output is off by default and back with -v: the settings `init_ray` applies, checked
without starting Ray (tests/integration/test_quiet_output.py runs a real Ray Data job)."""

from __future__ import annotations

import logging

import pytest

from syneg_ray import runtime
from syneg_ray.config import load_config

LOGGERS = ("ray.data", "ray.data._internal.progress")


@pytest.fixture
def fake_ray_init(monkeypatch: pytest.MonkeyPatch) -> dict:
    """ray.init replaced by a recorder; the driver's DataContext and Ray Data loggers restored after the test."""
    import ray
    import ray.data

    ctx = ray.data.DataContext.get_current()
    for field in ("enable_progress_bars", "enable_operator_progress_bars", "print_on_execution_start"):
        monkeypatch.setattr(ctx, field, getattr(ctx, field))
    for name in LOGGERS:
        monkeypatch.setattr(logging.getLogger(name), "level", logging.getLogger(name).level)
    for name in ("RAY_ADDRESS", runtime.VERBOSE_ENV):
        monkeypatch.delenv(name, raising=False)
    captured: dict = {}
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: captured.update(kwargs))
    return captured


def test_init_ray_turns_rays_own_output_off_by_default(fake_ray_init: dict) -> None:
    import ray.data

    runtime.init_ray(load_config(None, ["ray.num_cpus=2"]))
    assert fake_ray_init["logging_level"] == logging.WARNING  # no "Started a local Ray instance"
    env = fake_ray_init["runtime_env"]["env_vars"]
    assert {k: env[k] for k in runtime.QUIET_WORKER_ENV} == runtime.QUIET_WORKER_ENV  # reaches actors and trials
    assert env["RAY_DATA_DISABLE_PROGRESS_BARS"] == "1" and env["RAY_DATA_LOG_LEVEL"] == "WARNING"
    assert fake_ray_init["runtime_env"]["worker_process_setup_hook"] == "syneg_ray.runtime.quiet_worker_logs"
    ctx = ray.data.DataContext.get_current()  # the driver's, where the stages' datasets execute
    # pytest captures stdout, so Ray Data would log its ten-second progress blocks: they must be off
    assert ctx.enable_progress_bars is False
    assert ctx.enable_operator_progress_bars is False and ctx.print_on_execution_start is False
    assert logging.getLogger("ray.data").getEffectiveLevel() == logging.WARNING
    assert logging.getLogger("ray.data._internal.progress").getEffectiveLevel() == logging.ERROR


def test_verbose_brings_rays_output_back(fake_ray_init: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    import ray.data

    monkeypatch.setenv(runtime.VERBOSE_ENV, "1")  # what `syneg -v` sets (setup_logging(verbose=True))
    runtime.init_ray(load_config(None, ["ray.num_cpus=2"]))
    assert fake_ray_init["logging_level"] == logging.INFO
    env = fake_ray_init["runtime_env"]["env_vars"]
    assert env[runtime.VERBOSE_ENV] == "1" and not set(runtime.QUIET_WORKER_ENV) & set(env)
    ctx = ray.data.DataContext.get_current()
    assert ctx.enable_progress_bars and ctx.enable_operator_progress_bars
    assert logging.getLogger("ray.data").getEffectiveLevel() <= logging.INFO


def test_setup_logging_verbose_reaches_init_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(runtime.VERBOSE_ENV, raising=False)
    runtime.setup_logging(verbose=False)
    assert not runtime.verbose()
    runtime.setup_logging(verbose=True)
    assert runtime.verbose()


def test_worker_hook_silences_the_progress_disabled_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    progress = logging.getLogger("ray.data._internal.progress")
    monkeypatch.setattr(progress, "level", progress.level)
    monkeypatch.delenv(runtime.VERBOSE_ENV, raising=False)
    runtime.quiet_worker_logs()
    assert progress.level == logging.ERROR
