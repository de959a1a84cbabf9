"""The load generator counts what the collector acknowledged: every span it counts as acknowledged inside its
window is in DuckDB (a paced run, so the window holds the whole run)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from hopscope.instrumentation.loadgen import UniqueRequests, run_load
from hopscope.instrumentation.meshsim.runner import simulated_request
from hopscope.serve_process import ServeProcess
from tests.conftest import count_spans


def test_paced_load_counts_exactly_the_acknowledged_spans(start_serve: Callable[..., ServeProcess],
                                                          tmp_path: Path) -> None:
    server = start_serve()
    acked, refused, latencies, _ = run_load(server.grpc_target, simulated_request, processes=1, streams=2,
                                            spans_per_request=200, warmup=0.0, seconds=3.0, rate=2_000)
    assert refused == 0 and latencies and acked > 2_000
    assert server.stop() == 0
    stored = count_spans(tmp_path / "spans.duckdb")
    # a send still in flight when the window closes is stored but not counted: at most one request per stream
    assert acked <= stored <= acked + 2 * 220


def test_every_send_gets_fresh_trace_ids_and_keeps_each_trace_whole() -> None:
    """Simulated traces have many spans: all of a trace's spans must get the same fresh id on every send."""
    encoded = simulated_request(300, seed=3)
    original = ExportTraceServiceRequest.FromString(encoded)
    requests = UniqueRequests(encoded, stream_id=7)
    seen: set[bytes] = set()
    for _ in range(3):
        sent = ExportTraceServiceRequest.FromString(requests.next())
        renamed: dict[bytes, set[bytes]] = {}
        for before, after in zip(_spans(original), _spans(sent), strict=True):
            assert (before.span_id, before.parent_span_id) == (after.span_id, after.parent_span_id)
            renamed.setdefault(before.trace_id, set()).add(after.trace_id)
        assert max(len(after) for after in renamed.values()) == 1, "a trace was split between two ids"
        fresh = {after for ids in renamed.values() for after in ids}
        assert len(fresh) == len(renamed) > 5 and not fresh & seen and not fresh & set(renamed)
        seen |= fresh


def _spans(request: ExportTraceServiceRequest) -> list[Span]:
    return [span for rs in request.resource_spans for ss in rs.scope_spans for span in ss.spans]


def test_retimed_sends_start_now_and_keep_every_span_where_it_was_relative_to_the_others() -> None:
    encoded = simulated_request(300, seed=4)
    original = _spans(ExportTraceServiceRequest.FromString(encoded))
    earliest = min(span.start_time_unix_nano for span in original)
    before = time.time_ns()
    sent = _spans(ExportTraceServiceRequest.FromString(UniqueRequests(encoded, 1, retime=True).next()))
    shift = min(span.start_time_unix_nano for span in sent) - earliest
    assert before - earliest <= shift <= time.time_ns() - earliest
    for old, new in zip(original, sent, strict=True):
        assert new.start_time_unix_nano - old.start_time_unix_nano == shift
        assert new.end_time_unix_nano - old.end_time_unix_nano == shift
        assert (new.name, new.span_id, list(new.attributes)) == (old.name, old.span_id, list(old.attributes))
