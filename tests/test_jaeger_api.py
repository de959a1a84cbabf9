"""Jaeger's query API on a real `hopscope serve` (docs/jaeger-api.md), checked against the real clients: the
requests Grafana's Jaeger data source sends, decoded into the Go structs it and Jaeger decode
(tests/jaeger_contract/, tests/go_json.py), and Jaeger's own answer fixtures; and against truth this test controls —
simulated mesh traffic sent through the OTel SDK's OTLP exporter (every span's emitted ns times, parents, services
and every hop's components known), plus one hand-made trace with every attribute type, an event, links and an
error, sent by the SDK's own tracer.

One server for the module: feeding it and letting the follower settle the hops is the slow part."""

from __future__ import annotations

import json
import re
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags, set_span_in_context

from hopscope.collector.otlp_json import parse_json_request
from hopscope.instrumentation.meshsim import Options, load_topology
from hopscope.instrumentation.meshsim.encode import Encoder
from hopscope.instrumentation.meshsim.model import HopTruth, SimSpan
from hopscope.instrumentation.meshsim.runner import SimulationRun
from hopscope.serve_process import ServeProcess
from tests.go_json import CONTRACTS, decode

COMPONENTS = ("iptables", "proxy_outbound", "proxy_inbound", "network", "app", "retry")
KIND_NAMES = {1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}
GRAFANA = json.loads((CONTRACTS / "grafana_requests.json").read_text())["requests"]
JAEGER_V1_ANSWER = json.loads((CONTRACTS / "jaeger" / "otlp2jaeger-out.json").read_text())
JAEGER_UI_TRACE = json.loads((CONTRACTS / "jaeger" / "ui_01.json").read_text())
TYPED_TRACE_ID = 0x1234ABCD5678EF90  # high 64 bits zero: Jaeger prints it with 16 digits
OTHER_TRACE_ID, OTHER_SPAN_ID = 0x0AF7651916CD43DD8448EB211C80319C, 0x00F067AA0BA902B7


@dataclass
class Sent:
    """What went over the wire: spans with their emitted ns times and service, every hop's truth."""

    server: ServeProcess
    spans: dict[str, list[tuple[SimSpan, int, int, str]]]  # trace id → (span, start ns, end ns, service.name)
    hops: list[HopTruth]
    typed: dict[str, Any]  # the hand-made trace: ids and times

    @property
    def api(self) -> str:
        return self.server.api_url

    def get(self, path: str, **params: Any) -> httpx.Response:
        return httpx.get(f"{self.api}{path}", params=params or None, timeout=30)


class _SixtyFourBitTraceIds(RandomIdGenerator):
    def generate_trace_id(self) -> int:
        return TYPED_TRACE_ID


def _send_typed_trace(target: str, t0: int) -> dict[str, Any]:
    """A trace through the SDK's own tracer: typed attributes, an event, links (one to the parent, asking for
    FOLLOWS_FROM), an error with a description, ns times that do not fall on a µs."""
    provider = TracerProvider(resource=Resource({"service.name": "typed-svc", "deployment.environment": "test",
                                                 "host.cores": 8}), id_generator=_SixtyFourBitTraceIds())
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=target, insecure=True)))
    tracer = provider.get_tracer("typed.scope", "2.1.0")
    root = tracer.start_span("GET /typed", kind=SpanKind.SERVER, start_time=t0, attributes={
        "http.route": "/typed", "cache.hit": True, "http.response.status_code": 200, "big.count": 2**60,
        "ratio": 2.5, "tags.list": ["a", "b"]})
    context = set_span_in_context(root)
    other = SpanContext(OTHER_TRACE_ID, OTHER_SPAN_ID, is_remote=True, trace_flags=TraceFlags(1))
    query = tracer.start_span("query", kind=SpanKind.CLIENT, context=context, start_time=t0 + 1_000_000,
                              links=[Link(other, {"opentracing.ref_type": "follows_from"})])
    query.add_event("cache miss", {"cache.key": "k1", "attempt": 2}, timestamp=t0 + 1_500_000)
    query.set_status(Status(StatusCode.ERROR, "db timeout"))
    query.end(end_time=t0 + 4_000_999)
    later = tracer.start_span("async work", kind=SpanKind.INTERNAL, context=context, start_time=t0 + 4_500_000,
                              links=[Link(root.get_span_context(), {"opentracing.ref_type": "follows_from"})])
    later.end(end_time=t0 + 9_000_000)
    root.end(end_time=t0 + 5_000_123)
    provider.shutdown()
    return {"trace_id": f"{TYPED_TRACE_ID:032x}", "t0": t0, "root": f"{root.get_span_context().span_id:016x}",
            "query": f"{query.get_span_context().span_id:016x}", "later": f"{later.get_span_context().span_id:016x}"}


