"""OTLP/JSON → ExportTraceServiceRequest.

OTLP/JSON is protobuf's canonical JSON mapping with three deviations that a stock `json_format.Parse` gets wrong
(OTLP spec, "JSON Protobuf Encoding"): trace and span ids are *hex*, not base64; enum values are integers (both
integers and names parse); and receivers MUST ignore unknown field names. 64-bit integers may be strings or numbers,
which `json_format` already accepts. Field names may be lowerCamelCase or the original snake_case.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from hopscope.collector.errors import MalformedRequest

_ID_FIELDS = ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id")


def parse_json_request(body: bytes) -> ExportTraceServiceRequest:
    """Decode an OTLP/JSON body; every way it can be wrong becomes a MalformedRequest naming the problem."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedRequest(f"body is not valid JSON: {exc}") from exc
    except RecursionError:  # found by tests/test_fuzz.py: it escaped as a server error
        raise MalformedRequest("body is not valid OTLP/JSON: nested deeper than any OTLP value needs") from None
    if not isinstance(document, dict):
        raise MalformedRequest("body must be a JSON object (an ExportTraceServiceRequest)")
    for resource_spans in _members(document, "resourceSpans", "resource_spans"):
        for scope_spans in _members(resource_spans, "scopeSpans", "scope_spans"):
            for span in _members(scope_spans, "spans", "spans"):
                _hex_ids_to_base64(span)
                for link in _members(span, "links", "links"):
                    _hex_ids_to_base64(link)
    try:
        return json_format.ParseDict(document, ExportTraceServiceRequest(), ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError, RecursionError) as exc:
        raise MalformedRequest(f"body is not an OTLP/JSON ExportTraceServiceRequest: {exc}") from exc


def _members(parent: Any, camel: str, snake: str) -> list[Any]:
    """The list under `camel` (or `snake`), checked to be a list of objects."""
    if not isinstance(parent, dict):
        raise MalformedRequest(f"expected a JSON object holding '{camel}', got {type(parent).__name__}")
    value = parent.get(camel, parent.get(snake))
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise MalformedRequest(f"'{camel}' must be a list of objects")
    return value


def _hex_ids_to_base64(message: dict[str, Any]) -> None:
    """Rewrite hex ids in place into the base64 that json_format expects for `bytes` fields."""
    for name in _ID_FIELDS:
        value = message.get(name)
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            raise MalformedRequest(f"'{name}' must be a hex string")
        try:
            raw = binascii.unhexlify(value)
        except (binascii.Error, ValueError) as exc:
            raise MalformedRequest(f"'{name}' must be hex-encoded in OTLP/JSON, got {value[:40]!r}") from exc
        message[name] = base64.b64encode(raw).decode("ascii")
