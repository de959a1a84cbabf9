"""A real sidecar mesh on one machine: pods as network namespaces on two "nodes", Istio's iptables REDIRECT rules,
real Envoy sidecars exporting OpenTelemetry spans, instrumented apps, and latencies injected where we choose them
(per link, per app, and on the app → own-sidecar leg). The known injected values are the truth that hopscope's
breakdown of real spans is checked against (tests/e2e) and what `hopscope mesh-lab` lets a person play with."""

from hopscope.instrumentation.meshlab.spec import DEFAULT_LAB, LabPod, LabSpec

__all__ = ["DEFAULT_LAB", "LabPod", "LabSpec"]
