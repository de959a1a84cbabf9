"""Request parameters shared by the REST routes: time windows and trace ids, refused with 422 when malformed."""

from __future__ import annotations

import time

from fastapi import HTTPException, Query

from hopscope.analytics.timerange import instant_ns

SINCE_HELP = "RFC 3339, or a duration back from now (15m, 2h)"
# every endpoint that shows absolute instants takes it (docs/design.md §4): corrected by default, raw on request
SKEW = Query("corrected", pattern="^(raw|corrected)$",
             description="corrected (default): every clock domain moved onto the root's clock; raw: as the spans "
                         "arrived (raw_start_unix_us keeps the raw instant where a corrected one is shown)")


def window(since: str, until: str | None) -> tuple[int, int]:
    """[since, until) in ns since the epoch; `until` defaults to now."""
    now = time.time_ns()
    try:
        return instant_ns(since, now), (instant_ns(until, now) if until else now)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None


def checked_trace_id(trace_id: str) -> str:
    if len(trace_id) != 32 or any(c not in "0123456789abcdef" for c in trace_id):
        raise HTTPException(422, "trace_id must be 32 lowercase hex digits")
    return trace_id
