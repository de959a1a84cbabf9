"""A simple OTLP/gRPC load generator: processes × streams sending pre-serialised requests, flat out or paced.

Each stream is a thread with its own channel calling TraceService/Export with raw bytes (no encoding on the hot
path), honouring UNAVAILABLE by waiting the RetryInfo delay. It counts acknowledged spans and records Export
latencies inside the measurement window.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from dataclasses import dataclass, field

import grpc
from spans import UniqueRequests, build_request

from hopscope.instrumentation.loadgen import EXPORT_METHOD as EXPORT
from hopscope.instrumentation.loadgen import retry_delay


@dataclass
class StreamResult:
    acked_spans: int = 0
    refused: int = 0
    latencies: list[float] = field(default_factory=list)


def _stream(target: str, stream_id: int, spans: int, start_at: float, window: tuple[float, float],
            interval: float, result: StreamResult) -> None:
    requests = UniqueRequests(build_request(spans, seed=stream_id), stream_id)
    channel = grpc.insecure_channel(target, options=[("grpc.max_send_message_length", 64 * 1024 * 1024)])
    export = channel.unary_unary(EXPORT)
    next_send = start_at
    while True:
        now = time.time()
        if now >= window[1]:
            break
        if interval:
            if now < next_send:
                time.sleep(next_send - now)
            next_send += interval
        payload = requests.next()
        sent = time.time()
        try:
            export(payload, timeout=30)
        except grpc.RpcError as error:
            result.refused += 1
            if error.code() == grpc.StatusCode.UNAVAILABLE:
                time.sleep(retry_delay(error))
            continue
        done = time.time()
        if window[0] <= sent and done <= window[1]:
            result.acked_spans += requests.spans
            result.latencies.append(done - sent)
    channel.close()


def _process(target: str, first_stream: int, streams: int, spans: int, start_at: float,
             window: tuple[float, float], interval: float, queue: multiprocessing.Queue) -> None:
    results = [StreamResult() for _ in range(streams)]
    threads = [threading.Thread(target=_stream, args=(target, first_stream + i, spans, start_at + i * interval /
                                                      max(streams, 1), window, interval, results[i]))
               for i in range(streams)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    queue.put((sum(r.acked_spans for r in results), sum(r.refused for r in results),
               [latency for r in results for latency in r.latencies]))


def run_load(target: str, processes: int, streams: int, spans_per_request: int, warmup: float, seconds: float,
             rate: float | None = None) -> tuple[int, int, list[float], tuple[float, float]]:
    """Run the load; returns (acked spans in window, refusals, latencies in window, (window start, end))."""
    context = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue = context.Queue()
    total_streams = processes * streams
    interval = spans_per_request * total_streams / rate if rate else 0.0
    start_at = time.time() + 2.0  # let the processes import and connect
    window = (start_at + warmup, start_at + warmup + seconds)
    workers = [context.Process(target=_process, args=(target, p * streams, streams, spans_per_request,
                                                      start_at + p * interval / max(processes, 1), window, interval,
                                                      queue)) for p in range(processes)]
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
