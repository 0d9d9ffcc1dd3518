"""Render the kustomize overlays with the real renderer (`kubectl kustomize`) and walk the result."""
from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = sorted(path.name for path in (K8S / "overlays").iterdir() if (path / "kustomization.yaml").is_file())
GPU_OVERLAYS = [name for name in OVERLAYS if name != "dev"]
# The tensor-parallel size of each GPU overlay's engine, as `ingot plan` chooses it on a100-40gb.
EXPECTED_GPUS = {"mistral-7b": 1, "llama-2-70b": 4}
CRD_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
OUR_IMAGES = ("ingot/gateway", "ingot/portable")


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.skip("kubectl is not installed: the deploy tests render overlays with `kubectl kustomize`")
    return path


@functools.lru_cache(maxsize=None)
def _render(directory: str) -> tuple[dict, ...]:
    result = subprocess.run([kubectl(), "kustomize", directory], capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise AssertionError(f"kubectl kustomize {directory} failed:\n{result.stderr}")
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def render(overlay: str) -> list[dict]:
    return list(_render(str(K8S / "overlays" / overlay)))


def of_kind(objects: list[dict], kind: str) -> list[dict]:
    return [obj for obj in objects if obj["kind"] == kind]


def named(objects: list[dict], kind: str, name: str) -> dict:
    matches = [obj for obj in of_kind(objects, kind) if obj["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def pod_spec(deployment: dict) -> dict:
    return deployment["spec"]["template"]["spec"]


def pod_labels(deployment: dict) -> dict[str, str]:
    return deployment["spec"]["template"]["metadata"].get("labels", {})


def containers(deployment: dict, init: bool = False) -> list[dict]:
    return pod_spec(deployment).get("initContainers" if init else "containers", [])


def container_ports(deployment: dict) -> dict[str, int]:
    return {port["name"]: port["containerPort"] for c in containers(deployment) for port in c.get("ports", [])
            if "name" in port}


def env(container: dict) -> dict[str, str]:
    return {item["name"]: item.get("value") for item in container.get("env", [])}


def is_ours(image: str) -> bool:
    return image.split(":")[0] in OUR_IMAGES


def labels_match(match_labels: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in match_labels.items())
