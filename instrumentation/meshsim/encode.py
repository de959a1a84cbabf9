"""Simulated spans → what goes on the wire: an OTLP ExportTraceServiceRequest (raw mode) or OpenTelemetry SDK
ReadableSpans handed to the real OTLP exporters (SDK mode).

This is where the per-node clock offsets are applied (instants move, durations do not) and where µs become ns.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList
from opentelemetry.proto.trace.v1.trace_pb2 import Status

from hopscope.instrumentation.meshsim import shapes
from hopscope.instrumentation.meshsim.model import SimSpan, SimulatedRequest
from hopscope.instrumentation.meshsim.topology import Topology

REMOTE_PARENT_FLAGS = 0x300  # OTLP: has-is-remote + is-remote
LOCAL_PARENT_FLAGS = 0x100
SAMPLED = 0x01
ENVOY_ROLES = ("envoy", "gateway", "waypoint")


def any_value(value: Any) -> AnyValue:
    """A Python value as an OTLP AnyValue, every type included (an AnyValue passes through unchanged)."""
    if isinstance(value, AnyValue):
        return value
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, bytes):
        return AnyValue(bytes_value=value)
    if isinstance(value, tuple | list):
        return AnyValue(array_value=ArrayValue(values=[any_value(v) for v in value]))
    if isinstance(value, dict):
        return AnyValue(kvlist_value=KeyValueList(values=key_values(value)))
    return AnyValue(string_value=str(value))


def key_values(attributes: dict[str, Any]) -> list[KeyValue]:
    return [KeyValue(key=key, value=any_value(value)) for key, value in attributes.items()]


class Encoder:
    """Knows each emitter's resource and scope, and each node's clock offset."""

    def __init__(self, topology: Topology) -> None:
        self._topology = topology

    def resource(self, emitter: tuple[str, str, str]) -> dict[str, Any]:
        role, service_name, pod_name = emitter
        if role == "gateway":
            return shapes.envoy_resource(None, gateway=True)
        if role == "ebpf":
            pod = self._pod(service_name, pod_name)
            return {"service.name": "ebpf-agent", "telemetry.sdk.name": "hopscope.meshsim.ebpf",
                    "k8s.node.name": pod.node if pod else ""}
        service = self._topology.services[service_name]
        if role == "envoy":
            return shapes.envoy_resource(service)
        if role == "waypoint":
            return shapes.envoy_resource(service, waypoint=True)
        if role == "linkerd":
            pod = self._pod(service_name, pod_name)
            return shapes.linkerd_resource(service, pod)
        pod = self._pod(service_name, pod_name)
        assert pod is not None
        return shapes.app_resource(service, pod)

    def scope(self, emitter: tuple[str, str, str]) -> tuple[str, str]:
        if emitter[0] == "linkerd":
            return ("", "")  # linkerd2-proxy exports with an empty scope
        return ("envoy", shapes.ENVOY_BUILD) if emitter[0] in ENVOY_ROLES else shapes.APP_SCOPE

    def times_ns(self, span: SimSpan) -> tuple[int, int]:
        """Emitted instants: the node's clock (true time + its offset), in ns."""
        offset = self._topology.node_offsets_us.get(span.node, 0)
        return (span.start_us + offset) * 1000, (span.end_us + offset) * 1000

    def flags(self, span: SimSpan) -> int:
        if span.emitter[0] in ENVOY_ROLES:
            return (0x301 if span.parent_id else 0x101)  # Envoy: 769 with a (remote) parent, 257 for a root
        if span.emitter[0] == "linkerd":
            return 0x300  # remote-parent bits set, sampled bit clear (MESH-SOURCES §1.1)
        remote = span.parent_id is not None and span.kind == 2  # an app SERVER span continues a remote context
        return REMOTE_PARENT_FLAGS if remote else LOCAL_PARENT_FLAGS

    def request(self, simulated: Iterable[SimulatedRequest]) -> ExportTraceServiceRequest:
        """One Export holding every span of the given requests, one ResourceSpans per emitting process."""
        export = ExportTraceServiceRequest()
        groups: dict[tuple[str, str, str], Any] = {}
        for item in simulated:
            for span in item.spans:
                scope_spans = groups.get(span.emitter)
                if scope_spans is None:
                    resource_spans = export.resource_spans.add()
                    resource_spans.resource.attributes.extend(key_values(self.resource(span.emitter)))
                    scope_spans = resource_spans.scope_spans.add()
                    scope_spans.scope.name, scope_spans.scope.version = self.scope(span.emitter)
                    groups[span.emitter] = scope_spans
                out = scope_spans.spans.add()
                out.trace_id, out.span_id = item.trace_id, span.span_id
                if span.parent_id:
                    out.parent_span_id = span.parent_id
                out.name, out.kind = span.name, span.kind
                out.start_time_unix_nano, out.end_time_unix_nano = self.times_ns(span)
                out.attributes.extend(key_values(span.attributes))
                out.flags = self.flags(span)
                if span.error:
                    out.status.code = Status.STATUS_CODE_ERROR
        return export

    def _pod(self, service_name: str, pod_name: str) -> Any:
        service = self._topology.services.get(service_name)
        return next((pod for pod in service.pods if pod.name == pod_name), None) if service else None


def sdk_spans(encoder: Encoder, simulated: Iterable[SimulatedRequest]) -> list[Any]:
    """The same spans as OpenTelemetry SDK ReadableSpans, for the real OTLP exporters."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace import SpanContext, SpanKind, TraceFlags
    from opentelemetry.trace.status import Status as SdkStatus
    from opentelemetry.trace.status import StatusCode

    resources: dict[tuple[str, str, str], Resource] = {}
    scopes: dict[tuple[str, str], InstrumentationScope] = {}
    spans = []
    for item in simulated:
        trace_id = int.from_bytes(item.trace_id, "big")
        for span in item.spans:
            resource = resources.get(span.emitter) or resources.setdefault(
                span.emitter, Resource(encoder.resource(span.emitter)))
            scope_key = encoder.scope(span.emitter)
            scope = scopes.get(scope_key) or scopes.setdefault(scope_key, InstrumentationScope(*scope_key))
            start, end = encoder.times_ns(span)
            remote = encoder.flags(span) & 0x200 != 0
            parent = (SpanContext(trace_id, int.from_bytes(span.parent_id, "big"), is_remote=remote,
                                  trace_flags=TraceFlags(SAMPLED)) if span.parent_id else None)
            spans.append(ReadableSpan(
                name=span.name, context=SpanContext(trace_id, int.from_bytes(span.span_id, "big"), is_remote=False,
                                                    trace_flags=TraceFlags(SAMPLED)),
                parent=parent, resource=resource, attributes=span.attributes, kind=SpanKind(span.kind - 1),
                status=SdkStatus(StatusCode.ERROR) if span.error else SdkStatus(StatusCode.UNSET),
                start_time=start, end_time=end, instrumentation_scope=scope))
    return spans
