"""An Istio-like sidecar bootstrap for one lab pod, as Envoy 1.40 reads it.

It mirrors what istiod generates for a sidecar in REDIRECT mode: `virtualOutbound` on :15001 and `virtualInbound`
on :15006, both with the `original_dst` listener filter, ORIGINAL_DST clusters named `outbound|8080||<fqdn>` and
`inbound|8080||`, inbound connections to the app from 127.0.0.6, Istio's route decorator `<fqdn>:8080/*` on both
sides of a hop, its default retry policy, its custom tags, and the OpenTelemetry tracer exporting over OTLP/gRPC —
or, for a pod that asks, the Zipkin tracer POSTing to hopscope's Zipkin port.
The one change from Istio's defaults: spans are flushed every second instead of every five, so a test waits less.
"""

from __future__ import annotations

from typing import Any

from hopscope.instrumentation.meshlab.spec import APP_PORT, NAMESPACE, LabPod, LabSpec

OUTBOUND_PORT = 15001
INBOUND_PORT = 15006
ADMIN_PORT = 15000
OTLP_CLUSTER = "outbound|4317||hopscope.hopscope.svc.cluster.local"
ZIPKIN_CLUSTER = "outbound|9411||zipkin.istio-system.svc.cluster.local"

# The Envoy access-log fields that say, per request, what the spans cannot: whether the upstream connection was
# new (pool_ready_ms > 0) and Envoy's own timing; `traceparent` carries this Envoy's span id, so lines join spans.
ACCESS_LOG_FORMAT = {
    "start_time": "%START_TIME%",
    "direction": "%ACCESS_LOG_TYPE% %DOWNSTREAM_LOCAL_ADDRESS%",
    "authority": "%REQ(:AUTHORITY)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "response_code": "%RESPONSE_CODE%",
    "response_flags": "%RESPONSE_FLAGS%",
    "duration_ms": "%DURATION%",
    "upstream_cluster": "%UPSTREAM_CLUSTER%",
    "upstream_host": "%UPSTREAM_HOST%",
    "traceparent": "%REQ(TRACEPARENT)%",
    "pool_ready_ms": "%UPSTREAM_CONNECTION_POOL_READY_DURATION%",
    "ds_rx_beg_to_us_tx_beg_us": "%COMMON_DURATION(DS_RX_BEG:US_TX_BEG:us)%",
}


def _typed(type_name: str, **fields: Any) -> dict[str, Any]:
    return {"@type": f"type.googleapis.com/{type_name}", **fields}


def _provider(pod: LabPod) -> dict[str, Any]:
    if pod.zipkin is None:
        return {"name": "envoy.tracers.opentelemetry", "typed_config": _typed(
            "envoy.config.trace.v3.OpenTelemetryConfig", service_name=f"{pod.service}.{NAMESPACE}",
            grpc_service={"envoy_grpc": {"cluster_name": OTLP_CLUSTER}, "timeout": "1s"})}
    # what istiod renders for a zipkin provider (shared/reference/mesh/ZIPKIN.md), with the pod's choices; B3 and
    # W3C both ways, so the apps' W3C-only SDK joins the sidecars' traces
    return {"name": "envoy.tracers.zipkin", "typed_config": _typed(
        "envoy.config.trace.v3.ZipkinConfig", collector_cluster=ZIPKIN_CLUSTER, collector_endpoint="/api/v2/spans",
        collector_endpoint_version=pod.zipkin.encoding, collector_hostname=ZIPKIN_CLUSTER.rsplit("|", 1)[1],
        trace_id_128bit=pod.zipkin.trace_id_128bit, shared_span_context=pod.zipkin.shared_span_context,
        trace_context_option="USE_B3_WITH_W3C_PROPAGATION")}


def _tracing(spec: LabSpec, pod: LabPod) -> dict[str, Any]:
    tags = {"istio.canonical_revision": "latest", "istio.canonical_service": pod.service,
            "istio.cluster_id": "Kubernetes", "istio.mesh_id": "cluster.local", "istio.namespace": NAMESPACE}
    return {
        "client_sampling": {"value": 100}, "random_sampling": {"value": 100}, "overall_sampling": {"value": 100},
        "spawn_upstream_span": spec.spawn_upstream_span,
        "custom_tags": [{"tag": key, "literal": {"value": value}} for key, value in tags.items()],
        "provider": _provider(pod),
    }


def _connection_manager(spec: LabSpec, pod: LabPod, stat_prefix: str, route_config: dict[str, Any]) -> dict:
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": _typed(
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        stat_prefix=stat_prefix, generate_request_id=True, tracing=_tracing(spec, pod),
        access_log=[{"name": "envoy.access_loggers.stdout", "typed_config": _typed(
            "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
            log_format={"json_format": ACCESS_LOG_FORMAT})}],
        route_config=route_config,
        http_filters=[{"name": "envoy.filters.http.router",
                       "typed_config": _typed("envoy.extensions.filters.http.router.v3.Router")}])}


