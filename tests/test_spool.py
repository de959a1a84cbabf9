"""The write-ahead spool on its own (collector/spool.py): what is appended is durable and read back whole, a record
torn by a crash is cut away at recovery and nothing before it is lost, segments roll at their size, and a closed
spool refuses appends. The whole-server crash tests are tests/test_durability.py."""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from hopscope.collector.errors import StorageUnavailable
from hopscope.collector.spool import (
    RECORD_HEADER,
    SpoolRecord,
    SpoolWriter,
    list_segments,
    read_payloads,
    recover_segment,
    segment_path,
)

PAYLOADS = [b"first", b"", b"x" * 70_000, bytes(range(256)), b"last one"]


def _write(directory: Path, payloads: list[bytes], segment_bytes: int = 1 << 26) -> list[SpoolRecord]:
    durable: list[SpoolRecord] = []
    writer = SpoolWriter(directory, 1, durable.extend, segment_bytes)
    futures = [writer.append(payload, spans=index + 1) for index, payload in enumerate(payloads)]
    for future in futures:
        future.result(timeout=10)
    writer.close()
    return durable


def test_what_was_acknowledged_is_read_back_whole_and_in_order(tmp_path: Path) -> None:
    durable = _write(tmp_path, PAYLOADS)
    assert [record.spans for record in durable] == [1, 2, 3, 4, 5]
    assert recover_segment(segment_path(tmp_path, 1), 0) == durable
    assert list(read_payloads(segment_path(tmp_path, 1), durable[0].start, durable[-1].end)) == PAYLOADS
    assert list(read_payloads(segment_path(tmp_path, 1), durable[2].start, durable[2].end)) == [PAYLOADS[2]]


# How a crash (or a disk) can leave the tail of a segment, and where recovery must cut: after the last whole record.
TORN_TAILS: dict[str, Callable[[bytes, list[SpoolRecord]], bytes]] = {
    "part of the last header": lambda data, records: data[:records[-1].start + 5],
    "the header but part of the payload": lambda data, records: data[:records[-1].end - 3],
    "the last payload's bytes changed": lambda data, records: data[:-1] + bytes([data[-1] ^ 0xFF]),
    "a length running past the file": lambda data, records: data + struct.pack("<III", 10**6, 0, 1) + b"abc",
    "zeros after the last record": lambda data, records: data + bytes(4096),
}


@pytest.mark.parametrize("damage", list(TORN_TAILS))
def test_a_torn_tail_is_cut_away_and_every_whole_record_kept(tmp_path: Path, damage: str) -> None:
    durable = _write(tmp_path, PAYLOADS)
    path = segment_path(tmp_path, 1)
    path.write_bytes(TORN_TAILS[damage](path.read_bytes(), durable))
    damaged_last = damage in ("part of the last header", "the header but part of the payload",
                              "the last payload's bytes changed")
    kept = durable[:-1] if damaged_last else durable
    assert recover_segment(path, 0) == kept
    assert path.stat().st_size == kept[-1].end, "the torn tail is truncated away"
    assert recover_segment(path, 0) == kept, "and recovering again finds the same"


def test_recovery_starts_at_the_watermark(tmp_path: Path) -> None:
    durable = _write(tmp_path, PAYLOADS)
    assert recover_segment(segment_path(tmp_path, 1), durable[2].start) == durable[2:]


def test_segments_roll_at_their_size_and_records_never_span_two(tmp_path: Path) -> None:
    payloads = [os.urandom(1_000) for _ in range(25)]
    durable = _write(tmp_path, payloads, segment_bytes=4_096)
    segments = list_segments(tmp_path)
    # 1,012-byte records: a segment takes them until it has passed 4,096 bytes, 5 each
    assert segments == [1, 2, 3, 4, 5]
    by_segment: dict[int, list[SpoolRecord]] = {}
    for record in durable:
        by_segment.setdefault(record.segment, []).append(record)
    assert sorted(by_segment) == segments
    for segment, records in by_segment.items():
        assert recover_segment(segment_path(tmp_path, segment), 0) == records
        assert records[0].start == 0   # a record past the size starts the next segment
    read = [payload for segment, records in by_segment.items()
            for payload in read_payloads(segment_path(tmp_path, segment), records[0].start, records[-1].end)]
    assert read == payloads


def test_each_record_carries_its_length_checksum_and_span_count(tmp_path: Path) -> None:
    _write(tmp_path, [b"payload"])
    data = segment_path(tmp_path, 1).read_bytes()
    assert RECORD_HEADER.unpack_from(data, 0) == (7, zlib.crc32(b"payload"), 1)


def test_a_closed_spool_refuses_appends(tmp_path: Path) -> None:
    writer = SpoolWriter(tmp_path, 1, lambda records: None)
    writer.close()
    with pytest.raises(StorageUnavailable, match="closed"):
        writer.append(b"late", 1)


def test_only_spool_files_are_segments(tmp_path: Path) -> None:
    for name in ("000000000003.spool", "000000000001.spool", "notes.txt", "abc.spool", "000000000002.spool.tmp"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "quarantine").mkdir()
    assert list_segments(tmp_path) == [1, 3]
