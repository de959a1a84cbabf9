"""One trace's spans by position: what every step of the analytics pipeline reads (analytics/pipeline.py).

The store gives one dict per span (`trace_lookup.span_from_row`: maps parsed). Reading them once into columns — a
list per field, position i being span i — lets each step read a field with `map` loops in C, and a long trace's
dicts (mostly cache misses) are read once for the whole request. The rules, stated once here and applied before any
step runs, so no step has to cope with them on its own:

* a span id that repeats keeps its first span (a client that retried its Export sent it twice), and a span without
  an id is left out: nothing can name it as a parent, and OTLP requires one;
* times are integers (ns); a span whose times are not numbers is left out;
* a map that is not a dict (never from the store) reads as empty, a parent id that is not a string as none;
* a span whose parent is a Zipkin *shared* span (Envoy's default `shared_span_context`: the callee's SERVER half
  reused the caller's CLIENT span id; ingest gave it an id of its own and kept the shared one in
  `zipkin.shared_span_id`, collector/zipkin.py) is the child of the SERVER half it started in — the callee's app
  named the shared id, meaning the callee side — not of the caller's CLIENT half.

`Trace.read` is the readable implementation of the pipeline's `trace` step; `Trace.compiled` (the C accelerator's
`columns`) its compiled form, for spans already in the store's shape; tests/test_pipeline_steps.py compares them.

`paused_gc()` suspends the cyclic garbage collector while one trace is computed: the objects made are acyclic (ints,
strings, tuples, lists of them), so a collection finds nothing, but on a 100,000-span trace every full collection
walks the ~1M objects of the span dicts, and the allocations trigger several.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import compress, repeat
from typing import Any

from hopscope.analytics import trace_accelerator
from hopscope.collector.zipkin import SHARED_SPAN_ATTRIBUTE

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


def span_map(span: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    """A span's `attributes` or `resource_attributes`, by the rule above: a map that is not a dict reads as empty."""
    found = span.get(name)
    return found if isinstance(found, dict) else EMPTY


def is_follows_from(span: Mapping[str, Any]) -> bool:
    """OTLP has no reference type: the OpenTracing shim and Jaeger's translator write a FOLLOWS_FROM parent as a
    link to the parent with `opentracing.ref_type=follows_from`."""
    links = span.get("links")
    if isinstance(links, str):
        try:
            links = json.loads(links)
        except ValueError:
            return False
    for link in links if isinstance(links, list) else ():
        attributes = link.get("attributes") if isinstance(link, dict) else None
        if isinstance(attributes, dict) and attributes.get("opentracing.ref_type") == "follows_from" and (
                not span.get("parent_span_id") or link.get("span_id") == span.get("parent_span_id")):
            return True
    return False


