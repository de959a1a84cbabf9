"""Decode JSON the way Go's `encoding/json` decodes it into a client's structs (tests/jaeger_contract/go_types.json),
so a test can tell whether Grafana's or Jaeger's Go code would accept hopscope's answer: `json.Unmarshal` fails on
a value of the wrong JSON type (a number into a string, a float into an int, a negative number into a uint), ignores
unknown keys, matches keys case-insensitively and leaves a missing field at its zero value — which `decode`
reports, unless the field is omitempty: a field the client reads but we never send is a silent zero there."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

CONTRACTS = Path(__file__).parent / "jaeger_contract"
GO_TYPES = json.loads((CONTRACTS / "go_types.json").read_text())
_INT_RANGES = {"int": (-(2**63), 2**63 - 1), "int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1),
               "uint32": (0, 2**32 - 1), "uint64": (0, 2**64 - 1)}


class GoDecodeError(AssertionError):
    pass


def _resolve(namespace: str, name: str) -> tuple[str, dict[str, Any]]:
    types = GO_TYPES["types"]
    if f"{namespace}.{name}" in types:
        return namespace, types[f"{namespace}.{name}"]
    package, _, bare = name.partition(".")
    other = GO_TYPES["imports"].get(namespace, {}).get(package)
    if other and f"{other}.{bare}" in types:
        return other, types[f"{other}.{bare}"]
    raise KeyError(f"{namespace}.{name}: not in go_types.json")


def decode(value: Any, go_type: str, namespace: str, path: str = "$", missing: list[str] | None = None) -> list[str]:
    """Raise GoDecodeError where json.Unmarshal would fail; return the struct fields absent from `value`."""
    missing = [] if missing is None else missing
    if value is None:
        return missing  # null leaves the zero value, for every Go type
    if go_type in ("interface{}", "any"):
        return missing
    if go_type.startswith("*"):
        return decode(value, go_type[1:], namespace, path, missing)
    if go_type.startswith("[]"):
        if not isinstance(value, list):
            raise GoDecodeError(f"{path}: {type(value).__name__} into {go_type}")
        for i, item in enumerate(value):
            decode(item, go_type[2:], namespace, f"{path}[{i}]", missing)
        return missing
    mapped = re.fullmatch(r"map\[(\w+)\](.+)", go_type)
    if mapped:
        if not isinstance(value, dict):
            raise GoDecodeError(f"{path}: {type(value).__name__} into {go_type}")
        for key, item in value.items():
            decode(item, mapped.group(2), namespace, f"{path}.{key}", missing)
        return missing
    if go_type == "string":
        if not isinstance(value, str):
            raise GoDecodeError(f"{path}: {json.dumps(value)} into a Go string")
    elif go_type == "bool":
        if not isinstance(value, bool):
            raise GoDecodeError(f"{path}: {json.dumps(value)} into a Go bool")
    elif go_type in _INT_RANGES:
        low, high = _INT_RANGES[go_type]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise GoDecodeError(f"{path}: {json.dumps(value)} into a Go {go_type}")
    elif go_type == "float64":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise GoDecodeError(f"{path}: {json.dumps(value)} into a Go float64")
    else:
        namespace, shape = _resolve(namespace, go_type)
        if shape["kind"] == "alias":
            return decode(value, shape["type"], namespace, path, missing)
        if not isinstance(value, dict):
            raise GoDecodeError(f"{path}: {type(value).__name__} into struct {go_type}")
        by_key = {key.lower(): key for key in value}  # exact first, then case-insensitive, as Go does
        for field in shape["fields"]:
            key = field["json"] if field["json"] in value else by_key.get(field["json"].lower())
            if key is None:
                if not field["omitempty"]:  # an omitempty field is absent whenever it is zero: not missing
                    missing.append(f"{path}.{field['json']}")
            else:
                decode(value[key], field["type"], namespace, f"{path}.{field['json']}", missing)
    return missing
