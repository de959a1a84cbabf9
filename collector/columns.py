"""OTLP requests → columns of the `spans` table, as one Arrow record batch.

This is the hot loop of ingest (~10 µs of Python a span, measured in bench/ingest.py), so it runs in worker
processes and is written for speed: one pass over the spans, resource- and scope-level values computed once per
group, attribute maps turned into JSON by orjson, and the common case (a string attribute) settled by one C call.

Promoted columns (docs/design.md §6) are a data table, `PROMOTIONS`: which attribute keys, in which order of preference,
fill each column. Classification into mesh layers is not done here; that is the analytics' job.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from hopscope.collector.schema import ARROW_SCHEMA, COLUMN_NAMES
from hopscope.collector.spool import read_payloads

_STATUS_TEXT = re.compile(r"[+-]?[0-9]{1,12}")  # Envoy sends "200"; anything else is not a status code
KIND_NAMES = ("UNSPECIFIED", "INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER")
STATUS_NAMES = ("UNSET", "OK", "ERROR")
_ZERO_SPAN_ID = bytes(8)


@dataclass(frozen=True)
class Promotion:
    """Fill `column` from the first of `span_keys` present on the span, else the first of `resource_keys`, else
    what `derive` makes of the span's attributes."""

    column: str
    span_keys: tuple[str, ...] = ()
    resource_keys: tuple[str, ...] = ()
    derive: Callable[[dict[str, Any]], Any] | None = None


def _path_of_url(url: Any) -> str | None:
    """`http://host:8080/work?i=1` → `/work?i=1`, without a URL parser on the hot path."""
    if not isinstance(url, str):
        return None
    scheme_end = url.find("://")
    path_start = url.find("/", scheme_end + 3 if scheme_end >= 0 else 0)
    return url[path_start:] if path_start >= 0 else None


def _target_from_url(attributes: dict[str, Any]) -> str | None:
    url = attributes.get("url.full", attributes.get("http.url"))
    return _path_of_url(url) if url is not None else None


PROMOTIONS: tuple[Promotion, ...] = (
    Promotion("k8s_namespace", ("istio.namespace",), ("k8s.namespace.name",)),
    Promotion("k8s_pod", (), ("k8s.pod.name",)),
    Promotion("k8s_node", (), ("k8s.node.name",)),
    Promotion("host", (), ("host.name",)),
    Promotion("http_method", ("http.request.method", "http.method")),
    Promotion("http_route", ("http.route",)),
    Promotion("http_target", ("url.path", "http.target"), derive=_target_from_url),
    Promotion("http_status_code", ("http.response.status_code", "http.status_code")),
    Promotion("upstream_cluster", ("upstream_cluster",)),
    Promotion("response_flags", ("response_flags",)),
    Promotion("peer_address", ("network.peer.address", "peer.address", "net.sock.peer.addr", "net.peer.ip")),
)


def _typed_value(value: Any) -> Any:
    """An AnyValue that is not a non-empty string, as the JSON value that keeps its OTLP type."""
    which = value.WhichOneof("value")
    if which == "string_value":
        return ""
    if which == "int_value":
        return value.int_value
    if which == "bool_value":
        return value.bool_value
    if which == "double_value":
        number = value.double_value
        # JSON has no NaN or infinities: keep them as the strings OTLP/JSON itself uses.
        return number if math.isfinite(number) else ("NaN" if math.isnan(number) else ("Infinity" if number > 0
                                                                                         else "-Infinity"))
    if which == "array_value":
        return [_any_value(item) for item in value.array_value.values]
    if which == "kvlist_value":
        return attribute_map(value.kvlist_value.values)
    if which == "bytes_value":
        return base64.b64encode(value.bytes_value).decode("ascii")  # as OTLP/JSON writes bytes
    return None


def _any_value(value: Any) -> Any:
    text = value.string_value
    return text if text else _typed_value(value)


def attribute_map(key_values: Iterable[Any]) -> dict[str, Any]:
    """OTLP KeyValue list → dict. Most mesh attributes are strings: reading `string_value` first settles them."""
    result = {}
    for key_value in key_values:
        value = key_value.value
        text = value.string_value
        result[key_value.key] = text if text else _typed_value(value)
    return result


def _json_or_none(mapping: Any) -> str | None:
    return orjson.dumps(mapping).decode() if mapping else None


def _text(value: Any) -> str | None:
    """A promoted VARCHAR from an attribute of another type: JSON text for it, so `true` stays `true`."""
    if value is None or isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


