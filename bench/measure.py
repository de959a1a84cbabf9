"""What the benchmarks read off a running server: its Prometheus page, its CPU and memory, percentiles."""

from __future__ import annotations

import math
import threading
import time
import urllib.request
from dataclasses import dataclass, field

from proctree import cpu_seconds


def scrape(api_url: str) -> dict[str, float]:
    """Every sample of /metrics by its full name with labels, e.g. `hopscope_spans_stored_total`."""
    with urllib.request.urlopen(f"{api_url}/metrics", timeout=30) as response:
        page = response.read().decode()
    samples = {}
    for line in page.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def total(samples: dict[str, float], name: str) -> float:
    """The sum of a metric over its labels."""
    return sum(value for key, value in samples.items() if key == name or key.startswith(name + "{"))


def histogram_quantile(samples: dict[str, float], name: str, q: float) -> float:
    """The upper bound of the bucket that holds quantile q (Prometheus' `le` buckets; inf past the last)."""
    buckets = sorted((float(key.split('le="')[1].rstrip('"}')), value) for key, value in samples.items()
                     if key.startswith(f"{name}_bucket{{"))
    count = samples.get(f"{name}_count", 0.0)
    if not count:
        return math.nan
    for bound, cumulative in buckets:
        if cumulative >= q * count:
            return bound
    return math.inf


def percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Sample:
    """A server's CPU seconds (process tree) and, if it has one, its /metrics, at one moment."""

    at: float = 0.0
    cpu: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)


def sample_at(moment: float, pid: int, api_url: str | None) -> tuple[Sample, threading.Thread]:
    """Take a Sample at `moment` (time.time()) on a thread; join the thread before reading it."""
    sample = Sample()

    def take() -> None:
        time.sleep(max(0.0, moment - time.time()))
        sample.cpu = cpu_seconds(pid)
        sample.metrics = scrape(api_url) if api_url else {}
        sample.at = time.time()

    thread = threading.Thread(target=take)
    thread.start()
    return sample, thread
