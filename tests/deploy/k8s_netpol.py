"""Ingress semantics of Kubernetes NetworkPolicy (networking.k8s.io/v1), for rendered manifests.

Enough of the API to answer "may pod A open a TCP connection to port P of pod B?":
- a pod is isolated for ingress once any policy of its namespace selects it (spec.podSelector) and has
  Ingress among its policyTypes (or, with no policyTypes, always); a pod no policy selects accepts all;
- an isolated pod accepts a connection when some policy selecting it has an ingress rule whose `from`
  matches the source (missing or empty: every source) and whose `ports` match (missing or empty: every
  port); policies are additive;
- a peer with only podSelector means pods of the policy's namespace; only namespaceSelector, every pod
  of matching namespaces; both, matching pods of matching namespaces; ipBlock peers match no pod here;
- a named port resolves against the destination pod's container ports; `endPort` widens a numeric port;
- label selectors: matchLabels and matchExpressions (In, NotIn, Exists, DoesNotExist); an empty selector
  matches everything. Every namespace carries the label kubernetes.io/metadata.name=<its name>.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Pod:
    namespace: str
    labels: dict[str, str]
    ports: dict[str, int] = field(default_factory=dict)  # container port name -> number
    namespace_labels: dict[str, str] = field(default_factory=dict)

    def all_namespace_labels(self) -> dict[str, str]:
        return {"kubernetes.io/metadata.name": self.namespace, **self.namespace_labels}


def selector_matches(selector: dict | None, labels: dict[str, str]) -> bool:
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values") or []
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and key in labels and labels[key] in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
        if operator not in ("In", "NotIn", "Exists", "DoesNotExist"):
            raise ValueError(f"unknown selector operator {operator!r}")
    return True


def _has_ingress_type(policy: dict) -> bool:
    types = policy["spec"].get("policyTypes")
    return True if not types else "Ingress" in types


def selecting_policies(policies: list[dict], pod: Pod) -> list[dict]:
    return [
        policy for policy in policies
        if policy["metadata"].get("namespace") == pod.namespace
        and _has_ingress_type(policy)
        and selector_matches(policy["spec"].get("podSelector", {}), pod.labels)
    ]


def _peer_matches(peer: dict, policy_namespace: str, source: Pod) -> bool:
    if "ipBlock" in peer:
        return False
    pod_selector, namespace_selector = peer.get("podSelector"), peer.get("namespaceSelector")
    if namespace_selector is None:
        in_namespace = source.namespace == policy_namespace
    else:
        in_namespace = selector_matches(namespace_selector, source.all_namespace_labels())
    if not in_namespace:
        return False
    return pod_selector is None or selector_matches(pod_selector, source.labels)


def _port_matches(rule_port: dict, destination: Pod, port: int, protocol: str) -> bool:
    if rule_port.get("protocol", "TCP") != protocol:
        return False
    wanted = rule_port.get("port")
    if wanted is None:
        return True
    if isinstance(wanted, str) and not wanted.isdigit():
        return destination.ports.get(wanted) == port
    low = int(wanted)
    return low <= port <= int(rule_port.get("endPort", low))


def _rule_allows(rule: dict, policy_namespace: str, source: Pod, destination: Pod, port: int, protocol: str) -> bool:
    peers = rule.get("from")
    if peers and not any(_peer_matches(peer, policy_namespace, source) for peer in peers):
        return False
    ports = rule.get("ports")
    return not ports or any(_port_matches(p, destination, port, protocol) for p in ports)


def ingress_allowed(policies: list[dict], source: Pod, destination: Pod, port: int | str,
                    protocol: str = "TCP") -> bool:
    """May `source` connect to `port` (number, or a container port name of `destination`)?"""
    if isinstance(port, str):
        if port not in destination.ports:
            raise KeyError(f"destination has no container port named {port!r}")
        port = destination.ports[port]
    selecting = selecting_policies(policies, destination)
    if not selecting:
        return True
    return any(
        _rule_allows(rule, policy["metadata"]["namespace"], source, destination, port, protocol)
        for policy in selecting
        for rule in policy["spec"].get("ingress") or []
    )
