"""Baseline for bench/ingest.py: the same gRPC stack (grpc.aio, raw-bytes Export handler) answering at once,
with no decoding, no spool and no DuckDB. hopscope's throughput is reported as a ratio of this one's, measured in
the same run on the same machine, so a noisy machine moves both."""

from __future__ import annotations

import asyncio

import grpc

SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"


async def main() -> None:
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)])

    async def export(body: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return b""

    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {
        "Export": grpc.unary_unary_rpc_method_handler(export)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"  otlp-grpc  127.0.0.1:{port}", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main())
