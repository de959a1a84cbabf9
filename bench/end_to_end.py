"""End-to-end benchmark: ingest *and* analytics under realistic mesh traffic, against two baselines in the same run.

    make bench                                       # = .venv/bin/python bench/end_to_end.py (about 25 minutes)
    .venv/bin/python bench/end_to_end.py --quick     # one short run of each (about 6 minutes)
    .venv/bin/python bench/end_to_end.py --only hopscope --runs 1 --seconds 20

Load: simulated Bookinfo traffic (gateway → productpage → details/reviews → ratings, Envoy/Istio sidecars and app
spans with parent links, 12-20 attributes a span), whole traces, 512 spans a request, from 2 processes × 4 streams.
Every send gets fresh trace ids and is moved to the present, so minutes of replay look like minutes of traffic. A
refused payload is resent: after the server's RetryInfo delay ("well-behaved") or at once ("resend at once", as
many SDKs and agents do). Server CPU and peak RSS count the server's whole process tree (serve and its workers);
the load generator shares the two cores and is not counted.

Configurations, each on a fresh DuckDB file:
  null sink        the same grpc.aio stack answering at once (bench/null_sink.py): the transport's ceiling
  reference        a straightforward collector (bench/reference_collector.py): grpcio, Python flattening, Arrow
                   insert, acknowledge after the DuckDB commit
  hopscope         flat out, well-behaved clients, with Envoy upstream spans: spans stored, hops and critical
                   paths kept ready, settle → ready lag, ack → hops queryable (a probe), drain after the load
  resend at once   the same at overload: goodput, refusals, RSS
  ingest only      analytics held back (--settle-seconds 3600): the CPU per span of ingest alone
  no upstream      hopscope with sidecars that do not emit upstream spans (fewer spans per hop)
  steady           10,000 spans/s paced: server CPU share and Export latency
  refusal cost     flattening workers stopped, so every Export is refused: server CPU per refusal
  sustained        hopscope flat out for --sustained seconds (5 minutes): does analytics keep up for that long?
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import duckdb  # noqa: E402
from measure import Sample, histogram_quantile, percentile, sample_at, scrape, total  # noqa: E402
from proctree import descendants, peak_rss_bytes  # noqa: E402

from hopscope.instrumentation.loadgen import LoadShape, RawExporter, RequestFactory, run_load  # noqa: E402
from hopscope.instrumentation.meshsim import MeshSimulator, Options, load_topology  # noqa: E402
from hopscope.instrumentation.meshsim.encode import Encoder  # noqa: E402
from hopscope.instrumentation.meshsim.runner import simulated_request  # noqa: E402
from hopscope.serve_process import ServeProcess  # noqa: E402

HERE = Path(__file__).parent
SETTLE_SECONDS = 6.0  # serve's default: the lag figures are measured from the end of it
WELL_BEHAVED, AT_ONCE = LoadShape(honour_retry_info=True, retime=True), LoadShape(honour_retry_info=False, retime=True)
WITH_UPSTREAM: RequestFactory = functools.partial(simulated_request, upstream_spans=True)


@dataclass
class Figures:
    """One run's figures; NaN where a configuration does not have one."""

    stored_per_s: float = math.nan
    cpu_us_per_span: float = math.nan
    cpu_cores: float = math.nan
    export_p50_ms: float = math.nan
    export_p99_ms: float = math.nan
    refused: float = math.nan
    peak_rss_mib: float = math.nan
    disk_bytes_per_span: float = math.nan
    hops_per_s: float = math.nan
    paths_per_s: float = math.nan
    lag_p50_s: float = math.nan
    lag_p99_s: float = math.nan
    probe_p50_s: float = math.nan
    probe_p99_s: float = math.nan
    drain_s: float = math.nan
    refusal_cpu_us: float = math.nan

    def line(self) -> str:
        shown = {name: value for name, value in vars(self).items() if not math.isnan(value)}
        return ", ".join(f"{name} {value:,.1f}" for name, value in shown.items())


@dataclass
class Plan:
    seconds: float
    warmup: float
    processes: int
    streams: int
    spans: int
    drain_timeout: float = 600.0
    results: dict[str, list[Figures]] = field(default_factory=dict)


