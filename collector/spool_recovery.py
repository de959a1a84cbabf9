"""Reading the spool back at start-up: replay what DuckDB lacks, cut a torn tail, refuse on corruption.

A crash can only tear what was never fsynced, so never acknowledged: bytes past the last whole record of the newest
segment, within its last group. Anything else that does not read as a record was acknowledged — a bit flip, a
truncated or overwritten record in the middle of a segment, an older segment cut short — and cutting it away would
silently lose spans a client was told were stored. So damage is told apart from a torn tail by what follows it:

* in an older segment, any unreadable byte is damage (a segment is fsynced whole before the next one is made);
* in the newest, unreadable bytes followed by a whole group-first record are damage (that group was written after
  everything before it was fsynced); unreadable bytes with no group-first record after them are the torn tail.

The one case this cannot see: damage inside the newest segment's last group. On damage, serve refuses to start and
names the file and offset (SpoolDamaged); with --spool-quarantine it keeps a copy of the segment in
`quarantine/`, rewrites the segment with every record it could read (records between damaged bytes included) and
starts, reporting what it could not read.
"""

from __future__ import annotations

import logging
import os
import shutil
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from hopscope.collector.spool import (
    GROUP_START,
    MAGIC,
    RECORD_HEADER,
    SEGMENT_SUFFIX,
    SpoolRecord,
    encode_record,
    fsync_directory,
    list_segments,
    read_payloads,
    segment_number,
    segment_path,
)

log = logging.getLogger("hopscope.collector")

QUARANTINE_DIR = "quarantine"


@dataclass(frozen=True)
class Damage:
    """Bytes [start, end) of a segment that were acknowledged and do not read as records."""

    path: Path
    start: int
    end: int
    unreadable_records: int  # at least 1: record headers found in the range that fail their checks, or the one cut

    def __str__(self) -> str:
        return (f"{self.path}: bytes {self.start}-{self.end} ({self.end - self.start} bytes, about "
                f"{self.unreadable_records} record(s)) do not read as spool records")


@dataclass
class SegmentScan:
    path: Path
    records: list[SpoolRecord] = field(default_factory=list)  # every readable record past the start, in order
    damages: list[Damage] = field(default_factory=list)
    torn_at: int | None = None  # where a torn tail (never acknowledged) begins


@dataclass(frozen=True)
class SpoolRecovery:
    records: list[SpoolRecord]  # to replay, in order
    quarantined: list[Damage]  # damage moved aside under --spool-quarantine

    @property
    def unreadable_records(self) -> int:
        return sum(damage.unreadable_records for damage in self.quarantined)


class SpoolRefused(Exception):
    """The spool holds acknowledged records that start-up cannot replay: serve must not start and lose them."""


class SpoolFromOlderVersion(SpoolRefused):
    def __init__(self, path: Path, offset: int) -> None:
        super().__init__(
            f"{path} holds unreplayed records from byte {offset} in the spool format of an earlier hopscope (no "
            "record magic). Start the earlier version once and stop it cleanly: that stores them in DuckDB and the "
            "next start reads nothing from the old segment.")


class SpoolDamaged(SpoolRefused):
    """Acknowledged records that cannot be read."""

    def __init__(self, damages: list[Damage]) -> None:
        self.damages = damages
        first = damages[0]
        more = f" (and {len(damages) - 1} more damaged range(s))" if len(damages) > 1 else ""
        super().__init__(
            f"the spool is damaged: {first.path} at byte offset {first.start}{more}: {first.end - first.start} bytes "
            "of acknowledged records fail their checksum or framing. Starting would lose them silently, so hopscope "
            "stops here. Restore the file from a backup, or start with --spool-quarantine to keep a copy of the "
            "segment in the spool's quarantine/ folder and replay every record that can still be read.")


def _record_at(data: memoryview, offset: int) -> tuple[int, int, bool] | None:
    """(end, spans, group_start) of a whole, checksummed record starting at `offset`, or None."""
    if offset + RECORD_HEADER.size > len(data):
        return None
    magic, length, crc, flagged_spans = RECORD_HEADER.unpack_from(data, offset)
    end = offset + RECORD_HEADER.size + length
    spans = flagged_spans & ~GROUP_START
    # spans == 0 is never written: every record carries a span
    if magic != MAGIC or spans == 0 or end > len(data) or zlib.crc32(data[offset + RECORD_HEADER.size: end]) != crc:
        return None
    return end, spans, bool(flagged_spans & GROUP_START)


def _format_1_record_at(data: memoryview, offset: int) -> bool:
    """A whole record of the spool before the magic (u32 length | u32 crc | u32 spans | payload)?"""
    if offset + 12 > len(data) or bytes(data[offset: offset + 4]) == MAGIC:
        return False
    length, crc, spans = struct.unpack_from("<III", data, offset)
    end = offset + 12 + length
    return bool(spans > 0 and end <= len(data) and zlib.crc32(data[offset + 12: end]) == crc)


