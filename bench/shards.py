"""Three shards and a query node on this machine (docs/deploy.md, "Scaling past one machine").

    .venv/bin/python bench/shards.py                      # 3 shards, 30 s of load each at once, then the query node
    .venv/bin/python bench/shards.py --shards 2 --seconds 20

Each shard is a `hopscope serve` with its own DuckDB file, all sealing 10 s partitions (no late-span grace) into
one shared parts directory, each loaded flat out by its own sender (simulated Bookinfo, whole traces, 512 spans a
request, well-behaved retries) — what the OpenTelemetry Collector's load_balancing exporter gives each shard. On
one 2-core machine the shards share the cores, so spans/s per shard is a third of what one machine would do; the
figure that scales is their sum against one hopscope alone, measured in the same run.

Then the query node (`serve --query-only`) over the shared directory: how long until it has everything the load sent
(freshness: partition + settle + the seal and manifest rounds), and the latency of `/api/v1/hops/summary` over all
shards' partitions against the same question asked of one shard (median of several runs each).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from measure import scrape, total  # noqa: E402
from timing import median_ms  # noqa: E402

from hopscope.instrumentation.loadgen import LoadShape, run_load  # noqa: E402
from hopscope.instrumentation.meshsim.runner import simulated_request  # noqa: E402
from hopscope.serve_process import ServeProcess  # noqa: E402

WRITER = ["--partition", "10s", "--late-span-grace", "0s", "--max-analytics-lag-seconds", "0"]
SHAPE = LoadShape(honour_retry_info=True, retime=True)
BUILD = functools.partial(simulated_request, upstream_spans=True)


def _stored(server: ServeProcess) -> float:
    return total(scrape(server.api_url), "hopscope_spans_stored_total")


def _load(servers: list[ServeProcess], seconds: float, streams: int) -> list[float]:
    """Every server loaded at once for `seconds`; spans/s each stored over the window."""
    start_at = time.time() + 3.0
    before: dict[int, float] = {}
    after: dict[int, float] = {}

    def sample(into: dict[int, float], moment: float) -> None:
        time.sleep(max(0.0, moment - time.time()))
        for index, server in enumerate(servers):
            into[index] = _stored(server)

    samplers = [threading.Thread(target=sample, args=(before, start_at + 2)),
                threading.Thread(target=sample, args=(after, start_at + 2 + seconds))]
    loads = [threading.Thread(target=run_load, args=(server.grpc_target, BUILD, 1, streams, 512, 2.0, seconds, None,
                                                     SHAPE, start_at)) for server in servers]
    for thread in samplers + loads:
        thread.start()
    for thread in samplers + loads:
        thread.join()
    return [(after[i] - before[i]) / seconds for i in range(len(servers))]


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=120) as response:
        return response.read()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=30.0, help="load window per phase")
    parser.add_argument("--streams", type=int, default=4, help="concurrent streams per sender")
    parser.add_argument("--runs", type=int, default=7, help="runs of each query (median reported)")
    arguments = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hopscope-shards-"))
    shared = work / "parts"
    print(f"{arguments.shards} shards sealing into {shared}; {arguments.seconds:g} s of load", flush=True)

    alone = ServeProcess(str(work / "alone.duckdb"), [*WRITER, "--parts-dir", str(work / "alone-parts")]).start()
    try:
        [alone_rate] = _load([alone], arguments.seconds, arguments.streams)
    finally:
        alone.stop(60)
    print(f"  one hopscope alone: {alone_rate:,.0f} spans/s", flush=True)

    shards = [ServeProcess(str(work / f"shard-{i}.duckdb"), [*WRITER, "--parts-dir", str(shared), "--shard-name",
                                                           f"shard-{i}"]).start() for i in range(arguments.shards)]
    query = None
    try:
        rates = _load(shards, arguments.seconds, arguments.streams)
        sent_until_s = time.time()
        for index, rate in enumerate(rates):
            print(f"  shard-{index}: {rate:,.0f} spans/s", flush=True)
        print(f"  all shards: {sum(rates):,.0f} spans/s = {sum(rates) / alone_rate:.2f}× one hopscope alone "
              f"(same cores)", flush=True)
        query = ServeProcess(str(work / "query.unused"), ["--query-only", "--parts-dir", str(shared)]).start()
        while True:   # freshness: until every shard has sealed past the end of the load
            through = scrape(query.api_url).get("hopscope_query_node_complete_through_seconds", 0.0)
            if through >= sent_until_s - 1:
                break
            time.sleep(0.5)
        print(f"  query node has all of it {time.time() - sent_until_s:.1f} s after the load stopped "
              f"(10 s partitions, 6 s settle, no grace)", flush=True)
        summary = "/api/v1/hops/summary?since=15m"
        over_all = median_ms(lambda: _get(query.api_url + summary), arguments.runs)
        one_shard = median_ms(lambda: _get(shards[0].api_url + summary), arguments.runs)
        print(f"  /hops/summary: query node over {arguments.shards} shards {over_all:.1f} ms, one shard's own "
              f"{one_shard:.1f} ms ({over_all / one_shard:.2f}×); median of {arguments.runs}", flush=True)
        exact = summary + "&exact=true"
        exact_all = median_ms(lambda: _get(query.api_url + exact), arguments.runs)
        print(f"  /hops/summary?exact=true over all shards: {exact_all:.1f} ms", flush=True)
        files = sum(1 for _ in shared.rglob("*.parquet"))
        print(f"  {files} Parquet files; per shard median {statistics.median(rates):,.0f} spans/s", flush=True)
    finally:
        if query is not None:
            query.stop(60)
        for shard in shards:
            shard.stop(120)


if __name__ == "__main__":
    main()
