"""What every span POST endpoint shares — OTLP/HTTP `/v1/traces` and Zipkin `/api/v2/spans`: a bare ASGI app (no
framework on the hot path) that checks the bearer token before reading anything, reads the body incrementally with
the size limit applied to the *decompressed* bytes (neither a large body nor a gzip bomb can balloon the process:
reading stops as soon as the limit is crossed), hands it to the pipeline (which admits, decodes, spools and fsyncs),
counts the outcome and answers in the protocol's own way.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, ClassVar

from hopscope.collector.errors import (
    UNAUTHENTICATED_MESSAGE,
    ExportError,
    MalformedRequest,
    MethodNotAllowed,
    TooLarge,
    Unauthenticated,
    UnsupportedMedia,
)
from hopscope.collector.metrics import IngestMetrics
from hopscope.collector.pipeline import IngestPipeline
from hopscope.collector.tokens import TokenFile
from hopscope.collector.validation import ValidatedExport

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

PROTOBUF, JSON = "application/x-protobuf", "application/json"
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


class BodyReader:
    """Accumulates a request body, inflating it on the fly (gzip, or deflate's zlib stream), and refuses as soon as
    it passes `limit` bytes."""

    def __init__(self, limit: int, encoding: str) -> None:
        self._limit = limit
        self._encoding = encoding
        self._inflater = zlib.decompressobj(wbits=_WBITS[encoding]) if encoding in _WBITS else None
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
            raise MalformedRequest(f"body is not valid {self._encoding}: {exc}") from exc

    def finish(self) -> bytes:
        if self._inflater is not None and not self._inflater.eof:
            raise MalformedRequest(f"{self._encoding} body is truncated")
        return b"".join(self._parts)

    def _keep(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self._limit:
            raise TooLarge(f"request body exceeds the {self._limit} byte limit (after decompression)")
        self._parts.append(data)


def _headers(scope: Scope) -> dict[str, str]:
    return {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}


class SpanPostApp:
    """The shared flow; a protocol says where it listens, what it reads and how it answers."""

    path: ClassVar[str]
    transport: ClassVar[str]  # the `transport` label of hopscope_spans_accepted_total
    media_types: ClassVar[tuple[str, ...]]  # the first is assumed when a request names none (if `default_media`)
    default_media: ClassVar[bool] = False
    content_encodings: ClassVar[tuple[str, ...]] = ("identity", "gzip")

    def __init__(self, pipeline: IngestPipeline, metrics: IngestMetrics, max_message_bytes: int,
                 tokens: TokenFile | None = None) -> None:
        """`tokens`: the bearer tokens a POST requires; None: no check."""
        self._pipeline = pipeline
        self._metrics = metrics
        self._limit = max_message_bytes
        self._tokens = tokens

    async def decode(self, body: bytes, media: str) -> ValidatedExport:
        raise NotImplementedError

    async def accepted(self, send: Send, validated: ValidatedExport, media: str) -> None:
        raise NotImplementedError

    def refusal(self, error: ExportError, media: str) -> tuple[str, bytes]:
        """The media type and body of a refusal's answer."""
        raise NotImplementedError

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # uvicorn runs this app with lifespan="off"
            return
        if scope["path"] != self.path:
            await respond(send, 404, "text/plain", f"not found: POST spans to {self.path}\n".encode())
            return
        headers = _headers(scope)
        media = headers.get("content-type", "").split(";")[0].strip().lower()
        if not media and self.default_media:
            media = self.media_types[0]
        try:
            if self._tokens is not None and not self._tokens.accepts(headers.get("authorization")):
                raise Unauthenticated(UNAUTHENTICATED_MESSAGE)   # before the body is read: no work for a guesser
            body = await self._read_body(scope, headers, media, receive)
            validated = await self._pipeline.export(len(body), lambda: self.decode(body, media),
                                                    f"{self.transport} {media}")
        except ExportError as error:
            self._metrics.requests_refused.labels(error.reason).inc()
            await self._respond_error(send, error, media)
            return
        self._metrics.spans_accepted.labels(self.transport).inc(validated.accepted_spans)
        for reason, count in validated.rejected.items():
            self._metrics.spans_rejected.labels(reason).inc(count)
        await self.accepted(send, validated, media)

    async def _read_body(self, scope: Scope, headers: dict[str, str], media: str, receive: Receive) -> bytes:
        if scope["method"] != "POST":
            raise MethodNotAllowed(f"{scope['method']} is not allowed on {self.path}; use POST")
        if media not in self.media_types:
            raise UnsupportedMedia(f"Content-Type {media or '(none)'!r} is not supported; send "
                                   f"{' or '.join(self.media_types)}")
        encoding = headers.get("content-encoding", "identity").strip().lower()
        if encoding not in self.content_encodings:
            raise UnsupportedMedia(f"Content-Encoding {encoding!r} is not supported; send "
                                   f"{', '.join(reversed(self.content_encodings))}")
        declared = headers.get("content-length")
        if encoding == "identity" and declared is not None and declared.isdigit() and int(declared) > self._limit:
            raise TooLarge(f"request body of {declared} bytes exceeds the {self._limit} byte limit")
        reader = BodyReader(self._limit, encoding)
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise MalformedRequest("client disconnected before the body was complete")
            reader.feed(message.get("body", b""))
            if not message.get("more_body", False):
                return reader.finish()

    async def _respond_error(self, send: Send, error: ExportError, media: str) -> None:
        answer_media, body = self.refusal(error, media)
        extra = []
        if error.retry_after_seconds is not None:
            # whole seconds, at least one (after a hold the delay left may be 0: a plain "retry now" is not sent)
            extra.append((b"retry-after", str(max(1, math.ceil(error.retry_after_seconds))).encode()))
        if isinstance(error, MethodNotAllowed):
            extra.append((b"allow", b"POST"))
        if isinstance(error, Unauthenticated):
            extra.append((b"www-authenticate", b'Bearer realm="hopscope"'))
        await respond(send, error.http_status, answer_media, body, extra)


async def respond(send: Send, status: int, media: str, body: bytes,
                  extra_headers: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(b"content-type", media.encode()), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra_headers or [])})
    await send({"type": "http.response.body", "body": body})
