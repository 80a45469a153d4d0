"""The cluster launcher YAML, KubeRay manifests and job runtime_env parse and carry their required fields."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def load(name: str, kind: str | None = None) -> dict:
    """The file's YAML document (of `kind`, for manifests holding several)."""
    docs = list(yaml.safe_load_all((ROOT / name).read_text()))
    if kind is None:
        (doc,) = docs
        return doc
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


def _pod_templates(cluster_spec: dict) -> list[dict]:
    return [cluster_spec["headGroupSpec"]["template"], *(g["template"] for g in cluster_spec["workerGroupSpecs"])]


def _assert_every_pod_mounts_the_shared_claim(name: str, cluster_spec: dict) -> str:
    """Multi-node training reads run dir, dataset and cache by path: every pod mounts one RWX claim. Returns its mount path."""
    claim = load(name, "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    mounts = set()
    for pod in _pod_templates(cluster_spec):
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        for container in pod["spec"]["containers"]:
            for mount in container["volumeMounts"]:
                if volumes[mount["name"]].get("persistentVolumeClaim", {}).get("claimName") == claim["metadata"]["name"]:
                    mounts.add(mount["mountPath"])
        assert mounts, pod
    (path,) = mounts
    return path


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
    doc = load("cluster/kuberay-raycluster.yaml", "RayCluster")
    assert doc["apiVersion"] == "ray.io/v1"
    spec = doc["spec"]
    shared = _assert_every_pod_mounts_the_shared_claim("cluster/kuberay-raycluster.yaml", spec)
    for pod in _pod_templates(spec):
        env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
        assert env["SYNEG_CACHE"].startswith(shared + "/")
    head = _containers(spec["headGroupSpec"]["template"])[0]
    assert {p["containerPort"] for p in head["ports"]} >= {6379, 8265}
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"gpu", "cpu"}
    gpu = _containers(groups["gpu"]["template"])[0]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == "1"
    for group in groups.values():
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]


def test_kuberay_rayjob_runs_the_pipeline_entrypoint() -> None:
    spec = load("cluster/kuberay-rayjob.yaml", "RayJob")["spec"]
    assert spec["entrypoint"].startswith("python jobs/syneg_job.py run")
    assert "headGroupSpec" in spec["rayClusterSpec"] and spec["rayClusterSpec"]["workerGroupSpecs"]
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert runtime_env["working_dir"]
    shared = _assert_every_pod_mounts_the_shared_claim("cluster/kuberay-rayjob.yaml", spec["rayClusterSpec"])
    # several training workers: the run directory, dataset and cache must all be on the shared volume
    assert f"run.run_dir={shared}/" in spec["entrypoint"] and f"data.data_dir={shared}/" in spec["entrypoint"]
    assert runtime_env["env_vars"]["SYNEG_CACHE"].startswith(shared + "/")
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
