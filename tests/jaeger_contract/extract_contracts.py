"""Regenerate go_types.json: the JSON shapes the real Jaeger clients decode, read from their Go sources.

    python tests/jaeger_contract/extract_contracts.py --jaeger <jaeger git dir> --grafana <grafana-jaeger-datasource
    git dir> > tests/jaeger_contract/go_types.json

Each struct becomes its fields as Go's encoding/json sees them (JSON key, omitempty, Go type), each `type X string`
an alias; anonymous inner structs get the name `<Outer>.<Field>`. Only the shapes are kept, not the sources.
tests/go_json.py decodes hopscope's answers against them the way `json.Unmarshal` would.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys

# (namespace, repository, git dir option, commit, path, struct names to keep: None = all)
SOURCES = (
    ("grafana", "grafana/grafana-jaeger-datasource", "grafana", "9d46d95bdbb6326d110a44564cc47d9e29832813",
     "pkg/jaeger/types/types.go", None),
    ("grafana", "grafana/grafana-jaeger-datasource", "grafana", "9d46d95bdbb6326d110a44564cc47d9e29832813",
     "pkg/jaeger/types/grpc_types.go", None),
    # the last commit before jaeger PR #9260 removed the v1 search endpoints (ui.Operation went with them)
    ("jaeger_ui", "jaegertracing/jaeger", "jaeger", "7f2a6ef2f56b3e18227e09ab529623b406de7983",
     "internal/uimodel/model.go", None),
    ("jaeger_v1", "jaegertracing/jaeger", "jaeger", "7f2a6ef2f56b3e18227e09ab529623b406de7983",
     "cmd/jaeger/internal/extension/jaegerquery/internal/http_handler.go", ("structuredResponse", "structuredError")),
    ("jaeger_v3", "jaegertracing/jaeger", "jaeger", "8498073ff809b1a3923521920a9b1b017ea97ecf",
     "internal/proto/api_v3/query_service.pb.go",
     ("GRPCGatewayError", "GRPCGatewayError_GRPCGatewayErrorDetails")),  # json.Marshal'ed: its json tags count
)
# package names the sources qualify types with, as namespaces here (http_handler.go imports uimodel as `ui`)
IMPORTS = {"jaeger_v1": {"ui": "jaeger_ui"}}
_FIELD = re.compile(r"^\s*(\w+)\s+(.+?)\s*(?:`([^`]*)`)?\s*(?://.*)?$")
_TAG_JSON = re.compile(r'json:"([^"]*)"')


def _fields(lines: list[str], start: int, owner: str, types: dict) -> tuple[list[dict], int]:
    """The fields of the struct whose body starts at lines[start]; returns them and the line after its `}`."""
    fields, i = [], start
    while i < len(lines):
        line = lines[i].split("//")[0].rstrip() if "`" not in lines[i] else lines[i].rstrip()
        stripped = line.strip()
        i += 1
        if not stripped:
            continue
        if stripped.startswith("}"):
            return fields, i
        inner = re.match(r"^(\w+)\s+(\[\]|\*)?struct\s*\{$", stripped)
        if inner:  # an anonymous struct: named after its field, closed by `} `json:"…"``
            name = f"{owner}.{inner.group(1)}"
            inner_fields, i = _fields(lines, i, name, types)
            types[name] = {"kind": "struct", "fields": inner_fields}
            tag = _TAG_JSON.search(lines[i - 1])
            fields.append(_field(inner.group(1), (inner.group(2) or "") + name, tag.group(1) if tag else None))
            continue
        match = _FIELD.match(line)
        if match:
            tag = _TAG_JSON.search(match.group(3) or "")
            fields.append(_field(match.group(1), match.group(2), tag.group(1) if tag else None))
    raise ValueError(f"{owner}: no closing brace")


def _field(name: str, go_type: str, tag: str | None) -> dict:
    key, _, options = (tag if tag is not None else name).partition(",")
    return {"name": name, "json": key or name, "omitempty": "omitempty" in options.split(","), "type": go_type}


def parse_go_types(source: str, keep: tuple[str, ...] | None) -> dict:
    lines, types, i = source.splitlines(), {}, 0
    while i < len(lines):
        struct = re.match(r"^type (\w+) struct \{$", lines[i])
        alias = re.match(r"^type (\w+) (string|int|int32|int64|uint32|uint64|float64|bool)$", lines[i])
        i += 1
        if struct:
            fields, i = _fields(lines, i, struct.group(1), types)
            types[struct.group(1)] = {"kind": "struct", "fields": [f for f in fields if f["json"] != "-"]}
        elif alias:
            types[alias.group(1)] = {"kind": "alias", "type": alias.group(2)}
    if keep is not None:
        types = {name: shape for name, shape in types.items() if name.split(".")[0] in keep}
    return types


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jaeger", required=True, help="git dir of jaegertracing/jaeger")
    parser.add_argument("--grafana", required=True, help="git dir of grafana/grafana-jaeger-datasource")
    arguments = parser.parse_args()
    out: dict = {"sources": [], "imports": IMPORTS, "types": {}}
    for namespace, repository, option, commit, path, keep in SOURCES:
        source = subprocess.run(["git", f"--git-dir={getattr(arguments, option)}", "show", f"{commit}:{path}"],
                                check=True, capture_output=True, text=True).stdout
        out["sources"].append({"namespace": namespace, "repository": repository, "commit": commit, "path": path})
        for name, shape in parse_go_types(source, keep).items():
            out["types"][f"{namespace}.{name}"] = shape
    head = json.dumps({key: out[key] for key in ("sources", "imports")}, indent=1)[:-2]
    types = ",\n".join(f"  {json.dumps(name)}: {json.dumps(shape)}" for name, shape in out["types"].items())
    sys.stdout.write(f'{head},\n "types": {{\n{types}\n }}\n}}\n')  # one line per type: diffs stay readable
    return 0


if __name__ == "__main__":
    sys.exit(main())
