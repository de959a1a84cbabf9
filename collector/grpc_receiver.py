"""OTLP/gRPC: `opentelemetry.proto.collector.trace.v1.TraceService/Export`, plus the gRPC health service.

The handler is registered with no request deserializer, so it receives the raw bytes: a decode failure becomes a
precise INVALID_ARGUMENT instead of grpc's generic one, and a fully valid request is spooled exactly as it arrived,
without encoding it again. grpc enforces the message size limit on the *decompressed* message (so a gzip bomb is
cut off by grpc itself with RESOURCE_EXHAUSTED, before our handler runs).
"""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from hopscope.collector.errors import UNAUTHENTICATED_MESSAGE, ExportError, Unauthenticated, error_status
from hopscope.collector.metrics import IngestMetrics
from hopscope.collector.pipeline import IngestPipeline
from hopscope.collector.tokens import TokenFile
from hopscope.collector.validation import ValidatedExport, validate_protobuf

SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"


class TraceExportHandler:
    def __init__(self, pipeline: IngestPipeline, metrics: IngestMetrics, tokens: TokenFile | None) -> None:
        self._pipeline = pipeline
        self._metrics = metrics
        self._tokens = tokens

    async def export(self, body: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        try:
            if self._tokens is not None and not self._tokens.accepts(_authorization(context)):
                raise Unauthenticated(UNAUTHENTICATED_MESSAGE)
            validated = await self._pipeline.export(len(body), lambda: _decoded(body), "protobuf")
        except ExportError as error:
            self._metrics.requests_refused.labels(error.reason).inc()
            details = error_status(error).SerializeToString()
            await context.abort(error.grpc_code, str(error), trailing_metadata=(("grpc-status-details-bin", details),))
            raise  # unreachable: abort raises
        self._metrics.spans_accepted.labels("grpc").inc(validated.accepted_spans)
        for reason, count in validated.rejected.items():
            self._metrics.spans_rejected.labels(reason).inc(count)
        return validated.response().SerializeToString()


def _authorization(context: grpc.aio.ServicerContext[bytes, bytes]) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return value if isinstance(value, str) else value.decode("latin-1")
    return None


async def _decoded(body: bytes) -> ValidatedExport:
    return validate_protobuf(body)


def build_grpc_server(pipeline: IngestPipeline, metrics: IngestMetrics, max_message_bytes: int,
                      tokens: TokenFile | None = None) -> tuple[grpc.aio.Server, health.aio.HealthServicer]:
    """`tokens`: the bearer tokens Export requires (the health service stays open for probes); None: no check."""
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", 4 * 1024 * 1024),
        ("grpc.so_reuseport", 0),  # a second server on the same port must fail, not share it
    ])
    handler = TraceExportHandler(pipeline, metrics, tokens)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {
        "Export": grpc.unary_unary_rpc_method_handler(handler.export),
    }),))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    return server, health_servicer


async def set_serving(health_servicer: health.aio.HealthServicer, serving: bool) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for service in ("", SERVICE):
        await health_servicer.set(service, status)

