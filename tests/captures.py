"""The real Envoy 1.40 + OTel SDK captures in shared/reference/mesh, as OTLP payloads the tests can feed in."""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

MESH = Path(__file__).resolve().parents[2] / "shared" / "reference" / "mesh"


def capture_payloads(name: str) -> list[bytes]:
    """Every Export of one capture file, encoded as protobuf (the captures store OTLP/JSON with hex ids)."""
    path = MESH / name
    if not path.exists():
        pytest.skip(f"no reference capture at {path}")
    return [hex_json_to_protobuf(export["request"]) for export in json.loads(path.read_text())["exports"]]


def hex_json_to_protobuf(document: dict[str, Any]) -> bytes:
    """A captured OTLP/JSON Export (hex ids, as the wire carries them) as protobuf; the document is left as it was."""
    document = copy.deepcopy(document)
    for rs in document.get("resourceSpans", []):
        for ss in rs.get("scopeSpans", []):
            for span in ss.get("spans", []):
                for key in ("traceId", "spanId", "parentSpanId"):
                    if span.get(key):
                        span[key] = base64.b64encode(bytes.fromhex(span[key])).decode()
    return json_format.ParseDict(document, ExportTraceServiceRequest()).SerializeToString()


def all_capture_names() -> list[str]:
    if not MESH.is_dir():
        pytest.skip(f"the reference captures are not at {MESH}")
    return sorted(p.name for p in MESH.glob("captured-*.json") if "zipkin" not in p.name)
