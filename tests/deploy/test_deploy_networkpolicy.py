"""The rendered NetworkPolicies really isolate Triton: only the gateway reaches its gRPC port, only
Prometheus its metrics port. Evaluated with k8s_netpol, whose own semantics are pinned down first."""
from __future__ import annotations

import pytest
from k8s_netpol import Pod, ingress_allowed, selector_matches
from k8s_render import OVERLAYS, container_ports, named, of_kind, pod_labels, render

PROMETHEUS_LABELS = {"app.kubernetes.io/name": "prometheus", "prometheus": "k8s"}
INGRESS_LABELS = {"app.kubernetes.io/name": "ingress-nginx", "app.kubernetes.io/component": "controller"}


# --- the evaluator itself -------------------------------------------------------------------------

def _policy(namespace: str, selector: dict, ingress: list | None, types=("Ingress",)) -> dict:
    spec = {"podSelector": selector, "policyTypes": list(types)}
    if ingress is not None:
        spec["ingress"] = ingress
    return {"kind": "NetworkPolicy", "metadata": {"name": "p", "namespace": namespace}, "spec": spec}


WEB = Pod("app", {"role": "web"}, {"http": 80})
CLIENT = Pod("app", {"role": "client"})
OUTSIDER = Pod("other", {"role": "client"})


def test_evaluator_no_policy_allows_everything():
    assert ingress_allowed([], OUTSIDER, WEB, 80)


def test_evaluator_a_selecting_policy_without_rules_denies_everything():
    assert not ingress_allowed([_policy("app", {}, None)], CLIENT, WEB, 80)


def test_evaluator_policies_of_other_namespaces_or_egress_only_do_not_isolate():
    assert ingress_allowed([_policy("other", {}, None)], CLIENT, WEB, 80)
    assert ingress_allowed([_policy("app", {}, None, types=("Egress",))], CLIENT, WEB, 80)


def test_evaluator_pod_selector_peers_are_same_namespace_only():
    policy = _policy("app", {}, [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}]}])
    assert ingress_allowed([policy], CLIENT, WEB, 80)
    assert not ingress_allowed([policy], OUTSIDER, WEB, 80)


def test_evaluator_namespace_and_pod_selector_in_one_peer_must_both_match():
    peer = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "other"}},
            "podSelector": {"matchLabels": {"role": "client"}}}
    policy = _policy("app", {}, [{"from": [peer]}])
    assert ingress_allowed([policy], OUTSIDER, WEB, 80)
    assert not ingress_allowed([policy], Pod("other", {"role": "db"}), WEB, 80)
    assert not ingress_allowed([policy], CLIENT, WEB, 80)


def test_evaluator_ports_by_name_number_range_and_protocol():
    rule = {"ports": [{"port": "http"}, {"port": 9000, "endPort": 9010}, {"port": 53, "protocol": "UDP"}]}
    policy = _policy("app", {}, [rule])
    assert ingress_allowed([policy], CLIENT, WEB, 80)
    assert ingress_allowed([policy], CLIENT, WEB, 9005)
    assert not ingress_allowed([policy], CLIENT, WEB, 9011)
    assert not ingress_allowed([policy], CLIENT, WEB, 53)
    assert ingress_allowed([policy], CLIENT, WEB, 53, protocol="UDP")


def test_evaluator_selector_expressions():
    labels = {"tier": "api", "env": "prod"}
    assert selector_matches({}, labels)
    assert selector_matches({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["api"]}]}, labels)
    assert not selector_matches({"matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["prod"]}]},
                                labels)
    assert not selector_matches({"matchExpressions": [{"key": "gpu", "operator": "Exists"}]}, labels)
    assert selector_matches({"matchExpressions": [{"key": "gpu", "operator": "DoesNotExist"}]}, labels)


# --- the rendered policies ------------------------------------------------------------------------

class Cluster:
    """Pods as the overlay's Deployments would create them, plus pods that must be kept out."""

    def __init__(self, overlay: str):
        objects = render(overlay)
        self.namespace = f"ingot-{overlay}"
        self.policies = of_kind(objects, "NetworkPolicy")
        triton = named(objects, "Deployment", "ingot-triton")
        gateway = named(objects, "Deployment", "ingot-gateway")
        self.triton = Pod(self.namespace, pod_labels(triton), container_ports(triton))
        self.gateway = Pod(self.namespace, pod_labels(gateway), container_ports(gateway))
        self.neighbour = Pod(self.namespace, {"app": "debug-shell"})
        # A pod elsewhere that copies the gateway's labels must not get in either.
        self.impostor = Pod("default", pod_labels(gateway))
        self.prometheus = Pod("monitoring", PROMETHEUS_LABELS)
        self.prometheus_elsewhere = Pod("default", PROMETHEUS_LABELS)
        self.ingress_controller = Pod("ingress-nginx", INGRESS_LABELS)

    def allowed(self, source: Pod, destination: Pod, port: str) -> bool:
        return ingress_allowed(self.policies, source, destination, port)


@pytest.fixture(params=OVERLAYS)
def cluster(request) -> Cluster:
    return Cluster(request.param)


def test_policies_only_restrict_ingress(cluster):
    """The evaluator models ingress; with no Egress policies, that is the whole story."""
    assert cluster.policies
    for policy in cluster.policies:
        assert policy["spec"]["policyTypes"] == ["Ingress"]


def test_the_gateway_reaches_tritons_grpc_port(cluster):
    assert cluster.allowed(cluster.gateway, cluster.triton, "grpc")


@pytest.mark.parametrize("port", ["grpc", "http", "metrics"])
def test_other_pods_cannot_reach_triton(cluster, port):
    for source in (cluster.neighbour, cluster.impostor, cluster.ingress_controller, cluster.prometheus_elsewhere):
        assert not cluster.allowed(source, cluster.triton, port), f"{source} reached Triton's {port}"


def test_the_gateway_uses_only_grpc(cluster):
    assert not cluster.allowed(cluster.gateway, cluster.triton, "http")
    assert not cluster.allowed(cluster.gateway, cluster.triton, "metrics")


def test_prometheus_reaches_tritons_metrics_port_only(cluster):
    assert cluster.allowed(cluster.prometheus, cluster.triton, "metrics")
    assert not cluster.allowed(cluster.prometheus, cluster.triton, "grpc")
    assert not cluster.allowed(cluster.prometheus, cluster.triton, "http")


def test_the_gateway_takes_traffic_from_the_ingress_controller_and_prometheus_only(cluster):
    assert cluster.allowed(cluster.ingress_controller, cluster.gateway, "http")
    assert cluster.allowed(cluster.prometheus, cluster.gateway, "http")  # /metrics shares the API port
    assert not cluster.allowed(cluster.neighbour, cluster.gateway, "http")
    assert not cluster.allowed(cluster.impostor, cluster.gateway, "http")


def test_unlisted_pods_of_the_namespace_accept_nothing(cluster):
    target = Pod(cluster.namespace, {"app": "something-else"}, {"web": 8080})
    assert not cluster.allowed(cluster.gateway, target, "web")
