"""runtime.shared_cores sizes actors from Ray's node CPUs on a cluster, and from this machine's usable
cores (affinity, cgroup CPU quota) otherwise, never from the host's os.cpu_count() in a container."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from syneg_ray import runtime


@pytest.fixture
def affinity_8(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)  # the host's cores, as a container sees them


def test_usable_cores_reads_the_cgroup_quota(tmp_path: Path, affinity_8) -> None:
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("250000 100000\n")  # a pod limit of 2.5 CPUs
    assert runtime.usable_cores(cpu_max) == 2  # rounded down: threads beyond the quota get throttled
    cpu_max.write_text("50000 100000\n")  # half a CPU: still one thread
    assert runtime.usable_cores(cpu_max) == 1
    cpu_max.write_text("max 100000\n")  # no quota: the affinity
    assert runtime.usable_cores(cpu_max) == 8
    cpu_max.write_text("garbage")
    assert runtime.usable_cores(cpu_max) == 8
    assert runtime.usable_cores(tmp_path / "absent") == 8  # cgroup v1 or no cgroup: the affinity


def test_without_ray_shared_cores_uses_the_quota_not_the_host(tmp_path: Path, affinity_8, monkeypatch) -> None:
    monkeypatch.setattr(runtime, "smallest_node_cpus", lambda: 0.0)  # Ray not running
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("400000 100000\n")  # 4 CPUs
    assert runtime.shared_cores(1, cpu_max=cpu_max) == 4
    assert runtime.shared_cores(2, cpu_max=cpu_max) == 2
    assert runtime.shared_cores(8, cpu_max=cpu_max) == 1  # never 0
    assert runtime.shared_cores(1, cpu_max=tmp_path / "absent") == 8  # the affinity, not os.cpu_count()'s 64


def test_on_a_cluster_shared_cores_uses_the_nodes_cpus(tmp_path: Path, affinity_8, monkeypatch) -> None:
    """The driver's machine (a 2-core head pod, say) says nothing about the worker nodes' size."""
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("200000 100000\n")  # the driver's pod: 2 CPUs
    monkeypatch.setattr(runtime, "smallest_node_cpus", lambda: 16.0)
    monkeypatch.setattr(runtime, "_single_node_ray", lambda: False)
    assert runtime.shared_cores(1, cpu_max=cpu_max) == 16
    assert runtime.shared_cores(4, cpu_max=cpu_max) == 4
    # a Ray of this machine alone (init_ray's local Ray has a spare logical CPU): capped by the machine
    monkeypatch.setattr(runtime, "smallest_node_cpus", lambda: 3.0)
    monkeypatch.setattr(runtime, "_single_node_ray", lambda: True)
    assert runtime.shared_cores(1, cpu_max=cpu_max) == 2
    # the explicit form keeps its meaning: a local Ray's node size, capped by this machine
    assert runtime.shared_cores(1, smallest_node=9, cpu_max=tmp_path / "absent") == 8
    assert runtime.shared_cores(2, smallest_node=1, cpu_max=tmp_path / "absent") == 1
