"""What every input to the decoders must satisfy, whatever its bytes: shared by the Hypothesis tests
(tests/test_fuzz.py) and the coverage-guided fuzzer (scripts/fuzz.py).

An Export body is either refused with a precise MalformedRequest, or accepted; and what is accepted is what the
spool acknowledges, so the flattener (the C walker, and the Python reference it must agree with) has to turn it
into exactly one row per accepted span. A body that validation accepts and the flattener chokes on is the worst
case: an acknowledged record that lands in quarantine instead of the database.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from hopscope.collector import columns
from hopscope.collector.errors import MalformedRequest
from hopscope.collector.otlp_json import parse_json_request
from hopscope.collector.validation import ValidatedExport, validate_export, validate_protobuf

CORPUS = Path(__file__).resolve().parent / "fuzz_corpus"


def corpus(suffix: str, kind: str = "") -> list[bytes]:
    """Kind "seed": real captured Exports (an Envoy sidecar's and an SDK app's), what mutations start from; "found":
    inputs that broke something once; "": both."""
    return [path.read_bytes() for path in sorted(CORPUS.glob(f"{kind}*{suffix}"))]


def check_protobuf_body(body: bytes) -> ValidatedExport | None:
    try:
        validated = validate_protobuf(body)
    except MalformedRequest as refusal:
        assert str(refusal).startswith("body is not a valid OTLP ExportTraceServiceRequest: "), refusal
        return None
    check_flattens(validated)
    return validated


def check_json_body(body: bytes) -> ValidatedExport | None:
    try:
        request = parse_json_request(body)
    except MalformedRequest as refusal:
        assert str(refusal).startswith(("body is not", "body must be", "expected a JSON object", "'")), refusal
        return None
    validated = validate_export(request)
    check_flattens(validated)
    return validated


def check_flattens(validated: ValidatedExport) -> None:
    """Accepted spans flatten to one row each, and the C walker agrees with the Python reference."""
    if not validated.accepted_spans:
        return
    batch = columns.requests_to_record_batch([validated.payload])
    assert batch.num_rows == validated.accepted_spans
    if columns._ACCELERATOR is not None:
        reference = columns.requests_to_columns_python([validated.payload])
        fast = batch.to_pydict()
        for name, values in reference.items():
            assert _comparable(fast[name]) == _comparable(values), name


def _comparable(values: list[Any]) -> list[Any]:
    """JSON columns compared as documents (key order and float spelling may differ), NaN equal to NaN."""
    def one(value: Any) -> Any:
        if isinstance(value, str) and value[:1] in "[{":
            try:
                return json.loads(value)
            except ValueError:
                return value
        if isinstance(value, float) and math.isnan(value):
            return "NaN"
        return value
    return [one(value) for value in values]
