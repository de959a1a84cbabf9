"""Reading the spool back at start-up (collector/spool_recovery.py): a torn tail — what a crash leaves of a group that
was never fsynced, so never acknowledged — is cut away; anything else that does not read as records was acknowledged,
so recovery refuses and names the file and offset, or under --spool-quarantine keeps a copy aside and replays every
record it can still read. Serve's side of it (exit, message, --spool-quarantine) is at the end."""

from __future__ import annotations

import os
import struct
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from hopscope.collector.spool import MAGIC, RECORD_HEADER, SpoolRecord, SpoolWriter, read_payloads, segment_path
from hopscope.collector.spool_recovery import QUARANTINE_DIR, SpoolDamaged, SpoolFromOlderVersion, recover_spool
from hopscope.serve_process import ServeProcess
from tests.conftest import count_spans
from tests.otlp_requests import request_with
from tests.test_spool import write_spool

PAYLOADS = [b"first", b"x" * 70_000, bytes(range(256)), b"y" * 3_000, b"last one"]


def _payloads(directory: Path, records: list[SpoolRecord]) -> list[bytes]:
    return [next(read_payloads(segment_path(directory, r.segment), r.start, r.end)) for r in records]


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


# How a crash can leave the tail of the newest segment's last group, and where recovery must cut: after the last whole
# record. (write_spool waits for each append, so every record is its own group.)
TORN_TAILS: dict[str, Callable[[bytes, list[SpoolRecord]], bytes]] = {
    "part of the last header": lambda data, records: data[:records[-1].start + 5],
    "the header but part of the payload": lambda data, records: data[:records[-1].end - 3],
    "the last payload's bytes changed": lambda data, records: data[:-1] + bytes([data[-1] ^ 0xFF]),
    "a length running past the file": lambda data, records: data + struct.pack("<4sIII", MAGIC, 10**6, 0, 1) + b"abc",
    "zeros after the last record": lambda data, records: data + bytes(4096),
}


@pytest.mark.parametrize("damage", list(TORN_TAILS))
def test_a_torn_tail_is_cut_away_and_every_whole_record_kept(tmp_path: Path, damage: str) -> None:
    durable = write_spool(tmp_path, PAYLOADS)
    path = segment_path(tmp_path, 1)
    path.write_bytes(TORN_TAILS[damage](path.read_bytes(), durable))
    damaged_last = damage in ("part of the last header", "the header but part of the payload",
                              "the last payload's bytes changed")
    kept = durable[:-1] if damaged_last else durable
    assert recover_spool(tmp_path, None, quarantine=False).records == kept
    assert path.stat().st_size == kept[-1].end, "the torn tail is truncated away"
    assert recover_spool(tmp_path, None, quarantine=False).records == kept, "and recovering again finds the same"


def test_recovery_starts_at_the_watermark_and_deletes_stored_segments(tmp_path: Path) -> None:
    durable = write_spool(tmp_path, PAYLOADS)
    segment_path(tmp_path, 0).write_bytes(b"a segment stored before the watermark's")
    assert recover_spool(tmp_path, (1, durable[2].start), quarantine=False).records == durable[2:]
    assert not segment_path(tmp_path, 0).exists()


# Damage to acknowledged records: each must be refused, naming the file and the first byte that does not read.
def _bit_flip_in_a_payload(path: Path, records: list[SpoolRecord]) -> int:
    _flip(path, records[1].start + RECORD_HEADER.size + 1000)
    return records[1].start


def _bit_flip_in_a_length(path: Path, records: list[SpoolRecord]) -> int:
    _flip(path, records[2].start + 4)
    return records[2].start


def _bytes_cut_from_the_middle(path: Path, records: list[SpoolRecord]) -> int:
    data = path.read_bytes()
    path.write_bytes(data[:records[1].start + 500] + data[records[1].end - 100:])
    return records[1].start


def _magic_overwritten(path: Path, records: list[SpoolRecord]) -> int:
    data = bytearray(path.read_bytes())
    data[records[3].start: records[3].start + 4] = b"\0\0\0\0"
    path.write_bytes(bytes(data))
    return records[3].start


