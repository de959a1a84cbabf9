"""One trace whose analytics fail must not stall every other trace: the follower logs it, counts it, leaves it
without hops or path, and goes on — instead of retrying the whole settled batch forever (which is what happened
when a bug in one module raised on every pass: no hops at all were written, for any trace).

The failure is injected (no real span input is known to break the analytics; a fuzz run of 3,000 mutated traces
found none) by replacing one pipeline step (analytics/pipeline.py) with its real implementation wrapped so that it
raises for one chosen trace."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pyarrow as pa
import pytest

from hopscope.analytics import batch, follower, pipeline
from hopscope.analytics.classify import Classifier
from hopscope.collector.columns import requests_to_record_batch
from hopscope.collector.store import SpanStore
from hopscope.instrumentation.meshsim import MeshSimulator, Options, load_topology
from hopscope.instrumentation.meshsim.encode import Encoder

REQUESTS = 12


def _store_with_simulated_traffic(path: Path) -> SpanStore:
    topology = load_topology("bookinfo")
    simulator = MeshSimulator(topology, seed=3, options=Options(spawn_upstream_span=True))
    batch = [simulator.request(1_795_000_000_000_000 + i * 50_000) for i in range(REQUESTS)]
    payload = Encoder(topology).request(batch).SerializeToString()
    store = SpanStore(str(path))
    store.append(pa.Table.from_batches([requests_to_record_batch([payload])]), (0, 0))
    return store


STEP_OF = {"hops": "hops", "critical path": "critical_path", "clock pairs": "pair_bounds"}


@pytest.mark.parametrize("broken", list(STEP_OF))
def test_a_trace_that_breaks_the_analytics_is_skipped_and_the_others_go_on(
        broken: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = _store_with_simulated_traffic(tmp_path / "spans.duckdb")
    db = store.cursor()
    traces = [row[0] for row in db.execute("SELECT DISTINCT trace_id FROM spans ORDER BY 1").fetchall()]
    assert len(traces) == REQUESTS
    victim = traces[5]

    step = pipeline.BY_NAME[STEP_OF[broken]]

    def breaks_on_victim(work: pipeline.TraceWork) -> object:
        if work.spans[0]["trace_id"] == victim:
            raise ValueError("injected failure")
        return step.readable(work)

    # both forms of the step: the readable one breaks on the victim, the compiled one (if any) hands it back
    monkeypatch.setitem(pipeline.BY_NAME, step.name, pipeline.Step(
        step.name, step.needs, breaks_on_victim,
        None if step.compiled is None else
        lambda native, work: None if work.spans[0]["trace_id"] == victim else step.compiled(native, work)))
    keeper = follower.HopFollower(store.cursor, Classifier(), settle_seconds=0.0)
    keeper.step(0.0)
    while keeper.step(1e9):
        pass
    with_hops = {row[0] for row in db.execute("SELECT DISTINCT trace_id FROM hops").fetchall()}
    with_paths = {row[0] for row in db.execute("SELECT trace_id FROM critical_path_traces").fetchall()}
    expected_without = {victim}
    assert (with_hops if broken == "hops" else with_paths) == set(traces) - expected_without
    assert (with_paths if broken == "hops" else with_hops) == set(traces)
    assert keeper.traces_skipped == 1
    store.close()


def test_the_analytics_worker_process_starts_with_serve_not_at_the_first_batch() -> None:
    """Started lazily, the worker took ~2 s to spawn on a busy 2-core machine while the first settled traces waited
    for it; admission saw analytics behind and refused Exports, and Envoy drops a refused batch."""
    worker = batch.AnalyticsWorker(Classifier())
    try:
        deadline = time.monotonic() + 30
        while not multiprocessing.active_children() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert multiprocessing.active_children(), "no worker process before any batch was submitted"
    finally:
        worker.close()
