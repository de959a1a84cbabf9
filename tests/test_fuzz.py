"""Fuzzing the ingest decoders with Hypothesis, starting from real captured Exports (tests/fuzz_corpus/).

In process, thousands of inputs: byte-level mutations of the protobuf and OTLP/JSON seeds, JSON documents with
values of the wrong type in random places, and requests built field by field with extreme values. Each must be
refused with a precise MalformedRequest or accepted and flattened to one row per accepted span, the C walker agreeing
with the Python reference (tests/fuzz_targets.py).

Against a real serve, a few hundred requests through OTLP/HTTP (protobuf or JSON, identity or gzip — whole, cut or
corrupt —, in one piece or chunked) and OTLP/gRPC: never a 500 or INTERNAL, every refusal a 400/INVALID_ARGUMENT,
413/RESOURCE_EXHAUSTED or 415 with a message, the process's memory bounded, and no acknowledged record that the
pipeline could not store (`hopscope_spans_quarantined_total` stays 0).

A failing input that Hypothesis finds is printed; keep it in tests/fuzz_corpus/ (found-*.pb or found-*.json) and it is
replayed by every run after. Longer runs: HOPSCOPE_FUZZ_EXAMPLES=100000.
"""

from __future__ import annotations

import gzip
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from hopscope.serve_process import ServeProcess
from tests.fuzz_targets import CORPUS, check_json_body, check_protobuf_body, corpus
from tests.otlp_requests import EXPORT_METHOD

