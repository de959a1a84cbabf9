"""One trace's span dicts read once into flat columns (list by position), shared by the clock domains, the pair
bounds and the critical-path pipeline of one request — each of them used to read every dict again, and on a long
trace reading a dict is mostly a cache miss.

The columns are read with `map(dict.get, …)`, a loop in C: a field of 10,000 spans costs about a millisecond,
against several for a Python loop. Span or attribute maps that are not dicts (never from the store) and empty span
ids make `of()` raise TypeError; callers then take their per-dict path.

`paused_gc()` suspends the cyclic garbage collector while one trace is computed: the objects made are acyclic (ints,
strings, tuples, lists of them), so a collection finds nothing, but on a 100,000-span trace every full collection
walks the ~1M objects of the span dicts, and the allocations trigger several (the collector workers run with it off
for the same reason).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

from hopscope.analytics import trace_accelerator

EMPTY: dict[str, Any] = {}


@contextmanager
def paused_gc() -> Iterator[None]:
    """No cyclic collection inside (reference counting still frees everything acyclic); restored as it was."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def column(maps: Sequence[dict[str, Any]], key: str) -> list[Any]:
    """`[m.get(key) for m in maps]`, in C."""
    return list(map(dict.get, maps, repeat(key)))


@dataclass
class TraceColumns:
    """A trace's spans by position. `position` maps a span id to its last position (as a dict of the spans by id
    would), `parent` is the parent's position or -1."""

    spans: Sequence[dict[str, Any]]
    ids: list[str]
    parent_ids: list[str | None]
    start: list[int]
    end: list[int]
    kinds: list[Any]  # as stored (None possible); the walk reads str(kind or "INTERNAL")
    services: list[Any]
    attributes: list[dict[str, Any]]  # {} when absent
    resources: list[dict[str, Any]]  # {} when absent
    links: list[Any]
    names: list[Any]  # the spans' names (the JSON body's sections name theirs)
    position: dict[str, int]
    parent: list[int]
    _read: dict[tuple[str, str], list[Any]] = field(default_factory=dict, repr=False)

    def fields(self, source: str, keys: Sequence[str]) -> list[list[Any]]:
        """`column(maps, key)` for each key, maps being the spans' "attributes" or "resources": each read once per
        trace, and the keys not yet read in one pass over the maps (a long trace's maps do not stay in cache
        between passes)."""
        maps = self.attributes if source == "attributes" else self.resources
        missing = tuple(key for key in dict.fromkeys(keys) if (source, key) not in self._read)
        if missing:
            native = trace_accelerator.NATIVE
            read = native.read_fields(maps, missing) if native is not None else None
            if read is None:
                read = [column(maps, key) for key in missing]
            for key, values in zip(missing, read, strict=True):
                self._read[(source, key)] = values
        return [self._read[(source, key)] for key in keys]

    @classmethod
    def of(cls, spans: Sequence[dict[str, Any]], attribute_keys: tuple[str, ...] = (),
           resource_keys: tuple[str, ...] = ()) -> TraceColumns:
        """The columns, and (with the C accelerator) `fields` of these attribute and resource keys read in the same
        pass; the Python reference reads fields when asked."""
        if not isinstance(spans, list):
            spans = list(spans)
        native = trace_accelerator.NATIVE
        attribute_keys, resource_keys = tuple(dict.fromkeys(attribute_keys)), tuple(dict.fromkeys(resource_keys))
        # one pass in C; None: odd input
        read = native.columns(spans, EMPTY, attribute_keys, resource_keys) if native is not None else None
        if read is None:
            return cls.of_reference(spans)
        columns = cls(spans, *read[:12])
        for source, keys, values in (("attributes", attribute_keys, read[12]), ("resources", resource_keys, read[13])):
            columns._read.update(((source, key), column) for key, column in zip(keys, values, strict=True))
        return columns

    @classmethod
    def of_reference(cls, spans: list[dict[str, Any]]) -> TraceColumns:
        """`of` in Python, the reference of the C pass (trace_accelerator.py)."""
        ids = list(map(dict.__getitem__, spans, repeat("span_id")))
        parent_ids = column(spans, "parent_span_id")
        start = list(map(int, map(dict.__getitem__, spans, repeat("start_ns"))))
        end = list(map(int, map(dict.__getitem__, spans, repeat("end_ns"))))
        attributes = [m or EMPTY for m in column(spans, "attributes")]
        resources = [m or EMPTY for m in column(spans, "resource_attributes")]
        if not {*map(type, attributes), *map(type, resources)} <= {dict}:
            raise TypeError("attribute maps that are not dicts")
        position = dict(zip(ids, range(len(ids)), strict=True))
        if "" in position:  # the dict forms find a span with an empty id as the parent of every root
            raise TypeError("an empty span id")
        get = position.get
        parent = [get(p, -1) if p else -1 for p in parent_ids]
        return cls(spans, ids, parent_ids, start, end, column(spans, "kind"), column(spans, "service_name"),
                   attributes, resources, column(spans, "links"), column(spans, "name"), position, parent)