def _window(plan: Plan, seconds: float | None = None) -> tuple[float, tuple[float, float]]:
    start_at = time.time() + 2.0
    begin = start_at + plan.warmup
    return start_at, (begin, begin + (seconds or plan.seconds))


def _load(plan: Plan, target: str, build: RequestFactory, shape: LoadShape, start_at: float, seconds: float,
          rate: float | None = None) -> tuple[int, int, list[float]]:
    acked, refused, latencies, _ = run_load(target, build, plan.processes, plan.streams, plan.spans, plan.warmup,
                                            seconds, rate, shape, start_at)
    return acked, refused, latencies


# ---- baselines ----------------------------------------------------------------------------------------------------

def _child(args: list[str]) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    return process, process.stdout.readline().split()[1]


def _baseline_load(plan: Plan, pid: int, target: str) -> tuple[Sample, Sample, int, int, list[float]]:
    """The well-behaved load against a baseline process, sampled over the window: (begin, end, acked, refused,
    Export latencies)."""
    start_at, window = _window(plan)
    begin, t1 = sample_at(window[0], pid, None)
    end, t2 = sample_at(window[1], pid, None)
    acked, refused, latencies = _load(plan, target, WITH_UPSTREAM, WELL_BEHAVED, start_at, plan.seconds)
    t1.join(), t2.join()
    return begin, end, acked, refused, latencies


def null_sink(plan: Plan) -> Figures:
    sink, target = _child([str(HERE / "null_sink.py")])
    try:
        begin, end, acked, _, latencies = _baseline_load(plan, sink.pid, target)
        return Figures(stored_per_s=acked / plan.seconds, cpu_us_per_span=(end.cpu - begin.cpu) / max(acked, 1) * 1e6,
                       export_p50_ms=percentile(latencies, 0.5) * 1e3, export_p99_ms=percentile(latencies, 0.99) * 1e3)
    finally:
        sink.kill()
        sink.wait()


def reference(plan: Plan) -> Figures:
    with tempfile.TemporaryDirectory(prefix="hopscope-reference-") as folder:
        db = Path(folder) / "reference.duckdb"
        collector, target = _child([str(HERE / "reference_collector.py"), str(db)])
        try:
            begin, end, acked, refused, latencies = _baseline_load(plan, collector.pid, target)
            rss = peak_rss_bytes(collector.pid)
        finally:
            collector.send_signal(signal.SIGTERM)
            collector.wait(timeout=120)
        with duckdb.connect(str(db), read_only=True) as connection:
            stored = connection.execute("SELECT count(*) FROM spans").fetchone()[0]
        size = sum(p.stat().st_size for p in Path(folder).glob("reference.duckdb*"))
    # acknowledged after the commit: what was acknowledged in the window was stored in it
    return Figures(stored_per_s=acked / plan.seconds, cpu_us_per_span=(end.cpu - begin.cpu) / max(acked, 1) * 1e6,
                   cpu_cores=(end.cpu - begin.cpu) / (end.at - begin.at), refused=refused,
                   export_p50_ms=percentile(latencies, 0.5) * 1e3, export_p99_ms=percentile(latencies, 0.99) * 1e3,
                   peak_rss_mib=rss / 2**20, disk_bytes_per_span=size / max(stored, 1))


# ---- hopscope -----------------------------------------------------------------------------------------------------

