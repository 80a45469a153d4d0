"""The local Ray the product starts: what it keeps running between tasks."""

from __future__ import annotations

import logging
import os
import time

import psutil


def test_local_ray_starts_no_worker_ahead_of_need(ray_local):
    """Ray's default gives the first driver a worker per CPU at once (4 here), which sit idle beside
    the actors a stage starts; with `ray.idle_workers = 0` none starts before a task needs it.
    First in this module: the local Ray has just started and has run nothing yet."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        idle = [p.pid for p in psutil.Process().children(recursive=True) if "ray::IDLE" in _cmdline(p)]
        assert idle == []
        time.sleep(0.2)


def _cmdline(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())
    except psutil.Error:  # exited meanwhile
        return ""


def test_local_ray_keeps_no_idle_workers(ray_local):
    """Ray's default keeps one idle worker per CPU (4 here) alive after tasks end, about 130 MB
    each; the product's `ray.idle_workers = 0` lets the raylet stop them."""

    @ray_local.remote(num_cpus=1)
    def worker_pid() -> int:
        time.sleep(0.5)  # hold the worker, so the tasks spread over several
        return os.getpid()

    pids = set(ray_local.get([worker_pid.remote() for _ in range(8)]))
    assert len(pids) >= 2
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(psutil.pid_exists(p) for p in pids):
        time.sleep(0.5)
    assert [p for p in pids if psutil.pid_exists(p)] == []


def test_workers_run_the_setup_hook(ray_local):
    """Ray Train's placement-group cleaner polls the State API, which a local Ray without the
    dashboard does not serve; unsilenced, it logged a warning every second of training."""
    cleaner = "ray.train.v2._internal.execution.controller.placement_group_cleaner"

    @ray_local.remote
    def level() -> int:
        return logging.getLogger(cleaner).getEffectiveLevel()

    assert ray_local.get(level.remote()) == logging.ERROR
