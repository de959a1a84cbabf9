"""Which clock each span was timed by (docs/critical-path.md, "Clock skew"): the pipeline's `clock_domains` step.

A span's clock domain is its node (resource `k8s.node.name`, else `host.name`); a pod whose node some span of the
trace names (an app span carries both `k8s.pod.name` and `k8s.node.name`) is on that node, so a sidecar — known by
the pod in Envoy's `node_id`, or Linkerd's `host.name` — shares its app's domain; else the pod, else
`service.instance.id`, else the service. A span naming only its service (Envoy's upstream attempt spans carry no
`node_id`) runs in the process of a parent from the same service: it shares that parent's clock.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from hopscope.analytics.trace import Trace, span_map

DOMAIN_RESOURCE_KEYS = ("k8s.node.name", "k8s.pod.name", "host.name", "service.instance.id")  # clock_domain reads
DOMAIN_ATTRIBUTE_KEYS = ("node_id",)
_MEMO_KEY = ((0, None), (1, None), (2, None), (3, None), (4, None))  # pod, host, instance, node_id, service


def clock_domain(span: Mapping[str, Any], pod_nodes: Mapping[str, str]) -> str:
    """One span's own domain, `pod_nodes` being the nodes the trace's spans name for their pods."""
    resource = span_map(span, "resource_attributes")
    node = resource.get("k8s.node.name")
    if node:
        return str(node)
    pod = resource.get("k8s.pod.name") or _pod_in_node_id(span)
    host = resource.get("host.name")
    for name in (pod, host):
        if name and str(name) in pod_nodes:
            return pod_nodes[str(name)]
    if host:
        return str(host)
    if pod:
        return f"pod:{pod}"
    instance = resource.get("service.instance.id")
    return f"instance:{instance}" if instance else f"service:{span.get('service_name') or ''}"


def _pod_in_node_id(span: Mapping[str, Any]) -> str | None:
    """Envoy's `node_id`, e.g. `sidecar~10.1.0.7~reviews-v1-5c2a.default~default.svc.cluster.local`."""
    parts = str(span_map(span, "attributes").get("node_id") or "").split("~")
    return parts[2].split(".")[0] if len(parts) >= 3 and parts[2] else None


def trace_domains(trace: Trace) -> list[str]:
    """Each span's clock domain, by position. A trace's spans come from a few dozen processes, so `clock_domain`
    runs once per combination of the fields it reads."""
    nodes, pods, hosts, instances = trace.fields("resources", DOMAIN_RESOURCE_KEYS)
    (node_ids,) = trace.fields("attributes", DOMAIN_ATTRIBUTE_KEYS)
    pod_nodes = {str(pod): str(node) for pod, node in zip(pods, nodes, strict=True) if node and pod}
    own: list[str] = []
    seen: dict[tuple[Any, ...], str] = {}
    for i, node in enumerate(nodes):
        if node:  # the first rule, and the common case
            own.append(str(node))
            continue
        key = (pods[i], hosts[i], instances[i], node_ids[i], trace.services[i])
        try:
            domain = seen.get(key)
        except TypeError:  # an unhashable attribute value
            domain = None
            key = None  # type: ignore[assignment]
        if domain is None:
            domain = clock_domain(trace.spans[i], pod_nodes)
            if key is not None:
                seen[key] = domain
        own.append(domain)
    return _inherited(trace, own)


def _inherited(trace: Trace, own: list[str]) -> list[str]:
    """A service-only domain takes its parent's while the parent is from the same service."""
    domains = list(own)
    parent, services = trace.parent, trace.services
    for i in [i for i, domain in enumerate(own) if domain.startswith("service:")]:
        j, seen = i, set()
        while own[j].startswith("service:") and j not in seen:
            seen.add(j)
            p = parent[j]
            if p < 0 or services[p] != services[j]:
                break
            j = p
        domains[i] = own[j]
    return domains


def trace_domains_compiled(native: Any, trace: Trace) -> list[str] | None:
    """`trace_domains` by the C accelerator (trace_accelerator.py): the node rule in one pass, the rest memoised on
    the same key, the inheritance; None hands back to `trace_domains`."""
    nodes, pods, hosts, instances = trace.fields("resources", DOMAIN_RESOURCE_KEYS)
    read = native.node_domains(nodes, pods)
    if read is None:
        return None
    own, pod_nodes, pending = read
    if pending:
        spans = trace.spans
        found = native.memoised({}, sys.maxsize, lambda i: clock_domain(spans[i], pod_nodes), _MEMO_KEY,
                                (pods, hosts, instances, *trace.fields("attributes", DOMAIN_ATTRIBUTE_KEYS),
                                 trace.services), pending)
        if found is None:
            return None
        for i, domain in zip(pending, found, strict=True):
            own[i] = domain
    return native.inherit_domains(own, trace.parent, trace.services)  # type: ignore[no-any-return]
