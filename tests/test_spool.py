"""The write-ahead spool's writer (collector/spool.py): what is appended is durable and read back whole, segments
roll at their size, a closed spool refuses appends, and a full disk (a real, small tmpfs) fails whole groups,
leaves no byte of them behind, refuses at once meanwhile and takes appends again once space returns. Reading the spool
back at start-up is tests/test_spool_recovery.py; the whole-server crash tests are tests/test_durability.py."""

from __future__ import annotations

import concurrent.futures
import os
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hopscope.collector.errors import StorageUnavailable
from hopscope.collector.spool import (
    GROUP_START,
    MAGIC,
    RECORD_HEADER,
    SpoolRecord,
    SpoolWriter,
    list_segments,
    read_payloads,
    segment_path,
)
from hopscope.collector.spool_recovery import scan_segment
from tests.small_disk import fill, small_tmpfs

PAYLOADS = [b"first", b"", b"x" * 70_000, bytes(range(256)), b"last one"]


def write_spool(directory: Path, payloads: list[bytes], segment_bytes: int = 1 << 26) -> list[SpoolRecord]:
    """Append `payloads` (record i carries i + 1 spans), each in its own group (the next is appended once the last is
    durable); returns the durable records."""
    durable: list[SpoolRecord] = []
    writer = SpoolWriter(directory, 1, durable.extend, segment_bytes)
    for index, payload in enumerate(payloads):
        writer.append(payload, spans=index + 1).result(timeout=10)
    writer.close()
    return durable


def test_what_was_acknowledged_is_read_back_whole_and_in_order(tmp_path: Path) -> None:
    durable = write_spool(tmp_path, PAYLOADS)
    assert [record.spans for record in durable] == [1, 2, 3, 4, 5]
    assert scan_segment(segment_path(tmp_path, 1), 0, newest=True).records == durable
    assert list(read_payloads(segment_path(tmp_path, 1), durable[0].start, durable[-1].end)) == PAYLOADS
    assert list(read_payloads(segment_path(tmp_path, 1), durable[2].start, durable[2].end)) == [PAYLOADS[2]]


def test_segments_roll_at_their_size_and_records_never_span_two(tmp_path: Path) -> None:
    payloads = [os.urandom(1_000) for _ in range(25)]
    durable = write_spool(tmp_path, payloads, segment_bytes=4_096)
    segments = list_segments(tmp_path)
    # 1,016-byte records: a segment takes them until it has passed 4,096 bytes, 5 each
    assert segments == [1, 2, 3, 4, 5]
    by_segment: dict[int, list[SpoolRecord]] = {}
    for record in durable:
        by_segment.setdefault(record.segment, []).append(record)
    assert sorted(by_segment) == segments
    for segment, records in by_segment.items():
        assert scan_segment(segment_path(tmp_path, segment), 0, newest=segment == 5).records == records
        assert records[0].start == 0   # a record past the size starts the next segment
    read = [payload for segment, records in by_segment.items()
            for payload in read_payloads(segment_path(tmp_path, segment), records[0].start, records[-1].end)]
    assert read == payloads


def test_each_record_carries_magic_length_checksum_and_span_count_and_a_group_flag(tmp_path: Path) -> None:
    write_spool(tmp_path, [b"payload"])
    data = segment_path(tmp_path, 1).read_bytes()
    assert RECORD_HEADER.unpack_from(data, 0) == (MAGIC, 7, zlib.crc32(b"payload"), 1 | GROUP_START)


def test_only_a_groups_first_record_is_flagged(tmp_path: Path) -> None:
    """The flag is what lets recovery tell damage from a torn tail, so it must mark group starts and nothing else."""
    release = concurrent.futures.Future[None]()
    durable: list[SpoolRecord] = []

    def on_durable(records: list[SpoolRecord]) -> None:
        durable.extend(records)
        release.result(timeout=10)  # hold the writer so that the next appends pile up into one group

    writer = SpoolWriter(tmp_path, 1, on_durable)
    first = writer.append(b"alone", 1)
    while not durable:
        time.sleep(0.01)
    grouped = [writer.append(b"together %d" % index, 1) for index in range(3)]
    release.set_result(None)
    for future in [first, *grouped]:
        future.result(timeout=10)
    writer.close()
    data = segment_path(tmp_path, 1).read_bytes()
    flags = [bool(RECORD_HEADER.unpack_from(data, record.start)[3] & GROUP_START) for record in durable]
    assert flags == [True, True, False, False]


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


# ---- a full disk ------------------------------------------------------------------------------------------------

@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "disk", mib=4) as mount:
        yield mount


def _wait_for(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _on_disk(spool: Path) -> list[bytes]:
    paths = [segment_path(spool, segment) for segment in list_segments(spool)]
    return [payload for path in paths for payload in read_payloads(path, 0, path.stat().st_size)]


def test_a_full_disk_fails_the_group_leaves_nothing_of_it_and_recovers_when_space_returns(tiny_disk: Path) -> None:
    spool = tiny_disk / "spool"
    spool.mkdir()
    durable: list[SpoolRecord] = []
    writer = SpoolWriter(spool, 1, durable.extend, segment_bytes=256 * 1024, probe_seconds=0.1)
    filler = fill(tiny_disk, leave_bytes=600 * 1024)
    acknowledged: list[bytes] = []
    refused = 0
    for index in range(40):  # 100 kB each: the disk fills after about 6, rolling segments on the way
        payload = bytes([index]) * 100_000
        try:
            writer.append(payload, 1).result(timeout=10)
            acknowledged.append(payload)
        except StorageUnavailable as refusal:
            refused += 1
            assert "No space left on device" in str(refusal)
    assert acknowledged and refused, (len(acknowledged), refused)
    assert writer.unwritable is not None
    with pytest.raises(StorageUnavailable, match="cannot be written"):
        writer.append(b"refused at once, not queued", 1)
    assert _on_disk(spool) == acknowledged, "exactly the acknowledged records are on disk: nothing of a failed group"
    assert durable[-1].end == segment_path(spool, durable[-1].segment).stat().st_size

    filler.unlink()
    _wait_for(lambda: writer.unwritable is None)
    writer.append(b"after space returned", 1).result(timeout=10)
    writer.close()
    assert _on_disk(spool) == [*acknowledged, b"after space returned"]
    assert scan_segment(segment_path(spool, list_segments(spool)[-1]), 0, newest=True).torn_at is None


def test_a_failed_group_that_rolled_into_a_new_segment_takes_that_segment_back(tiny_disk: Path) -> None:
    spool = tiny_disk / "spool"
    spool.mkdir()
    durable: list[SpoolRecord] = []
    release = concurrent.futures.Future[None]()

    def on_durable(records: list[SpoolRecord]) -> None:
        durable.extend(records)
        release.result(timeout=10)

    writer = SpoolWriter(spool, 1, on_durable, segment_bytes=64 * 1024, probe_seconds=0.1)
    first = writer.append(b"a" * 70_000, 1)  # past the segment size: the next record rolls
    _wait_for(lambda: bool(durable))
    fill(tiny_disk, leave_bytes=150 * 1024)
    group = [writer.append(b"b" * 70_000, 1), writer.append(b"c" * 200_000, 1)]  # one group: rolls, then fails
    release.set_result(None)
    first.result(timeout=10)
    for future in group:
        with pytest.raises(StorageUnavailable):
            future.result(timeout=10)
    assert list_segments(spool) == [1], "the segment the failed group opened is gone"
    assert segment_path(spool, 1).stat().st_size == durable[0].end
    writer.close()
