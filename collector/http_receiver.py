"""OTLP/HTTP: `POST /v1/traces` with `application/x-protobuf` or `application/json`, gzip or not, chunked or not.

Answers follow the OTLP/HTTP spec: 200 with an ExportTraceServiceResponse in the request's encoding; 400 with a
google.rpc.Status (protobuf or JSON, like the request); 413, 415, 405; 503 with Retry-After. The flow they share
with Zipkin's endpoint (limits, tokens, metrics) is collector/http_ingest.py.
"""

from __future__ import annotations

import asyncio

from google.protobuf import json_format

from hopscope.collector.errors import ExportError, error_status
from hopscope.collector.http_ingest import JSON, PROTOBUF, Send, SpanPostApp, respond
from hopscope.collector.otlp_json import parse_json_request
from hopscope.collector.validation import ValidatedExport, validate_export, validate_protobuf

TRACES_PATH = "/v1/traces"


class OtlpHttpApp(SpanPostApp):
    path = TRACES_PATH
    transport = "http"
    media_types = (PROTOBUF, JSON)

    async def decode(self, body: bytes, media: str) -> ValidatedExport:
        if media == PROTOBUF:
            return validate_protobuf(body)
        request = await asyncio.to_thread(parse_json_request, body)  # pure-Python parsing: off the event loop
        return validate_export(request)

    async def accepted(self, send: Send, validated: ValidatedExport, media: str) -> None:
        response = validated.response()
        payload = response.SerializeToString() if media == PROTOBUF else json_format.MessageToJson(response).encode()
        await respond(send, 200, media, payload)

    def refusal(self, error: ExportError, media: str) -> tuple[str, bytes]:
        status = error_status(error)
        if media == PROTOBUF:
            return PROTOBUF, status.SerializeToString()
        return JSON, json_format.MessageToJson(status).encode()
