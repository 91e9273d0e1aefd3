"""The deployment manifests: the KubeRay RayService against KubeRay's CRD schema, the Serve import paths, the exact Ray
version in every pin and image tag, and ray-cluster.yaml's setup (Ray's image, no apt python3.11)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml

ROOT = Path(__file__).resolve().parents[2]
# In CI shared/ is a sibling of the repository clone: resolve from the repository root, not the working directory.
CRD = ROOT / ".." / "shared" / "kuberay" / "ray.io_rayservices.yaml"
RAYSERVICE = ROOT / "deploy" / "kuberay" / "rayservice.yaml"
DOCKERFILE = ROOT / "deploy" / "kuberay" / "Dockerfile"
CLUSTER_YAML = ROOT / "ray-cluster.yaml"
SERVE_CONFIG = ROOT / "serve" / "serve_config.yaml"
RAY_VERSION = ray.__version__
RAY_IMAGE = f"rayproject/ray:{RAY_VERSION}-py311-cpu"

Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRD is 1 MB


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.load_all(path.read_text(), Loader=Loader) if doc]


def _rayservice() -> dict[str, Any]:
    services = [doc for doc in _documents(RAYSERVICE) if doc.get("kind") == "RayService"]
    assert len(services) == 1, "deploy/kuberay/rayservice.yaml holds exactly one RayService"
    return services[0]


def _crd_schema() -> dict[str, Any]:
    if not CRD.is_file():
        pytest.skip(f"KubeRay RayService CRD not found at {CRD.resolve()} (shared/ beside the repository clone)")
    crd = yaml.load(CRD.read_text(), Loader=Loader)
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return version["schema"]["openAPIV3Schema"]


def _unknown_fields(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Fields the API server would drop (or reject with strict field validation): keys a structural schema
    does not declare. jsonschema alone accepts them, as the CRD sets no additionalProperties: false."""
    found: list[str] = []
    if isinstance(value, dict) and "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        for key, item in value.items():
            if key in schema["properties"]:
                found += _unknown_fields(item, schema["properties"][key], f"{path}.{key}")
            elif "additionalProperties" not in schema:
                found.append(f"{path}.{key}")
    elif isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        for key, item in value.items():
            found += _unknown_fields(item, schema["additionalProperties"], f"{path}.{key}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            found += _unknown_fields(item, schema["items"], f"{path}[{i}]")
    return found


def _resolve(import_path: str) -> Any:
    module, _, attribute = import_path.partition(":")
    return getattr(importlib.import_module(module), attribute)


def _containers(service: dict[str, Any]) -> list[dict[str, Any]]:
    cluster = service["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"]["template"]] + [group["template"] for group in cluster["workerGroupSpecs"]]
    return [container for pod in pods for container in pod["spec"]["containers"]]


def test_rayservice_matches_the_kuberay_crd_schema() -> None:
    import jsonschema

    schema = _crd_schema()
    service = _rayservice()
    jsonschema.validate(service, schema, cls=jsonschema.Draft7Validator)
    assert _unknown_fields(service, schema) == []
    assert service["apiVersion"] == "ray.io/v1"


def test_rayservice_serve_config_is_the_projects_app() -> None:
    serve_config = yaml.safe_load(_rayservice()["spec"]["serveConfigV2"])
    (app,) = serve_config["applications"]
    assert app["import_path"] == "serve.app:app_builder"
    builder = _resolve(app["import_path"])
    assert callable(builder)
    # One application, two ways to deploy it: the RayService must not drift from `serve deploy`'s file
    assert serve_config == yaml.safe_load(SERVE_CONFIG.read_text())


def test_serve_config_import_path_builds_the_app() -> None:
    from ray.serve import Application

    (app,) = yaml.safe_load(SERVE_CONFIG.read_text())["applications"]
    builder = _resolve(app["import_path"])
    assert callable(builder)
    assert isinstance(builder(app.get("args") or {}), Application)  # binds the deployments; starts nothing