def _probe(server: ServeProcess, until: float, lags: list[float]) -> None:
    """Every 2 s: export one fresh simulated trace, and time from its acknowledgement until its hops are
    queryable through the SQL API (the settle window included)."""
    topology = load_topology("bookinfo")
    simulator = MeshSimulator(topology, seed=4242, options=Options(spawn_upstream_span=True))
    exporter = RawExporter(server.grpc_target, deadline=60)
    try:
        while time.time() < until:
            request = simulator.request(time.time_ns() // 1000)
            if not exporter.export(Encoder(topology).request([request]).SerializeToString()):
                continue
            acked = time.time()
            query = f"SELECT count(*) FROM hops WHERE trace_id = '{request.trace_id.hex()}'".encode()
            while time.time() < acked + 300:
                answer = urllib.request.urlopen(urllib.request.Request(
                    f"{server.api_url}/api/v1/sql", data=b'{"sql": "' + query + b'"}',
                    headers={"content-type": "application/json"}), timeout=60).read()
                if b'"rows":[[0]]' not in answer.replace(b" ", b""):
                    lags.append(time.time() - acked)
                    break
                time.sleep(0.25)
            time.sleep(max(0.0, acked + 2.0 - time.time()))
    finally:
        exporter.close()


def _drained(server: ServeProcess, timeout: float) -> float:
    """Seconds until nothing acknowledged waits for DuckDB and no trace waits for analytics; inf past timeout."""
    started = time.time()
    while time.time() - started < timeout:
        metrics = scrape(server.api_url)
        if (total(metrics, "hopscope_backlog_spans") == 0 and total(metrics, "hopscope_follower_pending_traces") == 0
                and total(metrics, "hopscope_follower_pass_traces") == 0):
            return time.time() - started
        time.sleep(0.5)
    return math.inf


def _stop_workers(server: ServeProcess) -> list[int]:
    workers = [pid for pid in descendants(server.pid) if pid != server.pid]
    for pid in workers:
        os.kill(pid, signal.SIGSTOP)
    return workers


def hopscope(plan: Plan, build: RequestFactory = WITH_UPSTREAM, shape: LoadShape = WELL_BEHAVED,
             settle: float = SETTLE_SECONDS, rate: float | None = None, seconds: float | None = None,
             refusals_only: bool = False, serve_args: tuple[str, ...] = ()) -> Figures:
    seconds = seconds or plan.seconds
    with tempfile.TemporaryDirectory(prefix="hopscope-bench-") as folder:
        server = ServeProcess(str(Path(folder) / "bench.duckdb"), ["--settle-seconds", str(settle), *serve_args],
                              log_path=Path(folder) / "serve.log").start()
        stopped = _stop_workers(server) if refusals_only else []
        probe_lags: list[float] = []
        try:
            start_at, window = _window(plan, seconds)
            begin, t1 = sample_at(window[0], server.pid, server.api_url)
            end, t2 = sample_at(window[1], server.pid, server.api_url)
            prober = threading.Thread(target=_probe, args=(server, window[1], probe_lags))
            if not refusals_only and settle == SETTLE_SECONDS:
                threading.Timer(max(0.0, window[0] - time.time()), prober.start).start()
            _, _, latencies = _load(plan, server.grpc_target, build, shape, start_at, seconds, rate)
            t1.join(), t2.join()
            for pid in stopped:
                os.kill(pid, signal.SIGCONT)
            drain = _drained(server, plan.drain_timeout) if settle == SETTLE_SECONDS and not refusals_only \
                else math.nan
            if prober.is_alive() or prober.ident:
                prober.join()
            final = scrape(server.api_url)
            rss = peak_rss_bytes(server.pid)
        finally:
            code = server.stop(timeout=120)
        if code != 0:
            print(f"  warning: serve exited {code}", file=sys.stderr)
        size = sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file() and p.name != "serve.log"
                   and ".spool" not in str(p))
    return _hopscope_figures(begin, end, final, latencies, probe_lags, drain, rss, size, refusals_only)


def _hopscope_figures(begin: Sample, end: Sample, final: dict[str, float], latencies: list[float],
                      probe_lags: list[float], drain: float, rss: int, size: int, refusals_only: bool) -> Figures:
    elapsed, cpu = end.at - begin.at, end.cpu - begin.cpu

    def delta(name: str) -> float:
        return total(end.metrics, name) - total(begin.metrics, name)

    stored = delta("hopscope_spans_stored_total")
    refused = delta("hopscope_export_requests_refused_total")
    figures = Figures(stored_per_s=stored / elapsed, cpu_cores=cpu / elapsed, refused=refused,
                      export_p50_ms=percentile(latencies, 0.5) * 1e3, export_p99_ms=percentile(latencies, 0.99) * 1e3,
                      peak_rss_mib=rss / 2**20)
    if refusals_only:
        figures.refusal_cpu_us = cpu / max(refused, 1) * 1e6
        return figures
    figures.cpu_us_per_span = cpu / max(stored, 1) * 1e6
    figures.disk_bytes_per_span = size / max(total(final, "hopscope_spans_stored_total"), 1)
    figures.hops_per_s = delta("hopscope_hops_written_total") / elapsed
    figures.paths_per_s = delta("hopscope_critical_paths_written_total") / elapsed
    figures.lag_p50_s = histogram_quantile(final, "hopscope_follower_lag_seconds", 0.5)
    figures.lag_p99_s = histogram_quantile(final, "hopscope_follower_lag_seconds", 0.99)
    figures.probe_p50_s, figures.probe_p99_s = percentile(probe_lags, 0.5), percentile(probe_lags, 0.99)
    figures.drain_s = drain
    return figures


