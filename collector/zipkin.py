"""Zipkin v2 spans (JSON or zipkin.proto ListOfSpans) → an OTLP ExportTraceServiceRequest, so they are validated,
spooled and stored exactly as OTLP spans are.

The mapping is the OpenTelemetry Collector's zipkin receiver's (contrib pkg/translator/zipkin/zipkinv2,
to_translator.go), so a user moving between the two sees the same rows:

* ids: hex (JSON) or bytes (protobuf), left-padded with zeros to 16 / 8 bytes; a `parentId` equal to `id` is dropped;
* `kind` maps one to one (absent → SPAN_KIND_UNSPECIFIED); `timestamp`/`duration` µs → start/end ns (an Envoy
  span ends at its finish annotation when that is later: `_end_us`);
* `localEndpoint.serviceName` → the resource's `service.name`, its address and port → `net.host.ip`/`net.host.port`;
  `remoteEndpoint` → `peer.service`, `net.peer.ip`, `net.peer.port`;
* annotations → events (an OpenTelemetry SDK's `{"name": {attributes}}` annotation → that event); every tag is kept as
  a string attribute; `otel.status_code`/`otel.status_description` (the
  OpenTelemetry SDK's Zipkin exporters) give the status, and an `error` tag makes it ERROR (its value, unless
  "true", is the message).

Where hopscope departs from the collector: Envoy's protobuf span ids are read in the byte order Envoy really writes
them (`_envoy_span_id`); a span without a timestamp is rejected (the collector stores it at the
Unix epoch, where no time query finds it), and Envoy's *shared span context* gets two spans. With
`shared_span_context: true` (Envoy's default) the callee's SERVER span reuses the caller's CLIENT span id and says
`shared: true`; the collector then stores two spans with one id. Here the SERVER half gets an id of its own,
derived from the trace id, the shared id, its start and its service (so a resent span gets the same one), with the
CLIENT half as its parent and the shared id kept in `zipkin.shared_span_id` — Jaeger's span-id uniquifier does the
same. The callee app's spans still name the shared id as their parent; analytics/trace.py hands them to the SERVER
half they started in (`zipkin.shared_span_id` is how it knows).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from hopscope.collector.errors import MalformedRequest
from hopscope.collector.validation import ValidatedExport, validate_export
from hopscope.collector.zipkin_proto import KIND_NAMES, ListOfSpans

SHARED_SPAN_ATTRIBUTE = "zipkin.shared_span_id"  # analytics/trace.py reads it to re-parent the callee's spans
_KINDS = {"CLIENT": Span.SPAN_KIND_CLIENT, "SERVER": Span.SPAN_KIND_SERVER, "PRODUCER": Span.SPAN_KIND_PRODUCER,
          "CONSUMER": Span.SPAN_KIND_CONSUMER, "": Span.SPAN_KIND_UNSPECIFIED}
_STATUS = {"STATUS_CODE_UNSET": Status.STATUS_CODE_UNSET, "STATUS_CODE_OK": Status.STATUS_CODE_OK,
           "STATUS_CODE_ERROR": Status.STATUS_CODE_ERROR, "UNSET": Status.STATUS_CODE_UNSET,
           "OK": Status.STATUS_CODE_OK, "ERROR": Status.STATUS_CODE_ERROR}
_MAX_US = (2**63 - 1) // 1000


@dataclass(frozen=True)
class Endpoint:
    service: str = ""
    ip: str = ""
    port: int = 0


@dataclass
class ZipkinSpan:
    """One v2 span, whichever encoding it came in."""

    trace_id: bytes
    span_id: bytes
    parent_id: bytes = b""
    kind: str = ""
    name: str = ""
    timestamp_us: int = 0
    duration_us: int = 0
    local: Endpoint | None = None
    remote: Endpoint | None = None
    annotations: list[tuple[int, str]] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    shared: bool = False


# ---- decoding -------------------------------------------------------------------------------------------------

def _id(value: Any, name: str, max_hex: int) -> bytes:
    if not isinstance(value, str) or not 0 < len(value) <= max_hex:
        raise ValueError(f"'{name}' must be a string of 1 to {max_hex} hex characters")
    try:
        return bytes.fromhex(value.rjust(max_hex, "0"))
    except ValueError:
        raise ValueError(f"'{name}' must be hex, got {value[:40]!r}") from None


def _micros(value: Any, name: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= _MAX_US:
        raise ValueError(f"'{name}' must be a count of microseconds (a non-negative integer)")
    return int(value)


def _json_endpoint(value: Any, name: str) -> Endpoint | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError(f"'{name}' must be an object")
    service, ipv4, ipv6, port = (value.get(key) for key in ("serviceName", "ipv4", "ipv6", "port"))
    for key, text in (("serviceName", service), ("ipv4", ipv4), ("ipv6", ipv6)):
        if text is not None and not isinstance(text, str):
            raise ValueError(f"'{name}.{key}' must be a string")
    if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535):
        raise ValueError(f"'{name}.port' must be a port number")
    return Endpoint(service or "", ipv4 or ipv6 or "", port or 0)


def _json_span(value: Any) -> ZipkinSpan:
    if not isinstance(value, dict):
        raise ValueError("must be an object")
    span = ZipkinSpan(_id(value.get("traceId"), "traceId", 32), _id(value.get("id"), "id", 16))
    if value.get("parentId") is not None:
        span.parent_id = _id(value["parentId"], "parentId", 16)
    kind = value.get("kind") or ""
    if kind not in _KINDS:
        raise ValueError(f"'kind' must be one of CLIENT, SERVER, PRODUCER, CONSUMER, got {str(kind)[:20]!r}")
    span.kind = kind
    name = value.get("name")
    if name is not None and not isinstance(name, str):
        raise ValueError("'name' must be a string")
    span.name = name or ""
    span.timestamp_us = _micros(value.get("timestamp"), "timestamp")
    span.duration_us = _micros(value.get("duration"), "duration")
    span.local = _json_endpoint(value.get("localEndpoint"), "localEndpoint")
    span.remote = _json_endpoint(value.get("remoteEndpoint"), "remoteEndpoint")
    annotations = value.get("annotations")
    if annotations is None:
        annotations = []
    if not isinstance(annotations, list):
        raise ValueError("'annotations' must be a list")
    for annotation in annotations:
        if not isinstance(annotation, dict) or not isinstance(annotation.get("value"), str):
            raise ValueError("each annotation must be an object with a string 'value'")
        span.annotations.append((_micros(annotation.get("timestamp"), "annotations.timestamp"), annotation["value"]))
    tags = value.get("tags")
    if tags is None:
        tags = {}
    if not isinstance(tags, dict):
        raise ValueError("'tags' must be an object")
    for key, text in tags.items():
        # Zipkin's model says string values; some tracers send numbers and booleans: keep their JSON text
        span.tags[key] = text if isinstance(text, str) else json.dumps(text)
    span.shared = value.get("shared") is True
    return span


def parse_zipkin_json(body: bytes) -> list[ZipkinSpan]:
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedRequest(f"body is not valid JSON: {exc}") from exc
    except RecursionError:
        raise MalformedRequest("body is not a Zipkin v2 span list: nested too deep") from None
    if not isinstance(document, list):
        raise MalformedRequest("body must be a JSON array of Zipkin v2 spans (POST /api/v2/spans)")
    spans = []
    for index, value in enumerate(document):
        try:
            spans.append(_json_span(value))
        except ValueError as exc:
            raise MalformedRequest(f"span {index}: {exc}") from None
    return spans


def _proto_endpoint(endpoint: Any) -> Endpoint:
    address = endpoint.ipv4 or endpoint.ipv6
    ip = ""
    if address:
        try:
            ip = str(ipaddress.ip_address(address))
        except ValueError:
            raise ValueError("an endpoint's ipv4 must be 4 bytes and ipv6 16") from None
    return Endpoint(endpoint.service_name, ip, endpoint.port)


def _envoy_span_id(span_id: bytes, tags: Mapping[str, str]) -> bytes:
    """Envoy's HTTP_PROTO writes span and parent ids as the uint64 in the host's byte order — little-endian on x86-64
    and arm64 — where zipkin.proto and every other Zipkin encoding (JSON hex, B3 headers) are big-endian (Envoy's
    own tests expect `AQAAAAAAAAA=` for id 1 on Intel: envoyproxy/envoy#34448). Found in the mesh lab with Envoy 1.40:
    the ids it propagated to the apps are these bytes reversed. Its trace ids are big-endian. Envoy marks its spans
    with the tag component=proxy."""
    return span_id[::-1] if tags.get("component") == "proxy" else span_id


def _proto_span(span: Any) -> ZipkinSpan:
    if len(span.trace_id) not in (8, 16):
        raise ValueError("trace_id must be 8 or 16 bytes")
    if len(span.id) != 8:
        raise ValueError("id must be 8 bytes")
    if span.parent_id and len(span.parent_id) != 8:
        raise ValueError("parent_id must be 8 bytes")
    if span.kind >= len(KIND_NAMES):
        raise ValueError(f"kind {span.kind} is not a Zipkin span kind")
    if span.timestamp > _MAX_US or span.duration > _MAX_US:
        raise ValueError("timestamp and duration must be microseconds before the year 2262")
    tags = dict(span.tags)
    return ZipkinSpan(
        span.trace_id.rjust(16, b"\0"), _envoy_span_id(span.id, tags), _envoy_span_id(span.parent_id, tags),
        KIND_NAMES[span.kind], span.name, span.timestamp,
        span.duration, _proto_endpoint(span.local_endpoint) if span.HasField("local_endpoint") else None,
        _proto_endpoint(span.remote_endpoint) if span.HasField("remote_endpoint") else None,
        [(a.timestamp, a.value) for a in span.annotations], tags, span.shared)


def parse_zipkin_protobuf(body: bytes) -> list[ZipkinSpan]:
    try:
        message = ListOfSpans.FromString(body)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise MalformedRequest(f"body is not a valid zipkin.proto3.ListOfSpans: {exc}") from exc
    spans = []
    for index, span in enumerate(message.spans):
        try:
            spans.append(_proto_span(span))
        except ValueError as exc:
            raise MalformedRequest(f"span {index}: {exc}") from None
    return spans


# ---- to OTLP --------------------------------------------------------------------------------------------------

def _string(key: str, value: str) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(string_value=value))


def _integer(key: str, value: int) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(int_value=value))


def shared_server_span_id(span: ZipkinSpan) -> bytes:
    """The id a shared SERVER half gets: stable for the same span (a resend), distinct between a retry's halves."""
    service = span.local.service if span.local else ""
    digest = hashlib.blake2b(span.trace_id + span.span_id + span.timestamp_us.to_bytes(8, "big") + service.encode(),
                             digest_size=8).digest()
    return digest if any(digest) else b"\x01" * 8


def _status(tags: Mapping[str, str]) -> Status:
    """`otel.status_code` when a tracer set it, else ERROR for an `error` tag; the message is
    `otel.status_description`, else the `error` tag's text (the SDKs put the description there too)."""
    error = tags.get("error")
    if "otel.status_code" in tags:
        code = _STATUS.get(tags["otel.status_code"].upper(), Status.STATUS_CODE_UNSET)
    else:
        code = Status.STATUS_CODE_ERROR if error is not None and error != "false" else Status.STATUS_CODE_UNSET
    message = tags.get("otel.status_description") or (error if error not in (None, "", "true", "false") else "")
    return Status(code=code, message=message if code == Status.STATUS_CODE_ERROR else "")


def _event(annotation: str) -> tuple[str, list[KeyValue]]:
    """An annotation's event: the OpenTelemetry SDKs' Zipkin exporters write an event as `{"<name>": {attributes}}`
    (opentelemetry-exporter-zipkin's encoder); anything else is the event's name as it is."""
    if annotation.startswith("{"):
        try:
            document = json.loads(annotation)
        except ValueError:
            document = None
        if isinstance(document, dict) and len(document) == 1:
            [(name, attributes)] = document.items()
            if isinstance(attributes, dict):
                return name, [_typed(key, value) for key, value in attributes.items()]
    return annotation, []


def _typed(key: str, value: Any) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int) and -(2**63) <= value < 2**63:
        return _integer(key, value)
    if isinstance(value, float):
        return KeyValue(key=key, value=AnyValue(double_value=value))
    return _string(key, value if isinstance(value, str) else json.dumps(value))


