"""A trace as Jaeger's v1 JSON API returns it (jaeger internal/uimodel/model.go), translated from the stored OTLP
spans by the OpenTelemetry → Jaeger rules (opentelemetry-collector-contrib pkg/translator/jaeger,
traces_to_jaegerproto.go) that Jaeger's own query service applies:

* the resource becomes a process — `service.name` its serviceName (`OTLPResourceNoServiceName` when absent), the
  other resource attributes its tags — and equal processes share a key `p1`, `p2`, … in order of appearance;
* tags: `otel.scope.name`/`otel.scope.version`, the span's attributes, then `span.kind` (lowercase),
  `otel.status_code` (OK/ERROR), `error=true` on ERROR, `otel.status_description`, `w3c.tracestate`;
* types: string, bool, int64 (as a JSON string beyond ±(2^53−1), jaeger from_domain.go), float64; arrays and maps
  as their JSON text. Bytes arrive in the store as base64 text and leave as strings;
* the parent is a CHILD_OF reference, first; links follow as FOLLOWS_FROM unless `opentracing.ref_type=child_of`,
  and a link to the parent overrides its type; events become logs whose first field is `event` = the name;
* times are µs since the epoch, durations µs, both truncated from ns.

hopscope adds its own tags (hop_tags.py) and, by default, puts the times on corrected clocks; `skew=raw` or
Jaeger's `raw=true` gives the times as they arrived.
"""

from __future__ import annotations

from typing import Any

import orjson

from hopscope.analytics.hop_tags import trace_attributes
from hopscope.analytics.jaeger_request import jaeger_trace_id
from hopscope.analytics.pipeline import TraceWork

JS_MAX_SAFE_INTEGER = 2**53 - 1
NO_SERVICE_NAME = "OTLPResourceNoServiceName"
SPAN_KIND_TAGS = {"CLIENT": "client", "SERVER": "server", "PRODUCER": "producer", "CONSUMER": "consumer",
                  "INTERNAL": "internal"}


def tag(key: str, value: Any) -> dict[str, Any]:
    """One attribute as a Jaeger key/type/value (strings first: most mesh attributes are, Envoy's all)."""
    kind = type(value)
    if kind is str:
        return {"key": key, "type": "string", "value": value}
    if kind is bool:
        return {"key": key, "type": "bool", "value": value}
    if kind is int:
        safe = -JS_MAX_SAFE_INTEGER <= value <= JS_MAX_SAFE_INTEGER
        return {"key": key, "type": "int64", "value": value if safe else str(value)}
    if kind is float:
        return {"key": key, "type": "float64", "value": value}
    if value is None:  # an empty OTLP value: the translator's zero tag
        return {"key": key, "type": "string", "value": ""}
    return {"key": key, "type": "string", "value": orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()}


def parsed(value: Any) -> Any:
    """A JSON column (events, links, scope attributes) as Python; absent → None."""
    return orjson.loads(value) if isinstance(value, str | bytes) else value


def _span_tags(span: dict[str, Any]) -> list[dict[str, Any]]:
    tags = []
    if span.get("scope_name"):
        tags.append(tag("otel.scope.name", span["scope_name"]))
    if span.get("scope_version"):
        tags.append(tag("otel.scope.version", span["scope_version"]))
    tags += [tag(key, value) for key, value in span["attributes"].items()]
    if span["kind"] in SPAN_KIND_TAGS:
        tags.append(tag("span.kind", SPAN_KIND_TAGS[span["kind"]]))
    if span["status_code"] in ("OK", "ERROR"):
        tags.append(tag("otel.status_code", span["status_code"]))
    if span["status_code"] == "ERROR":
        tags.append(tag("error", True))
    if span.get("status_message"):
        tags.append(tag("otel.status_description", span["status_message"]))
    if span.get("trace_state"):
        tags.append(tag("w3c.tracestate", span["trace_state"]))
    return tags


def _references(span: dict[str, Any], trace_id: str) -> list[dict[str, str]]:
    parent = span.get("parent_span_id")
    refs = [{"refType": "CHILD_OF", "traceID": trace_id, "spanID": parent}] if parent else []
    for link in parsed(span.get("links")) or ():
        attributes = link.get("attributes") or {}
        ref_type = "CHILD_OF" if attributes.get("opentracing.ref_type") == "child_of" else "FOLLOWS_FROM"
        link_trace = jaeger_trace_id(link.get("trace_id") or "")
        if parent and link_trace == trace_id and link.get("span_id") == parent:
            refs[0]["refType"] = ref_type
            continue
        refs.append({"refType": ref_type, "traceID": link_trace, "spanID": link.get("span_id") or ""})
    return refs


def _logs(span: dict[str, Any], shift_ns: int) -> list[dict[str, Any]]:
    logs = []
    for event in parsed(span.get("events")) or ():
        attributes = event.get("attributes") or {}
        fields = [tag("event", event["name"])] if event.get("name") and "event" not in attributes else []
        fields += [tag(key, value) for key, value in attributes.items()]
        logs.append({"timestamp": (int(event.get("time_ns") or 0) + shift_ns) // 1000, "fields": fields})
    return logs


class _Processes:
    """Equal resources share one process key, p1, p2, … (jaeger process_hashtable.go)."""

    def __init__(self) -> None:
        self.keys: dict[bytes, str] = {}
        self.processes: dict[str, dict[str, Any]] = {}

    def key_of(self, span: dict[str, Any]) -> str:
        resource = span["resource_attributes"]
        identity = orjson.dumps([span.get("service_name"), resource])
        key = self.keys.get(identity)
        if key is None:
            key = self.keys[identity] = f"p{len(self.keys) + 1}"
            self.processes[key] = {
                "serviceName": resource.get("service.name") or span.get("service_name") or NO_SERVICE_NAME,
                "tags": [tag(k, v) for k, v in resource.items() if k != "service.name"]}
        return key


def jaeger_trace(work: TraceWork, truncated: bool = False) -> dict[str, Any]:
    """One trace in Jaeger's v1 JSON: {traceID, spans, processes, warnings}."""
    trace, shifts = work.trace, work.clock_shifts
    trace_id = jaeger_trace_id(trace.trace_id)
    processes = _Processes()
    added = trace_attributes(work)
    spans = []
    for i, span in enumerate(trace.spans):
        spans.append({
            "traceID": trace_id, "spanID": trace.ids[i], "operationName": span["name"],
            "references": _references(span, trace_id), "startTime": shifts.start[i] // 1000,
            "duration": (trace.end[i] - trace.start[i]) // 1000,
            "tags": _span_tags(span) + [tag(key, value) for key, value in added[i]],
            "logs": _logs(span, shifts.by_span[i]), "processID": processes.key_of(span), "warnings": None})
    warnings = [f"hopscope: the trace was cut at {len(spans)} spans"] if truncated else None
    return {"traceID": trace_id, "spans": spans, "processes": processes.processes, "warnings": warnings}
