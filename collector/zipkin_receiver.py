"""Zipkin v2 ingest: `POST /api/v2/spans` on --zipkin-port (9411, where Istio and Envoy send Zipkin by default).

JSON (`application/json`, also assumed when no Content-Type is sent) or `application/x-protobuf` (zipkin.proto
ListOfSpans), identity, gzip or deflate, chunked or not (Envoy sends chunked, without Content-Length). The spans
become an OTLP request (collector/zipkin.py) and take the same path as any Export — validation, the spool's fsync
before the answer, the same limits, tokens, TLS and metrics (`transport="zipkin"`). Answers as Zipkin's own server
does: 202 with no body once stored durably; otherwise the status of the refusal with its message as text
(400 undecodable, 413 too large, 415 media, 401 token, 503 + Retry-After when full or stopping).
"""

from __future__ import annotations

import asyncio

from hopscope.collector.errors import ExportError
from hopscope.collector.http_ingest import JSON, PROTOBUF, Send, SpanPostApp, respond
from hopscope.collector.validation import ValidatedExport
from hopscope.collector.zipkin import parse_zipkin_json, parse_zipkin_protobuf, validate_zipkin

SPANS_PATH = "/api/v2/spans"
DEFAULT_PORT = 9411


class ZipkinHttpApp(SpanPostApp):
    path = SPANS_PATH
    transport = "zipkin"
    media_types = (JSON, PROTOBUF)
    default_media = True
    content_encodings = ("identity", "gzip", "deflate")

    async def decode(self, body: bytes, media: str) -> ValidatedExport:
        if media == PROTOBUF:
            return validate_zipkin(parse_zipkin_protobuf(body))
        spans = await asyncio.to_thread(parse_zipkin_json, body)  # pure-Python parsing: off the event loop
        return validate_zipkin(spans)

    async def accepted(self, send: Send, validated: ValidatedExport, media: str) -> None:
        await respond(send, 202, "text/plain", b"")

    def refusal(self, error: ExportError, media: str) -> tuple[str, bytes]:
        return "text/plain; charset=utf-8", f"{error}\n".encode()
