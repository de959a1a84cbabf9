"""What real proxies and apps put on their spans, copied from the Envoy 1.40 + Istio and OTel SDK captures in
shared/reference/mesh (tests/test_meshsim.py compares the two programmatically).

Envoy: every attribute value is a string, the keys are OpenTracing-era, timestamps are whole µs; the resource is
`service.name=<canonical service>.<namespace>` with `telemetry.sdk.name=envoy`, the scope `envoy`.
Apps (OTel SDK): semconv keys with typed values, ns timestamps.
"""

from __future__ import annotations

from typing import Any

from hopscope.instrumentation.meshsim.topology import Pod, Service

ENVOY_BUILD = "9e5580933739775e8bce696a57a2e1bc99368f23/1.40.0/Clean/RELEASE/BoringSSL"
SDK_VERSION = "1.45.2"
APP_SCOPE = ("hopscope.meshsim.app", "0.1.0")
INBOUND_PASSTHROUGH = "127.0.0.6"  # Istio's source address for inbound sidecar → app connections
USER_AGENT = "python-requests/2.32.3"


def envoy_resource(service: Service | None, gateway: bool = False, waypoint: bool = False) -> dict[str, Any]:
    """An Envoy's resource: service.name is the proxy's own cluster (`<svc>.<ns>`, `waypoint.<ns>` for an ambient
    waypoint as in Istio ≤ 1.27 and ≥ 1.30)."""
    if gateway:
        name = "istio-ingressgateway.istio-system"
    elif waypoint:
        name = f"waypoint.{service.namespace}"  # type: ignore[union-attr]
    else:
        name = f"{service.name}.{service.namespace}"  # type: ignore[union-attr]
    return {"telemetry.sdk.name": "envoy", "telemetry.sdk.language": "cpp", "telemetry.sdk.version": ENVOY_BUILD,
            "service.name": name}


def app_resource(service: Service, pod: Pod) -> dict[str, Any]:
    return {"telemetry.sdk.language": "python", "telemetry.sdk.name": "opentelemetry",
            "telemetry.sdk.version": SDK_VERSION, "service.instance.id": f"{pod.name}-{pod.ip}:{service.port}",
            "service.name": service.name, "service.namespace": service.namespace,
            "k8s.namespace.name": service.namespace, "k8s.pod.name": pod.name, "k8s.node.name": pod.node}


def node_id(pod: Pod, namespace: str, kind: str = "sidecar") -> str:
    """Envoy's node id as istiod sets it: `sidecar~`, `router~` (gateways) or `waypoint~` (ambient)."""
    return f"{kind}~{pod.ip}~{pod.name}.{namespace}~{namespace}.svc.cluster.local"


def _istio_tags(reporter: str, namespace: str) -> dict[str, str]:
    return {"istio.mesh_id": "cluster.local", "istio.canonical_service": reporter, "istio.canonical_revision": "v1",
            "istio.cluster_id": "Kubernetes", "istio.namespace": namespace}


def listener_attributes(*, reporter_pod: Pod, reporter: str, namespace: str, callee: Service, outbound: bool,
                        request_id: str, peer: str, status: int, response_flags: str, response_size: int,
                        node_kind: str = "sidecar") -> dict[str, str]:
    """An Envoy listener span (a sidecar's inbound or outbound span, a gateway's or a waypoint's), keys in Envoy's
    order. A waypoint routes to `inbound-vip|<port>|http|<fqdn>` (MESH-SOURCES §2.2)."""
    if node_kind == "waypoint":
        cluster = f"inbound-vip|{callee.port}|http|{callee.fqdn}"
    else:
        cluster = f"outbound|{callee.port}||{callee.fqdn}" if outbound else f"inbound|{callee.port}||"
    attributes = {
        "node_id": node_id(reporter_pod, namespace, node_kind), "zone": "", "guid:x-request-id": request_id,
        "http.url": f"http://{callee.fqdn}:{callee.port}{callee.path}", "http.method": "GET",
        "downstream_cluster": "-", "user_agent": USER_AGENT, "http.protocol": "HTTP/1.1", "peer.address": peer,
        "request_size": "0", "response_size": str(response_size), "component": "proxy",
        "upstream_cluster": cluster, "upstream_cluster.name": cluster, "http.status_code": str(status),
        "response_flags": response_flags,
    }
    if status >= 500:
        attributes["error"] = "true"
    attributes.update(_istio_tags(reporter, namespace))
    return attributes


def router_attributes(*, reporter: str, namespace: str, cluster: str, upstream: str, status: int,
                      retry_count: int) -> dict[str, str]:
    """An Envoy upstream-attempt span (`spawn_upstream_span: true`)."""
    attributes = {"http.protocol": "HTTP/1.1", "upstream_address": upstream, "peer.address": upstream,
                  "component": "proxy", "upstream_cluster": cluster, "upstream_cluster.name": cluster,
                  "http.status_code": str(status), "response_flags": "-"}
    if retry_count:
        attributes["retry.count"] = str(retry_count)
    attributes.update(_istio_tags(reporter, namespace))
    return attributes


def app_server_attributes(callee: Service, caller_address: str, request_id: str, status: int) -> dict[str, Any]:
    return {"http.request.method": "GET", "url.path": callee.path, "url.scheme": "http",
            "server.address": callee.fqdn, "server.port": callee.port, "client.address": caller_address,
            "network.peer.address": caller_address, "network.peer.port": 40000 + len(request_id),
            "network.protocol.version": "1.1", "user_agent.original": USER_AGENT,
            "http.request.header.x-request-id": (request_id,), "http.response.status_code": status}


def app_client_attributes(callee: Service, callee_ip: str, status: int) -> dict[str, Any]:
    return {"http.request.method": "GET", "url.full": f"http://{callee.fqdn}:{callee.port}{callee.path}",
            "server.address": callee.fqdn, "server.port": callee.port, "network.peer.address": callee_ip,
            "network.peer.port": callee.port, "http.response.status_code": status}


# ---- Linkerd 2.x (linkerd2-proxy ≥ v2.274), per shared/reference/MESH-SOURCES.md §1 ------------------------------
# Four proxy spans per hop (outbound SERVER + CLIENT per attempt, inbound SERVER + CLIENT to the app), every span
# named by the URL path, string-valued semconv attributes plus `direction`, status always Unset, flags 0x300, an
# empty scope, and a resource that names the proxy container.

def linkerd_resource(service: Service, pod: Pod) -> dict[str, Any]:
    return {"process.pid": 1, "process.start_timestamp": 1_795_600_000, "host.name": pod.name,
            "service.name": "linkerd-proxy", "app": service.name, "linkerd.io/workload-ns": service.namespace,
            "k8s.pod.ip": pod.ip, "k8s.container.name": "linkerd-proxy"}


def linkerd_attributes(callee: Service, outbound: bool, status: int) -> dict[str, str]:
    return {"direction": "outbound" if outbound else "inbound", "http.request.method": "GET", "url.scheme": "http",
            "url.path": callee.path, "server.address": callee.fqdn, "server.port": str(callee.port),
            "http.response.status_code": str(status)}
