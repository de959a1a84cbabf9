"""`hopscope rebuild`: recompute the derived relations (`hops`, `critical_path`, `clock_offsets`, …) from the hot
`spans`, e.g. after a rule change (sealed partitions keep what they were sealed with, docs/storage.md).

Runs on a stopped service's file (DuckDB's single-writer lock makes that a requirement, and a clear error when it
is not met)."""

from __future__ import annotations

import argparse
import os
import sys
import time

from hopscope.analytics.classify import classifier_of
from hopscope.analytics.follower import HopFollower
from hopscope.analytics.schema import drop_derived
from hopscope.collector.settings import SETTING, resolve_setting
from hopscope.collector.store import DatabaseInUse, SpanStore


def run_rebuild(arguments: argparse.Namespace) -> int:
    """The same rules as serve: `--rules`, else HOPSCOPE_RULES (collector/settings.py's `rules`)."""
    try:
        classifier = classifier_of(resolve_setting(SETTING["rules"], vars(arguments), os.environ))
        store = SpanStore(arguments.db)
    except (DatabaseInUse, ValueError, OSError) as exc:
        print(f"hopscope rebuild: {exc}", file=sys.stderr)
        return 1
    try:
        drop_derived(store.cursor())
        follower = HopFollower(store.cursor, classifier, settle_seconds=0.0)
        started = time.monotonic()
        follower.step(0.0)
        while follower.step(1e9):
            print(f"rebuild: {follower.hops_written:,} hops ({time.monotonic() - started:.0f} s)", flush=True)
        store.checkpoint()
        print(f"rebuild: done, {follower.hops_written:,} hops and {follower.paths_written:,} critical paths "
              f"in {time.monotonic() - started:.1f} s")
        sealed = store.cursor().execute("SELECT count(DISTINCT partition_start_ns) FROM hopscope_partitions "
                                        "WHERE relation = 'hops'").fetchall()[0][0]
        if sealed:
            print(f"rebuild: recomputed the hot store only; {sealed} sealed partition(s) keep the hops and paths "
                  "they were sealed with (docs/storage.md)")
    finally:
        store.close()
    return 0