def _end_us(span: ZipkinSpan) -> int:
    """`timestamp + duration`, except where Envoy's own finish annotation (`ss` on SERVER, `cr` on CLIENT) is later.
    Envoy takes `timestamp` from the stream's start but counts `duration` on the monotonic clock from the span's
    creation, at header decode (tracer.cc, zipkin_core_types.cc), so the sum is early by whatever the sidecar took in
    between: ~0.1 ms normally, milliseconds when it stalls — and then the callee app's span outlives its inbound
    proxy's and the proxy's time shows up as network (seen in the mesh lab). The annotation is stamped at finish."""
    end = span.timestamp_us + span.duration_us
    if span.tags.get("component") == "proxy":
        finish = "ss" if span.kind == "SERVER" else "cr"
        end = max([end, *(timestamp for timestamp, value in span.annotations if value == finish)])
    return end


def _fill(target: Span, span: ZipkinSpan) -> None:
    target.trace_id = span.trace_id
    target.span_id = span.span_id
    if span.parent_id and span.parent_id != span.span_id:
        target.parent_span_id = span.parent_id
    if span.shared and span.kind == "SERVER":
        target.span_id = shared_server_span_id(span)
        target.parent_span_id = span.span_id
        target.attributes.append(_string(SHARED_SPAN_ATTRIBUTE, span.span_id.hex()))
    target.name = span.name
    target.kind = _KINDS[span.kind]
    target.start_time_unix_nano = span.timestamp_us * 1000
    target.end_time_unix_nano = _end_us(span) * 1000
    target.attributes.extend(_string(key, value) for key, value in span.tags.items())
    for prefix, endpoint in (("net.host", span.local), ("net.peer", span.remote)):
        if endpoint is None:
            continue
        if prefix == "net.peer" and endpoint.service:
            target.attributes.append(_string("peer.service", endpoint.service))
        if endpoint.ip:
            target.attributes.append(_string(f"{prefix}.ip", endpoint.ip))
        if endpoint.port > 0:
            target.attributes.append(_integer(f"{prefix}.port", endpoint.port))
    for timestamp_us, value in span.annotations:
        name, attributes = _event(value)
        event = target.events.add(time_unix_nano=timestamp_us * 1000, name=name)
        event.attributes.extend(attributes)
    target.status.CopyFrom(_status(span.tags))


def to_export_request(spans: list[ZipkinSpan]) -> tuple[ExportTraceServiceRequest, Counter[str]]:
    """The spans grouped by their local service into one resource each; spans without a timestamp are rejected
    (counted by reason)."""
    request = ExportTraceServiceRequest()
    scopes: dict[str, Any] = {}
    rejected: Counter[str] = Counter()
    for span in spans:
        if not span.timestamp_us:
            rejected["zipkin span without timestamp"] += 1
            continue
        service = span.local.service if span.local else ""
        if service not in scopes:
            resource_spans = request.resource_spans.add()
            if service:
                resource_spans.resource.attributes.append(_string("service.name", service))
            scopes[service] = resource_spans.scope_spans.add()
        _fill(scopes[service].spans.add(), span)
    return request, rejected


def validate_zipkin(spans: list[ZipkinSpan]) -> ValidatedExport:
    """What ingest stores for a Zipkin POST: the OTLP request, checked by the same rules as any Export."""
    request, rejected = to_export_request(spans)
    validated = validate_export(request)
    validated.rejected.update(rejected)
    return validated
