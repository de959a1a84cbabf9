"""Simulated mesh traffic as the analytics read it: OTLP from the simulator, through the real ingest flattening,
as span dicts grouped by trace (the rows the follower and the API read)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from hopscope.analytics.trace_lookup import span_from_row
from hopscope.collector.columns import requests_to_record_batch
from hopscope.instrumentation.meshsim import MeshSimulator, Options, load_topology
from hopscope.instrumentation.meshsim.encode import Encoder

START_US = 1_795_000_000_000_000


def simulated_traces(topology: str, options: Options | None = None, requests: int = 60, seed: int = 9,
                     step_us: int = 40_000) -> dict[str, list[dict[str, Any]]]:
    model = load_topology(topology)
    simulator = MeshSimulator(model, seed=seed, options=options or Options())
    batch = [simulator.request(START_US + i * step_us) for i in range(requests)]
    record_batch = requests_to_record_batch([Encoder(model).request(batch).SerializeToString()])
    names = tuple(record_batch.schema.names)
    traces: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in record_batch.to_pylist():
        span = span_from_row(names, tuple(row.values()))
        traces[span["trace_id"]].append(span)
    return dict(traces)
