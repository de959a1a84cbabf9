"""zipkin.proto's ListOfSpans (openzipkin/zipkin-api, package zipkin.proto3), built from its descriptor at import.

The message classes come from the protobuf runtime (upb), as generated code would, without a protoc step or the
`zipkin` PyPI packages — which pin protobuf 3 and cannot share a process with opentelemetry-proto. Field numbers and
types are zipkin.proto's, checked by tests/test_zipkin.py against bytes that the OpenTelemetry SDK's Zipkin protobuf
exporter encodes.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto


def _message(name: str, fields: list[tuple[str, int, int, int, str]]) -> descriptor_pb2.DescriptorProto:
    """fields: (name, number, type, label, type_name)"""
    message = descriptor_pb2.DescriptorProto(name=name)
    for field_name, number, field_type, label, type_name in fields:
        field = message.field.add(name=field_name, number=number, type=field_type, label=label)
        if type_name:
            field.type_name = type_name
    return message


def _build() -> dict[str, Any]:
    optional, repeated = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED
    proto = descriptor_pb2.FileDescriptorProto(name="hopscope/zipkin.proto", package="zipkin.proto3", syntax="proto3")
    span = _message("Span", [
        ("trace_id", 1, _F.TYPE_BYTES, optional, ""),
        ("parent_id", 2, _F.TYPE_BYTES, optional, ""),
        ("id", 3, _F.TYPE_BYTES, optional, ""),
        ("kind", 4, _F.TYPE_ENUM, optional, ".zipkin.proto3.Span.Kind"),
        ("name", 5, _F.TYPE_STRING, optional, ""),
        ("timestamp", 6, _F.TYPE_FIXED64, optional, ""),
        ("duration", 7, _F.TYPE_UINT64, optional, ""),
        ("local_endpoint", 8, _F.TYPE_MESSAGE, optional, ".zipkin.proto3.Endpoint"),
        ("remote_endpoint", 9, _F.TYPE_MESSAGE, optional, ".zipkin.proto3.Endpoint"),
        ("annotations", 10, _F.TYPE_MESSAGE, repeated, ".zipkin.proto3.Annotation"),
        ("tags", 11, _F.TYPE_MESSAGE, repeated, ".zipkin.proto3.Span.TagsEntry"),
        ("debug", 12, _F.TYPE_BOOL, optional, ""),
        ("shared", 13, _F.TYPE_BOOL, optional, ""),
    ])
    kind = span.enum_type.add(name="Kind")
    for number, name in enumerate(("SPAN_KIND_UNSPECIFIED", "CLIENT", "SERVER", "PRODUCER", "CONSUMER")):
        kind.value.add(name=name, number=number)
    tags = span.nested_type.add()
    tags.CopyFrom(_message("TagsEntry", [("key", 1, _F.TYPE_STRING, optional, ""),
                                          ("value", 2, _F.TYPE_STRING, optional, "")]))
    tags.options.map_entry = True
    proto.message_type.append(span)
    proto.message_type.append(_message("Endpoint", [
        ("service_name", 1, _F.TYPE_STRING, optional, ""),
        ("ipv4", 2, _F.TYPE_BYTES, optional, ""),
        ("ipv6", 3, _F.TYPE_BYTES, optional, ""),
        ("port", 4, _F.TYPE_INT32, optional, ""),
    ]))
    proto.message_type.append(_message("Annotation", [
        ("timestamp", 1, _F.TYPE_FIXED64, optional, ""),
        ("value", 2, _F.TYPE_STRING, optional, ""),
    ]))
    proto.message_type.append(_message("ListOfSpans", [("spans", 1, _F.TYPE_MESSAGE, repeated, ".zipkin.proto3.Span")]))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"zipkin.proto3.{name}"))
            for name in ("ListOfSpans", "Span", "Endpoint", "Annotation")}


_CLASSES = _build()
ListOfSpans: Any = _CLASSES["ListOfSpans"]
KIND_NAMES = ("", "CLIENT", "SERVER", "PRODUCER", "CONSUMER")  # the enum's values, as Zipkin's JSON names them
