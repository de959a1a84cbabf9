"""OTLP/HTTP: `POST /v1/traces` with `application/x-protobuf` or `application/json`, gzip or not, chunked or not.

A bare ASGI app (no framework on the hot path). The body is read incrementally and the size limit applies to the
*decompressed* bytes, so neither a large body nor a gzip bomb can balloon the process: reading stops as soon as the
limit is crossed. Answers follow the OTLP/HTTP spec: 200 with an ExportTraceServiceResponse in the request's
encoding; 400 with a google.rpc.Status (protobuf or JSON, like the request); 413, 415, 405; 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import math
import zlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from google.protobuf import json_format

from hopscope.collector.errors import (
    UNAUTHENTICATED_MESSAGE,
    ExportError,
    MalformedRequest,
    MethodNotAllowed,
    TooLarge,
    Unauthenticated,
    UnsupportedMedia,
    error_status,
)
from hopscope.collector.metrics import IngestMetrics
from hopscope.collector.otlp_json import parse_json_request
from hopscope.collector.pipeline import IngestPipeline
from hopscope.collector.tokens import TokenFile
from hopscope.collector.validation import ValidatedExport, validate_export, validate_protobuf

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

PROTOBUF, JSON = "application/x-protobuf", "application/json"
TRACES_PATH = "/v1/traces"


class BodyReader:
    """Accumulates a request body, inflating gzip on the fly, and refuses as soon as it passes `limit` bytes."""

    def __init__(self, limit: int, gzipped: bool) -> None:
        self._limit = limit
        self._inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS) if gzipped else None
        self._parts: list[bytes] = []
        self._size = 0

    def feed(self, chunk: bytes) -> None:
        if self._inflater is None:
            self._keep(chunk)
            return
        try:
            # max_length bounds each step's output, so one small chunk cannot inflate into gigabytes at once
            data = self._inflater.decompress(chunk, self._limit - self._size + 1)
            self._keep(data)
            while self._inflater.unconsumed_tail:
                self._keep(self._inflater.decompress(self._inflater.unconsumed_tail, self._limit - self._size + 1))
        except zlib.error as exc:
            raise MalformedRequest(f"body is not valid gzip: {exc}") from exc

    def finish(self) -> bytes:
        if self._inflater is not None:
            if not self._inflater.eof:
                raise MalformedRequest("gzip body is truncated")
        return b"".join(self._parts)

    def _keep(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self._limit:
            raise TooLarge(f"request body exceeds the {self._limit} byte limit (after decompression)")
        self._parts.append(data)


def _headers(scope: Scope) -> dict[str, str]:
    return {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}


def _media_type(headers: dict[str, str]) -> str:
    return headers.get("content-type", "").split(";")[0].strip().lower()


class OtlpHttpApp:
    def __init__(self, pipeline: IngestPipeline, metrics: IngestMetrics, max_message_bytes: int,
                 tokens: TokenFile | None = None) -> None:
        """`tokens`: the bearer tokens POST /v1/traces requires; None: no check."""
        self._pipeline = pipeline
        self._metrics = metrics
        self._limit = max_message_bytes
        self._tokens = tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # uvicorn runs this app with lifespan="off"
            return
        if scope["path"] != TRACES_PATH:
            await _respond(send, 404, "text/plain", b"not found: OTLP/HTTP traces go to POST /v1/traces\n")
            return
        headers = _headers(scope)
        media = _media_type(headers)
        answer_media = PROTOBUF if media == PROTOBUF else JSON
        try:
            if self._tokens is not None and not self._tokens.accepts(headers.get("authorization")):
                raise Unauthenticated(UNAUTHENTICATED_MESSAGE)   # before the body is read: no work for a guesser
            body = await self._read_body(scope, headers, media, receive)
            validated = await self._pipeline.export(len(body), lambda: _decoded(body, media), media)
        except ExportError as error:
            self._metrics.requests_refused.labels(error.reason).inc()
            await self._respond_error(send, error, answer_media)
            return
        self._count(validated)
        response = validated.response()
        payload = response.SerializeToString() if media == PROTOBUF else json_format.MessageToJson(response).encode()
        await _respond(send, 200, answer_media, payload)

    async def _read_body(self, scope: Scope, headers: dict[str, str], media: str, receive: Receive) -> bytes:
        if scope["method"] != "POST":
            raise MethodNotAllowed(f"{scope['method']} is not allowed on {TRACES_PATH}; use POST")
        if media not in (PROTOBUF, JSON):
            raise UnsupportedMedia(f"Content-Type {media or '(none)'!r} is not supported; send {PROTOBUF} or {JSON}")
        encoding = headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("identity", "gzip"):
            raise UnsupportedMedia(f"Content-Encoding {encoding!r} is not supported; send gzip or identity")
        declared = headers.get("content-length")
        if encoding == "identity" and declared is not None and declared.isdigit() and int(declared) > self._limit:
            raise TooLarge(f"request body of {declared} bytes exceeds the {self._limit} byte limit")
        reader = BodyReader(self._limit, gzipped=encoding == "gzip")
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise MalformedRequest("client disconnected before the body was complete")
            reader.feed(message.get("body", b""))
            if not message.get("more_body", False):
                return reader.finish()

    def _count(self, validated: ValidatedExport) -> None:
        self._metrics.spans_accepted.labels("http").inc(validated.accepted_spans)
        for reason, count in validated.rejected.items():
            self._metrics.spans_rejected.labels(reason).inc(count)

    async def _respond_error(self, send: Send, error: ExportError, media: str) -> None:
        status = error_status(error)
        body = status.SerializeToString() if media == PROTOBUF else json_format.MessageToJson(status).encode()
        extra = []
        if error.retry_after_seconds is not None:
            # whole seconds, at least one (after a hold the delay left may be 0: a plain "retry now" is not sent)
            extra.append((b"retry-after", str(max(1, math.ceil(error.retry_after_seconds))).encode()))
        if isinstance(error, MethodNotAllowed):
            extra.append((b"allow", b"POST"))
        if isinstance(error, Unauthenticated):
            extra.append((b"www-authenticate", b'Bearer realm="hopscope"'))
        await _respond(send, error.http_status, media, body, extra)


async def _decoded(body: bytes, media: str) -> ValidatedExport:
    if media == PROTOBUF:
        return validate_protobuf(body)
    request = await asyncio.to_thread(parse_json_request, body)  # pure-Python parsing: off the event loop
    return validate_export(request)


async def _respond(send: Send, status: int, media: str, body: bytes,
                   extra_headers: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(b"content-type", media.encode()), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra_headers or [])})
    await send({"type": "http.response.body", "body": body})