@dataclass
class Trace:
    """A trace's spans by position. `parent` is the parent's position, -1 when the parent is not in the trace;
    `position` maps a span id to its position."""

    spans: list[dict[str, Any]]
    ids: list[str]
    parent_ids: list[str | None]
    start: list[int]
    end: list[int]
    kinds: list[Any]  # as stored; the walk reads str(kind or "INTERNAL")
    services: list[Any]
    attributes: list[dict[str, Any]]  # {} when absent
    resources: list[dict[str, Any]]  # {} when absent
    links: list[Any]
    names: list[Any]
    position: dict[str, int]
    parent: list[int]
    _read: dict[tuple[str, str], list[Any]] = field(default_factory=dict, repr=False)
    _follows_from: list[bool] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def trace_id(self) -> str:
        return str(self.spans[0].get("trace_id") or "") if self.spans else ""

    def fields(self, source: str, keys: Sequence[str]) -> list[list[Any]]:
        """`column(maps, key)` for each key, maps being the spans' "attributes" or "resources": each read once per
        trace, the keys not yet read in one pass over the maps (a long trace's maps do not stay in cache between
        passes)."""
        maps = self.attributes if source == "attributes" else self.resources
        missing = tuple(key for key in dict.fromkeys(keys) if (source, key) not in self._read)
        if missing:
            read = trace_accelerator.compiled("read_fields", lambda native: native.read_fields(maps, missing))
            if read is None:
                read = [column(maps, key) for key in missing]
            for key, values in zip(missing, read, strict=True):
                self._read[(source, key)] = values
        return [self._read[(source, key)] for key in keys]

    def follows_from(self) -> list[bool]:
        """Whether each span's parent reference is FOLLOWS_FROM (read only where a span has links)."""
        if self._follows_from is None:
            self._follows_from = [False] * len(self.ids)
            for i in compress(range(len(self.ids)), self.links):
                self._follows_from[i] = is_follows_from(self.spans[i])
        return self._follows_from

    @classmethod
    def compiled(cls, native: Any, spans: list[dict[str, Any]], attribute_keys: Sequence[str] = (),
                 resource_keys: Sequence[str] = ()) -> Trace | None:
        """`read` by the C accelerator, in one pass that also reads `fields` of these attribute and resource keys;
        None (hand back to `read`) for spans not already in the store's shape, or with a repeated or empty id."""
        attribute_keys, resource_keys = tuple(dict.fromkeys(attribute_keys)), tuple(dict.fromkeys(resource_keys))
        read = native.columns(spans, EMPTY, attribute_keys, resource_keys)
        if read is None or len(read[10]) != len(spans):  # a repeated id: the readable rules
            return None
        trace = cls(spans, *read[:12])
        for source, keys, values in (("attributes", attribute_keys, read[12]), ("resources", resource_keys, read[13])):
            trace._read.update(((source, key), values) for key, values in zip(keys, values, strict=True))
        return trace.adopt_shared_children()

    @classmethod
    def read(cls, spans: Sequence[dict[str, Any]]) -> Trace:
        """`of` in Python, the readable implementation (and where the rules live)."""
        kept: dict[str, dict[str, Any]] = {}
        times: list[tuple[int, int]] = []
        for span in spans:
            span_id = span.get("span_id") if isinstance(span, dict) else None
            if not isinstance(span_id, str) or not span_id or span_id in kept:
                continue
            try:
                times.append((int(span["start_ns"]), int(span["end_ns"])))
            except (KeyError, TypeError, ValueError):
                continue
            kept[span_id] = span
        unique = list(kept.values())
        ids = list(kept)
        parent_ids = [p if isinstance(p, str) else None for p in column(unique, "parent_span_id")]
        position = dict(zip(ids, range(len(ids)), strict=True))
        attributes = [m if isinstance(m, dict) and m else EMPTY for m in column(unique, "attributes")]
        resources = [m if isinstance(m, dict) and m else EMPTY for m in column(unique, "resource_attributes")]
        return cls(unique, ids, parent_ids, [s for s, _ in times], [e for _, e in times], column(unique, "kind"),
                   column(unique, "service_name"), attributes, resources, column(unique, "links"),
                   column(unique, "name"), position,
                   [position.get(p, -1) if p else -1 for p in parent_ids]).adopt_shared_children()

    def adopt_shared_children(self) -> Trace:
        """The shared-span rule above: each other child of a CLIENT half moves to the SERVER half (of possibly
        several: a retried call) whose time holds its start; one of no half's time stays where it was."""
        marks = self.fields("attributes", (SHARED_SPAN_ATTRIBUTE,))[0]
        if not any(marks):
            return self
        halves: dict[int, list[int]] = {}
        for i, mark in enumerate(marks):
            if mark and self.parent[i] >= 0 and self.parent_ids[i] == mark:
                halves.setdefault(self.parent[i], []).append(i)
        for i, parent in enumerate(self.parent):
            servers = halves.get(parent)
            if servers is None or i in servers:
                continue
            holding = [h for h in servers if self.start[h] <= self.start[i] <= self.end[h]]
            if holding:
                half = max(holding, key=self.start.__getitem__)
                self.parent[i], self.parent_ids[i] = half, self.ids[half]
        return self
