"""Traces with every awkward shape, for the tests that compare two computations of the same thing: overlapping,
back-to-back, overflowing and zero-length children; orphans, several roots, ties, asynchronous links, parent cycles;
sidecars, retries and explicit layers; and the wide and deep ones that break naive tree code."""

from __future__ import annotations

import random
from typing import Any

import pytest

from hopscope.analytics.critical_path import PathSpan
from hopscope.analytics.trace_path import TracePath
from hopscope.analytics.what_if import projected_duration_ns


def random_records(rng: random.Random, count: int) -> list[PathSpan]:
    records = [PathSpan("r", None, 0, 1_000, "SERVER")]
    for index in range(count):
        shape = rng.random()
        parent = rng.choice(records).span_id if shape < 0.85 else rng.choice([None, "lost", f"s{index}"])
        start = rng.choice([rng.randint(-50, 1_050), records[-1].end_ns, records[-1].start_ns])
        kind = rng.choice(["INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER"])
        records.append(PathSpan(f"s{index}", parent, start, start + rng.choice([0, rng.randint(1, 400)]), kind,
                                rng.random() < 0.05))
    rng.shuffle(records)
    return records


def random_span_dicts(rng: random.Random, count: int) -> list[dict[str, Any]]:
    """random_records as span dicts with mesh attributes: sidecars, upstream attempts, explicit layers, nodes."""
    envoy = {"telemetry.sdk.name": "envoy", "service.name": "x"}
    resources = [{"k8s.node.name": "n1", "k8s.pod.name": "a-1"}, {"k8s.node.name": "n2"}, envoy, {}]
    attributes = [{}, {"upstream_cluster": "outbound|80||b", "node_id": "sidecar~1~a-1.ns~x"},
                  {"upstream_cluster": "inbound|80||", "node_id": "sidecar~2~b-7-z.ns~x"},
                  {"hopscope.layer": "network"}, {"hopscope.layer": "iptables"}, {"response_flags": "UT"}]
    spans = []
    for record in random_records(rng, count):
        name = "router outbound|80||b egress" if rng.random() < 0.2 else "GET /"
        spans.append({"trace_id": "t", "span_id": record.span_id, "parent_span_id": record.parent_id,
                      "start_ns": record.start_ns, "end_ns": record.end_ns, "kind": record.kind, "name": name,
                      "service_name": rng.choice(["a", "b", "x"]), "resource_attributes": rng.choice(resources),
                      "attributes": rng.choice(attributes),
                      "links": [{"span_id": record.parent_id, "attributes": {"opentracing.ref_type": "follows_from"}}]
                      if record.follows_from else None})
    return spans


# a span with 100,000 children (sequential or parallel), a 10,000-deep chain
WIDE_AND_DEEP = pytest.mark.parametrize("records", [
    [PathSpan("root", None, 0, 1_000_000)] + [PathSpan(f"c{i:06}", "root", i * 10, i * 10 + 10)
                                              for i in range(100_000)],
    [PathSpan("root", None, 0, 1_000)] + [PathSpan(f"c{i:06}", "root", 10, 500 + i % 400) for i in range(100_000)],
    [PathSpan("s0", None, 0, 200_000)] + [PathSpan(f"s{i}", f"s{i - 1}", i * 10, 200_000 - i * 10)
                                          for i in range(1, 10_000)],
], ids=["100k-back-to-back-children", "100k-parallel-children", "depth-10k"])


def replayed(path: TracePath, component: str) -> int:
    """What-if: the trace's latency with that component's time removed."""
    return projected_duration_ns(*path.replay(), lambda s: s.component == component)
