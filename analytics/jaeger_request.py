"""What Jaeger's clients send, read the way Jaeger's query service reads it (docs/jaeger-api.md): trace ids in hex or
base64, µs (v1) or RFC 3339 (v3) instants, Go duration strings, and the tag filters. A malformed value raises
`BadRequest`, which the routes answer in the envelope of the API it came through.

Sources: jaeger cmd/jaeger/internal/extension/jaegerquery/internal/query_parser.go (v1, before PR #9260 removed the
search endpoints) and internal/apiv3/{query_parser,http_gateway}.go; jaeger-idl model/v1/ids.go for trace ids.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from datetime import datetime

import orjson

MAX_SEARCH_TRACES = 1000  # a search's `limit` / `query.search_depth` is cut to this (every list has a limit)
MAX_TAG_FILTERS = 32
# µs since the epoch below this are taken as ms: Grafana's Jaeger data source sends trace-by-id start/end in ms
# (grafana-jaeger-datasource pkg/jaeger/querydata.go: TimeRange.From.UnixMilli()). 1e14 µs is 1973, 1e14 ms 5138.
MS_OR_US_CUT = 10**14
_GO_UNITS_NS = {"ns": 1, "us": 10**3, "µs": 10**3, "μs": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9,
                "h": 3600 * 10**9}
_GO_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


class BadRequest(ValueError):
    """A parameter the query service would refuse with 400; the message says which and why."""


@dataclass
class TraceQuery:
    """A search, in the store's units (ns since the epoch, ns durations)."""

    start_ns: int
    end_ns: int
    service: str | None = None
    operation: str | None = None
    min_duration_ns: int | None = None
    max_duration_ns: int | None = None
    tags: dict[str, str] = field(default_factory=dict)
    limit: int = 100


def trace_id_of(text: str) -> str:
    """A trace id as Jaeger accepts it — up to 32 hex digits (a shorter one is the low bits, jaeger-idl
    TraceIDFromString), else base64 of 8 or 16 bytes, std or URL alphabet, padded or not (apiv3 TraceIDFromString)
    — as the store writes it: 32 lowercase hex digits."""
    if 0 < len(text) <= 32 and all(c in "0123456789abcdefABCDEF" for c in text):
        return text.lower().rjust(32, "0")
    if 0 < len(text) <= 24:
        for alphabet in (None, b"-_"):  # std, then URL-safe; strict, as Go's decoders are
            try:
                raw = base64.b64decode(text + "=" * (-len(text) % 4), altchars=alphabet, validate=True)
            except (binascii.Error, ValueError):
                continue
            if len(raw) in (8, 16):
                return raw.hex().rjust(32, "0")
    raise BadRequest(f"cannot parse trace ID {text!r}: not up to 32 hex digits, nor base64 of 8 or 16 bytes")


def jaeger_trace_id(stored: str) -> str:
    """The store's 32 hex digits as Jaeger prints a trace id: 16 digits when the high 64 bits are zero, else 32
    (jaeger-idl model/v1/ids.go, TraceID.String)."""
    return stored[16:] if stored.startswith("0" * 16) else stored


def go_duration_ns(text: str, name: str) -> int:
    """A Go `time.ParseDuration` string ("100ms", "1.5s", "1m30s", "250us") in ns."""
    body = text[1:] if text[:1] in "+-" else text
    if body == "0":
        return 0
    parts = _GO_DURATION_PART.findall(body)
    if not body or "".join(number + unit for number, unit in parts) != body:
        raise BadRequest(f"unable to parse param '{name}': time: invalid duration {text!r}")
    total = sum(round(float(number) * _GO_UNITS_NS[unit]) for number, unit in parts)
    return -total if text.startswith("-") else total


def integer(text: str, name: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise BadRequest(f"unable to parse param '{name}': {text!r} is not an integer") from None


def unix_us_ns(text: str, name: str, ms_tolerant: bool = False) -> int:
    """µs since the epoch (v1's `start`/`end`) in ns; with `ms_tolerant`, a value too small for µs is ms."""
    value = integer(text, name)
    return value * 10**6 if ms_tolerant and 0 < value < MS_OR_US_CUT else value * 1000


def rfc3339_ns(text: str, name: str) -> int:
    """An RFC 3339 instant (v3) in ns, to the ns. A `+` offset arrives as a space when the client did not
    percent-encode it (Grafana appends v3 times unencoded): read it back as `+`."""
    cleaned = text.strip().replace(" ", "+")
    match = re.fullmatch(r"(.*T\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|z|[+-]\d\d:\d\d)", cleaned)
    try:
        if match is None:
            raise ValueError(text)
        whole = datetime.fromisoformat(match.group(1) + ("+00:00" if match.group(3) in "Zz" else match.group(3)))
    except ValueError:
        raise BadRequest(f"malformed parameter {name}: {text!r} is not an RFC 3339 time") from None
    fraction = (match.group(2) or "").ljust(9, "0")
    return int(whole.timestamp()) * 10**9 + int(fraction)


def tag_filters(simple: list[str], json_maps: list[str], name: str = "tags") -> dict[str, str]:
    """v1's repeated `tag=key:value` and `tags={"key":"value"}` (a JSON map of strings), merged as Jaeger does."""
    tags: dict[str, str] = {}
    for tag in simple:
        key, colon, value = tag.partition(":")
        if not colon:
            raise BadRequest(f"malformed 'tag' parameter, expecting key:value, received: {tag}")
        tags[key] = value
    for text in json_maps:
        try:
            parsed = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"malformed '{name}' parameter, cannot unmarshal JSON: {exc}") from None
        if not isinstance(parsed, dict) or not all(isinstance(v, str) for v in parsed.values()):
            raise BadRequest(f"malformed '{name}' parameter: expecting a JSON object of strings")
        tags.update(parsed)
    if len(tags) > MAX_TAG_FILTERS:
        raise BadRequest(f"at most {MAX_TAG_FILTERS} tag filters")
    return tags


def search_limit(text: str | None, name: str, default: int = 100) -> int:
    """`limit` / `query.search_depth`: a positive integer, cut to MAX_SEARCH_TRACES; absent or 0: the default."""
    if not text:
        return default
    value = integer(text, name)
    if value < 0:
        raise BadRequest(f"unable to parse param '{name}': must not be negative")
    return min(value or default, MAX_SEARCH_TRACES)


def checked_durations(query: TraceQuery, min_name: str, max_name: str) -> TraceQuery:
    if query.min_duration_ns and query.max_duration_ns and query.max_duration_ns < query.min_duration_ns:
        raise BadRequest(f"'{max_name}' should be greater than '{min_name}'")
    return query


def boolean(text: str | None, name: str) -> bool:
    """Go's strconv.ParseBool."""
    if not text:
        return False
    if text in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if text in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise BadRequest(f"unable to parse param '{name}': strconv.ParseBool: parsing {text!r}: invalid syntax")
