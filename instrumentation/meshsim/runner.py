"""Drive the simulator against a running collector: N requests/s of simulated traffic, sent through the real OTel
SDK exporter (`sdk` mode: realistic, moderate rates) or as pre-serialised OTLP over raw gRPC (`raw` mode: the
load generator's path). Requests are simulated at the wall-clock time they are sent, so the data looks live.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hopscope.instrumentation.loadgen import RawExporter
from hopscope.instrumentation.meshsim.encode import Encoder, sdk_spans
from hopscope.instrumentation.meshsim.engine import MeshSimulator
from hopscope.instrumentation.meshsim.model import Options, SimulatedRequest
from hopscope.instrumentation.meshsim.topology import Topology
from hopscope.instrumentation.meshsim.truth import TruthWriter

MODES = ("sdk", "raw")


@dataclass
class RunStats:
    requests: int = 0
    spans_sent: int = 0
    spans_acked: int = 0
    failures: int = 0


class SimulationRun:
    def __init__(self, topology: Topology, target: str, mode: str = "sdk", seed: int = 0,
                 options: Options | None = None, truth_path: Path | None = None, batch_spans: int = 512) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.simulator = MeshSimulator(topology, seed, options)
        self.encoder = Encoder(topology)
        self.mode = mode
        self.stats = RunStats()
        self._batch: list[SimulatedRequest] = []
        self._batch_spans = batch_spans
        self._truth = TruthWriter(truth_path) if truth_path else None
        if mode == "sdk":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            self._sdk_exporter = OTLPSpanExporter(endpoint=target, insecure=True)
        else:
            self._raw = RawExporter(target)

    def run(self, rate: float, duration: float | None, progress: Callable[[RunStats], None] | None = None) -> RunStats:
        """Simulate `rate` requests/s until `duration` seconds have passed (forever if None)."""
        started = time.monotonic()
        next_report = started + 5
        sent = 0
        while duration is None or time.monotonic() - started < duration:
            due = int((time.monotonic() - started) * rate) + 1
            while sent < due:
                self.add(self.simulator.request(time.time_ns() // 1000))
                sent += 1
            self.flush_if_full()
            if progress and time.monotonic() >= next_report:
                progress(self.stats)
                next_report += 5
            time.sleep(min(0.05, 1 / max(rate, 1)))
        self.flush()
        return self.stats

    def add(self, request: SimulatedRequest) -> None:
        self._batch.append(request)
        self.stats.requests += 1
        if self._truth:
            self._truth.write(request.hops)

    def flush_if_full(self) -> None:
        if sum(len(r.spans) for r in self._batch) >= self._batch_spans:
            self.flush()

    def flush(self) -> None:
        if not self._batch:
            return
        batch, self._batch = self._batch, []
        count = sum(len(r.spans) for r in batch)
        self.stats.spans_sent += count
        if self.mode == "sdk":
            from opentelemetry.sdk.trace.export import SpanExportResult

            ok = self._sdk_exporter.export(sdk_spans(self.encoder, batch)) == SpanExportResult.SUCCESS
        else:
            ok = self._raw.export(self.encoder.request(batch).SerializeToString())
        if ok:
            self.stats.spans_acked += count
        else:
            self.stats.failures += 1

    def close(self) -> None:
        self.flush()
        if self._truth:
            self._truth.close()
        if self.mode == "sdk":
            self._sdk_exporter.shutdown()
        else:
            self._raw.close()


def simulated_request(spans: int, seed: int, upstream_spans: bool = False) -> bytes:
    """An encoded Export of about `spans` spans of simulated Bookinfo traffic, whole traces (with Envoy's upstream
    spans or not): a request factory for loadgen.run_load (module-level, so spawned load processes can import it;
    functools.partial for `upstream_spans`)."""
    from hopscope.instrumentation.meshsim.topology import load_topology

    topology = load_topology("bookinfo")
    simulator = MeshSimulator(topology, seed, options=Options(spawn_upstream_span=upstream_spans))
    batch: list[SimulatedRequest] = []
    while sum(len(r.spans) for r in batch) < spans:
        batch.append(simulator.request(1_795_672_246_000_000 + len(batch) * 25_000))
    return Encoder(topology).request(batch).SerializeToString()
