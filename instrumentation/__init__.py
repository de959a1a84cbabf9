"""Instrumentation: everything that *produces* spans for hopscope, talking to it only over OTLP like any user's app.

* `setup_tracing()` — one-call OpenTelemetry set-up for an app (tracing.py)
* `meshsim` — a service-mesh simulator that emits app + sidecar spans with known ground truth
* `loadgen` — pre-serialised OTLP requests over raw gRPC, paced or flat out
"""

from hopscope.instrumentation.tracing import setup_tracing

__all__ = ["setup_tracing"]
