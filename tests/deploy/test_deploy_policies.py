"""Policies every overlay must keep: resources, probes, pinned images, non-root, GPUs, wiring."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from k8s_render import (
    EXPECTED_GPUS,
    GPU_OVERLAYS,
    K8S,
    OVERLAYS,
    ROOT,
    container_ports,
    containers,
    env,
    is_ours,
    labels_match,
    named,
    of_kind,
    pod_labels,
    pod_spec,
    render,
)

PLACEHOLDER_URI = "s3://CHANGE-ME/"


def deployments(overlay: str) -> list[dict]:
    found = of_kind(render(overlay), "Deployment")
    assert sorted(d["metadata"]["name"] for d in found) == ["ingot-gateway", "ingot-triton"]
    return found


def all_containers(overlay: str):
    for deployment in deployments(overlay):
        for init in (False, True):
            for container in containers(deployment, init):
                yield deployment, container, init


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_cpu_and_memory_requests_and_limits(overlay):
    for deployment, container, _ in all_containers(overlay):
        where = f"{deployment['metadata']['name']}/{container['name']}"
        resources = container.get("resources", {})
        for kind in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                assert resource in resources.get(kind, {}), f"{where}: no {resource} {kind}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_serving_container_has_startup_liveness_and_readiness_probes(overlay):
    for deployment, container, init in all_containers(overlay):
        if init:
            continue
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert probe in container, f"{deployment['metadata']['name']}/{container['name']}: no {probe}"
        ports = {p["name"] for p in container["ports"]} | {p["containerPort"] for p in container["ports"]}
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert container[probe]["httpGet"]["port"] in ports


def test_probes_hit_the_documented_health_routes():
    objects = render("mistral-7b")
    triton = containers(named(objects, "Deployment", "ingot-triton"))[0]
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert triton["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    gateway = containers(named(objects, "Deployment", "ingot-gateway"))[0]
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/health"


def startup_budget_seconds(container: dict) -> int:
    probe = container["startupProbe"]
    return probe["periodSeconds"] * probe["failureThreshold"]


def test_startup_probes_leave_time_to_load_the_engine():
    mistral = containers(named(render("mistral-7b"), "Deployment", "ingot-triton"))[0]
    llama = containers(named(render("llama-2-70b"), "Deployment", "ingot-triton"))[0]
    assert startup_budget_seconds(mistral) >= 600
    assert startup_budget_seconds(llama) >= 1800


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_image_is_pinned_to_a_version_tag(overlay):
    for _, container, _ in all_containers(overlay):
        image = container["image"]
        name, _, tag = image.rpartition(":")
        assert name and "/" not in tag, f"{image}: no tag"
        assert tag != "latest", f"{image}: 'latest' is not a pin"
        assert any(ch.isdigit() for ch in tag), f"{image}: the tag names no version"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_our_containers_run_as_non_root_on_a_read_only_root_filesystem(overlay):
    ours = 0
    for deployment, container, _ in all_containers(overlay):
        if not is_ours(container["image"]):
            continue
        ours += 1
        pod_context = pod_spec(deployment).get("securityContext", {})
        context = {**pod_context, **container.get("securityContext", {})}
        where = f"{deployment['metadata']['name']}/{container['name']}"
        assert context.get("runAsNonRoot") is True, where
        assert context.get("runAsUser", 0) != 0, where
        assert context.get("readOnlyRootFilesystem") is True, where
        assert context.get("allowPrivilegeEscalation") is False, where
        assert "ALL" in context.get("capabilities", {}).get("drop", []), where
    assert ours >= 2


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_artifact_is_fetched_before_it_is_verified(overlay):
    """Init containers run in list order; an overlay's strategic-merge patch can silently reorder them."""
    for deployment in deployments(overlay):
        assert [c["name"] for c in containers(deployment, init=True)] == ["fetch-artifact", "verify-artifact"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_pod_mounts_an_api_token(overlay):
    objects = render(overlay)
    accounts = {sa["metadata"]["name"]: sa for sa in of_kind(objects, "ServiceAccount")}
    for deployment in deployments(overlay):
        spec = pod_spec(deployment)
        assert spec["serviceAccountName"] in accounts
        assert accounts[spec["serviceAccountName"]]["automountServiceAccountToken"] is False
        assert spec.get("automountServiceAccountToken") is False


@pytest.mark.parametrize("overlay", GPU_OVERLAYS)
def test_triton_asks_for_the_engines_gpus_on_p4d_nodes(overlay):
    triton = named(render(overlay), "Deployment", "ingot-triton")
    spec = pod_spec(triton)
    server = containers(triton)[0]
    gpus = EXPECTED_GPUS[overlay]
    assert server["resources"]["limits"]["nvidia.com/gpu"] == gpus
    assert server["resources"]["requests"]["nvidia.com/gpu"] == gpus
    assert env(server)["TRITON_WORLD_SIZE"] == str(gpus), "one MPI rank per GPU"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert {"key": "node.kubernetes.io/instance-type", "operator": "In", "values": ["p4d.24xlarge"]} in [
        expression for term in terms for expression in term["matchExpressions"]]
    # A p4d.24xlarge has 8 GPUs: whole pods must fit on one node, several of them for small engines.
    assert 8 % gpus == 0
    shm = next(v for v in spec["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["medium"] == "Memory"
    assert any(m["mountPath"] == "/dev/shm" for m in server["volumeMounts"])


@pytest.mark.parametrize("overlay", GPU_OVERLAYS)
def test_gpu_count_follows_the_build_plan(overlay):
    """The overlay's GPUs equal tp_size × pp_size of the plan `ingot plan` makes for that model."""
    reference = ROOT / "engines" / "reference_configs" / overlay
    result = subprocess.run([sys.executable, "-m", "engines.cli", "plan", "--checkpoint", str(reference),
                             "--profile", "a100-40gb", "--json"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    chosen = json.loads(result.stdout)["chosen"]
    assert chosen["tp_size"] * chosen["pp_size"] == EXPECTED_GPUS[overlay]


@pytest.mark.parametrize("overlay", GPU_OVERLAYS)
def test_per_pod_resources_fit_a_p4d_node_for_each_gpu_share(overlay):
    """Requests of one Triton pod stay within its share of a p4d.24xlarge (96 vCPU, 1152 GiB, 8 GPUs)."""
    server = containers(named(render(overlay), "Deployment", "ingot-triton"))[0]
    share = EXPECTED_GPUS[overlay] / 8
    cpu = float(server["resources"]["requests"]["cpu"])
    memory_gib = float(server["resources"]["requests"]["memory"].removesuffix("Gi"))
    assert cpu <= 96 * share
    assert memory_gib <= 1152 * share


def test_dev_runs_without_gpus_or_node_placement():
    triton = named(render("dev"), "Deployment", "ingot-triton")
    spec = pod_spec(triton)
    assert "affinity" not in spec and "tolerations" not in spec and "nodeSelector" not in spec
    for container in containers(triton) + containers(triton, init=True):
        for kind in ("requests", "limits"):
            assert "nvidia.com/gpu" not in container["resources"].get(kind, {})
        assert container["image"].startswith("ingot/portable:")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_select_a_deployments_pods_and_target_its_ports(overlay):
    objects = render(overlay)
    for service in of_kind(objects, "Service"):
        selector = service["spec"]["selector"]
        matched = [d for d in deployments(overlay) if labels_match(selector, pod_labels(d))]
        assert len(matched) == 1, f"Service {service['metadata']['name']} selects {len(matched)} Deployments"
        ports = container_ports(matched[0])
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert target in ports or target in ports.values(), f"{service['metadata']['name']}: {target}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_deployment_selectors_match_their_own_pod_templates(overlay):
    for deployment in deployments(overlay):
        assert labels_match(deployment["spec"]["selector"]["matchLabels"], pod_labels(deployment))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_autoscalers_target_existing_deployments(overlay):
    objects = render(overlay)
    names = {d["metadata"]["name"] for d in deployments(overlay)}
    hpas = of_kind(objects, "HorizontalPodAutoscaler")
    assert "ingot-gateway" in {h["metadata"]["name"] for h in hpas}
    for hpa in hpas:
        target = hpa["spec"]["scaleTargetRef"]
        assert (target["apiVersion"], target["kind"]) == ("apps/v1", "Deployment")
        assert target["name"] in names
        assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


@pytest.mark.parametrize("overlay", GPU_OVERLAYS)
def test_triton_scales_on_a_metric_the_adapter_serves(overlay):
    hpa = named(render(overlay), "HorizontalPodAutoscaler", "ingot-triton")
    values = yaml.safe_load((K8S / "prometheus-adapter" / "values.yaml").read_text())
    served = {rule["name"]["as"] for rule in values["rules"]["custom"]}
    pod_metrics = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert pod_metrics and set(pod_metrics) <= served
    for rule in values["rules"]["custom"]:
        assert {"namespace", "pod"} <= set(rule["resources"]["overrides"])
        assert "<<.LabelMatchers>>" in rule["metricsQuery"] and "<<.GroupBy>>" in rule["metricsQuery"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_disruption_budgets_select_each_tier(overlay):
    objects = render(overlay)
    budgets = of_kind(objects, "PodDisruptionBudget")
    covered = set()
    for budget in budgets:
        selector = budget["spec"]["selector"]["matchLabels"]
        matched = [d["metadata"]["name"] for d in deployments(overlay) if labels_match(selector, pod_labels(d))]
        assert len(matched) == 1, f"PDB {budget['metadata']['name']} selects {matched}"
        covered.add(matched[0])
    assert covered == {"ingot-gateway", "ingot-triton"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_api_keys_come_from_a_secret_that_is_not_in_the_manifests(overlay):
    objects = render(overlay)
    assert not of_kind(objects, "Secret"), "API keys must not be rendered from git"
    gateway = named(objects, "Deployment", "ingot-gateway")
    secret_volumes = {v["name"]: v["secret"]["secretName"] for v in pod_spec(gateway)["volumes"] if "secret" in v}
    assert "ingot-api-keys" in secret_volumes.values()
    server = containers(gateway)[0]
    keys_file = Path(env(server)["INGOT_API_KEYS_FILE"])
    mounts = {m["name"]: m["mountPath"] for m in server["volumeMounts"]}
    volume = next(name for name, secret in secret_volumes.items() if secret == "ingot-api-keys")
    assert str(keys_file.parent) == mounts[volume]


def test_the_example_key_file_is_a_placeholder_and_real_ones_are_ignored():
    example = K8S / "api-keys.example.txt"
    lines = [line for line in example.read_text().splitlines() if line and not line.startswith("#")]
    assert lines == ["sha256:" + "0" * 64]
    ignored = subprocess.run(["git", "check-ignore", "-q", "deploy/k8s/api-keys.txt"], cwd=ROOT)
    assert ignored.returncode == 0, "deploy/k8s/api-keys.txt must be git-ignored"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gateway_is_wired_to_triton_and_the_artifact(overlay):
    objects = render(overlay)
    gateway = named(objects, "Deployment", "ingot-gateway")
    settings = env(containers(gateway)[0])
    host, _, port = settings["INGOT_TRITON_URL"].partition(":")
    triton_service = named(objects, "Service", host)
    assert int(port) in {p["port"] for p in triton_service["spec"]["ports"] if p["name"] == "grpc"}
    artifact_mounts = {m["mountPath"] for m in containers(gateway)[0]["volumeMounts"]}
    assert settings["INGOT_ARTIFACT_DIR"] in artifact_mounts


@pytest.mark.parametrize("overlay", GPU_OVERLAYS)
def test_artifact_is_pulled_from_the_overlays_s3_prefix_and_verified(overlay):
    objects = render(overlay)
    artifact_maps = [cm for cm in of_kind(objects, "ConfigMap") if cm["metadata"]["name"].startswith("ingot-artifact")]
    assert len(artifact_maps) == 1
    uri = artifact_maps[0]["data"]["INGOT_ARTIFACT_URI"]
    assert uri.startswith("s3://") and not uri.startswith(PLACEHOLDER_URI) and overlay in uri
    for name, mount in (("ingot-triton", "/models"), ("ingot-gateway", "/artifact")):
        deployment = named(objects, "Deployment", name)
        fetch, verify = containers(deployment, init=True)
        assert fetch["image"].startswith("amazon/aws-cli:")
        assert fetch["args"][:2] == ["s3", "sync"] and fetch["args"][-2:] == ["$(INGOT_ARTIFACT_URI)", mount]
        assert fetch["envFrom"][0]["configMapRef"]["name"] == artifact_maps[0]["metadata"]["name"]
        assert verify["command"][1].endswith("verify_artifact.py") and verify["command"][2] == mount


def test_a_new_artifact_uri_changes_the_pod_templates():
    """The artifact ConfigMap's name carries a content hash, so a new S3 prefix means a rollout."""
    mistral, llama = render("mistral-7b"), render("llama-2-70b")

    def artifact_ref(objects):
        fetch = containers(named(objects, "Deployment", "ingot-triton"), init=True)[0]
        return fetch["envFrom"][0]["configMapRef"]["name"]

    assert artifact_ref(mistral) != artifact_ref(llama)
    assert artifact_ref(mistral).startswith("ingot-artifact-")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_gateway_drains_inside_its_termination_grace_period(overlay):
    from server.drain import longest_shutdown_s

    gateway = named(render(overlay), "Deployment", "ingot-gateway")
    container = containers(gateway)[0]
    settings = env(container)
    drain_s = float(settings["INGOT_DRAIN_TIMEOUT"])
    assert drain_s >= 10, "long enough for a running answer to finish"
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[:2] == ["python", "-c"]
    pre_stop_s = float(command[2].rsplit("sleep(", 1)[1].rstrip(")"))
    assert 0 < pre_stop_s <= 15
    # Kubernetes counts the preStop hook inside the grace period, then sends SIGTERM.
    assert pod_spec(gateway)["terminationGracePeriodSeconds"] > pre_stop_s + longest_shutdown_s(drain_s)
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"  # 503 from SIGTERM on
    assert int(settings["INGOT_GATEWAY_WORKERS"]) >= 1, "set: the default counts the node's cores"
