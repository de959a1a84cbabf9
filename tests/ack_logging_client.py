"""A load client for the crash tests: sends OTLP/gRPC Exports on several threads and writes the ids of every span
whose Export was acknowledged to a file, after the acknowledgement. It runs in its own process so that killing
the server cannot touch its record of what was acknowledged.

    python -m tests.ack_logging_client TARGET OUT_FILE --seconds 10 --streams 4 --spans 200
"""

from __future__ import annotations

import argparse
import threading
import time

import grpc

from tests.otlp_requests import EXPORT_METHOD, request_with


def _stream(target: str, out: list[str], lock: threading.Lock, deadline: float, spans: int, stop: threading.Event
            ) -> None:
    channel = grpc.insecure_channel(target)
    export = channel.unary_unary(EXPORT_METHOD)
    while time.time() < deadline and not stop.is_set():
        request = request_with(spans)
        try:
            export(request.SerializeToString(), timeout=10)
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.UNAVAILABLE and "shutting down" not in (error.details() or ""):
                time.sleep(0.05)  # overloaded or server gone: try again until the deadline
                continue
            time.sleep(0.05)
            continue
        ids = [f"{s.trace_id.hex()} {s.span_id.hex()}" for s in request.resource_spans[0].scope_spans[0].spans]
        with lock:
            out.extend(ids)
    channel.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("target")
    parser.add_argument("out")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--spans", type=int, default=200)
    args = parser.parse_args()
    acked: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    deadline = time.time() + args.seconds
    threads = [threading.Thread(target=_stream, args=(args.target, acked, lock, deadline, args.spans, stop))
               for _ in range(args.streams)]
    for thread in threads:
        thread.start()
    with open(args.out, "w") as out:
        written = 0
        while any(t.is_alive() for t in threads):
            time.sleep(0.05)
            with lock:
                fresh = acked[written:]
            out.write("".join(line + "\n" for line in fresh))
            out.flush()
            written += len(fresh)
        for thread in threads:
            thread.join()
        out.write("".join(line + "\n" for line in acked[written:]))


if __name__ == "__main__":
    main()
