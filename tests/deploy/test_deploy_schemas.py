"""Every overlay renders with kustomize, and every object is valid for current Kubernetes releases.

Core objects are checked against the OpenAPI schemas kubernetes-validate ships (strict: unknown fields
fail too). CRDs (the Prometheus operator's ServiceMonitor) are not in those schemas: they are checked
structurally here instead.
"""
from __future__ import annotations

import copy

import kubernetes_validate
import pytest
from k8s_render import CRD_KINDS, OVERLAYS, named, of_kind, render

KUBERNETES_VERSIONS = ["1.30", "1.32", kubernetes_validate.latest_version()]


def test_every_expected_overlay_exists():
    assert set(OVERLAYS) == {"mistral-7b", "llama-2-70b", "dev"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_into_its_own_namespace(overlay):
    objects = render(overlay)
    namespaces = of_kind(objects, "Namespace")
    assert [ns["metadata"]["name"] for ns in namespaces] == [f"ingot-{overlay}"]
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == f"ingot-{overlay}", obj["metadata"]["name"]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_core_objects_match_the_openapi_schemas(overlay, version):
    checked = 0
    for obj in render(overlay):
        if obj["kind"] in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{overlay}: {obj['kind']} {obj['metadata']['name']} invalid for {version}: "
                        f"{exc.message} at {'/'.join(map(str, exc.path))}")
        checked += 1
    assert checked >= 12


def test_the_validator_rejects_a_broken_deployment():
    """The schema check above is not vacuous: a typo in a field and a wrong type both fail."""
    deployment = copy.deepcopy(named(render("mistral-7b"), "Deployment", "ingot-triton"))
    typo = copy.deepcopy(deployment)
    typo["spec"]["template"]["spec"]["containers"][0]["resource"] = {}
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["replicas"] = "two"
    for broken in (typo, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, "1.32", strict=True)


def _check_service_monitor(monitor: dict, services: list[dict]) -> None:
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["name"] and monitor["metadata"]["namespace"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    matched = [s for s in services if all(s["metadata"].get("labels", {}).get(k) == v for k, v in selector.items())]
    assert len(matched) == 1, f"ServiceMonitor {monitor['metadata']['name']} should select exactly one Service"
    port_names = {port["name"] for port in matched[0]["spec"]["ports"]}
    endpoints = monitor["spec"]["endpoints"]
    assert endpoints, "a ServiceMonitor needs at least one endpoint"
    for endpoint in endpoints:
        assert endpoint["port"] in port_names
        assert endpoint["path"] == "/metrics"
        assert endpoint["interval"].endswith("s")


@pytest.mark.parametrize("overlay", [o for o in OVERLAYS if o != "dev"])
def test_service_monitors_are_well_formed_and_scrape_both_tiers(overlay):
    objects = render(overlay)
    monitors = of_kind(objects, "ServiceMonitor")
    assert sorted(m["metadata"]["name"] for m in monitors) == ["ingot-gateway", "ingot-triton"]
    for monitor in monitors:
        _check_service_monitor(monitor, of_kind(objects, "Service"))
    assert named(objects, "ServiceMonitor", "ingot-triton")["spec"]["endpoints"][0]["port"] == "metrics"


def test_dev_needs_no_custom_resources():
    """The dev overlay must apply on a bare cluster: no kinds beyond core Kubernetes."""
    assert not [obj["kind"] for obj in render("dev") if obj["kind"] in CRD_KINDS]