# ---- the run and its report ---------------------------------------------------------------------------------------

CONFIGURATIONS: dict[str, Callable[[Plan], Figures]] = {
    "null sink": null_sink,
    "reference": reference,
    "hopscope": hopscope,
    "resend at once": lambda plan: hopscope(plan, shape=AT_ONCE),
    "ingest only": lambda plan: hopscope(plan, settle=3600.0),
    "no upstream": lambda plan: hopscope(plan, build=simulated_request),
    "steady": lambda plan: hopscope(plan, rate=10_000.0),
    # a partition sealed into Parquet every 10 s while ingest runs flat out: what sealing costs ingest
    "sealing 10s": lambda plan: hopscope(plan, serve_args=("--partition", "10s", "--late-span-grace", "0s")),
    "refusal cost": lambda plan: hopscope(plan, shape=AT_ONCE, refusals_only=True, seconds=10.0),
}


def med(plan: Plan, name: str, figure: str) -> float:
    values = [getattr(f, figure) for f in plan.results.get(name, [])]
    values = [v for v in values if not math.isnan(v)]
    return statistics.median(values) if values else math.nan


def report(plan: Plan) -> None:
    sink = med(plan, "null sink", "stored_per_s")
    print(f"\nresults (medians; this machine's null gRPC sink: {sink:,.0f} spans/s of this load)")

    def row(label: str, value: float, unit: str, note: str = "") -> None:
        print(f"  {label:<58} {value:>12,.1f} {unit:<10} {note}")

    def ratio(a: float, b: float) -> str:
        return f"= {a / b:.2f}×" if b and not math.isnan(a) and not math.isnan(b) else ""

    stored = med(plan, "hopscope", "stored_per_s")
    ref = med(plan, "reference", "stored_per_s")
    row("hopscope: spans/s stored (well-behaved clients)", stored, "spans/s",
        f"{ratio(stored, ref)} the reference (target ≥ 3×), {ratio(stored, sink)} the null sink")
    row("reference collector: spans/s stored", ref, "spans/s", ratio(ref, sink) + " the null sink")
    sealing = med(plan, "sealing 10s", "stored_per_s")
    row("hopscope sealing a 10 s partition every 10 s: spans/s stored", sealing, "spans/s",
        f"{ratio(sealing, stored)} without sealing (1 h partitions); "
        f"{med(plan, 'sealing 10s', 'cpu_us_per_span'):.1f} µs/span, "
        f"{med(plan, 'sealing 10s', 'disk_bytes_per_span'):.0f} B/span on disk (hot file + Parquet)")
    at_once = med(plan, "resend at once", "stored_per_s")
    row("hopscope, clients resending at once: spans/s stored", at_once, "spans/s",
        f"{ratio(at_once, stored)} well-behaved (target ≥ 0.90×); refused "
        f"{med(plan, 'resend at once', 'refused'):,.0f} requests in the window")
    for name in ("hopscope", "no upstream", "sustained"):
        if name not in plan.results:
            continue
        row(f"{name}: hops/s kept ready", med(plan, name, "hops_per_s"), "hops/s",
            f"critical paths {med(plan, name, 'paths_per_s'):,.0f}/s; "
            f"spans stored {med(plan, name, 'stored_per_s'):,.0f}/s")
        row(f"{name}: settle → ready lag p50 / p99 (bucket bounds)", med(plan, name, "lag_p99_s"), "s p99",
            f"p50 ≤ {med(plan, name, 'lag_p50_s'):.2f} s (target p99 ≤ 5 s)")
        row(f"{name}: ack → hops queryable, probe p50 / p99", med(plan, name, "probe_p99_s"), "s p99",
            f"p50 {med(plan, name, 'probe_p50_s'):.1f} s ({SETTLE_SECONDS:.0f} s of it the settle window)")
        row(f"{name}: analytics drained after the load stopped", med(plan, name, "drain_s"), "s")
    cpu = med(plan, "hopscope", "cpu_us_per_span")
    ingest = med(plan, "ingest only", "cpu_us_per_span")
    row("server CPU per span, ingest + analytics", cpu, "µs", f"{ratio(cpu, ingest)} ingest only (target ≤ 2×)")
    row("server CPU per span, ingest only", ingest, "µs",
        f"reference: {med(plan, 'reference', 'cpu_us_per_span'):.1f} µs")
    refusal = med(plan, "refusal cost", "refusal_cpu_us")
    accepted = cpu * plan.spans
    row("server CPU per refused Export", refusal, "µs",
        f"{ratio(refusal, accepted)} an accepted one's ({accepted:,.0f} µs; target ≤ 0.05×)")
    scale = 800_000 / sink if sink else math.nan
    share = med(plan, "steady", "cpu_cores") * 100
    row("steady 10k spans/s: server CPU", share, "% core",
        f"target ≤ {35 * scale:.0f} % here (35 % where the null sink does 800k)")
    p99 = med(plan, "steady", "export_p99_ms")
    row("steady 10k spans/s: Export p99", p99, "ms",
        f"p50 {med(plan, 'steady', 'export_p50_ms'):.1f} ms (target ≤ {20 * scale:.0f} ms here)")
    row("peak RSS, flat out / resend at once", med(plan, "hopscope", "peak_rss_mib"), "MiB",
        f"{med(plan, 'resend at once', 'peak_rss_mib'):,.0f} MiB; "
        f"reference {med(plan, 'reference', 'peak_rss_mib'):,.0f}")
    row("bytes on disk per span (spans + hops + paths)", med(plan, "hopscope", "disk_bytes_per_span"), "B",
        f"reference (spans only, fewer columns): {med(plan, 'reference', 'disk_bytes_per_span'):,.0f} B")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="runs of each flat-out configuration (median reported)")
    parser.add_argument("--seconds", type=float, default=30.0, help="measurement window per run")
    parser.add_argument("--warmup", type=float, default=5.0, help="load before the window opens")
    parser.add_argument("--sustained", type=float, default=300.0, help="seconds of the sustained run (0: skip)")
    parser.add_argument("--processes", type=int, default=2, help="load generator processes")
    parser.add_argument("--streams", type=int, default=4, help="concurrent streams per process")
    parser.add_argument("--spans", type=int, default=512, help="spans per request")
    parser.add_argument("--only", action="append", choices=[*CONFIGURATIONS, "sustained"],
                        help="run only these configurations (repeatable)")
    parser.add_argument("--quick", action="store_true", help="one 10 s run of each, a 60 s sustained run")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.seconds, args.warmup, args.sustained = 1, 10.0, 3.0, 60.0
    plan = Plan(args.seconds, args.warmup, args.processes, args.streams, args.spans)
    chosen = args.only or [*CONFIGURATIONS, "sustained"]
    print(f"end-to-end benchmark: {args.processes}×{args.streams} streams of simulated Bookinfo traffic, "
          f"{args.spans} spans/request, {args.runs} run(s) of {args.seconds:.0f} s after {args.warmup:.0f} s "
          f"warm-up; sustained {args.sustained:.0f} s", flush=True)
    once = {"no upstream", "refusal cost"}
    for run in range(args.runs):
        for name, configuration in CONFIGURATIONS.items():
            if name not in chosen or (name in once and run) or (name == "steady" and run == args.runs - 1 > 0):
                continue
            figures = configuration(plan)
            plan.results.setdefault(name, []).append(figures)
            print(f"  {name} #{run + 1}: {figures.line()}", flush=True)
    if "sustained" in chosen and args.sustained:
        figures = hopscope(plan, seconds=args.sustained)
        plan.results["sustained"] = [figures]
        print(f"  sustained: {figures.line()}", flush=True)
    report(plan)


if __name__ == "__main__":
    main()
