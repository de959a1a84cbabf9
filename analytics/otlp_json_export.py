"""Stored spans back as OTLP/JSON `resourceSpans` (the OTLP spec's JSON encoding: lowerCamelCase, hex ids, kind and
status code as integers, 64-bit integers and ns instants as strings, zero values left out), which is what Jaeger's
api_v3 answers inside `{"result": …}` (jaeger internal/jptrace/traces.go marshals with pdata's JSONMarshaler).

One deliberate difference: `doubleValue` is written as a string ("12.345"). Proto3's JSON mapping accepts a double
as a number or a string, and pdata's reader takes both; Grafana's Jaeger data source decodes `doubleValue` into a Go
string (grafana-jaeger-datasource pkg/jaeger/types/grpc_types.go) and fails on a number — and hopscope's hop
components are doubles on every hop's anchor span (hop_tags.py). Bytes attributes are stored as base64 text and come
back as strings (docs/schema.md).
"""

from __future__ import annotations

from typing import Any

import orjson

from hopscope.analytics.hop_tags import trace_attributes
from hopscope.analytics.jaeger_v1_json import parsed
from hopscope.analytics.pipeline import TraceWork

KINDS = {"INTERNAL": 1, "SERVER": 2, "CLIENT": 3, "PRODUCER": 4, "CONSUMER": 5}  # OTLP's Span.SpanKind; 0 left out
STATUS_CODES = {"OK": 1, "ERROR": 2}


def any_value(value: Any) -> dict[str, Any]:
    """A stored attribute value (types kept, docs/schema.md) as an OTLP/JSON AnyValue."""
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": repr(value)}
    if isinstance(value, str):
        return {"stringValue": value}
    if isinstance(value, list):
        return {"arrayValue": {"values": [any_value(v) for v in value]}}
    if isinstance(value, dict):
        return {"kvlistValue": {"values": key_values(value.items())}}
    return {}


def key_values(items: Any) -> list[dict[str, Any]]:
    return [{"key": key, "value": any_value(value)} for key, value in items]


def _with_attributes(body: dict[str, Any], attributes: Any, dropped: Any = 0) -> dict[str, Any]:
    if attributes:
        body["attributes"] = key_values(attributes.items() if isinstance(attributes, dict) else attributes)
    if dropped:
        body["droppedAttributesCount"] = int(dropped)
    return body


def _events(span: dict[str, Any], shift_ns: int) -> list[dict[str, Any]]:
    return [_with_attributes({"timeUnixNano": str(int(event.get("time_ns") or 0) + shift_ns), "name":
                              event.get("name") or ""}, event.get("attributes"), event.get("dropped_attributes_count"))
            for event in parsed(span.get("events")) or ()]


def _links(span: dict[str, Any]) -> list[dict[str, Any]]:
    links = []
    for link in parsed(span.get("links")) or ():
        body: dict[str, Any] = {"traceId": link.get("trace_id") or "", "spanId": link.get("span_id") or ""}
        if link.get("trace_state"):
            body["traceState"] = link["trace_state"]
        _with_attributes(body, link.get("attributes"), link.get("dropped_attributes_count"))
        if link.get("flags"):
            body["flags"] = int(link["flags"])
        links.append(body)
    return links


def _span(work: TraceWork, i: int, added: list[tuple[str, Any]]) -> dict[str, Any]:
    trace, shifts = work.trace, work.clock_shifts
    span = trace.spans[i]
    body: dict[str, Any] = {"traceId": trace.trace_id, "spanId": trace.ids[i]}
    if span.get("trace_state"):
        body["traceState"] = span["trace_state"]
    if span.get("parent_span_id"):
        body["parentSpanId"] = span["parent_span_id"]
    if span.get("flags"):
        body["flags"] = int(span["flags"])
    body["name"] = span.get("name") or ""
    if span.get("kind") in KINDS:
        body["kind"] = KINDS[span["kind"]]
    body["startTimeUnixNano"], body["endTimeUnixNano"] = str(shifts.start[i]), str(shifts.end[i])
    _with_attributes(body, [*span["attributes"].items(), *added], span.get("dropped_attributes_count"))
    for name, items, dropped, dropped_key in (
            ("events", _events(span, shifts.by_span[i]), "dropped_events_count", "droppedEventsCount"),
            ("links", _links(span), "dropped_links_count", "droppedLinksCount")):
        if items:
            body[name] = items
        if span.get(dropped):
            body[dropped_key] = int(span[dropped])
    status: dict[str, Any] = {}
    if span.get("status_message"):
        status["message"] = span["status_message"]
    if span.get("status_code") in STATUS_CODES:
        status["code"] = STATUS_CODES[span["status_code"]]
    body["status"] = status
    return body


def resource_spans(work: TraceWork) -> list[dict[str, Any]]:
    """The trace's spans grouped by resource, then by instrumentation scope, in order of first appearance."""
    groups: dict[bytes, dict[str, Any]] = {}
    scopes: dict[bytes, list[dict[str, Any]]] = {}
    added = trace_attributes(work)
    for i, span in enumerate(work.trace.spans):
        resource = span["resource_attributes"]
        resource_key = orjson.dumps(resource)
        group = groups.get(resource_key)
        if group is None:
            group = groups[resource_key] = {"resource": _with_attributes({}, resource), "scopeSpans": []}
        scope_attributes = parsed(span.get("scope_attributes"))
        scope_key = resource_key + orjson.dumps([span.get("scope_name"), span.get("scope_version"), scope_attributes])
        spans = scopes.get(scope_key)
        if spans is None:
            scope: dict[str, Any] = {}
            if span.get("scope_name"):
                scope["name"] = span["scope_name"]
            if span.get("scope_version"):
                scope["version"] = span["scope_version"]
            spans = scopes[scope_key] = []
            group["scopeSpans"].append({"scope": _with_attributes(scope, scope_attributes), "spans": spans})
        spans.append(_span(work, i, added[i]))
    return list(groups.values())