DAMAGE: dict[str, Callable[[Path, list[SpoolRecord]], int]] = {
    "a bit flip in a payload": _bit_flip_in_a_payload,
    "a bit flip in a length": _bit_flip_in_a_length,
    "bytes cut from the middle of a record": _bytes_cut_from_the_middle,
    "a record's magic overwritten": _magic_overwritten,
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damage_before_a_later_group_is_refused_with_file_and_offset(tmp_path: Path, damage: str) -> None:
    durable = write_spool(tmp_path, PAYLOADS)
    path = segment_path(tmp_path, 1)
    offset = DAMAGE[damage](path, durable)
    before = path.read_bytes()
    with pytest.raises(SpoolDamaged) as refused:
        recover_spool(tmp_path, None, quarantine=False)
    assert refused.value.damages[0].path == path and refused.value.damages[0].start == offset
    assert f"{path} at byte offset {offset}" in str(refused.value)
    assert path.read_bytes() == before, "a refusal changes nothing on disk"


def test_an_older_segment_cut_short_is_damage_not_a_torn_tail(tmp_path: Path) -> None:
    """An older segment was fsynced whole before the next one was made: its end was acknowledged."""
    durable = write_spool(tmp_path, [os.urandom(1_000) for _ in range(12)], segment_bytes=4_096)
    first = segment_path(tmp_path, 1)
    cut = [r for r in durable if r.segment == 1][-1]
    first.write_bytes(first.read_bytes()[:cut.end - 10])
    with pytest.raises(SpoolDamaged) as refused:
        recover_spool(tmp_path, None, quarantine=False)
    assert (refused.value.damages[0].path, refused.value.damages[0].start) == (first, cut.start)


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_quarantine_keeps_a_copy_and_replays_every_readable_record(tmp_path: Path, damage: str) -> None:
    durable = write_spool(tmp_path, PAYLOADS)
    path = segment_path(tmp_path, 1)
    DAMAGE[damage](path, durable)
    damaged = path.read_bytes()
    recovery = recover_spool(tmp_path, None, quarantine=True)
    lost = {"a bit flip in a payload": 1, "a bit flip in a length": 2, "bytes cut from the middle of a record": 1,
            "a record's magic overwritten": 3}[damage]
    assert _payloads(tmp_path, recovery.records) == [p for i, p in enumerate(PAYLOADS) if i != lost]
    assert recovery.unreadable_records == 1
    assert (tmp_path / QUARANTINE_DIR / f"{path.name}.damaged").read_bytes() == damaged
    again = recover_spool(tmp_path, None, quarantine=False)
    assert again.records == recovery.records and not again.quarantined, "the rewritten segment reads clean"


def test_quarantine_from_a_watermark_inside_the_damaged_segment(tmp_path: Path) -> None:
    durable = write_spool(tmp_path, PAYLOADS)
    path = segment_path(tmp_path, 1)
    _flip(path, durable[3].start + RECORD_HEADER.size + 10)
    recovery = recover_spool(tmp_path, (1, durable[2].start), quarantine=True)
    assert _payloads(tmp_path, recovery.records) == [PAYLOADS[2], PAYLOADS[4]]
    assert recovery.records[0].start == durable[2].start, "offsets from the watermark on are where DuckDB expects"


def test_an_interrupted_quarantine_is_redone(tmp_path: Path) -> None:
    durable = write_spool(tmp_path, PAYLOADS)
    path = segment_path(tmp_path, 1)
    _flip(path, durable[1].start + RECORD_HEADER.size + 10)
    path.with_name(path.name + ".tmp").write_bytes(b"half a rewrite, cut by a crash before its rename")
    assert len(recover_spool(tmp_path, None, quarantine=True).records) == len(PAYLOADS) - 1
    assert not path.with_name(path.name + ".tmp").exists()


def test_a_spool_from_before_the_magic_is_refused_not_cut_as_a_torn_tail(tmp_path: Path) -> None:
    """Format 1 (u32 length | crc | spans | payload) would read as one long torn tail: it must stop the start."""
    payload = b"an acknowledged request written by an earlier version"
    segment_path(tmp_path, 3).write_bytes(struct.pack("<III", len(payload), zlib.crc32(payload), 2) + payload)
    with pytest.raises(SpoolFromOlderVersion, match="000000000003.spool holds unreplayed records from byte 0"):
        recover_spool(tmp_path, (3, 0), quarantine=True)
    assert segment_path(tmp_path, 3).stat().st_size == 12 + len(payload)


# ---- serve ------------------------------------------------------------------------------------------------------

def test_serve_refuses_to_start_on_damage_and_starts_with_quarantine(
        tmp_path: Path, start_serve: Callable[..., ServeProcess]) -> None:
    db = tmp_path / "spans.duckdb"
    spool = Path(f"{db}.spool")
    spool.mkdir()
    durable: list[SpoolRecord] = []
    writer = SpoolWriter(spool, 1, durable.extend)
    for _ in range(5):
        writer.append(request_with(3).SerializeToString(), 3).result(timeout=10)
    writer.close()
    _flip(segment_path(spool, 1), durable[1].start + RECORD_HEADER.size + 20)

    started = time.monotonic()
    with pytest.raises(RuntimeError, match="exited with 1 before it was ready") as refused:
        start_serve()
    print(f"serve refused to start after {time.monotonic() - started:.2f} s")
    assert f"{segment_path(spool, 1)} at byte offset {durable[1].start}" in str(refused.value)
    assert "--spool-quarantine" in str(refused.value)

    server = start_serve("--spool-quarantine")
    assert server.stop() == 0
    log = (tmp_path / "serve-1.log").read_text()
    assert "quarantined" in log and "about 1 record(s)" in log
    assert count_spans(db) == 4 * 3, "every readable record is stored"
