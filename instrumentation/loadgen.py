"""OTLP over raw gRPC: send pre-serialised ExportTraceServiceRequests, honouring RetryInfo.

The load generator of the simulator's `raw` mode and of bench/: no encoding on the sending path, so the sender
can go faster than the collector and measure it, not itself. `run_load` drives processes × streams, flat out or
paced to a span rate, and counts acknowledged spans and Export latencies inside a measurement window.
"""

from __future__ import annotations

import multiprocessing
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

EXPORT_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def retry_delay(error: grpc.RpcError, default: float = 0.5) -> float:
    """The RetryInfo delay the server asked for (OTLP spec), else `default`."""
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            for detail in status_pb2.Status.FromString(value).details:
                info = error_details_pb2.RetryInfo()
                if detail.Unpack(info):
                    return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
    return default


class RawExporter:
    """Exports serialised requests; retries UNAVAILABLE after the server's RetryInfo delay, up to `deadline` s."""

    def __init__(self, target: str, deadline: float = 30.0) -> None:
        self._channel = grpc.insecure_channel(target, options=[("grpc.max_send_message_length", 64 << 20)])
        self._export = self._channel.unary_unary(EXPORT_METHOD)
        self._deadline = deadline

    def export(self, body: bytes) -> bool:
        give_up = time.monotonic() + self._deadline
        while True:
            try:
                self._export(body, timeout=10)
                return True
            except grpc.RpcError as error:
                retryable = error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
                if not retryable or time.monotonic() > give_up:
                    return False
                time.sleep(retry_delay(error))

    def close(self) -> None:
        self._channel.close()


class UniqueRequests:
    """Sends of one encoded request with fresh trace ids each time, cheaply: the byte offsets of each trace id are
    found once, and a per-send counter is written there, so (trace_id, span_id) stays unique across a whole run
    without encoding the request again.

    With `retime`, every send is also moved in time so that its earliest span starts now (relative timing kept):
    traffic replayed for minutes then looks like traffic of those minutes — per-minute rollups, time-ordered row
    groups — not like one instant sent again and again."""

    _START_TAG, _END_TAG = b"\x39", b"\x41"  # Span fields 7 and 8, fixed64: tag byte, then 8 bytes little-endian

    def __init__(self, encoded: bytes, stream_id: int, retime: bool = False) -> None:
        request = ExportTraceServiceRequest.FromString(encoded)
        self._buffer = bytearray(encoded)
        self._offsets: list[int] = []
        self._times: list[tuple[int, int]] = []  # (offset of the 8 bytes, the time there as built)
        for span in (span for rs in request.resource_spans for ss in rs.scope_spans for span in ss.spans):
            # each span's own copy of its trace id (spans are encoded in order): searching from the start would
            # find the trace's first span every time, and split a many-span trace into a fresh id and a stale one
            at = encoded.find(span.trace_id, self._offsets[-1] + 1 if self._offsets else 0)
            self._offsets.append(at)
            if retime:
                for tag, value in ((self._START_TAG, span.start_time_unix_nano),
                                   (self._END_TAG, span.end_time_unix_nano)):
                    self._times.append((encoded.find(tag + struct.pack("<Q", value), at) + 1, value))
        self._earliest = min((value for _, value in self._times), default=0)
        self.spans = len(self._offsets)
        self._stream = stream_id
        self._sends = 0

    def next(self) -> bytes:
        self._sends += 1
        stamp = struct.pack("<II", self._stream, self._sends)
        for offset in self._offsets:
            self._buffer[offset: offset + 8] = stamp
        if self._times:
            shift = time.time_ns() - self._earliest
            for offset, value in self._times:
                struct.pack_into("<Q", self._buffer, offset, value + shift)
        return bytes(self._buffer)


@dataclass
class StreamResult:
    acked_spans: int = 0
    refused: int = 0
    latencies: list[float] = field(default_factory=list)


RequestFactory = Callable[[int, int], bytes]  # (spans, seed) → an encoded request; must be importable (spawn)


@dataclass(frozen=True)
class LoadShape:
    """How the senders behave: resend a refused payload after the RetryInfo delay or at once; move every send to
    the present (UniqueRequests' `retime`)."""

    honour_retry_info: bool = True
    retime: bool = False


def _stream(target: str, build: RequestFactory, stream_id: int, spans: int, start_at: float,
            window: tuple[float, float], interval: float, shape: LoadShape, result: StreamResult) -> None:
    requests = UniqueRequests(build(spans, stream_id), stream_id, shape.retime)
    channel = grpc.insecure_channel(target, options=[("grpc.max_send_message_length", 64 * 1024 * 1024)])
    export = channel.unary_unary(EXPORT_METHOD)
    next_send = start_at
    while time.time() < window[1]:
        if interval:
            if time.time() < next_send:
                time.sleep(next_send - time.time())
            next_send += interval
        payload = requests.next()
        while (sent := time.time()) < window[1]:  # a refused payload is sent again, as exporters do
            try:
                export(payload, timeout=30)
            except grpc.RpcError as error:
                result.refused += 1
                if error.code() != grpc.StatusCode.UNAVAILABLE:
                    break
                if shape.honour_retry_info:
                    time.sleep(retry_delay(error))
                continue
            done = time.time()
            if window[0] <= sent and done <= window[1]:
                result.acked_spans += requests.spans
                result.latencies.append(done - sent)
            break
    channel.close()


def _process(target: str, build: RequestFactory, first_stream: int, streams: int, spans: int, start_at: float,
             window: tuple[float, float], interval: float, shape: LoadShape, queue: multiprocessing.Queue) -> None:
    results = [StreamResult() for _ in range(streams)]
    threads = [threading.Thread(target=_stream, args=(target, build, first_stream + i, spans,
                                                      start_at + i * interval / max(streams, 1), window, interval,
                                                      shape, results[i])) for i in range(streams)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    queue.put((sum(r.acked_spans for r in results), sum(r.refused for r in results),
               [latency for r in results for latency in r.latencies]))


def run_load(target: str, build: RequestFactory, processes: int, streams: int, spans_per_request: int, warmup: float,
             seconds: float, rate: float | None = None, shape: LoadShape = LoadShape(),
             start_at: float | None = None) -> tuple[int, int, list[float], tuple[float, float]]:
    """Run the load (flat out, or paced to `rate` spans/s) from `processes` × `streams` senders; returns
    (acked spans in the window, refusals, Export latencies in the window, (window start, end)).

    A refused (UNAVAILABLE) payload is sent again: after the server's RetryInfo delay, or — with `shape`'s
    `honour_retry_info` False, as many SDKs and agents that back off poorly do — at once. The senders start at
    `start_at` (time.time(); default: in 2 s, once the processes have imported and connected), the window
    `warmup` seconds later."""
    context = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue = context.Queue()
    total_streams = processes * streams
    interval = spans_per_request * total_streams / rate if rate else 0.0
    start_at = start_at or time.time() + 2.0
    window = (start_at + warmup, start_at + warmup + seconds)
    workers = [context.Process(target=_process, args=(target, build, p * streams, streams, spans_per_request,
                                                      start_at + p * interval / max(processes, 1), window, interval,
                                                      shape, queue)) for p in range(processes)]
    for worker in workers:
        worker.start()
    acked, refused, latencies = 0, 0, []
    for _ in workers:
        a, r, lat = queue.get()
        acked, refused = acked + a, refused + r
        latencies.extend(lat)
    for worker in workers:
        worker.join()
    return acked, refused, latencies, window
