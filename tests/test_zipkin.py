"""Zipkin v2 ingest (collector/zipkin.py, zipkin_receiver.py).

Truth comes from outside the code under test: a real Envoy 1.40 pair's Zipkin POSTs with the apps' OTLP spans of the
same requests (tests/zipkin_fixtures/captured-loopback-zipkin.json, described in shared/reference/mesh/ZIPKIN.md),
the same run's OTLP-tracer twin for the hop structure, and the OpenTelemetry SDK's own Zipkin exporters (JSON in
this venv; protobuf in a venv of its own, since that exporter pins protobuf 3) as clients of a real serve.
"""

from __future__ import annotations

import copy
import gzip
import json
import subprocess
import sys
import textwrap
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from hopscope.collector.zipkin import parse_zipkin_json, shared_server_span_id, validate_zipkin
from hopscope.collector.zipkin_proto import ListOfSpans
from hopscope.serve_process import ServeProcess
from tests.captures import hex_json_to_protobuf
from tests.conftest import read_spans
from tests.test_hops import _hops, _span_rows

CAPTURE = json.loads((Path(__file__).parent / "zipkin_fixtures" / "captured-loopback-zipkin.json").read_text())
POSTS: list[list[dict[str, Any]]] = [post["body"] for post in CAPTURE["posts"]]
ZIPKIN_SPANS = [span for body in POSTS for span in body]


APP_EXPORTS = [export["request"] for export in CAPTURE["otlp_exports"]]


def _zipkin_payloads(posts: list[list[dict[str, Any]]]) -> list[bytes]:
    return [validate_zipkin(parse_zipkin_json(json.dumps(body).encode())).payload for body in posts]