def _next_group_start(data: memoryview, offset: int, raw: bytes) -> int | None:
    """The offset of the first whole group-first record at or after `offset`."""
    position = raw.find(MAGIC, offset)
    while position >= 0:
        record = _record_at(data, position)
        if record is not None and record[2]:
            return position
        position = raw.find(MAGIC, position + 1)
    return None


def _scan_damage(data: memoryview, raw: bytes, scan: SegmentScan, segment: int, start: int, end: int) -> None:
    """Salvage the whole records inside a damaged range and record the damage."""
    unreadable = 0 if raw.startswith(MAGIC, start) else 1
    position = raw.find(MAGIC, start)
    while 0 <= position < end:
        record = _record_at(data, position)
        if record is None or record[0] > end:
            unreadable += 1
            position = raw.find(MAGIC, position + 1)
            continue
        scan.records.append(SpoolRecord(segment, position, record[0], record[1]))
        position = raw.find(MAGIC, record[0])
    scan.damages.append(Damage(scan.path, start, end, max(1, unreadable)))


def scan_segment(path: Path, start: int, newest: bool) -> SegmentScan:
    """Read a segment from `start` without changing it: its records, its damage and its torn tail."""
    raw = path.read_bytes()
    data = memoryview(raw)
    segment = segment_number(path)
    scan = SegmentScan(path)
    offset = start
    if _format_1_record_at(data, offset):
        raise SpoolFromOlderVersion(path, offset)
    while offset < len(data):
        record = _record_at(data, offset)
        if record is not None:
            scan.records.append(SpoolRecord(segment, offset, record[0], record[1]))
            offset = record[0]
            continue
        resume = _next_group_start(data, offset + 1, raw)
        if resume is None and newest:
            scan.torn_at = offset
            break
        end = len(data) if resume is None else resume
        _scan_damage(data, raw, scan, segment, offset, end)
        offset = end
    return scan


def _cut_torn_tail(scan: SegmentScan) -> None:
    assert scan.torn_at is not None
    log.info("cutting a torn tail (never acknowledged) off %s at byte %d", scan.path, scan.torn_at)
    with open(scan.path, "r+b") as file:
        file.truncate(scan.torn_at)
        file.flush()
        os.fsync(file.fileno())


def _quarantine(scan: SegmentScan, start: int) -> SegmentScan:
    """Keep a copy of the damaged segment aside, then rewrite it with its readable records: the copy is durable
    before the rename, and the rename is atomic, so a crash in between leaves the damaged original to redo."""
    quarantine = scan.path.parent / QUARANTINE_DIR
    quarantine.mkdir(exist_ok=True)
    copy = quarantine / f"{scan.path.name}.damaged"
    shutil.copyfile(scan.path, copy)
    with open(copy, "rb") as file:
        os.fsync(file.fileno())
    fsync_directory(quarantine)
    rewritten = scan.path.with_name(scan.path.name + ".tmp")
    with open(rewritten, "wb") as file:
        file.truncate(start)  # bytes before the watermark are stored already and never read again: a hole
        file.seek(start)
        for record in scan.records:
            payload = next(read_payloads(scan.path, record.start, record.end))
            # the rewritten file is fsynced whole before it is used: every record may vouch for what precedes it
            file.write(encode_record(payload, record.spans, group_start=True))
            file.write(payload)
        file.flush()
        os.fsync(file.fileno())
    os.replace(rewritten, scan.path)
    fsync_directory(scan.path.parent)
    for damage in scan.damages:
        log.error("quarantined: %s; a copy of the segment is in %s", damage, copy)
    return scan_segment(scan.path, start, newest=False)


def recover_spool(directory: Path, watermark: tuple[int, int] | None, quarantine: bool) -> SpoolRecovery:
    """The records DuckDB lacks, in order; deletes stored segments and cuts a torn tail; raises SpoolDamaged on
    damage unless `quarantine`."""
    segment_at, offset_at = watermark or (0, 0)
    for leftover in directory.glob(f"*{SEGMENT_SUFFIX}.tmp"):
        leftover.unlink()  # an interrupted quarantine: its original is still in place and is redone below
    scans: list[tuple[SegmentScan, int]] = []
    segments = list_segments(directory)
    for segment in segments:
        path = segment_path(directory, segment)
        if segment < segment_at:
            path.unlink()  # fully stored before the last stop
            continue
        start = offset_at if segment == segment_at else 0
        scans.append((scan_segment(path, start, newest=segment == segments[-1]), start))
    damages = [damage for scan, _ in scans for damage in scan.damages]
    if damages and not quarantine:
        raise SpoolDamaged(damages)
    records: list[SpoolRecord] = []
    for scan, start in scans:
        if scan.torn_at is not None:
            _cut_torn_tail(scan)
        records.extend(_quarantine(scan, start).records if scan.damages else scan.records)
    return SpoolRecovery(records, damages)
