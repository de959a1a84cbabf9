"""One-call OpenTelemetry tracing for an app in (or out of) a mesh.

Kubernetes identity comes from the environment variables a Deployment sets with the downward API, so that
hopscope can tell which pod and node (clock domain, docs/design.md §4) a span came from:

    env:
      - {name: K8S_POD_NAME,  valueFrom: {fieldRef: {fieldPath: metadata.name}}}
      - {name: K8S_NAMESPACE, valueFrom: {fieldRef: {fieldPath: metadata.namespace}}}
      - {name: K8S_NODE_NAME, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}

(`POD_NAME`, `POD_NAMESPACE` and `NODE_NAME` are accepted too.) `OTEL_RESOURCE_ATTRIBUTES` and
`OTEL_EXPORTER_OTLP_ENDPOINT` are honoured as the OpenTelemetry spec says.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from opentelemetry import propagate, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

DOWNWARD_API = {
    "k8s.pod.name": ("K8S_POD_NAME", "POD_NAME"),
    "k8s.namespace.name": ("K8S_NAMESPACE", "POD_NAMESPACE"),
    "k8s.node.name": ("K8S_NODE_NAME", "NODE_NAME"),
}
PROTOCOLS = ("grpc", "http/protobuf")


def kubernetes_identity(environ: Mapping[str, str]) -> dict[str, str]:
    """Resource attributes for the pod, namespace and node, from the downward-API variables that are set."""
    identity = {}
    for attribute, names in DOWNWARD_API.items():
        for name in names:
            if environ.get(name):
                identity[attribute] = environ[name]
                break
    return identity


def setup_tracing(service_name: str, endpoint: str | None = None, protocol: str = "grpc",
                  resource_attributes: Mapping[str, str] | None = None,
                  environ: Mapping[str, str] | None = None) -> TracerProvider:
    """Configure the global tracer provider: batch export over OTLP to hopscope, W3C trace context propagation.

    `endpoint` defaults to OTEL_EXPORTER_OTLP_ENDPOINT, else hopscope's local default for the protocol
    (127.0.0.1:4317 for grpc, http://127.0.0.1:4318/v1/traces for http/protobuf).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, not {protocol!r}")
    environ = os.environ if environ is None else environ
    attributes = {"service.name": service_name, **kubernetes_identity(environ), **(resource_attributes or {})}
    provider = TracerProvider(resource=Resource.create(attributes))
    provider.add_span_processor(BatchSpanProcessor(_exporter(protocol, endpoint or environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"))))
    trace.set_tracer_provider(provider)
    propagate.set_global_textmap(CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()]))
    return provider


def _exporter(protocol: str, endpoint: str | None) -> object:
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        target = (endpoint or "127.0.0.1:4317").removeprefix("http://")
        return GrpcExporter(endpoint=target, insecure=True)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    url = endpoint or "http://127.0.0.1:4318"
    return HttpExporter(endpoint=url if url.endswith("/v1/traces") else url.rstrip("/") + "/v1/traces")
