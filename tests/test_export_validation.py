"""Table-driven: what the receivers answer to valid, partly valid, malformed, oversize and hostile requests, over
gRPC and HTTP, and what lands in DuckDB (OTLP spec: partial success, failures, OTLP/HTTP response codes)."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from google.rpc import status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from hopscope.serve_process import ServeProcess
from tests.conftest import count_spans
from tests.otlp_requests import EXPORT_METHOD, INVALIDATIONS, request_with, retry_info

LIMIT_MIB = 1


@pytest.fixture
def server(start_serve: Callable[..., ServeProcess]) -> Iterator[ServeProcess]:
    yield start_serve("--max-message-mib", str(LIMIT_MIB))


def _grpc_export(server: ServeProcess, body: bytes, compression: grpc.Compression | None = None
                 ) -> ExportTraceServiceResponse:
    with grpc.insecure_channel(server.grpc_target, options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
        raw = channel.unary_unary(EXPORT_METHOD)(body, timeout=30, compression=compression)
    return ExportTraceServiceResponse.FromString(raw)


def _grpc_error(server: ServeProcess, body: bytes, compression: grpc.Compression | None = None) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        _grpc_export(server, body, compression)
    return caught.value


PARTIAL_CASES = {
    "7 of 1000 invalid": (1000, ["zero trace id", "short trace id", "zero span id", "long span id", "bad parent",
                                 "end before start", "after 2262"]),
    "all invalid": (3, ["zero trace id", "zero trace id", "bad parent"]),
    "one invalid": (10, ["end before start"]),
}


@pytest.mark.parametrize("transport", ["grpc", "http-protobuf", "http-json"])
@pytest.mark.parametrize("case", sorted(PARTIAL_CASES))
def test_invalid_spans_are_rejected_with_counts_and_the_rest_stored(case: str, transport: str, server: ServeProcess,
                                                                    tmp_path: Path) -> None:
    total, invalid = PARTIAL_CASES[case]
    request = request_with(total, invalid)
    if transport == "grpc":
        response = _grpc_export(server, request.SerializeToString())
    else:
        response = _http_export(server, request, as_json=transport == "http-json")
    assert response.partial_success.rejected_spans == len(invalid)
    message = response.partial_success.error_message
    for reason in {INVALIDATIONS[name][1] for name in invalid}:
        count = sum(INVALIDATIONS[name][1] == reason for name in invalid)
        assert f"{count} span(s) with {reason}" in message
    assert server.stop() == 0
    assert count_spans(tmp_path / "spans.duckdb") == total - len(invalid)


def _http_export(server: ServeProcess, request: object, as_json: bool) -> ExportTraceServiceResponse:
    from google.protobuf import json_format

    if as_json:
        body = json.dumps(_otlp_json(request)).encode()
        reply = httpx.post(server.http_url, content=body, headers={"content-type": "application/json"})
        assert reply.status_code == 200, reply.text
        return json_format.Parse(reply.content, ExportTraceServiceResponse())
    reply = httpx.post(server.http_url, content=request.SerializeToString(),  # type: ignore[attr-defined]
                       headers={"content-type": "application/x-protobuf"})
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "application/x-protobuf"
    return ExportTraceServiceResponse.FromString(reply.content)


def _otlp_json(request: object) -> dict:
    """OTLP/JSON as the spec writes it: hex ids, enums as integers, int64 as strings."""
    from google.protobuf import json_format

    document = json_format.MessageToDict(request, use_integers_for_enums=True)  # type: ignore[arg-type]
    for resource_spans in document.get("resourceSpans", []):
        for scope_spans in resource_spans.get("scopeSpans", []):
            for span in scope_spans.get("spans", []):
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in span:
                        import base64

                        span[key] = base64.b64decode(span[key]).hex()
    return document


def test_a_fully_valid_request_leaves_partial_success_unset(server: ServeProcess) -> None:
    response = _grpc_export(server, request_with(50).SerializeToString())
    assert not response.HasField("partial_success")
    reply = httpx.post(server.http_url, content=request_with(50).SerializeToString(),
                       headers={"content-type": "application/x-protobuf"})
    assert reply.status_code == 200 and not ExportTraceServiceResponse.FromString(reply.content).HasField(
        "partial_success")


@pytest.mark.parametrize("transport", ["grpc", "http-protobuf", "http-json"])
def test_an_empty_request_succeeds(transport: str, server: ServeProcess) -> None:
    if transport == "grpc":
        assert not _grpc_export(server, b"").HasField("partial_success")
        return
    media = "application/json" if transport == "http-json" else "application/x-protobuf"
    reply = httpx.post(server.http_url, content=b"{}" if transport == "http-json" else b"",
                       headers={"content-type": media})
    assert reply.status_code == 200


def test_json_accepts_int64_as_numbers_or_strings_enums_as_ints_and_hex_ids(server: ServeProcess,
                                                                            tmp_path: Path) -> None:
    document = {"resourceSpans": [{"resource": {"attributes": [
        {"key": "service.name", "value": {"stringValue": "json-svc"}}]}, "scopeSpans": [{"scope": {"name": "s"},
        "spans": [
            {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174",
             "parentSpanId": "eee19b7ec3c1b173", "name": "numbers", "kind": 2,
             "startTimeUnixNano": 1544712660000000000, "endTimeUnixNano": "1544712661000000000",
             "attributes": [{"key": "n", "value": {"intValue": 12}}, {"key": "s", "value": {"intValue": "13"}},
                            {"key": "d", "value": {"doubleValue": 1.5}}, {"key": "b", "value": {"boolValue": True}},
                            {"key": "arr", "value": {"arrayValue": {"values": [{"stringValue": "x"},
                                                                               {"intValue": "1"}]}}}],
             "status": {"code": 2, "message": "boom"}, "unknownFieldFromTheFuture": {"x": 1}}]}]}]}
    reply = httpx.post(server.http_url, json=document)
    assert reply.status_code == 200, reply.text
    assert server.stop() == 0
    with __import__("duckdb").connect(str(tmp_path / "spans.duckdb"), read_only=True) as db:
        row = db.execute("SELECT trace_id, span_id, parent_span_id, kind, start_ns, end_ns, status_code, "
                         "status_message, attributes FROM spans").fetchone()
    assert row[:8] == ("5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174", "eee19b7ec3c1b173", "SERVER",
                       1544712660000000000, 1544712661000000000, "ERROR", "boom")
    assert json.loads(row[8]) == {"n": 12, "s": 13, "d": 1.5, "b": True, "arr": ["x", 1]}


MALFORMED_BODIES = {
    "not protobuf": b"\xff\xff\xff\xff garbage",
    "truncated": request_with(5).SerializeToString()[:-7],
    "invalid utf-8 in a string": b"\x0a\x0b\x12\x09\x12\x07\x2a\x05\xff\xfe\xfd\xfc\xfb",
}


@pytest.mark.parametrize("case", sorted(MALFORMED_BODIES))
def test_undecodable_protobuf_is_invalid_argument_or_400_with_a_status_body(case: str, server: ServeProcess) -> None:
    body = MALFORMED_BODIES[case]
    assert _grpc_error(server, body).code() == grpc.StatusCode.INVALID_ARGUMENT
    reply = httpx.post(server.http_url, content=body, headers={"content-type": "application/x-protobuf"})
    assert reply.status_code == 400
    status = status_pb2.Status.FromString(reply.content)
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and "OTLP" in status.message


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b'{"resourceSpans": [{"scopeSpans": [{"spans": '
                                  b'[{"traceId": "not-hex!"}]}]}]}', b'{"resourceSpans": "x"}',
                                  b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"startTimeUnixNano": "soon"}]}]}]}'])
def test_bad_json_is_400_with_a_json_status(body: bytes, server: ServeProcess) -> None:
    reply = httpx.post(server.http_url, content=body, headers={"content-type": "application/json"})
    assert reply.status_code == 400
    assert reply.json()["message"]


@pytest.mark.parametrize("content_type", ["text/plain", "application/xml", ""])
def test_wrong_content_type_is_415(content_type: str, server: ServeProcess) -> None:
    reply = httpx.post(server.http_url, content=b"x", headers={"content-type": content_type})
    assert reply.status_code == 415


def test_other_methods_and_paths_are_refused(server: ServeProcess) -> None:
    assert httpx.get(server.http_url).status_code == 405
    assert httpx.post(server.http_url.replace("/v1/traces", "/v1/metrics"), content=b"").status_code == 404


def _oversize_request() -> bytes:
    request = request_with(1)
    request.resource_spans[0].scope_spans[0].spans[0].name = "x" * (LIMIT_MIB * 1024 * 1024 + 10)
    return request.SerializeToString()


def test_oversize_request_is_resource_exhausted_without_retry_info_or_413(server: ServeProcess) -> None:
    body = _oversize_request()
    error = _grpc_error(server, body)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert retry_info(error) is None  # OTLP spec: not retryable
    reply = httpx.post(server.http_url, content=body, headers={"content-type": "application/x-protobuf"})
    assert reply.status_code == 413


def test_chunked_bodies_are_read_and_oversize_chunked_bodies_refused(server: ServeProcess, tmp_path: Path) -> None:
    def chunks(data: bytes) -> Iterator[bytes]:
        for offset in range(0, len(data), 1000):
            yield data[offset: offset + 1000]

    body = request_with(40).SerializeToString()
    reply = httpx.post(server.http_url, content=chunks(body), headers={"content-type": "application/x-protobuf"})
    assert reply.status_code == 200 and reply.request.headers.get("transfer-encoding") == "chunked"
    big = httpx.post(server.http_url, content=chunks(_oversize_request()),
                     headers={"content-type": "application/x-protobuf"})
    assert big.status_code == 413
    assert server.stop() == 0
    assert count_spans(tmp_path / "spans.duckdb") == 40


def _server_rss_bytes(server: ServeProcess) -> int:
    for line in Path(f"/proc/{server.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_gzip_bomb_is_refused_without_ballooning(server: ServeProcess) -> None:
    bomb = gzip.compress(b"\x0a" * (512 * 1024 * 1024), compresslevel=9)  # 512 MiB of zeros-ish, ~0.5 MiB on the wire
    before = _server_rss_bytes(server)
    reply = httpx.post(server.http_url, content=bomb, headers={"content-type": "application/x-protobuf",
                                                               "content-encoding": "gzip"}, timeout=60)
    assert reply.status_code == 413
    with grpc.insecure_channel(server.grpc_target) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            channel.unary_unary(EXPORT_METHOD)(b"\x0a" * (64 * 1024 * 1024), timeout=60,
                                               compression=grpc.Compression.Gzip)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    growth = _server_rss_bytes(server) - before
    assert growth < 128 * 1024 * 1024, f"serve grew by {growth / 2**20:.0f} MiB on a gzip bomb"


def test_unknown_content_encoding_is_415(server: ServeProcess) -> None:
    reply = httpx.post(server.http_url, content=b"x", headers={"content-type": "application/x-protobuf",
                                                               "content-encoding": "br"})
    assert reply.status_code == 415