def test_rayservice_env_ha_proxy_and_settings_on_every_pod() -> None:
    from cluster.config import Settings

    service = _rayservice()
    expected = {
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": f"{Settings().serve_drain_s:g}",
        "FRAUD_AWS_MODE": "real",
        "FRAUD_API_HOST": "0.0.0.0",
    }
    for container in _containers(service):
        env = {item["name"]: item for item in container["env"]}
        assert {name: env[name].get("value") for name in expected} == expected, container["name"]
        assert env["FRAUD_API_KEY"]["valueFrom"]["secretKeyRef"]["name"]  # a Secret, never a literal key
        assert container["resources"]["requests"] == container["resources"]["limits"]
    accounts = [doc for doc in _documents(RAYSERVICE) if doc.get("kind") == "ServiceAccount"]
    assert len(accounts) == 1
    assert accounts[0]["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    cluster = service["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"]["template"]] + [group["template"] for group in cluster["workerGroupSpecs"]]
    assert {pod["spec"]["serviceAccountName"] for pod in pods} == {accounts[0]["metadata"]["name"]}


def test_every_ray_pin_and_image_names_the_installed_ray() -> None:
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (ray_pin,) = [Requirement(dep) for dep in project["dependencies"] if Requirement(dep).name == "ray"]
    assert str(ray_pin.specifier) == f"=={RAY_VERSION}"

    service = _rayservice()
    assert service["spec"]["rayClusterConfig"]["rayVersion"] == RAY_VERSION
    for container in _containers(service):  # the project's image, tagged with the Ray image it is built from
        assert container["image"].endswith(f"-ray{RAY_VERSION}-py311-cpu"), container["image"]
    assert re.findall(r"^FROM\s+(\S+)", DOCKERFILE.read_text(), flags=re.MULTILINE) == [RAY_IMAGE]

    texts = {
        path: path.read_text()
        for path in [
            CLUSTER_YAML,
            ROOT / "pyproject.toml",
            *sorted((ROOT / "deploy").rglob("*")),
            ROOT / "docs" / "KUBERNETES.md",
        ]
        if path.is_file()
    }
    for path, text in texts.items():
        for tag in re.findall(r"rayproject/ray(?:-ml)?:([\w.\-]+)", text):
            assert tag.startswith(f"{RAY_VERSION}-"), f"{path}: rayproject/ray:{tag}"
        for version in re.findall(r"\bray(?:\[[^\]]*\])?==([\w.*]+)", text):
            assert version == RAY_VERSION, f"{path}: ray=={version}"
        for version in re.findall(r"ray\.__version__ == \"([^\"]+)\"", text):
            assert version == RAY_VERSION, f"{path}: checks for Ray {version}"


def test_ray_cluster_yaml_uses_rays_image_and_no_apt_python311() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    text = CLUSTER_YAML.read_text()
    config = yaml.safe_load(text)
    validate_config(prepare_config(config))
    assert config["docker"]["image"] == RAY_IMAGE
    commands = [
        command
        for key in (
            "initialization_commands",
            "setup_commands",
            "head_setup_commands",
            "worker_setup_commands",
            "head_start_ray_commands",
            "worker_start_ray_commands",
        )
        for command in config.get(key) or []
    ]
    assert not [command for command in commands if re.search(r"apt(-get)?\s.*python3\.11", command)]
    assert any(f'ray.__version__ == "{RAY_VERSION}"' in command for command in config["setup_commands"])
    head = " ".join(config["head_start_ray_commands"])
    assert "serve deploy serve/serve_config.yaml" in head  # the Serve app from its config file
    assert "fraudctl up --no-simulation --no-ui" in head  # AWS resources, a first model, the stream consumers
    run_options = " ".join(config["docker"]["run_options"])
    for name in (
        "RAY_SERVE_THROUGHPUT_OPTIMIZED=1",
        "RAY_SERVE_ENABLE_HA_PROXY=1",
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S=2",
        "FRAUD_AWS_MODE=real",
    ):
        assert f"--env {name}" in run_options
