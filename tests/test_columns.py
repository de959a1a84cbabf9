"""The flattening of OTLP requests into `spans` columns: the C accelerator must agree with the Python reference on
every column, for real captures (Envoy 1.40 + SDK, shared/reference/mesh), for benchmark-shaped load and for edge
cases (every AnyValue type, nesting, duplicates, odd enums, control characters), and both must match the values a
reader expects."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from hopscope.collector import columns
from hopscope.collector.schema import SPAN_COLUMNS
from hopscope.instrumentation.meshsim.encode import any_value
from tests.captures import all_capture_names, capture_payloads
from tests.otlp_requests import request_with

JSON_COLUMNS = {c.name for c in SPAN_COLUMNS if c.sql_type == "JSON"}


def _typed(value: Any) -> Any:
    """JSON value with its Python type made part of equality (True != 1, 1.0 != 1)."""
    if isinstance(value, dict):
        return {k: _typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_typed(v) for v in value]
    return (type(value).__name__, value)


def _normalised(cols: dict[str, list[Any]]) -> dict[str, list[Any]]:
    return {name: [_typed(json.loads(v)) if v is not None and name in JSON_COLUMNS else v for v in values]
            for name, values in cols.items()}


def _captured_payloads() -> list[bytes]:
    return [payload for name in all_capture_names() for payload in capture_payloads(name)]


def _edge_case_request() -> bytes:
    request = request_with(6)
    resource = request.resource_spans[0].resource
    resource.attributes.extend([KeyValue(key="k8s.pod.name", value=any_value("pod-1")),
                                KeyValue(key="host.name", value=any_value(12)),
                                KeyValue(key="k8s.node.name", value=any_value(""))])
    scope = request.resource_spans[0].scope_spans[0].scope
    scope.name, scope.version = "edge", ""
    scope.attributes.append(KeyValue(key="scope.flag", value=any_value(True)))
    spans = request.resource_spans[0].scope_spans[0].spans
    odd = {"text": 'quote " back \\ tab \t nl \n ctl \x01 del \x7f ünï €', "empty": "", "yes": True, "no": False,
           "min": -(2**63), "max": 2**63 - 1, "half": 0.5, "whole": 2.0, "tiny": 5e-324, "huge": 1.7e308,
           "nan": math.nan, "inf": math.inf, "ninf": -math.inf, "raw": b"\x00\xffhop", "three": b"abc",
           "nested": [1, [2.5, "x", {"deep": [True, b"\x01"]}], {}], "map": {"a": {"b": {"c": "d"}}},
           "none": AnyValue(), "empty_list": [], "empty_map": {}}
    spans[0].attributes.extend(KeyValue(key=k, value=any_value(v)) for k, v in odd.items())
    spans[0].attributes.extend([KeyValue(key="dup", value=any_value(1)), KeyValue(key="dup", value=any_value("last"))])
    spans[1].kind = 9  # an enum value from the future
    spans[1].status.code = 7
    spans[1].status.message = "odd status"
    spans[1].trace_state = "vendor=x"
    spans[1].flags = 0x301
    spans[1].parent_span_id = bytes(8)  # all-zero parent: a root
    spans[2].attributes.extend([KeyValue(key="http.status_code", value=any_value("503")),
                                KeyValue(key="http.url", value=any_value("https://h:9/p/q?x=1#f")),
                                KeyValue(key="peer.address", value=any_value(7)),
                                KeyValue(key="istio.namespace", value=any_value("mesh-ns"))])
    spans[3].attributes.extend([KeyValue(key="http.response.status_code", value=any_value(True)),
                                KeyValue(key="url.full", value=any_value("no-path")),
                                KeyValue(key="http.method", value=AnyValue()),
                                KeyValue(key="http.request.method", value=any_value(["GET"]))])
    spans[4].attributes.extend([KeyValue(key="http.status_code", value=any_value("2_00")),
                                KeyValue(key="http.target", value=any_value("/explicit"))])
    spans[4].events.add(time_unix_nano=2**64 - 1, name="late", dropped_attributes_count=2).attributes.append(
        KeyValue(key="e", value=any_value(1.25)))
    spans[4].events.add(name="")
    spans[4].links.add(trace_id=os.urandom(16), span_id=os.urandom(8), trace_state="a=b", flags=1,
                       dropped_attributes_count=3).attributes.append(KeyValue(key="l", value=any_value([1, 2])))
    spans[4].dropped_attributes_count, spans[4].dropped_events_count, spans[4].dropped_links_count = 1, 2, 3
    spans[5].name = ""
    spans[5].kind = Span.SPAN_KIND_CONSUMER
    second = request.resource_spans.add()  # no resource attributes, no scope, no service name
    valid = second.scope_spans.add().spans.add()
    valid.CopyFrom(spans[5])
    valid.span_id = os.urandom(8)
    return request.SerializeToString()


def _bench_payloads() -> list[bytes]:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from spans import build_request

    return [build_request(256, seed=seed) for seed in range(3)]


CORPORA = {"captured Envoy + SDK": _captured_payloads, "benchmark load": _bench_payloads,
           "edge cases": lambda: [_edge_case_request()]}


@pytest.mark.skipif(columns._ACCELERATOR is None, reason="the C accelerator is not built here")
@pytest.mark.parametrize("corpus", sorted(CORPORA))
def test_c_accelerator_agrees_with_the_python_reference(corpus: str) -> None:
    payloads = CORPORA[corpus]()
    assert payloads
    fast = _normalised(columns.requests_to_record_batch(payloads).to_pydict())
    reference = _normalised(columns.requests_to_columns_python(payloads))
    assert list(fast) == list(reference)
    for name in reference:
        assert fast[name] == reference[name], name


def test_edge_case_values_are_what_a_reader_expects() -> None:
    cols = columns.requests_to_record_batch([_edge_case_request()]).to_pydict()
    attributes = json.loads(cols["attributes"][0])
    assert attributes["yes"] is True and attributes["min"] == -(2**63) and attributes["whole"] == 2.0
    assert isinstance(attributes["whole"], float) and isinstance(attributes["max"], int)
    assert (attributes["nan"], attributes["inf"], attributes["ninf"]) == ("NaN", "Infinity", "-Infinity")
    assert attributes["raw"] == "AP9ob3A=" and attributes["three"] == "YWJj"  # base64, as OTLP/JSON writes bytes
    assert attributes["nested"] == [1, [2.5, "x", {"deep": [True, "AQ=="]}], {}]
    assert attributes["none"] is None and attributes["dup"] == "last"
    assert attributes["text"].endswith("ünï €") and "\x01" in attributes["text"]
    assert cols["kind"][1] == "UNSPECIFIED" and cols["status_code"][1] == "UNSET"
    assert cols["parent_span_id"][1] is None and cols["trace_state"][1] == "vendor=x" and cols["flags"][1] == 0x301
    assert (cols["http_status_code"][2], cols["http_target"][2], cols["peer_address"][2],
            cols["k8s_namespace"][2]) == (503, "/p/q?x=1#f", "7", "mesh-ns")
    assert (cols["http_status_code"][3], cols["http_target"][3], cols["http_method"][3]) == (None, None, '["GET"]')
    assert (cols["http_status_code"][4], cols["http_target"][4]) == (None, "/explicit")
    events = json.loads(cols["events"][4])
    assert events[0] == {"name": "late", "time_ns": 2**64 - 1, "attributes": {"e": 1.25},
                         "dropped_attributes_count": 2}
    link = json.loads(cols["links"][4])[0]
    assert (link["trace_state"], link["flags"], link["attributes"], link["dropped_attributes_count"]) == (
        "a=b", 1, {"l": [1, 2]}, 3)
    assert (cols["k8s_pod"][0], cols["host"][0], cols["k8s_node"][0]) == ("pod-1", "12", "")
    assert json.loads(cols["scope_attributes"][0]) == {"scope.flag": True}
    assert cols["scope_version"][0] is None and cols["service_name"][-1] is None
    assert cols["resource_attributes"][-1] is None and cols["scope_name"][-1] is None


def test_malformed_bytes_raise_value_error_in_the_accelerator() -> None:
    if columns._ACCELERATOR is None:
        pytest.skip("the C accelerator is not built here")
    body = request_with(3).SerializeToString()
    for cut in (1, 5, len(body) // 2, len(body) - 1):
        with pytest.raises(ValueError):
            columns._ACCELERATOR.flatten([body[:cut] + b"\xff"])
