"""The cluster files validate against the schemas their tools check them with: the launcher YAML
against Ray's own ray-schema.json (in the ray wheel), the KubeRay manifests against the KubeRay
CRDs' OpenAPI v3 schemas (../shared/schemas/kuberay-v1/). Each check also catches a planted error."""

from __future__ import annotations

import copy
import importlib.resources
import json
from pathlib import Path

import pytest
import yaml

jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is in the dev extra: pip install -e '.[dev]'")

ROOT = Path(__file__).resolve().parents[2]
KUBERAY = ROOT.parent / "shared" / "schemas" / "kuberay-v1"


def load(name: str, kind: str | None = None) -> dict:
    docs = list(yaml.safe_load_all((ROOT / name).read_text()))
    return docs[0] if kind is None else next(d for d in docs if d["kind"] == kind)


def errors(validator, doc: dict) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


# -- the Ray cluster launcher ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_validator():
    schema = json.loads(importlib.resources.files("ray.autoscaler").joinpath("ray-schema.json").read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def test_launcher_yaml_validates_against_rays_schema(ray_validator) -> None:
    assert errors(ray_validator, load("cluster/aws-gpu.yaml")) == []


def test_rays_schema_catches_a_misspelled_key_and_a_wrong_type(ray_validator) -> None:
    cfg = load("cluster/aws-gpu.yaml")
    misspelled = copy.deepcopy(cfg)
    misspelled["rsync_excludes"] = misspelled.pop("rsync_exclude")
    assert any("rsync_excludes" in e for e in errors(ray_validator, misspelled))
    wrong_type = copy.deepcopy(cfg)
    wrong_type["max_workers"] = "ten"
    assert any(e.startswith("max_workers:") for e in errors(ray_validator, wrong_type))
    bad_docker = copy.deepcopy(cfg)
    bad_docker["docker"]["pull_before_run"] = "yes"
    assert any(e.startswith("docker/pull_before_run:") for e in errors(ray_validator, bad_docker))


# -- the KubeRay manifests ------------------------------------------------------------------------


def _structural(node):
    """An OpenAPI v3 structural schema as a strict JSON Schema, the way `kubectl apply` (strict field
    validation) reads a manifest: unknown fields are errors (additionalProperties false where the
    schema lists properties and does not preserve unknown fields), `nullable` admits null, an
    int-or-string field admits both, and the x-kubernetes-* extensions are otherwise dropped."""
    if isinstance(node, list):
        return [_structural(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _structural(v) for k, v in node.items() if not k.startswith("x-kubernetes-") and k != "nullable"}
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        if "anyOf" not in out:
            out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if "properties" in out and "additionalProperties" not in out and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def _crd_validator(file_name: str):
    if not KUBERAY.is_dir():
        pytest.skip(f"the KubeRay CRD schemas are not at {KUBERAY} (see ../shared/schemas/README.md)")
    crd = yaml.safe_load((KUBERAY / file_name).read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = _structural(version["schema"]["openAPIV3Schema"])
    # apiVersion, kind and metadata are checked by the API server itself, not the CRD
    schema["properties"]["metadata"] = {"type": "object"}
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema), crd["spec"]["names"]["kind"]


@pytest.fixture(scope="module")
def raycluster_validator():
    return _crd_validator("ray.io_rayclusters.yaml")


@pytest.fixture(scope="module")
def rayjob_validator():
    return _crd_validator("ray.io_rayjobs.yaml")


def test_raycluster_validates_against_the_crd(raycluster_validator) -> None:
    validator, kind = raycluster_validator
    doc = load("cluster/kuberay-raycluster.yaml", kind)
    assert doc["apiVersion"] == "ray.io/v1"
    assert errors(validator, doc) == []


def test_rayjob_validates_against_the_crd(rayjob_validator) -> None:
    validator, kind = rayjob_validator
    doc = load("cluster/kuberay-rayjob.yaml", kind)
    assert doc["apiVersion"] == "ray.io/v1"
    assert errors(validator, doc) == []


def test_raycluster_schema_catches_a_container_without_a_name(raycluster_validator) -> None:
    validator, kind = raycluster_validator
    doc = load("cluster/kuberay-raycluster.yaml", kind)
    del doc["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["name"]
    assert any("'name' is a required property" in e for e in errors(validator, doc))


def test_raycluster_schema_catches_a_misspelled_field(raycluster_validator) -> None:
    validator, kind = raycluster_validator
    doc = load("cluster/kuberay-raycluster.yaml", kind)
    doc["spec"]["workerGroupSpecs"][0]["maxReplica"] = doc["spec"]["workerGroupSpecs"][0].pop("maxReplicas")
    assert any("maxReplica" in e for e in errors(validator, doc))


def test_rayjob_schema_catches_a_wrong_type(rayjob_validator) -> None:
    validator, kind = rayjob_validator
    doc = load("cluster/kuberay-rayjob.yaml", kind)
    doc["spec"]["entrypointNumCpus"] = "one"
    assert any(e.startswith("spec/entrypointNumCpus:") for e in errors(validator, doc))


def test_int_or_string_quantities_accept_both(raycluster_validator) -> None:
    validator, kind = raycluster_validator
    doc = load("cluster/kuberay-raycluster.yaml", kind)
    limits = doc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    limits["cpu"] = 4  # an integer quantity, as valid as "4"
    assert errors(validator, doc) == []
    limits["cpu"] = [4]
    assert errors(validator, doc)