def _listener(name: str, port: int, direction: str, manager: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "address": {"socket_address": {"address": "0.0.0.0", "port_value": port}},
            "traffic_direction": direction,
            "listener_filters": [{"name": "envoy.filters.listener.original_dst", "typed_config": _typed(
                "envoy.extensions.filters.listener.original_dst.v3.OriginalDst")}],
            "filter_chains": [{"filters": [manager]}]}


def outbound_cluster(callee: LabPod) -> str:
    return f"outbound|{APP_PORT}||{callee.fqdn}"


def _outbound_routes(spec: LabSpec, pod: LabPod) -> dict[str, Any]:
    retry_policy = {  # Istio's default outbound retry policy
        "retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
        "retriable_status_codes": [503], "num_retries": 2}
    hosts = []
    for callee in (spec.pod(name) for name in pod.calls):
        address = spec.pod_address(callee)
        hosts.append({"name": f"{callee.fqdn}:{APP_PORT}",
                      "domains": [callee.fqdn, f"{callee.fqdn}:{APP_PORT}", callee.service,
                                  f"{callee.service}:{APP_PORT}", address, f"{address}:{APP_PORT}"],
                      "routes": [{"match": {"prefix": "/"}, "name": "default",
                                  "decorator": {"operation": f"{callee.fqdn}:{APP_PORT}/*"},
                                  "route": {"cluster": outbound_cluster(callee), "timeout": "0s",
                                            "retry_policy": retry_policy}}]})
    hosts.append({"name": "allow_any", "domains": ["*"], "routes": [
        {"match": {"prefix": "/"}, "name": "allow_any", "route": {"cluster": "PassthroughCluster", "timeout": "0s"}}]})
    return {"name": str(APP_PORT), "virtual_hosts": hosts}


def _inbound_routes(pod: LabPod) -> dict[str, Any]:
    return {"name": f"inbound|{APP_PORT}||", "virtual_hosts": [{
        "name": f"inbound|http|{APP_PORT}", "domains": ["*"],
        "routes": [{"match": {"prefix": "/"}, "name": "default",
                    "decorator": {"operation": f"{pod.fqdn}:{APP_PORT}/*"},
                    "route": {"cluster": f"inbound|{APP_PORT}||", "timeout": "0s"}}]}]}


def _original_destination(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED", "connect_timeout": "1s", **extra}


def _http_protocol_options(**fields: Any) -> dict[str, Any]:
    return {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": _typed(
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions", **fields)}


def _outbound_cluster_options(spec: LabSpec) -> dict[str, Any]:
    """What Istio renders for a DestinationRule's `connectionPool.http.maxRequestsPerConnection`."""
    if not spec.max_requests_per_connection:
        return {}
    return {"typed_extension_protocol_options": _http_protocol_options(
        common_http_protocol_options={"max_requests_per_connection": spec.max_requests_per_connection},
        explicit_http_config={"http_protocol_options": {}})}


def _static_cluster(name: str, host: str, port: int, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": "STATIC", "connect_timeout": "1s", **extra,
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {
                "address": {"socket_address": {"address": host, "port_value": port}}}}]}]}}


def sidecar_bootstrap(spec: LabSpec, pod: LabPod, otlp_host: str, otlp_port: int,
                      zipkin_port: int | None = None) -> dict[str, Any]:
    address = spec.pod_address(pod)
    clusters = [_original_destination(outbound_cluster(spec.pod(name)), **_outbound_cluster_options(spec))
                for name in pod.calls]
    clusters += [
        _original_destination("PassthroughCluster"),
        _original_destination(f"inbound|{APP_PORT}||",
                              upstream_bind_config={"source_address": {"address": "127.0.0.6", "port_value": 0}}),
        _static_cluster(OTLP_CLUSTER, otlp_host, otlp_port, typed_extension_protocol_options=_http_protocol_options(
            explicit_http_config={"http2_protocol_options": {}})),
    ]
    if pod.zipkin is not None:
        if zipkin_port is None:
            raise ValueError(f"{pod.service} traces with Zipkin: the lab needs hopscope's Zipkin port")
        clusters.append(_static_cluster(ZIPKIN_CLUSTER, otlp_host, zipkin_port))
    return {
        "node": {"id": f"sidecar~{address}~{pod.service}-pod.{NAMESPACE}~{NAMESPACE}.svc.cluster.local",
                 "cluster": f"{pod.service}.{NAMESPACE}"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": ADMIN_PORT}}},
        "layered_runtime": {"layers": [{"name": "static", "static_layer": {
            "tracing.opentelemetry.flush_interval_ms": 1000, "tracing.opentelemetry.min_flush_spans": 5,
            "tracing.zipkin.flush_interval_ms": 1000, "tracing.zipkin.min_flush_spans": 5}}]},
        "static_resources": {
            "listeners": [
                _listener("virtualOutbound", OUTBOUND_PORT, "OUTBOUND",
                          _connection_manager(spec, pod, f"outbound_0.0.0.0_{APP_PORT}", _outbound_routes(spec, pod))),
                _listener("virtualInbound", INBOUND_PORT, "INBOUND",
                          _connection_manager(spec, pod, f"inbound_0.0.0.0_{APP_PORT}", _inbound_routes(pod))),
            ],
            "clusters": clusters,
        },
    }