def _status_code(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        if not _STATUS_TEXT.fullmatch(value):
            return None
        value = int(value)
    if isinstance(value, int):
        return value if -(2**31) <= value < 2**31 else None
    return None


def _events_json(events: Any) -> str | None:
    if not events:
        return None
    return orjson.dumps([
        {"name": event.name, "time_ns": event.time_unix_nano, "attributes": attribute_map(event.attributes),
         "dropped_attributes_count": event.dropped_attributes_count}
        for event in events
    ]).decode()


def _links_json(links: Any) -> str | None:
    if not links:
        return None
    return orjson.dumps([
        {"trace_id": link.trace_id.hex(), "span_id": link.span_id.hex(), "trace_state": link.trace_state,
         "flags": link.flags, "attributes": attribute_map(link.attributes),
         "dropped_attributes_count": link.dropped_attributes_count}
        for link in links
    ]).decode()


def _resource_promotions(resource: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for promotion in PROMOTIONS:
        for key in promotion.resource_keys:
            if resource.get(key) is not None:
                found[promotion.column] = resource[key]
                break
    return found


def requests_to_columns_python(payloads: Iterable[bytes]) -> dict[str, list[Any]]:
    """Flatten serialised ExportTraceServiceRequests (already validated) into one list per `spans` column.

    The reference implementation; `_flatten.c` does the same ~10× faster and is used when it is built."""
    columns: dict[str, list[Any]] = {name: [] for name in COLUMN_NAMES}
    promoted = [(columns[p.column], p.column, p.span_keys, p.derive) for p in PROMOTIONS]
    add_trace, add_span, add_parent = columns["trace_id"].append, columns["span_id"].append, columns[
        "parent_span_id"].append
    add_start, add_end, add_duration = columns["start_ns"].append, columns["end_ns"].append, columns[
        "duration_ns"].append
    add_attributes = columns["attributes"].append
    for payload in payloads:
        request = ExportTraceServiceRequest.FromString(payload)
        for resource_spans in request.resource_spans:
            resource = attribute_map(resource_spans.resource.attributes)
            resource_json = _json_or_none(resource)
            resource_values = _resource_promotions(resource)
            service_name = _text(resource.get("service.name"))
            for scope_spans in resource_spans.scope_spans:
                scope = scope_spans.scope
                scope_json = _json_or_none(attribute_map(scope.attributes))
                scope_name, scope_version = scope.name or None, scope.version or None
                spans = scope_spans.spans
                count = len(spans)
                for name, value in (("service_name", service_name), ("scope_name", scope_name),
                                    ("scope_version", scope_version), ("resource_attributes", resource_json),
                                    ("scope_attributes", scope_json)):
                    columns[name].extend([value] * count)
                for span in spans:
                    add_trace(span.trace_id.hex())
                    add_span(span.span_id.hex())
                    parent = span.parent_span_id
                    add_parent(parent.hex() if parent and parent != _ZERO_SPAN_ID else None)
                    start, end = span.start_time_unix_nano, span.end_time_unix_nano
                    add_start(start)
                    add_end(end)
                    add_duration(end - start)
                    attributes = attribute_map(span.attributes)
                    add_attributes(orjson.dumps(attributes).decode() if attributes else None)
                    for column, name, span_keys, derive in promoted:
                        value = None
                        for key in span_keys:
                            value = attributes.get(key)
                            if value is not None:
                                break
                        if value is None:
                            value = resource_values.get(name)
                            if value is None and derive is not None:
                                value = derive(attributes)
                        column.append(value)
                    _append_span_fields(columns, span)
    _normalise_promoted(columns)
    return columns


def _append_span_fields(columns: dict[str, list[Any]], span: Any) -> None:
    """The per-span fields that are rare or cheap: state, flags, kind, status, events, links, drop counts."""
    columns["trace_state"].append(span.trace_state or None)
    columns["flags"].append(span.flags)
    columns["name"].append(span.name)
    kind = span.kind
    columns["kind"].append(KIND_NAMES[kind] if 0 <= kind < 6 else "UNSPECIFIED")
    status = span.status
    code = status.code
    columns["status_code"].append(STATUS_NAMES[code] if 0 <= code < 3 else "UNSET")
    columns["status_message"].append(status.message or None)
    columns["events"].append(_events_json(span.events))
    columns["links"].append(_links_json(span.links))
    columns["dropped_attributes_count"].append(span.dropped_attributes_count)
    columns["dropped_events_count"].append(span.dropped_events_count)
    columns["dropped_links_count"].append(span.dropped_links_count)


def _normalise_promoted(columns: dict[str, list[Any]]) -> None:
    """Promoted values keep whatever type the sender used; the columns have one type each."""
    for promotion in PROMOTIONS:
        values = columns[promotion.column]
        if promotion.column == "http_status_code":
            columns[promotion.column] = [None if v is None else _status_code(v) for v in values]
        elif any(v is not None and not isinstance(v, str) for v in values):
            columns[promotion.column] = [_text(v) for v in values]


def _load_accelerator() -> Any:
    """The C flattener, configured with this module's column layout and PROMOTIONS; None where it is not built."""
    try:
        from hopscope.collector import _flatten  # type: ignore[attr-defined]
    except ImportError:
        return None
    if any(p.derive not in (None, _target_from_url) for p in PROMOTIONS):
        return None  # the C code knows only the URL-path derivation
    _flatten.configure(COLUMN_NAMES, tuple((p.column, p.span_keys, p.resource_keys, p.derive is not None)
                                           for p in PROMOTIONS))
    return _flatten


_ACCELERATOR = _load_accelerator()


def _arrow_column(values: Any, arrow_type: pa.DataType) -> pa.Array[Any]:
    if isinstance(values, tuple):  # Arrow string buffers from the accelerator: (validity, offsets, data, nulls)
        validity, offsets, data, nulls = values
        length = len(offsets) // 4 - 1
        return pa.Array.from_buffers(arrow_type, length, [pa.py_buffer(validity) if nulls else None,
                                                          pa.py_buffer(offsets), pa.py_buffer(data)], nulls)
    return pa.array(values, type=arrow_type)


def requests_to_record_batch(payloads: Iterable[bytes]) -> pa.RecordBatch:
    """Validated, serialised ExportTraceServiceRequests → one record batch of `spans` rows."""
    if _ACCELERATOR is None:
        columns = requests_to_columns_python(payloads)
        arrays = [pa.array(columns[field.name], type=field.type) for field in ARROW_SCHEMA]
    else:
        flat = _ACCELERATOR.flatten(payloads)
        arrays = [_arrow_column(values, field.type) for values, field in zip(flat, ARROW_SCHEMA, strict=True)]
    return pa.RecordBatch.from_arrays(arrays, schema=ARROW_SCHEMA)


def flatten_spool_range(path: str, start: int, end: int) -> pa.RecordBatch:
    """Worker-process entry point: the records in bytes [start, end) of a spool segment, as one record batch."""
    return requests_to_record_batch(read_payloads(Path(path), start, end))
