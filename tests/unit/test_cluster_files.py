"""The cluster launcher YAML, KubeRay manifests and job runtime_env parse and carry their required fields."""

from __future__ import annotations

import re
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


def test_cluster_launcher_runs_the_image_with_the_pinned_ray() -> None:
    cfg = load("cluster/aws-gpu.yaml")
    assert cfg["docker"]["image"]
    dockerfile = (ROOT / "cluster" / "Dockerfile").read_text()
    (pinned,) = re.findall(r"^FROM rayproject/ray:([0-9.]+)-", dockerfile, re.MULTILINE)
    commands = "\n".join(cfg["setup_commands"])
    assert f"'{pinned}'" in commands  # the setup checks the image's Ray against the Dockerfile's pin
    for name in ("kuberay-raycluster.yaml", "kuberay-rayjob.yaml"):
        kind = "RayJob" if "rayjob" in name else "RayCluster"
        spec = load(f"cluster/{name}", kind)["spec"]
        assert (spec.get("rayClusterSpec") or spec)["rayVersion"] == pinned
    # the project's image, not pip installs at boot; the share's own folders made once, never chown -R
    assert "pip install" not in commands
    host = "\n".join(cfg["initialization_commands"])
    assert "nfs-common" in host and "mount -t nfs4" in host
    assert "chown -R" not in host + commands
    assert "-v /mnt/shared:/mnt/shared" in cfg["docker"]["run_options"]
    for pattern in (".venv*", "runs/", ".cache/", "datasets/", "*.npy"):
        assert pattern in cfg["rsync_exclude"], pattern


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
    assert spec["entrypoint"].startswith("python -m syneg_ray run")
    assert spec["entrypointNumCpus"] >= 1  # the driver lands on a worker: the head has num-cpus 0
    assert spec["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
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


def test_every_cluster_file_mounts_the_share_where_the_runtime_env_puts_the_cache() -> None:
    cache = load("jobs/runtime_env.yaml")["env_vars"]["SYNEG_CACHE"]
    mounts = {
        _assert_every_pod_mounts_the_shared_claim("cluster/kuberay-raycluster.yaml", load("cluster/kuberay-raycluster.yaml", "RayCluster")["spec"]),
        _assert_every_pod_mounts_the_shared_claim("cluster/kuberay-rayjob.yaml", load("cluster/kuberay-rayjob.yaml", "RayJob")["spec"]["rayClusterSpec"]),
    }
    launcher = load("cluster/aws-gpu.yaml")
    assert any("/mnt/shared" in c and "mount -t nfs4" in c for c in launcher["initialization_commands"])
    mounts.add("/mnt/shared")
    (mount,) = mounts
    assert cache.startswith(mount + "/")


def test_shipped_pipeline_configs_load() -> None:
    from syneg_ray.config import load_config

    configs = sorted((ROOT / "configs").glob("*.yaml"))
    assert configs
    for path in configs:
        assert load_config(path).run.run_dir
