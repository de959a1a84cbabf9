"""The straightforward collector hopscope is measured against (bench/end_to_end.py): what a competent engineer
writes in an afternoon, with the same durability promise — acknowledge an Export only once its spans are committed.

grpcio's synchronous server (a thread per concurrent stream), protobuf parse, a Python loop that flattens the spans
into the columns of hopscope's `spans` table, one Arrow insert and commit per Export into a DuckDB file. No spool,
no worker processes, no admission control (a slow store makes clients wait), no analytics.

    python bench/reference_collector.py DB_PATH      # prints "  otlp-grpc  127.0.0.1:PORT" once listening
"""

from __future__ import annotations

import signal
import sys
import threading
from concurrent import futures

import duckdb
import grpc
import pyarrow as pa
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from hopscope.collector.columns import requests_to_columns_python
from hopscope.collector.schema import ARROW_SCHEMA, create_spans_sql

SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"


def flatten(body: bytes) -> pa.Table:
    """The same `spans` rows hopscope stores (same columns, JSON attribute maps, promoted columns), made by
    hopscope's pure-Python flattening: the comparison is of the collectors' designs, not of what they store."""
    columns = requests_to_columns_python([body])
    return pa.Table.from_pydict(columns, schema=ARROW_SCHEMA)


class Collector:
    def __init__(self, path: str) -> None:
        self._db = duckdb.connect(path)
        self._db.execute(create_spans_sql())
        self._local = threading.local()

    def export(self, body: bytes, context: grpc.ServicerContext) -> bytes:
        try:
            batch = flatten(body)
        except Exception as exc:  # noqa: BLE001 - any decode failure is the client's
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"undecodable request: {exc}")
        cursor = getattr(self._local, "cursor", None)
        if cursor is None:
            cursor = self._local.cursor = self._db.cursor()
        cursor.register("batch", batch)
        cursor.execute("INSERT INTO spans SELECT * FROM batch")  # autocommit: committed (WAL synced) on return
        cursor.unregister("batch")
        return ExportTraceServiceResponse().SerializeToString()

    def close(self) -> None:
        self._db.execute("CHECKPOINT")
        self._db.close()


def main() -> None:
    collector = Collector(sys.argv[1])
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16),
                         options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {
        "Export": grpc.unary_unary_rpc_method_handler(collector.export)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"  otlp-grpc  127.0.0.1:{port}", flush=True)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    stopped.wait()
    server.stop(grace=5).wait()
    collector.close()


if __name__ == "__main__":
    main()
