"""The cluster launcher YAML, KubeRay manifests and job runtime_env parse and carry their required fields."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def load(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())


def test_cluster_launcher_has_head_gpu_and_cpu_workers() -> None:
    cfg = load("cluster/aws-gpu.yaml")
    for key in ("cluster_name", "provider", "available_node_types", "head_node_type", "max_workers", "setup_commands"):
        assert key in cfg, key
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    assert {"gpu_worker", "cpu_worker"} <= set(types)
    for spec in types.values():
        assert {"node_config", "resources", "max_workers"} <= set(spec)
        assert "InstanceType" in spec["node_config"]
    assert types["head"]["resources"] == {"CPU": 0}
    assert any("ray start --head" in c for c in cfg["head_start_ray_commands"])


def _containers(pod_template: dict) -> list[dict]:
    return pod_template["spec"]["containers"]


def test_kuberay_raycluster() -> None:
    doc = load("cluster/kuberay-raycluster.yaml")
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayCluster"
    spec = doc["spec"]
    head = _containers(spec["headGroupSpec"]["template"])[0]
    assert {p["containerPort"] for p in head["ports"]} >= {6379, 8265}
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"gpu", "cpu"}
    gpu = _containers(groups["gpu"]["template"])[0]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == "1"
    for group in groups.values():
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]


def test_kuberay_rayjob_runs_the_pipeline_entrypoint() -> None:
    doc = load("cluster/kuberay-rayjob.yaml")
    assert doc["kind"] == "RayJob"
    spec = doc["spec"]
    assert spec["entrypoint"].startswith("python jobs/syneg_job.py run")
    assert "headGroupSpec" in spec["rayClusterSpec"] and spec["rayClusterSpec"]["workerGroupSpecs"]
    assert yaml.safe_load(spec["runtimeEnvYAML"])["working_dir"]
    assert (ROOT / "jobs" / "syneg_job.py").is_file()


def test_job_runtime_env() -> None:
    env = load("jobs/runtime_env.yaml")
    assert env["env_vars"]["TOKENIZERS_PARALLELISM"] == "false"
    assert "runs/" in env["excludes"]


def test_shipped_pipeline_configs_load() -> None:
    from syneg_ray.config import load_config

    configs = sorted((ROOT / "configs").glob("*.yaml"))
    assert configs
    for path in configs:
        assert load_config(path).run.run_dir