PROTOBUF_SEEDS = corpus(".pb", "seed")
JSON_SEEDS = corpus(".json", "seed")
# HOPSCOPE_FUZZ_EXAMPLES=100000 for a long run (the suite's 400 per test take 2-7 s each; 30,000 per test, 7 minutes,
# found two of the corpus's inputs)
FUZZ = settings(max_examples=int(os.environ.get("HOPSCOPE_FUZZ_EXAMPLES", "400")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


# ---- mutations ------------------------------------------------------------------------------------------------

@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A seed with a few byte-level edits of the kinds that break parsers: flips, cuts, splices, repeats, and
    bytes that look like varints and lengths."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        edit = draw(st.sampled_from(["flip", "cut", "insert", "repeat", "truncate", "varint"]))
        if edit == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif edit == "cut":
            del data[at: at + draw(st.integers(1, 64))]
        elif edit == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif edit == "repeat":
            data[at:at] = data[at: at + draw(st.integers(1, 256))] * draw(st.integers(1, 3))
        elif edit == "truncate":
            del data[at:]
        else:  # a length or varint pushed to an extreme
            data[at: at + 1] = draw(st.sampled_from([b"\xff" * 10, b"\x80" * 11, b"\xff\xff\xff\xff\x0f", b"\x00"]))
    return bytes(data)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=20)
    | st.sampled_from(["", "00", "zz", "0" * 32, "ff" * 8, "NaN", "-Infinity", "18446744073709551616"]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12)


def _paths(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _paths(value, (*path, index))


@st.composite
def json_documents(draw: st.DrawFn) -> bytes:
    """A captured OTLP/JSON Export with values replaced by others of any type, or removed, at random places."""
    document = json.loads(draw(st.sampled_from(JSON_SEEDS)))
    for _ in range(draw(st.integers(1, 3))):
        paths = list(_paths(document))[1:]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = document
        for step in path[:-1]:
            parent = parent[step]
        if draw(st.booleans()):
            parent[path[-1]] = draw(JSON_VALUES)
        elif isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent.pop(path[-1])
    return json.dumps(document).encode()


def _any_values(depth: int) -> st.SearchStrategy[AnyValue]:
    scalars = st.one_of(
        st.text(max_size=30).map(lambda v: AnyValue(string_value=v)),
        st.booleans().map(lambda v: AnyValue(bool_value=v)),
        st.integers(-(2**63), 2**63 - 1).map(lambda v: AnyValue(int_value=v)),
        st.floats().map(lambda v: AnyValue(double_value=v)),
        st.binary(max_size=20).map(lambda v: AnyValue(bytes_value=v)),
        st.just(AnyValue()))
    if depth == 0:
        return scalars
    inner = _any_values(depth - 1)
    arrays = st.lists(inner, max_size=3).map(lambda values: _array(values))
    maps = st.lists(st.tuples(st.text(max_size=8), inner), max_size=3).map(lambda pairs: _kvlist(pairs))
    return st.one_of(scalars, arrays, maps)


def _array(values: list[AnyValue]) -> AnyValue:
    value = AnyValue()
    value.array_value.values.extend(values)
    return value


def _kvlist(pairs: list[tuple[str, AnyValue]]) -> AnyValue:
    value = AnyValue()
    value.kvlist_value.values.extend(KeyValue(key=key, value=item) for key, item in pairs)
    return value


ATTRIBUTE_KEYS = st.sampled_from(["http.status_code", "http.response.status_code", "url.full", "http.url",
                                  "service.name", "upstream_cluster", "net.peer.ip", "k8s.namespace.name",
                                  "istio.namespace", "node_id", "component", "x"]) | st.text(max_size=10)
ATTRIBUTES = st.lists(st.tuples(ATTRIBUTE_KEYS, _any_values(3)), max_size=6)
TIMES = st.integers(0, 2**64 - 1)


@st.composite
def built_requests(draw: st.DrawFn) -> bytes:
    """Requests built field by field: ids of any length, times at the extremes, attributes of every type (nested),
    events and links, and unknown fields appended (receivers must skip them)."""
    request = ExportTraceServiceRequest()
    for _ in range(draw(st.integers(0, 2))):
        resource_spans = request.resource_spans.add()
        resource_spans.resource.attributes.extend(KeyValue(key=k, value=v) for k, v in draw(ATTRIBUTES))
        for _ in range(draw(st.integers(0, 2))):
            scope_spans = resource_spans.scope_spans.add()
            scope_spans.scope.name = draw(st.text(max_size=10))
            for _ in range(draw(st.integers(0, 3))):
                span = scope_spans.spans.add()
                span.trace_id = draw(st.binary(min_size=16, max_size=16) | st.binary(max_size=20))
                span.span_id = draw(st.binary(min_size=8, max_size=8) | st.binary(max_size=10))
                span.parent_span_id = draw(st.just(b"") | st.binary(min_size=8, max_size=8) | st.binary(max_size=9))
                span.name = draw(st.text(max_size=20))
                span.kind = draw(st.integers(0, 5))
                span.start_time_unix_nano, span.end_time_unix_nano = draw(TIMES), draw(TIMES)
                span.attributes.extend(KeyValue(key=k, value=v) for k, v in draw(ATTRIBUTES))
                span.status.code = draw(st.integers(0, 2))
                span.status.message = draw(st.text(max_size=10))
                span.flags = draw(st.integers(0, 2**32 - 1))
                for _ in range(draw(st.integers(0, 2))):
                    event = span.events.add(name=draw(st.text(max_size=8)), time_unix_nano=draw(TIMES))
                    event.attributes.extend(KeyValue(key=k, value=v) for k, v in draw(ATTRIBUTES))
                for _ in range(draw(st.integers(0, 1))):
                    span.links.add(trace_id=draw(st.binary(max_size=16)), span_id=draw(st.binary(max_size=8)),
                                   trace_state=draw(st.text(max_size=8)))
    # an unknown field (number 99, length-delimited) at the top: OTLP receivers must ignore unknown fields
    unknown = draw(st.just(b"") | st.binary(max_size=10).map(lambda b: b"\x9a\x06" + bytes([len(b)]) + b))
    return request.SerializeToString() + unknown


# ---- in process -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("body", corpus(".pb"), ids=[p.name for p in sorted(CORPUS.glob("*.pb"))])
def test_every_kept_protobuf_input_still_passes(body: bytes) -> None:
    check_protobuf_body(body)


@pytest.mark.parametrize("body", corpus(".json"), ids=[p.name for p in sorted(CORPUS.glob("*.json"))])
def test_every_kept_json_input_still_passes(body: bytes) -> None:
    check_json_body(body)


def test_the_seeds_are_real_exports_that_are_accepted() -> None:
    """Mutating something that is refused anyway would test little: the seeds must go all the way through."""
    for body in PROTOBUF_SEEDS:
        validated = check_protobuf_body(body)
        assert validated is not None and validated.accepted_spans > 0
    for body in JSON_SEEDS:
        validated = check_json_body(body)
        assert validated is not None and validated.accepted_spans > 0


@FUZZ
@given(mutated(PROTOBUF_SEEDS))
def test_mutated_protobuf_is_refused_precisely_or_stored_whole(body: bytes) -> None:
    check_protobuf_body(body)


@FUZZ
@given(mutated(JSON_SEEDS))
def test_mutated_json_text_is_refused_precisely_or_stored_whole(body: bytes) -> None:
    check_json_body(body)


@FUZZ
@given(json_documents())
def test_json_with_values_of_any_type_anywhere_is_refused_precisely_or_stored_whole(body: bytes) -> None:
    check_json_body(body)


@FUZZ
@given(built_requests())
def test_requests_built_with_extreme_fields_are_refused_precisely_or_stored_whole(body: bytes) -> None:
    check_protobuf_body(body)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes([*out, value])


def deep_protobuf_export(levels: int = 200) -> bytes:
    """An attribute value nested `levels` arrays deep, encoded by hand: the Python protobuf objects refuse to build
    it at all. AnyValue.array_value is field 5, ArrayValue.values field 1."""
    value = AnyValue(string_value="bottom").SerializeToString()
    for _ in range(levels):
        inner = b"\x0a" + _varint(len(value)) + value
        value = b"\x2a" + _varint(len(inner)) + inner
    attribute = b"\x0a\x04deep" + b"\x12" + _varint(len(value)) + value  # KeyValue key=1, value=2
    span = b"\x0a\x10" + b"\x01" * 16 + b"\x12\x08" + b"\x02" * 8 + b"\x4a" + _varint(len(attribute)) + attribute
    scope_spans = b"\x12" + _varint(len(span)) + span  # ScopeSpans.spans = 2
    resource_spans = b"\x12" + _varint(len(scope_spans)) + scope_spans  # ResourceSpans.scope_spans = 2
    return b"\x0a" + _varint(len(resource_spans)) + resource_spans  # request.resource_spans = 1


def deep_json_export(levels: int = 5_000) -> bytes:
    """The same in OTLP/JSON, written as text: json.dumps itself cannot go this deep."""
    value = '{"arrayValue":{"values":[' * levels + "{}" + "]}}" * levels
    return ('{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"' + "01" * 16 + '","spanId":"' + "02" * 8
            + '","attributes":[{"key":"deep","value":' + value + "}]}]}]}]}").encode()


def test_deep_nesting_is_refused_not_a_crash() -> None:
    """A value nested far past any real attribute: a decoder's depth limit, not Python's stack, decides."""
    assert check_protobuf_body(deep_protobuf_export()) is None
    assert check_json_body(deep_json_export()) is None


# ---- against a real serve -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    directory = tmp_path_factory.mktemp("fuzz-serve")
    process = ServeProcess(str(directory / "spans.duckdb"), ["--max-message-mib", "1"],
                           log_path=directory / "serve.log").start()
    yield process
    if process.process is not None and process.process.poll() is None:
        assert process.stop() == 0


def _rss_bytes(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+) kB", status)
    assert match is not None
    return int(match.group(1)) * 1024


def _metric(server: ServeProcess, name: str) -> float:
    text = httpx.get(f"{server.api_url}/metrics", timeout=10).text
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


ENCODINGS: dict[str, Callable[[bytes], bytes]] = {
    "identity": lambda body: body,
    "gzip": gzip.compress,
    "gzip cut short": lambda body: gzip.compress(body)[: max(1, len(gzip.compress(body)) // 2)],
    "gzip corrupted": lambda body: gzip.compress(body)[:10] + bytes(b ^ 0x5A for b in gzip.compress(body)[10:]),
    "not gzip at all": lambda body: body,
}


@st.composite
def http_requests(draw: st.DrawFn) -> tuple[str, str, bytes, int]:
    media = draw(st.sampled_from(["application/x-protobuf", "application/json"]))
    body = draw(mutated(PROTOBUF_SEEDS if media.endswith("protobuf") else JSON_SEEDS) | st.binary(max_size=64))
    encoding = draw(st.sampled_from(sorted(ENCODINGS)))
    return media, encoding, ENCODINGS[encoding](body), draw(st.sampled_from([0, 1, 7, 4096]))


def _chunks(body: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start: start + size]


def test_http_and_grpc_never_fail_with_a_server_error_and_memory_stays_bounded(server: ServeProcess) -> None:
    rss_before = _rss_bytes(server.pid)
    statuses: dict[int, int] = {}

    @settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
    @given(http_requests())
    def post(request: tuple[str, str, bytes, int]) -> None:
        media, encoding, body, chunk = request
        headers = {"content-type": media}
        if encoding != "identity":
            headers["content-encoding"] = "gzip"
        content: bytes | Iterator[bytes] = _chunks(body, chunk) if chunk else body  # an iterator is sent chunked
        response = httpx.post(server.http_url, content=content, headers=headers, timeout=30)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert response.status_code in (200, 400, 413), (response.status_code, response.text)
        if response.status_code != 200:
            assert response.content, "a refusal says why"

    post()
    for media, body in (("application/x-protobuf", deep_protobuf_export()), ("application/json", deep_json_export())):
        response = httpx.post(server.http_url, content=body, headers={"content-type": media}, timeout=30)
        assert response.status_code == 400, (media, response.status_code, response.text)

    codes: dict[grpc.StatusCode, int] = {}
    with grpc.insecure_channel(server.grpc_target) as channel:
        export = channel.unary_unary(EXPORT_METHOD)

        @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
        @given(mutated(PROTOBUF_SEEDS) | built_requests())
        def send(body: bytes) -> None:
            try:
                export(body, timeout=30)
                codes[grpc.StatusCode.OK] = codes.get(grpc.StatusCode.OK, 0) + 1
            except grpc.RpcError as error:
                codes[error.code()] = codes.get(error.code(), 0) + 1
                assert error.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED), (
                    error.code(), error.details())
                assert error.details()

        send()

    print(f"HTTP statuses {statuses}, gRPC codes {codes}")
    assert statuses.get(200) and statuses.get(400) and codes.get(grpc.StatusCode.OK), "both kinds of answer seen"
    assert httpx.get(f"{server.api_url}/healthz", timeout=10).status_code == 200
    rss_after = _rss_bytes(server.pid)
    print(f"serve RSS {rss_before / 2**20:.0f} MiB before, {rss_after / 2**20:.0f} MiB after")
    # every body here is at most a few tens of kB (1 MiB limit after inflating): a leak per request or a body
    # inflated without its bound would cost far more than this
    assert rss_after < rss_before + 256 * 2**20
    assert _metric(server, "hopscope_spans_quarantined_total") == 0, "an acknowledged record could not be stored"
