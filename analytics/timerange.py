"""`since`/`until` as users write them (docs/design.md §6): RFC 3339 instants or relative durations such as
`15m`, `2h`."""

from __future__ import annotations

import re
from datetime import datetime

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)$")
_UNIT_NS = {"ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9, "d": 86400 * 10**9}


def duration_ns(text: str) -> int:
    """`10s`, `1m`, `2h` → ns."""
    match = _RELATIVE.match(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a duration like 10s, 1m or 2h")
    return int(float(match.group(1)) * _UNIT_NS[match.group(2)])


def instant_ns(text: str, now_ns: int) -> int:
    """An absolute time in ns since the epoch; a relative duration counts back from `now_ns`."""
    if _RELATIVE.match(text.strip()):
        return now_ns - duration_ns(text)
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is neither RFC 3339 (2026-11-26T08:00:00Z) nor a duration like 15m or 2h") \
            from None
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone; add Z or an offset")
    return int(moment.timestamp() * 1e9)
