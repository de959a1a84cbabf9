"""The memoised classifier (the pipeline's `roles` step, readable form) against its own rule scan: every span of every
simulated mesh, and random spans built from the values the rules look at (plus unhashable ones, which bypass the
memo), get the role the rules give. Its compiled form is checked against it in test_pipeline_steps.py."""

from __future__ import annotations

import random

import pytest

from hopscope.analytics.classify import BUILT_IN_RULES, Classifier, Rule
from hopscope.analytics.trace import Trace
from hopscope.instrumentation.meshsim import Options
from tests.simulated import simulated_traces


@pytest.mark.parametrize(("topology", "options"), [
    ("bookinfo", Options(spawn_upstream_span=True)), ("bookinfo", Options()), ("shop", Options(ebpf_spans=True)),
    ("bookinfo", Options(mesh="linkerd")), ("shop", Options(mesh="ambient")), ("bookinfo", Options(mesh="ambient-l4")),
])
def test_memoised_roles_equal_the_rule_scan_on_simulated_meshes(topology: str, options: Options) -> None:
    classifier = Classifier()
    spans = 0
    for trace in map(Trace.read, simulated_traces(topology, options, requests=40).values()):
        assert classifier.roles(trace) == [classifier.role_by_rules(s) for s in trace.spans]
        spans += len(trace)
    assert len(classifier._memo) < spans // 4, "roles repeat: the memo holds far fewer keys than spans"


_VALUES = {
    "attribute.hopscope.layer": ["iptables", "network", "proxy", "app", "other", 1, None],
    "attribute.node_id": ["router~10.0.0.1~gw.istio-system~x", "sidecar~10.0.0.2~reviews-v1-a.default~y", None, 7],
    "attribute.upstream_cluster": ["outbound|9080||reviews", "inbound|9080||", "inbound-vip|80|http|x", "", None],
    "attribute.direction": ["outbound", "inbound", None],
    "resource.telemetry.sdk.name": ["envoy", "opentelemetry", None],
    "resource.k8s.container.name": ["linkerd-proxy", "app", None],
    "name": ["router outbound|9080||reviews egress", "GET /", "router x", None],
    "kind": ["SERVER", "CLIENT", "INTERNAL", "PRODUCER", "CONSUMER", None],
    "scope_name": ["envoy", "my.scope", None],
}


def _random_span(rng: random.Random, index: int) -> dict:
    span: dict = {"span_id": f"s{index}", "start_ns": 0, "end_ns": 1, "attributes": {}, "resource_attributes": {}}
    for field, values in _VALUES.items():
        value = rng.choice(values)
        if value is None and rng.random() < 0.5:
            continue  # absent rather than null
        if field.startswith("attribute."):
            span["attributes"][field[len("attribute."):]] = value
        elif field.startswith("resource."):
            span["resource_attributes"][field[len("resource."):]] = value
        else:
            span[field] = value
    if rng.random() < 0.05:
        span["attributes"]["hopscope.layer"] = ["iptables"]  # unhashable: classified by the scan
    if rng.random() < 0.05:
        span["attributes"] = None
    return span


@pytest.mark.parametrize("seed", range(5))
def test_memoised_roles_equal_the_rule_scan_on_random_spans(seed: int) -> None:
    rng = random.Random(seed)
    user_rules = (Rule("proxy_outbound", (("scope", "eq", "my.scope"), ("attribute.direction", "exists", None))),
                  Rule("layer_app", (("resource.k8s.container.name", "prefix", "ap"),)))
    for classifier in (Classifier(), Classifier((*user_rules, *BUILT_IN_RULES)), Classifier(())):
        spans = [_random_span(rng, i) for i in range(2_000)]
        hashable = [s for s in spans if not isinstance((s["attributes"] or {}).get("hopscope.layer"), list)]
        for batch in (spans, hashable, hashable):  # unhashable values: span by span; then cold and warm memo
            trace = Trace.read(batch)
            assert classifier.roles(trace) == [classifier.role_by_rules(s) for s in batch]