@pytest.fixture(scope="module")
def sent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sent]:
    tmp = tmp_path_factory.mktemp("jaeger")
    server = ServeProcess(str(tmp / "spans.duckdb"), ["--settle-seconds", "0.5"], log_path=tmp / "serve.log")
    server.start()
    try:
        topology = load_topology("bookinfo")
        encoder = Encoder(topology)
        run = SimulationRun(topology, server.grpc_target, mode="sdk", seed=23,
                            options=Options(spawn_upstream_span=True))
        now_us = time.time_ns() // 1000
        spans: dict[str, list[tuple[SimSpan, int, int, str]]] = {}
        hops: list[HopTruth] = []
        for i in range(40):
            request = run.simulator.request(now_us - 90_000_000 + i * 100_000)  # 4 s of traffic 90 s ago
            spans[request.trace_id.hex()] = [(s, *encoder.times_ns(s), encoder.resource(s.emitter)["service.name"])
                                             for s in request.spans]
            hops += request.hops
            run.add(request)
            run.flush_if_full()
        run.close()
        assert run.stats.failures == 0
        typed = _send_typed_trace(server.grpc_target, time.time_ns() - 30 * 10**9 + 123)
        edges = {(hop.caller, hop.callee) for hop in hops}  # the typed trace's CLIENT span is a hop of its own
        deadline = time.monotonic() + 60  # the follower settles the hops: wait for all of them (not a timing check)
        while time.monotonic() < deadline:
            summary = httpx.get(f"{server.api_url}/api/v1/hops/summary", params={"since": "10m", "exact": "true"})
            typed_spans = httpx.get(f"{server.api_url}/api/v1/traces/{typed['trace_id']}").json().get("span_count")
            if typed_spans == 3 and len(hops) == sum(g["hops"] for g in summary.json()["groups"]
                                                     if (g["caller"], g["callee"]) in edges):
                break
            time.sleep(0.3)
        yield Sent(server, spans, hops, typed)
    finally:
        if server.process is not None and server.process.poll() is None:
            server.stop()


def _grafana_url(name: str, **values: str) -> str:
    """Grafana's request `name`, its parameter names and encodings kept, our values in."""
    parts = urllib.parse.urlsplit(GRAFANA[name]["url"])
    path = parts.path
    for placeholder in ("test-service", "abc123", "trace-1"):
        if placeholder in path:
            path = path.replace(placeholder, values.pop("path"))
    pairs = [(key, values.pop(key, value)) for key, value in urllib.parse.parse_qsl(parts.query)]
    assert not values, f"Grafana's {name} request has no parameter {sorted(values)}"
    unencoded = [(k, v) for k, v in pairs if "time" in k]  # v3 times go unencoded, as Grafana appends them
    query = urllib.parse.urlencode([(k, v) for k, v in pairs if "time" not in k])
    query = "&".join(filter(None, [query, *(f"{k}={v}" for k, v in unencoded)]))
    return f"{path}?{query}" if query else path


