"""Realistic pre-serialised OTLP requests for the benchmarks: half Envoy/Istio sidecar spans shaped like the
Envoy 1.40 captures in shared/reference/mesh (string-valued OpenTracing-era keys, µs timestamps), half OTel SDK app
spans (semconv keys, typed values). ~15-20 attributes a span, 512 spans a request by default.

The load generator (hopscope.instrumentation.loadgen) gives every send fresh trace ids.
"""

from __future__ import annotations

import random

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

ENVOY_BUILD = "9e5580933739775e8bce696a57a2e1bc99368f23/1.40.0/Clean/RELEASE/BoringSSL"
SERVICES = ("productpage", "details", "reviews", "ratings")


def _key_value(key: str, value: object) -> KeyValue:
    any_value = AnyValue()
    if isinstance(value, bool):
        any_value.bool_value = value
    elif isinstance(value, int):
        any_value.int_value = value
    elif isinstance(value, float):
        any_value.double_value = value
    else:
        any_value.string_value = str(value)
    return KeyValue(key=key, value=any_value)


def _envoy_attributes(rnd: random.Random, caller: str, callee: str, outbound: bool) -> dict[str, object]:
    cluster = f"outbound|9080||{callee}.default.svc.cluster.local" if outbound else "inbound|9080||"
    pod = f"{caller if outbound else callee}-v1-{rnd.randrange(16**4):04x}"
    return {
        "node_id": f"sidecar~10.77.{rnd.randrange(4)}.{rnd.randrange(250)}~{pod}.default~default.svc.cluster.local",
        "zone": "", "guid:x-request-id": f"{rnd.getrandbits(128):032x}",
        "http.url": f"http://{callee}.default.svc.cluster.local:9080/{callee}/{rnd.randrange(1000)}",
        "http.method": "GET", "downstream_cluster": "-", "user_agent": "python-requests/2.31.0",
        "http.protocol": "HTTP/1.1", "peer.address": f"10.77.{rnd.randrange(4)}.{rnd.randrange(250)}",
        "request_size": "0", "response_size": str(rnd.randrange(40, 4000)), "component": "proxy",
        "upstream_cluster": cluster, "upstream_cluster.name": cluster,
        "http.status_code": rnd.choice(("200", "200", "200", "503")), "response_flags": "-",
        "istio.canonical_service": caller if outbound else callee, "istio.namespace": "default",
    }


def _app_attributes(rnd: random.Random, callee: str) -> dict[str, object]:
    return {
        "http.request.method": "GET", "url.path": f"/{callee}/{rnd.randrange(1000)}", "url.scheme": "http",
        "http.route": f"/{callee}/{{id}}", "server.address": f"{callee}.default.svc.cluster.local",
        "server.port": 9080, "network.peer.address": "127.0.0.6", "network.peer.port": rnd.randrange(30000, 60000),
        "http.response.status_code": rnd.choice((200, 200, 200, 503)), "user_agent.original": "python-requests/2.31",
        "network.protocol.version": "1.1", "client.address": "127.0.0.6", "thread.id": rnd.randrange(1, 64),
        "app.cache_hit": rnd.random() < 0.3, "app.load": round(rnd.random(), 3),
    }


def build_request(spans: int = 512, seed: int = 0, start_ns: int = 1_795_672_246_000_000_000) -> bytes:
    rnd = random.Random(seed)
    request = ExportTraceServiceRequest()
    per_group = max(1, spans // (2 * len(SERVICES)))
    made = 0
    for index, service in enumerate(SERVICES):
        callee = SERVICES[(index + 1) % len(SERVICES)]
        for envoy in (True, False):
            if made >= spans:
                break
            resource_spans = request.resource_spans.add()
            resource = ({"telemetry.sdk.name": "envoy", "telemetry.sdk.language": "cpp",
                         "telemetry.sdk.version": ENVOY_BUILD, "service.name": f"{service}.default"} if envoy else
                        {"service.name": service, "telemetry.sdk.name": "opentelemetry",
                         "telemetry.sdk.language": "python", "k8s.namespace.name": "default",
                         "k8s.pod.name": f"{service}-v1-5c2a", "k8s.node.name": f"node-{index % 2}"})
            resource_spans.resource.attributes.extend(_key_value(k, v) for k, v in resource.items())
            scope_spans = resource_spans.scope_spans.add()
            scope_spans.scope.name, scope_spans.scope.version = (("envoy", ENVOY_BUILD) if envoy else
                                                                 ("opentelemetry.instrumentation.flask", "0.55b0"))
            count = min(per_group, spans - made) if (index, envoy) != (len(SERVICES) - 1, False) else spans - made
            for _ in range(count):
                span = scope_spans.spans.add()
                span.trace_id, span.span_id = rnd.randbytes(16), rnd.randbytes(8)
                span.parent_span_id = rnd.randbytes(8)
                span.flags = 769
                start = start_ns + rnd.randrange(10**9)
                if envoy:
                    outbound = rnd.random() < 0.5
                    span.name = f"{callee}.default.svc.cluster.local:9080/*"
                    span.kind = Span.SPAN_KIND_CLIENT if outbound else Span.SPAN_KIND_SERVER
                    span.start_time_unix_nano = start // 1000 * 1000
                    span.end_time_unix_nano = span.start_time_unix_nano + rnd.randrange(200, 50_000) * 1000
                    attributes = _envoy_attributes(rnd, service, callee, outbound)
                else:
                    span.name = f"GET /{callee}/{{id}}"
                    span.kind = Span.SPAN_KIND_SERVER
                    span.start_time_unix_nano = start
                    span.end_time_unix_nano = start + rnd.randrange(100_000, 40_000_000)
                    attributes = _app_attributes(rnd, callee)
                span.attributes.extend(_key_value(k, v) for k, v in attributes.items())
                if attributes.get("http.status_code") == "503" or attributes.get("http.response.status_code") == 503:
                    span.status.code = Status.STATUS_CODE_ERROR
                made += 1
    return request.SerializeToString()
