"""Ingest benchmark: how many spans/s hopscope stores with durable acknowledgement, at what CPU and latency.

    .venv/bin/python bench/ingest.py                 # full run (~3 minutes): flat-out ×3, null-sink baseline ×3,
                                                     # steady 10k spans/s ×2
    .venv/bin/python bench/ingest.py --runs 1 --seconds 5    # quick look

Load: separate processes (default 2 × 4 streams = 8 concurrent streams) send pre-serialised Envoy-like and
SDK-like requests (512 spans, ~17 attributes each) over gRPC. Figures are medians over the runs; throughput is also
given as a ratio of a null gRPC sink's measured in the same run. Server CPU counts the serve process and its
flattening workers; the load generator's CPU is on the same 2 cores but not counted.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from proctree import cpu_seconds, peak_rss_bytes  # noqa: E402
from spans import build_request  # noqa: E402

from hopscope.instrumentation.loadgen import UniqueRequests, run_load  # noqa: E402
from hopscope.serve_process import ServeProcess  # noqa: E402


@dataclass
class RunResult:
    stored_per_s: float
    acked_per_s: float
    cpu_us_per_span: float
    cpu_share: float
    p50_ms: float
    p99_ms: float
    peak_rss_mib: float
    disk_bytes_per_span: float
    refused: int
    freshness_p50_s: float
    freshness_max_s: float


def _metric(api_url: str, name: str) -> float:
    with urllib.request.urlopen(f"{api_url}/metrics", timeout=10) as response:
        total = 0.0
        for line in response.read().decode().splitlines():
            if line.startswith(name) and not line.startswith("#"):
                total += float(line.split()[1])
        return total


def _stored_total(api_url: str) -> float:
    return _metric(api_url, "hopscope_spans_stored_total")


def _probe_freshness(server: ServeProcess, window: tuple[float, float], lags: list[float]) -> None:
    """Every 0.5 s in the window: send one span, and time from its acknowledgement until DuckDB has stored every
    span acknowledged up to then (FIFO, so an upper bound on when the probe became queryable)."""
    import grpc

    probe = UniqueRequests(build_request(1, seed=999), 999)
    with grpc.insecure_channel(server.grpc_target) as channel:
        export = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")
        time.sleep(max(0.0, window[0] - time.time()))
        while time.time() < window[1] - 2.5:
            try:
                export(probe.next(), timeout=10)
            except grpc.RpcError:
                time.sleep(0.1)
                continue
            acked_at = time.time()
            target = _metric(server.api_url, "hopscope_spans_accepted_total")
            while _stored_total(server.api_url) < target:
                time.sleep(0.05)  # each scrape costs serve CPU too: poll gently (lag resolution ±50 ms)
            lags.append(time.time() - acked_at)
            time.sleep(0.5)


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _sample_at(moment: float, sample: dict[str, float], pid: int, api_url: str | None) -> threading.Thread:
    def take() -> None:
        time.sleep(max(0.0, moment - time.time()))
        sample["cpu"] = cpu_seconds(pid)
        sample["stored"] = _stored_total(api_url) if api_url else 0.0
        sample["at"] = time.time()

    thread = threading.Thread(target=take)
    thread.start()
    return thread


def _measure(pid: int, api_url: str | None, target: str, args: argparse.Namespace, rate: float | None
             ) -> tuple[int, int, list[float], dict[str, float], dict[str, float]]:
    begin: dict[str, float] = {}
    end: dict[str, float] = {}
    start_at = time.time() + 2.0
    window = (start_at + args.warmup, start_at + args.warmup + args.seconds)
    samplers = [_sample_at(window[0], begin, pid, api_url), _sample_at(window[1], end, pid, api_url)]
    acked, refused, latencies, _ = run_load(target, build_request, args.processes, args.streams, args.spans,
                                            args.warmup, args.seconds, rate)
    for sampler in samplers:
        sampler.join()
    return acked, refused, latencies, begin, end


def run_hopscope(args: argparse.Namespace, rate: float | None) -> RunResult:
    with tempfile.TemporaryDirectory(prefix="hopscope-bench-") as folder:
        db = str(Path(folder) / "bench.duckdb")
        server = ServeProcess(db, log_path=Path(folder) / "serve.log").start()
        lags: list[float] = []
        start_at = time.time() + 2.0
        prober = threading.Thread(target=_probe_freshness, args=(
            server, (start_at + args.warmup, start_at + args.warmup + args.seconds), lags))
        prober.start()
        try:
            acked, refused, latencies, begin, end = _measure(server.pid, server.api_url, server.grpc_target, args,
                                                             rate)
            prober.join()
            elapsed = end["at"] - begin["at"]
            stored = end["stored"] - begin["stored"]
            cpu = end["cpu"] - begin["cpu"]
            rss = peak_rss_bytes(server.pid)
            total_stored = _stored_total(server.api_url)
        finally:
            code = server.stop(timeout=30)
        size = sum(p.stat().st_size for p in Path(folder).glob("bench.duckdb*") if p.is_file())
        if code != 0:
            print(f"  warning: serve exited {code}", file=sys.stderr)
        return RunResult(stored / elapsed, acked / args.seconds, cpu / max(stored, 1) * 1e6, cpu / elapsed,
                         _percentile(latencies, 0.5) * 1e3, _percentile(latencies, 0.99) * 1e3, rss / 2**20,
                         size / max(total_stored, 1), refused, _percentile(lags, 0.5), max(lags, default=float("nan")))


def run_null_sink(args: argparse.Namespace) -> float:
    sink = subprocess.Popen([sys.executable, str(Path(__file__).parent / "null_sink.py")], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert sink.stdout is not None
        target = sink.stdout.readline().split()[1]
        acked, _, _, _, _ = _measure(sink.pid, None, target, args, None)
        return acked / args.seconds
    finally:
        sink.kill()
        sink.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="runs per configuration (median reported)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measurement window per run")
    parser.add_argument("--warmup", type=float, default=3.0, help="load before the window opens")
    parser.add_argument("--processes", type=int, default=2, help="load generator processes")
    parser.add_argument("--streams", type=int, default=4, help="concurrent streams per process")
    parser.add_argument("--spans", type=int, default=512, help="spans per request")
    parser.add_argument("--steady-rate", type=float, default=10_000.0, help="spans/s of the paced runs")
    parser.add_argument("--skip-baseline", action="store_true", help="do not run the null-sink baseline")
    args = parser.parse_args()

    print(f"ingest benchmark: {args.processes}×{args.streams} streams, {args.spans} spans/request, "
          f"{args.runs} run(s) of {args.seconds:.0f} s after {args.warmup:.0f} s warm-up", flush=True)
    flat = []
    baselines = []
    for run in range(args.runs):
        flat.append(run_hopscope(args, None))
        print(f"  flat-out run {run + 1}: {flat[-1]}", flush=True)
        if not args.skip_baseline:
            baselines.append(run_null_sink(args))
            print(f"  null-sink run {run + 1}: {baselines[-1]:,.0f} spans/s acked", flush=True)
    steady = []
    for run in range(max(1, args.runs - 1)):
        steady.append(run_hopscope(args, args.steady_rate))
        print(f"  steady run {run + 1}: {steady[-1]}", flush=True)

    def med(results: list[RunResult], name: str) -> float:
        return statistics.median(getattr(r, name) for r in results)

    print("\nresults (medians)")
    stored = med(flat, "stored_per_s")
    print(f"  flat-out: {stored:,.0f} spans/s stored (durable ack), {med(flat, 'acked_per_s'):,.0f} acked/s")
    if baselines:
        baseline = statistics.median(baselines)
        print(f"            null gRPC sink {baseline:,.0f} spans/s → hopscope at {stored / baseline:.2f}× the "
              "transport's own ceiling")
    print(f"            server CPU {med(flat, 'cpu_us_per_span'):.1f} µs/span, {med(flat, 'cpu_share'):.2f} cores; "
          f"Export p50 {med(flat, 'p50_ms'):.1f} ms, p99 {med(flat, 'p99_ms'):.1f} ms")
    print(f"            peak RSS (serve + workers) {med(flat, 'peak_rss_mib'):.0f} MiB; "
          f"{med(flat, 'disk_bytes_per_span'):.0f} bytes on disk per span; refused {med(flat, 'refused'):.0f}")
    print(f"            acknowledged → stored in DuckDB: p50 {med(flat, 'freshness_p50_s'):.2f} s, "
          f"worst {max(r.freshness_max_s for r in flat):.2f} s")
    print(f"  steady {args.steady_rate:,.0f} spans/s: server CPU {med(steady, 'cpu_share') * 100:.0f} % of one core "
          f"({med(steady, 'cpu_us_per_span'):.1f} µs/span); Export p50 {med(steady, 'p50_ms'):.1f} ms, "
          f"p99 {med(steady, 'p99_ms'):.1f} ms; stored {med(steady, 'stored_per_s'):,.0f} spans/s")


if __name__ == "__main__":
    main()