def _rfc3339(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z"


def _normalised(missing: list[str]) -> set[str]:
    """Missing-field paths without list indices or map keys: one entry per field of a type."""
    return {re.sub(r"\[\d+\]", "[]", re.sub(r"\.processes\.[^.]+", ".processes.*", path)) for path in missing}


def _trace_window(sent: Sent) -> tuple[int, int]:
    starts = [start for spans in sent.spans.values() for _, start, _, _ in spans]
    return min(starts), max(starts)


# ---- (a) every request Grafana sends, answered in the structs Grafana decodes ------------------------------------


def _grafana_requests(sent: Sent) -> dict[str, tuple[str, str]]:
    low, high = _trace_window(sent)
    trace_id = next(iter(sent.spans))
    return {  # name → (url with our values, the Grafana struct its answer decodes into)
        "services": (_grafana_url("services"), "ServicesResponse"),
        "operations": (_grafana_url("operations", path="reviews"), "ServicesResponse"),
        "search": (_grafana_url("search", end=str(high // 1000 + 1), limit="10", maxDuration="5s",
                                minDuration="1ms", operation="GET /reviews", service="reviews",
                                start=str(low // 1000), tags='{"http.request.method":"GET"}'), "TracesResponse"),
        "trace": (_grafana_url("trace", path=trace_id, end=str(high // 10**6 + 1), start=str(low // 10**6)),
                  "TracesResponse"),
        "trace_without_times": (_grafana_url("trace_without_times", path=trace_id), "TracesResponse"),
        "dependencies": (_grafana_url("dependencies", endTs=str(time.time_ns() // 10**6), lookback="600000"),
                         "DependenciesResponse"),
        "v3_services": (_grafana_url("v3_services"), "GrpcServicesResponse"),
        "v3_operations": (_grafana_url("v3_operations", service="reviews"), "GrpcOperationsResponse"),
        "v3_trace": (_grafana_url("v3_trace", path=trace_id, start_time=_rfc3339(low),
                                  end_time=_rfc3339(high + 10**9)), "GrpcTracesResponse"),
        "v3_search": (_grafana_url("v3_search", **{
            "query.attributes": '{"http.request.method":"GET"}', "query.duration_max": "5s",
            "query.duration_min": "1ms", "query.operation_name": "GET /reviews", "query.service_name": "reviews",
            "query.start_time_min": _rfc3339(low), "query.start_time_max": _rfc3339(high + 1000)}),
            "GrpcTracesResponse"),
    }


@pytest.mark.parametrize("name", sorted(GRAFANA))
def test_every_grafana_request_is_answered_in_the_structs_grafana_decodes(name: str, sent: Sent) -> None:
    url, struct = _grafana_requests(sent)[name]
    reply = httpx.get(f"{sent.api}{url}", timeout=30)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    missing = decode(body, struct, "grafana")
    if struct == "TracesResponse":  # what Grafana reads and we leave out, Jaeger's own answer leaves out too
        assert body["data"], url
        assert _normalised(missing) <= _normalised(decode(JAEGER_V1_ANSWER, struct, "grafana"))
    elif struct == "GrpcTracesResponse":  # OTLP/JSON leaves zero values out: only the types are Grafana's to check
        assert body["result"]["resourceSpans"] and "error" not in body
    else:
        assert missing == [] and (body.get("data") or body.get("services") or body.get("operations")), url


# ---- (b) values against what was sent -----------------------------------------------------------------------------


def test_services_and_operations_are_the_ones_sent(sent: Sent) -> None:
    names = {service for spans in sent.spans.values() for *_, service in spans} | {"typed-svc"}
    v1 = sent.get("/api/services").json()
    assert set(v1["data"]) == names and v1["total"] == len(names) and v1["errors"] is None
    assert set(sent.get("/api/v3/services").json()["services"]) == names
    for service in ("reviews", "reviews.default", "istio-ingressgateway.istio-system"):
        sent_ops = {(s.name, KIND_NAMES[s.kind]) for spans in sent.spans.values() for s, *_, name in spans
                    if name == service}
        legacy = sent.get(f"/api/services/{service}/operations").json()
        assert set(legacy["data"]) == {name for name, _ in sent_ops} and legacy["total"] == len(legacy["data"])
        v1_ops = sent.get("/api/operations", service=service).json()["data"]
        assert {(op["name"], op["spanKind"]) for op in v1_ops} == sent_ops
        assert {(op["name"], op["spanKind"]) for op in
                sent.get("/api/v3/operations", service=service).json()["operations"]} == sent_ops
        server_only = sent.get("/api/operations", service=service, spanKind="server").json()["data"]
        assert {(op["name"], op["spanKind"]) for op in server_only} == {op for op in sent_ops if op[1] == "server"}


@pytest.mark.parametrize("clocks", [{"raw": "true"}, {"skew": "raw"}])
def test_a_trace_is_the_spans_sent_in_jaegers_ui_model(clocks: dict[str, str], sent: Sent) -> None:
    """Raw clocks: every µs time is the ns time sent / 1000; parents, services, kinds as sent; the shape is
    exactly Jaeger's (its uimodel structs, its own answer's keys)."""
    for trace_id in list(sent.spans)[::13]:
        reply = sent.get(f"/api/traces/{trace_id}", **clocks).json()
        assert decode(reply, "structuredResponse", "jaeger_v1") == [] and reply["errors"] is None
        assert set(reply) == set(JAEGER_V1_ANSWER)
        (trace,) = reply["data"]
        jaeger_trace, jaeger_span = JAEGER_V1_ANSWER["data"][0], JAEGER_V1_ANSWER["data"][0]["spans"][0]
        missing = decode(trace, "Trace", "jaeger_ui")
        assert {m.rsplit(".", 1)[1] for m in missing} <= {"parentSpanID", "flags", "process"}  # omitempty ones
        assert set(trace) == set(jaeger_trace) and all(set(span) == set(jaeger_span) for span in trace["spans"])
        assert trace["traceID"] == trace_id and trace["warnings"] is None
        truth = {s.span_id.hex(): (s, start, end, service) for s, start, end, service in sent.spans[trace_id]}
        assert {span["spanID"] for span in trace["spans"]} == set(truth)
        keys = sorted(trace["processes"], key=lambda key: int(key[1:]))
        assert keys == [f"p{i}" for i in range(1, len(keys) + 1)]
        for span in trace["spans"]:
            simulated, start_ns, end_ns, service = truth[span["spanID"]]
            assert (span["startTime"], span["duration"]) == (start_ns // 1000, (end_ns - start_ns) // 1000)
            assert span["operationName"] == simulated.name and span["traceID"] == trace_id
            process = trace["processes"][span["processID"]]
            assert process["serviceName"] == service
            assert all(tag["key"] != "service.name" for tag in process["tags"])
            parent = [{"refType": "CHILD_OF", "traceID": trace_id, "spanID": simulated.parent_id.hex()}] \
                if simulated.parent_id else []
            assert span["references"] == parent
            tags = {tag["key"]: tag for tag in span["tags"]}
            assert tags["span.kind"] == {"key": "span.kind", "type": "string", "value": KIND_NAMES[simulated.kind]}
            for key, value in simulated.attributes.items():
                if isinstance(value, str):
                    assert tags[key] == {"key": key, "type": "string", "value": value}
                elif isinstance(value, int):
                    assert tags[key] == {"key": key, "type": "int64", "value": value}
            if simulated.error:
                assert tags["error"] == {"key": "error", "type": "bool", "value": True}


def test_every_attribute_type_event_link_and_status_as_jaeger_renders_them(sent: Sent) -> None:
    typed = sent.typed
    reply = sent.get("/api/traces/1234abcd5678ef90", raw="true").json()  # the 16-digit form is accepted
    (trace,) = reply["data"]
    assert decode(trace, "Trace", "jaeger_ui") is not None
    assert trace["traceID"] == "1234abcd5678ef90"  # as ui_01.json prints a 64-bit id: 16 digits
    assert len(JAEGER_UI_TRACE["traceID"]) == 16
    spans = {span["spanID"]: span for span in trace["spans"]}
    root, query, later = spans[typed["root"]], spans[typed["query"]], spans[typed["later"]]
    t0 = typed["t0"]
    assert (root["startTime"], root["duration"]) == (t0 // 1000, (5_000_123) // 1000)
    tags = {tag["key"]: tag for tag in root["tags"]}
    ui_tags = {tag["key"]: tag for span in JAEGER_UI_TRACE["spans"] for tag in span["tags"]}
    assert tags["cache.hit"] == {**ui_tags["error"], "key": "cache.hit"}  # bool, as Jaeger writes `error`
    assert tags["ratio"] == {"key": "ratio", "type": ui_tags["temperature"]["type"], "value": 2.5}
    # beyond JavaScript's 2^53 an int64 travels as a string (ui_01.json: javascript_limit)
    assert isinstance(ui_tags["javascript_limit"]["value"], str)
    assert tags["big.count"] == {"key": "big.count", "type": "int64", "value": str(2**60)}
    assert tags["http.response.status_code"] == {"key": "http.response.status_code", "type": "int64", "value": 200}
    assert tags["tags.list"] == {"key": "tags.list", "type": "string", "value": '["a","b"]'}
    assert tags["otel.scope.name"]["value"] == "typed.scope" and tags["otel.scope.version"]["value"] == "2.1.0"
    assert tags["span.kind"]["value"] == "server" and "error" not in tags
    query_tags = {tag["key"]: tag["value"] for tag in query["tags"]}
    assert query_tags["otel.status_code"] == "ERROR" and query_tags["error"] is True
    assert query_tags["otel.status_description"] == "db timeout" and query_tags["span.kind"] == "client"
    assert query["logs"] == [{"timestamp": (t0 + 1_500_000) // 1000, "fields": [
        {"key": "event", "type": "string", "value": "cache miss"},
        {"key": "cache.key", "type": "string", "value": "k1"}, {"key": "attempt", "type": "int64", "value": 2}]}]
    assert set(query["logs"][0]) == set(JAEGER_UI_TRACE["spans"][0]["logs"][0])
    assert query["references"] == [
        {"refType": "CHILD_OF", "traceID": "1234abcd5678ef90", "spanID": typed["root"]},
        {"refType": "FOLLOWS_FROM", "traceID": f"{OTHER_TRACE_ID:032x}", "spanID": f"{OTHER_SPAN_ID:016x}"}]
    # a link to the parent that asks for FOLLOWS_FROM turns the parent reference into one
    assert later["references"] == [{"refType": "FOLLOWS_FROM", "traceID": "1234abcd5678ef90",
                                    "spanID": typed["root"]}]
    (process,) = trace["processes"].values()
    process_tags = {tag["key"]: tag for tag in process["tags"]}
    assert process["serviceName"] == "typed-svc"
    assert process_tags["host.cores"] == {"key": "host.cores", "type": "int64", "value": 8}
    assert process_tags["deployment.environment"]["value"] == "test" and "service.name" not in process_tags


def test_hop_breakdown_rides_on_each_hops_anchor_span(sent: Sent) -> None:
    """v1 tags and v3 attributes equal the truth and /api/v1/traces/{id}/hops, on raw and corrected clocks."""
    by_anchor = {hop.outermost_span_id: hop for hop in sent.hops}
    for trace_id in list(sent.spans)[::7]:
        rest = {hop["anchor_span_id"]: hop for hop in sent.get(f"/api/v1/traces/{trace_id}/hops").json()["hops"]}
        for clocks in ({}, {"skew": "raw"}):
            (trace,) = sent.get(f"/api/traces/{trace_id}", **clocks).json()["data"]
            tagged = {span["spanID"]: {t["key"]: t for t in span["tags"] if t["key"].startswith("hopscope.")}
                      for span in trace["spans"]}
            anchors = {span_id for span_id, tags in tagged.items() if "hopscope.total_ms" in tags}
            assert anchors == {h.outermost_span_id for h in sent.hops if h.trace_id == trace_id} == set(rest)
            otlp = _otlp_spans(sent.get(f"/api/v3/traces/{trace_id}", **clocks).json())
            for anchor in anchors:
                tags, truth, hop = tagged[anchor], by_anchor[anchor], rest[anchor]
                assert tags["hopscope.caller"]["value"] == truth.caller == hop["caller"]
                assert tags["hopscope.callee"]["value"] == truth.callee
                span = next(s for s in trace["spans"] if s["spanID"] == anchor)
                assert tags["hopscope.total_ms"] == {"key": "hopscope.total_ms", "type": "float64",
                                                     "value": pytest.approx(span["duration"] / 1000, abs=1e-9)}
                attributes = {a["key"]: a["value"] for a in otlp[anchor]["attributes"]}
                for component in COMPONENTS:
                    value = getattr(truth, f"{component}_us")
                    key = f"hopscope.{component}_ms"
                    if value is None:
                        assert key not in tags and key not in attributes and hop[f"{component}_ms"] is None
                        continue
                    assert tags[key]["type"] == "float64"
                    assert tags[key]["value"] == pytest.approx(value / 1000, abs=1e-9) == hop[f"{component}_ms"]
                    assert float(attributes[key]["doubleValue"]) == tags[key]["value"]
                assert tags["hopscope.attempts"] == {"key": "hopscope.attempts", "type": "int64",
                                                     "value": truth.attempts}


def test_corrected_clocks_by_default_raw_on_request(sent: Sent) -> None:
    """Default: the instants /api/v1/traces/{id} shows (every clock domain on the root's); node-b runs 1.5 ms ahead,
    so its spans move. `skew=raw` and Jaeger's `raw=true`: as sent."""
    trace_id = list(sent.spans)[5]
    corrected = {s["spanID"]: s for s in sent.get(f"/api/traces/{trace_id}").json()["data"][0]["spans"]}
    rest = {s["span_id"]: s for s in sent.get(f"/api/v1/traces/{trace_id}").json()["spans"]}
    raw = {s["spanID"]: s for s in sent.get(f"/api/traces/{trace_id}", raw="true").json()["data"][0]["spans"]}
    assert {k: s["startTime"] for k, s in corrected.items()} == {k: s["start_unix_us"] for k, s in rest.items()}
    moved = {s.span_id.hex() for s, *_ in sent.spans[trace_id] if s.node == "node-b"}
    assert moved and all(corrected[k]["startTime"] != raw[k]["startTime"] for k in moved)
    assert all(any(t["key"] == "hopscope.clock_shift_ms" for t in corrected[k]["tags"]) for k in moved)
    assert all(corrected[k]["duration"] == raw[k]["duration"] for k in corrected)


def _search_truth(sent: Sent, service: str | None = None, operation: str | None = None, low: int = 0,
                  high: int = 2**63, min_ns: int = 0, max_ns: int = 2**63, error: bool | None = None,
                  attribute: tuple[str, str] | None = None) -> dict[str, int]:
    """Trace id → newest start of its spans that match every filter (one span must match them all)."""
    found: dict[str, int] = {}
    for trace_id, spans in sent.spans.items():
        for span, start, end, name in spans:
            if ((service is None or name == service) and (operation is None or span.name == operation)
                    and low <= start <= high and min_ns <= end - start <= max_ns
                    and (error is None or span.error == error)
                    and (attribute is None or str(span.attributes.get(attribute[0])) == attribute[1])):
                found[trace_id] = max(found.get(trace_id, 0), start)
    return found


def test_search_finds_the_traces_with_a_span_matching_every_filter(sent: Sent) -> None:
    low, high = _trace_window(sent)
    window = {"start": str(low // 1000), "end": str(high // 1000 + 1), "limit": "1000"}

    def ids(**params: str) -> list[str]:
        reply = sent.get("/api/traces", **{**window, **params}).json()
        assert reply["errors"] is None
        return [trace["traceID"] for trace in reply["data"]]

    assert set(ids(service="ratings")) == set(_search_truth(sent, "ratings")) != set()
    assert set(ids(service="reviews", operation="GET /reviews")) == set(_search_truth(sent, "reviews", "GET /reviews"))
    durations = sorted(end - start for s, start, end, name in sent.spans[next(iter(sent.spans))] if name == "reviews")
    cut = durations[len(durations) // 2]
    assert set(ids(service="reviews", minDuration=f"{cut}ns")) == set(_search_truth(sent, "reviews", min_ns=cut))
    assert set(ids(service="reviews", maxDuration=f"{cut / 1000}us")) == \
        set(_search_truth(sent, "reviews", max_ns=cut))
    assert set(ids(tags='{"error":"true"}')) == set(_search_truth(sent, error=True)) != set()
    assert set(ids(service="ratings.default", tag="response_flags:-")) == \
        set(_search_truth(sent, "ratings.default", attribute=("response_flags", "-")))
    assert set(ids(tags='{"server.port":"9080"}')) == set(_search_truth(sent, attribute=("server.port", "9080")))
    first_half = sorted(min(start for _, start, _, _ in spans) for spans in sent.spans.values())[len(sent.spans) // 2]
    assert set(ids(start=str(low // 1000), end=str(first_half // 1000))) == \
        set(_search_truth(sent, low=low // 1000 * 1000, high=first_half // 1000 * 1000))
    newest = sorted(_search_truth(sent, "details").items(), key=lambda item: -item[1])[:5]
    assert ids(service="details", limit="5") == [trace_id for trace_id, _ in newest]


def test_search_by_trace_ids_names_the_missing_one(sent: Sent) -> None:
    known = list(sent.spans)[:2]
    missing = "00000000000000000000000000abcdef"
    reply = httpx.get(f"{sent.api}/api/traces", params=[("traceID", t) for t in (*known, missing)]).json()
    assert {trace["traceID"] for trace in reply["data"]} == set(known)
    assert reply["errors"] == [{"msg": "trace not found", "traceID": "0000000000abcdef"}]
    assert decode(reply, "structuredResponse", "jaeger_v1") == []


def test_dependencies_count_the_hops_sent(sent: Sent) -> None:
    calls = Counter((hop.caller, hop.callee) for hop in sent.hops)
    now_ms = time.time_ns() // 10**6
    reply = sent.get("/api/dependencies", endTs=str(now_ms), lookback=str(10 * 60 * 1000)).json()
    assert decode(reply["data"], "[]DependencyLink", "jaeger_ui") == []
    assert {(d["parent"], d["child"]): d["callCount"] for d in reply["data"]} == dict(calls)
    assert {(d["parent"], d["child"]) for d in sent.get("/api/dependencies", service="ratings").json()["data"]} == \
        {edge for edge in calls if "ratings" in edge}
    first, _ = _trace_window(sent)
    before = sent.get("/api/dependencies", endTs=str(first // 10**6 - 1), lookback="60000").json()
    assert before["data"] == []


def _otlp_spans(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {span["spanId"]: span for group in body["result"]["resourceSpans"] for scope in group["scopeSpans"]
            for span in scope["spans"]}


def test_v3_trace_is_otlp_json_as_jaegers_api_v3_answers(sent: Sent) -> None:
    snapshot = json.loads((CONTRACTS / "jaeger" / "apiv3_GetTrace.json").read_text())
    trace_id = list(sent.spans)[3]
    body = sent.get(f"/api/v3/traces/{trace_id}", rawTraces="true").json()
    assert set(body) == set(snapshot) and set(body["result"]) == set(snapshot["result"])
    for group in body["result"]["resourceSpans"]:
        assert set(group) == set(snapshot["result"]["resourceSpans"][0])
        assert all(set(scope) == set(snapshot["result"]["resourceSpans"][0]["scopeSpans"][0])
                   for scope in group["scopeSpans"])
    decoded = parse_json_request(json.dumps(body["result"]).encode())  # hex ids, integer enums, string int64s
    spans = {span.span_id.hex(): (span, rs.resource) for rs in decoded.resource_spans for ss in rs.scope_spans
             for span in ss.spans}
    assert set(spans) == {s.span_id.hex() for s, *_ in sent.spans[trace_id]}
    for simulated, start, end, service in sent.spans[trace_id]:
        span, resource = spans[simulated.span_id.hex()]
        assert (span.start_time_unix_nano, span.end_time_unix_nano) == (start, end)
        assert span.kind == simulated.kind and span.name == simulated.name
        assert span.parent_span_id.hex() == (simulated.parent_id.hex() if simulated.parent_id else "")
        assert {a.key: a.value.string_value for a in resource.attributes}["service.name"] == service
    json_spans = _otlp_spans(body)
    assert all(isinstance(span["startTimeUnixNano"], str) and isinstance(span.get("kind"), int)
               for span in json_spans.values())


def test_v3_typed_attributes_follow_otlp_json(sent: Sent) -> None:
    typed = sent.typed
    body = sent.get(f"/api/v3/traces/{typed['trace_id']}", raw_traces="true").json()
    spans = _otlp_spans(body)
    root = {a["key"]: a["value"] for a in spans[typed["root"]]["attributes"]}
    assert root["cache.hit"] == {"boolValue": True} and root["big.count"] == {"intValue": str(2**60)}
    assert root["ratio"] == {"doubleValue": "2.5"}  # proto3 JSON takes a string; Grafana's Go struct needs one
    assert root["tags.list"] == {"arrayValue": {"values": [{"stringValue": "a"}, {"stringValue": "b"}]}}
    query = spans[typed["query"]]
    assert query["status"] == {"message": "db timeout", "code": 2} and query["kind"] == 3
    assert query["events"][0]["timeUnixNano"] == str(typed["t0"] + 1_500_000)
    assert query["links"][0]["traceId"] == f"{OTHER_TRACE_ID:032x}"
    assert spans[typed["root"]]["startTimeUnixNano"] == str(typed["t0"])
    decoded = parse_json_request(json.dumps(body["result"]).encode())
    assert decoded.resource_spans[0].scope_spans[0].scope.name == "typed.scope"


def test_v3_search_takes_the_camel_and_snake_case_names(sent: Sent) -> None:
    low, high = _trace_window(sent)
    expected = set(_search_truth(sent, "ratings"))
    for names in (("query.serviceName", "query.startTimeMin", "query.startTimeMax", "query.searchDepth"),
                  ("query.service_name", "query.start_time_min", "query.start_time_max", "query.search_depth")):
        body = sent.get("/api/v3/traces", **dict(zip(names, ("ratings", _rfc3339(low), _rfc3339(high + 1000),
                                                             "1000"), strict=True))).json()
        found = {span["traceId"] for span in _otlp_spans(body).values()}
        assert found == expected
    assert decode(sent.get("/api/v3/services").json(), "GrpcServicesResponse", "grafana") == []
    snapshot = json.loads((CONTRACTS / "jaeger" / "apiv3_GetOperations.json").read_text())
    operations = sent.get("/api/v3/operations", service="ratings").json()
    assert set(operations) == set(snapshot) and all(set(op) == set(snapshot["operations"][0])
                                                    for op in operations["operations"])


# ---- (c) Grafana's milliseconds on trace-by-id ---------------------------------------------------------------------


@pytest.mark.parametrize("unit", ["ms", "us"])
def test_trace_by_id_takes_start_and_end_in_grafanas_ms_or_jaegers_us(unit: str, sent: Sent) -> None:
    trace_id = list(sent.spans)[-1]
    low, high = _trace_window(sent)
    scale = 10**6 if unit == "ms" else 1000
    reply = sent.get(f"/api/traces/{trace_id}", start=str(low // scale), end=str(high // scale + 1))
    assert reply.status_code == 200 and reply.json()["data"][0]["traceID"] == trace_id


# ---- (d) errors, in each API's own envelope -----------------------------------------------------------------------


V1_NOT_FOUND = {"data": None, "total": 0, "limit": 0, "offset": 0, "errors": [{"code": 404, "msg": "trace not found"}]}


@pytest.mark.parametrize(("path", "status"), [
    ("/api/traces/0123456789abcdef0123456789abcdef", 404),
    ("/api/traces/not-a-trace-id", 400),
    ("/api/traces/0123456789abcdef?start=yesterday", 400),
    ("/api/traces?minDuration=fast", 400),
    ("/api/traces?minDuration=2s&maxDuration=1s", 400),
    ("/api/traces?tags=%7Bnot+json", 400),
    ("/api/traces?limit=many", 400),
    ("/api/operations", 400),
    ("/api/dependencies?endTs=soon", 400),
])
def test_v1_errors_come_in_jaegers_envelope(path: str, status: int, sent: Sent) -> None:
    reply = httpx.get(f"{sent.api}{path}")
    assert reply.status_code == status
    body = reply.json()
    assert decode(body, "structuredResponse", "jaeger_v1") == []
    assert body["data"] is None and body["errors"][0]["code"] == status and body["errors"][0]["msg"]
    if status == 404:
        assert body == V1_NOT_FOUND


@pytest.mark.parametrize(("path", "status", "message"), [
    ("/api/v3/traces/0123456789abcdef0123456789abcdef", 404, "No traces found"),
    ("/api/v3/traces/not-a-trace-id", 400, None),
    ("/api/v3/traces/0123456789abcdef?start_time=yesterday", 400, None),
    ("/api/v3/traces?query.service_name=ratings", 400, None),
    ("/api/v3/traces?query.service_name=nobody&query.start_time_min=2026-01-01T00:00:00Z"
     "&query.start_time_max=2026-01-01T00:01:00Z", 404, "No traces found"),
])
def test_v3_errors_come_in_api_v3s_error_shape(path: str, status: int, message: str | None, sent: Sent) -> None:
    reply = httpx.get(f"{sent.api}{path}")
    assert reply.status_code == status
    body = reply.json()
    assert set(body) == {"error"} and decode(body, "GRPCGatewayError", "jaeger_v3") == []
    decode(body, "GrpcTracesResponse", "grafana")  # Grafana reads error.httpCode and error.message
    assert body["error"]["httpCode"] == status and (message is None or body["error"]["message"] == message)



def test_search_and_trace_by_id_read_sealed_partitions(start_serve: Callable[..., ServeProcess]) -> None:
    """Traffic old enough to be sealed into Parquet (1-minute partitions) is found and read back whole."""
    server = start_serve("--settle-seconds", "0.5", "--partition", "1m", "--late-span-grace", "1s")
    topology = load_topology("bookinfo")
    encoder = Encoder(topology)
    run = SimulationRun(topology, server.grpc_target, mode="sdk", seed=31, options=Options(spawn_upstream_span=True))
    now_us = time.time_ns() // 1000
    spans: dict[str, list[tuple[SimSpan, int, int, str]]] = {}
    for i in range(12):  # two minutes of traffic, four minutes ago: three partitions
        request = run.simulator.request(now_us - 240_000_000 + i * 10_000_000)
        spans[request.trace_id.hex()] = [(s, *encoder.times_ns(s), encoder.resource(s.emitter)["service.name"])
                                         for s in request.spans]
        run.add(request)
    run.close()
    total = sum(len(trace) for trace in spans.values())

    def count(sql: str) -> int:
        return int(httpx.post(f"{server.api_url}/api/v1/sql", json={"sql": sql}, timeout=30).json()["rows"][0][0])

    deadline = time.monotonic() + 90  # waits for the sealer; not a timing check
    while time.monotonic() < deadline and count("SELECT count(*) FROM spans_sealed") < total:
        time.sleep(0.5)
    assert count("SELECT count(*) FROM spans_sealed") == total and count("SELECT count(*) FROM spans_hot") == 0
    sent = Sent(server, spans, [], {})
    low, high = _trace_window(sent)
    reply = sent.get("/api/traces", service="ratings", start=str(low // 1000), end=str(high // 1000 + 1),
                     limit="1000", raw="true").json()
    assert {trace["traceID"] for trace in reply["data"]} == set(_search_truth(sent, "ratings")) != set()
    for trace in reply["data"]:
        truth = {s.span_id.hex(): start // 1000 for s, start, _, _ in spans[trace["traceID"]]}
        assert {span["spanID"]: span["startTime"] for span in trace["spans"]} == truth
    for trace_id, sent_spans in spans.items():
        (trace,) = sent.get(f"/api/traces/{trace_id}").json()["data"]
        assert len(trace["spans"]) == len(sent_spans)
    v3 = sent.get("/api/v3/traces", **{"query.service_name": "ratings", "query.start_time_min": _rfc3339(low),
                                        "query.start_time_max": _rfc3339(high + 1000)}).json()
    assert {span["traceId"] for span in _otlp_spans(v3).values()} == set(_search_truth(sent, "ratings"))