def _breakdown(posts: list[list[dict[str, Any]]], apps: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    hops = _hops(_span_rows(_zipkin_payloads(posts) + [hex_json_to_protobuf(a) for a in apps]))
    return sorted((h.trace_id, h.caller, h.callee, h.attempts, h.total_ns, h.iptables_ns, h.proxy_outbound_ns,
                   h.network_ns, h.proxy_inbound_ns, h.app_ns, h.retry_ns, tuple(h.resolution)) for h in hops)


# ---- the mapping ----------------------------------------------------------------------------------------------

def test_every_captured_envoy_span_maps_as_the_collectors_zipkin_receiver_maps_it() -> None:
    rows = {row["span_id"]: row for row in _span_rows(_zipkin_payloads(POSTS))}
    assert len(rows) == len(ZIPKIN_SPANS) == 20
    for span in ZIPKIN_SPANS:
        row = rows[span["id"]]
        assert row["trace_id"] == span["traceId"]
        assert row["parent_span_id"] == span.get("parentId")
        assert row["kind"] == span["kind"] and row["name"] == span["name"]
        assert row["start_ns"] == span["timestamp"] * 1000
        # Envoy's span ends at its cr/ss annotation (30-140 µs after timestamp + duration in this capture)
        [finish] = [a["timestamp"] for a in span["annotations"] if a["value"] in ("cr", "ss")]
        assert row["end_ns"] == max(finish, span["timestamp"] + span["duration"]) * 1000
        assert row["service_name"] == span["localEndpoint"]["serviceName"]
        assert {k: v for k, v in row["attributes"].items() if k in span["tags"]} == span["tags"], "every tag kept"
        assert row["attributes"]["net.host.ip"] == span["localEndpoint"]["ipv4"]
        assert "net.host.port" not in row["attributes"], "port 0 is no port"
        assert row["status_code"] == ("ERROR" if span["tags"].get("error") == "true" else "UNSET")
        assert [(e["name"], e["time_ns"]) for e in json.loads(row["events"])] == [
            (a["value"], a["timestamp"] * 1000) for a in span["annotations"]]


def test_an_envoy_span_that_stalled_before_its_creation_ends_at_its_finish_annotation() -> None:
    """Envoy counts `duration` from the span's creation but `timestamp` from the stream's start: a sidecar that
    stalled 2 ms in between reports a span 2 ms short, and only its `ss` says when it really finished."""
    envoy = {"traceId": "01" * 16, "id": "02" * 8, "kind": "SERVER", "timestamp": 1_000, "duration": 500,
             "annotations": [{"timestamp": 3_500, "value": "ss"}], "tags": {"component": "proxy"}}
    app = {**envoy, "id": "03" * 8, "tags": {}}   # anything but Envoy: timestamp + duration, as Zipkin defines it
    rows = {row["span_id"]: row for row in _span_rows([validate_zipkin(parse_zipkin_json(
        json.dumps([envoy, app]).encode())).payload])}
    assert rows["02" * 8]["end_ns"] == 3_500_000
    assert rows["03" * 8]["end_ns"] == 1_500_000


def test_ids_are_padded_a_parent_equal_to_the_id_dropped_and_a_remote_endpoint_kept() -> None:
    spans = parse_zipkin_json(json.dumps([{
        "traceId": "463ac35c9f6413ad", "id": "a2fb4a1d1a96d312", "parentId": "a2fb4a1d1a96d312", "timestamp": 10,
        "duration": 3, "localEndpoint": {"serviceName": "frontend", "ipv6": "::1", "port": 8080},
        "remoteEndpoint": {"serviceName": "backend", "ipv4": "10.0.0.7", "port": 9000},
        "tags": {"error": "connection refused", "retries": 2}}]).encode())
    [row] = _span_rows([validate_zipkin(spans).payload])
    assert row["trace_id"] == "0000000000000000463ac35c9f6413ad" and row["parent_span_id"] is None
    assert row["kind"] == "UNSPECIFIED" and row["start_ns"] == 10_000 and row["end_ns"] == 13_000
    assert row["status_code"] == "ERROR" and row["status_message"] == "connection refused"
    attributes = row["attributes"]
    assert (attributes["peer.service"], attributes["net.peer.ip"], attributes["net.peer.port"]) == (
        "backend", "10.0.0.7", 9000)
    assert (attributes["net.host.ip"], attributes["net.host.port"], attributes["retries"]) == ("::1", 8080, "2")


@pytest.mark.parametrize(("body", "message"), [
    (b"{}", "must be a JSON array"),
    (b"[1]", "span 0: must be an object"),
    (b'[{"traceId": "xyz", "id": "01"}]', "span 0: 'traceId' must be hex"),
    (b'[{"traceId": "01", "id": "0102030405060708090a"}]', "span 0: 'id' must be a string of 1 to 16"),
    (b'[{"traceId": "01", "id": "02", "kind": "SIDEWAYS"}]', "'kind' must be one of"),
    (b'[{"traceId": "01", "id": "02", "timestamp": -5}]', "'timestamp' must be a count of microseconds"),
    (b'[{"traceId": "01", "id": "02", "tags": []}]', "'tags' must be an object"),
    (b"[" * 100_000, "nested too deep"),
])
def test_undecodable_spans_are_refused_with_the_span_and_the_reason(body: bytes, message: str) -> None:
    from hopscope.collector.errors import MalformedRequest

    with pytest.raises(MalformedRequest, match=message):
        parse_zipkin_json(body)


def test_a_span_without_timestamp_is_rejected_and_counted_the_rest_stored() -> None:
    spans = parse_zipkin_json(json.dumps([{"traceId": "01", "id": "02", "timestamp": 5, "duration": 1},
                                          {"traceId": "01", "id": "03", "duration": 1}]).encode())
    validated = validate_zipkin(spans)
    assert validated.accepted_spans == 1 and validated.rejected == {"zipkin span without timestamp": 1}


# ---- hops over Zipkin -----------------------------------------------------------------------------------------

def test_envoy_zipkin_spans_with_otlp_app_spans_give_the_hops_envoys_otlp_tracer_gives() -> None:
    """The same two-pod lab, once with Envoy's Zipkin tracer and once with its OpenTelemetry tracer (MESH-SOURCES:
    captured-loopback.json): the same hops, attempts and way of measuring each component, and times of the same
    size (different runs, so not equal values)."""
    zipkin = _hops(_span_rows(_zipkin_payloads(POSTS) + [hex_json_to_protobuf(a) for a in APP_EXPORTS]))
    mesh = Path(__file__).resolve().parents[2] / "shared" / "reference" / "mesh" / "captured-loopback.json"
    if not mesh.exists():
        pytest.skip(f"the OTLP-tracer twin capture is not at {mesh}")
    otlp = _hops(_span_rows([hex_json_to_protobuf(e["request"]) for e in json.loads(mesh.read_text())["exports"]]))

    def shape(hops: list[Any]) -> list[tuple[Any, ...]]:
        return sorted((h.caller, h.callee, h.attempts, tuple(h.resolution),
                       tuple(c is None for c in (h.iptables_ns, h.proxy_outbound_ns, h.network_ns,
                                                 h.proxy_inbound_ns, h.app_ns))) for h in hops)

    assert shape(zipkin) == shape(otlp)
    assert len(zipkin) == 6 and all(h.components_sum() == h.total_ns for h in zipkin)
    for hop in zipkin:  # ZIPKIN.md: app B 23.5-23.8 ms of work (+ its stack); proxies and interception ~0.3-1.6 ms
        assert 23.0e6 <= hop.app_ns <= 24.5e6
        assert 0 < hop.iptables_ns < 3e6 and 0 < hop.proxy_inbound_ns < 3e6 and 0 < hop.network_ns < 3e6
    assert next(h for h in zipkin if h.attempts == 3).retry_ns > 45e6  # the retry gaps: 45.7 and 81.4 ms


def _as_shared_span_context(posts: list[list[dict[str, Any]]], apps: list[dict[str, Any]]
                            ) -> tuple[list[list[dict[str, Any]]], list[dict[str, Any]]]:
    """What Envoy sends with `shared_span_context: true` for the same requests: each callee SERVER span takes the
    caller CLIENT span's id and parent and says `shared: true`, and the callee app's SERVER span, which Envoy
    handed that id, names it as parent."""
    posts, apps = copy.deepcopy(posts), copy.deepcopy(apps)
    clients = {s["id"]: s for body in posts for s in body if s["kind"] == "CLIENT"}
    renamed: dict[str, str] = {}
    for body in posts:
        for span in body:
            client = clients.get(span.get("parentId", ""))
            if span["kind"] == "SERVER" and client is not None:
                renamed[span["id"]] = client["id"]
                span.update(id=client["id"], shared=True)
                if client.get("parentId"):
                    span["parentId"] = client["parentId"]
    for export in apps:
        for resource_spans in export["resourceSpans"]:
            for scope_spans in resource_spans["scopeSpans"]:
                for span in scope_spans["spans"]:
                    span["parentSpanId"] = renamed.get(span.get("parentSpanId", ""), span.get("parentSpanId", ""))
    return posts, apps


def test_shared_span_context_gives_the_same_hops_as_separate_span_ids() -> None:
    shared_posts, shared_apps = _as_shared_span_context(POSTS, APP_EXPORTS)
    assert sum(s.get("shared", False) for body in shared_posts for s in body) == 8  # 5 OK + 3 attempts
    separate = _breakdown(POSTS, APP_EXPORTS)
    shared = _breakdown(shared_posts, shared_apps)
    assert [h[1:] for h in shared] == [h[1:] for h in separate]


def test_a_shared_server_half_gets_its_own_stable_id_under_the_client_half() -> None:
    shared_posts, _ = _as_shared_span_context(POSTS, APP_EXPORTS)
    first = _span_rows(_zipkin_payloads(shared_posts))
    again = _span_rows(_zipkin_payloads(shared_posts))
    assert [r["span_id"] for r in first] == [r["span_id"] for r in again], "a resent span keeps its id"
    ids = [r["span_id"] for r in first]
    assert len(set(ids)) == len(ids) == 20, "three attempts that shared one id are three spans"
    halves = [r for r in first if "zipkin.shared_span_id" in r["attributes"]]
    assert all(r["parent_span_id"] == r["attributes"]["zipkin.shared_span_id"] for r in halves)
    spans = parse_zipkin_json(json.dumps(shared_posts[1]).encode())
    assert {shared_server_span_id(s).hex() for s in spans if s.shared} <= set(ids)


# ---- a real serve ---------------------------------------------------------------------------------------------

@pytest.fixture
def server(start_serve: Callable[..., ServeProcess]) -> Iterator[ServeProcess]:
    yield start_serve()


def _protobuf_body(spans: list[dict[str, Any]]) -> bytes:
    """Envoy's spans as its HTTP_PROTO encodes them: span ids in x86's byte order (seen in the mesh lab)."""
    message = ListOfSpans()
    for span in spans:
        out = message.spans.add(trace_id=bytes.fromhex(span["traceId"]), id=bytes.fromhex(span["id"])[::-1],
                                kind=["", "CLIENT", "SERVER", "PRODUCER", "CONSUMER"].index(span.get("kind", "")),
                                name=span["name"], timestamp=span["timestamp"], duration=span["duration"])
        if span.get("parentId"):
            out.parent_id = bytes.fromhex(span["parentId"])[::-1]
        out.local_endpoint.service_name = span["localEndpoint"]["serviceName"]
        out.local_endpoint.ipv4 = bytes(int(part) for part in span["localEndpoint"]["ipv4"].split("."))
        out.tags.update(span["tags"])
        for annotation in span["annotations"]:
            out.annotations.add(timestamp=annotation["timestamp"], value=annotation["value"])
    return message.SerializeToString()


def _chunks(body: bytes) -> Iterator[bytes]:
    for start in range(0, len(body), 500):
        yield body[start: start + 500]


def test_each_encoding_is_stored_once_and_answered_202(tmp_path: Path, server: ServeProcess) -> None:
    """Envoy's HTTP_JSON (chunked, no Content-Length) and HTTP_PROTO, gzip and deflate, no Content-Type at all."""
    sent = [
        (POSTS[0], {"content-type": "application/json"}, lambda b: _chunks(json.dumps(b).encode())),
        (POSTS[1], {"content-type": "application/x-protobuf"}, _protobuf_body),
        (POSTS[2], {"content-type": "application/json", "content-encoding": "gzip"},
         lambda b: gzip.compress(json.dumps(b).encode())),
        (POSTS[3], {"content-type": "application/x-protobuf", "content-encoding": "deflate"},
         lambda b: zlib.compress(_protobuf_body(b))),
        (POSTS[4], {}, lambda b: json.dumps(b).encode()),
    ]
    for body, headers, encode in sent:
        response = httpx.post(server.zipkin_url, content=encode(body), headers=headers, timeout=30)
        assert response.status_code == 202 and response.content == b"", response.text
    assert server.stop() == 0
    stored = {row["span_id"]: row for row in read_spans(tmp_path / "spans.duckdb")}
    expected = {s["id"]: s for body, _, _ in sent for s in body}
    assert set(stored) == set(expected)
    for span_id, span in expected.items():
        assert stored[span_id]["start_ns"] == span["timestamp"] * 1000
        assert stored[span_id]["upstream_cluster"] == span["tags"]["upstream_cluster"]


def test_refusals_say_why(server: ServeProcess) -> None:
    cases = [
        (b"not json", {"content-type": "application/json"}, 400, "body is not valid JSON"),
        (b"\xff\x01", {"content-type": "application/x-protobuf"}, 400, "not a valid zipkin.proto3.ListOfSpans"),
        (b"[]", {"content-type": "text/csv"}, 415, "Content-Type 'text/csv' is not supported"),
        (b"[]", {"content-type": "application/json", "content-encoding": "br"}, 415, "Content-Encoding 'br'"),
        (b"[]", {"content-type": "application/json", "content-encoding": "gzip"}, 400, "not valid gzip"),
    ]
    for body, headers, status, message in cases:
        response = httpx.post(server.zipkin_url, content=body, headers=headers, timeout=30)
        assert (response.status_code, message in response.text) == (status, True), response.text
    assert httpx.get(server.zipkin_url, timeout=30).status_code == 405
    assert httpx.post(server.zipkin_url.replace("/api/v2/spans", "/api/v1/spans"), content=b"[]",
                      timeout=30).status_code == 404


def test_the_ingest_token_guards_zipkin_too(tmp_path: Path, start_serve: Callable[..., ServeProcess]) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("zipkin-secret\n")
    server = start_serve("--ingest-token-file", str(tokens))
    body = json.dumps(POSTS[0]).encode()
    assert httpx.post(server.zipkin_url, content=body, timeout=30).status_code == 401
    assert httpx.post(server.zipkin_url, content=body, timeout=30,
                      headers={"authorization": "Bearer zipkin-secret"}).status_code == 202


def test_the_opentelemetry_sdk_zipkin_json_exporter_lands_whole(tmp_path: Path, server: ServeProcess) -> None:
    from opentelemetry.exporter.zipkin.json import ZipkinExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind, Status, StatusCode

    provider = TracerProvider(resource=Resource.create({"service.name": "checkout"}))
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    provider.add_span_processor(SimpleSpanProcessor(ZipkinExporter(endpoint=server.zipkin_url)))
    tracer = provider.get_tracer("shop")
    with tracer.start_as_current_span("GET /cart", kind=SpanKind.SERVER) as root:
        root.set_attribute("http.response.status_code", 200)
        with tracer.start_as_current_span("charge", kind=SpanKind.CLIENT, attributes={"amount": 12.5}) as child:
            child.add_event("card declined", {"code": 51})
            child.set_status(Status(StatusCode.ERROR, "declined"))
    provider.shutdown()
    assert server.stop() == 0
    stored = {row["span_id"]: row for row in read_spans(tmp_path / "spans.duckdb")}
    sent = memory.get_finished_spans()
    assert len(stored) == len(sent) == 2
    for span in sent:
        row = stored[format(span.context.span_id, "016x")]
        assert row["trace_id"] == format(span.context.trace_id, "032x")
        assert row["parent_span_id"] == (format(span.parent.span_id, "016x") if span.parent else None)
        assert row["name"] == span.name and row["kind"] == span.kind.name
        assert row["service_name"] == "checkout"
        # Zipkin carries µs: the SDK's ns times, rounded
        assert row["start_ns"] == (span.start_time + 500) // 1000 * 1000
        assert row["end_ns"] - row["start_ns"] == (span.end_time - span.start_time + 500) // 1000 * 1000
    charge = stored[format(sent[0].context.span_id, "016x")]
    assert (charge["status_code"], charge["status_message"]) == ("ERROR", "declined")
    assert json.loads(charge["attributes"])["amount"] == "12.5", "Zipkin tags are strings"
    [event] = json.loads(charge["events"])
    assert (event["name"], event["attributes"]) == ("card declined", {"code": 51})


PROTO_EXPORTER_SCRIPT = textwrap.dedent("""
    import sys
    from opentelemetry.exporter.zipkin.proto.http import ZipkinExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.trace import SpanKind

    provider = TracerProvider(resource=Resource.create({"service.name": "inventory"}))
    provider.add_span_processor(SimpleSpanProcessor(ZipkinExporter(endpoint=sys.argv[1])))
    tracer = provider.get_tracer("proto")
    with tracer.start_as_current_span("reserve", kind=SpanKind.SERVER) as root:
        with tracer.start_as_current_span("db", kind=SpanKind.CLIENT, attributes={"rows": 3}):
            pass
    provider.shutdown()
    print(format(root.get_span_context().trace_id, "032x"))
""")


def _proto_exporter_venv() -> Path:
    """opentelemetry-exporter-zipkin-proto-http pins protobuf 3, which cannot share this venv with opentelemetry-proto:
    its own venv under build/, made once (pip reaches the package registry, as CI does)."""
    venv = Path(__file__).resolve().parents[1] / "build" / "zipkin-proto-venv"
    python = venv / "bin" / "python"
    if not (venv / ".installed").exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "opentelemetry-exporter-zipkin-proto-http"],
                       check=True, timeout=600)
        (venv / ".installed").touch()
    return python


def test_the_opentelemetry_sdk_zipkin_protobuf_exporter_lands_whole(tmp_path: Path, server: ServeProcess) -> None:
    result = subprocess.run([str(_proto_exporter_venv()), "-c", PROTO_EXPORTER_SCRIPT, server.zipkin_url],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    trace_id = result.stdout.strip()
    assert server.stop() == 0
    rows = read_spans(tmp_path / "spans.duckdb")
    assert {(r["trace_id"], r["name"], r["kind"], r["service_name"]) for r in rows} == {
        (trace_id, "reserve", "SERVER", "inventory"), (trace_id, "db", "CLIENT", "inventory")}
    db = next(r for r in rows if r["name"] == "db")
    assert db["parent_span_id"] == next(r for r in rows if r["name"] == "reserve")["span_id"]
    assert json.loads(db["attributes"])["rows"] == "3"
