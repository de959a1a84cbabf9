"""The write-ahead spool: where an Export becomes durable, and so where it is acknowledged.

Each accepted request is appended as one record to a segment file and fsynced before its Export is answered.
Appends that arrive while an fsync is running wait for the next one and share it (group commit), so durability
costs one fsync per burst, not one per request. DuckDB then catches up from the spool at its own pace; after a
crash, the records past the watermark that DuckDB committed with its rows are replayed (store.py), which makes the
replay idempotent.

On disk: `<dir>/<segment:012d>.spool`, a sequence of records

    u32 payload length | u32 crc32(payload) | u32 span count | payload (a serialised ExportTraceServiceRequest)

little-endian. A record cut short by a crash fails its length or CRC check (or reads as zeros: a span count of 0,
which no record has); it was never fsynced, so never acknowledged, and recovery truncates it away.
"""

from __future__ import annotations

import concurrent.futures
import os
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from hopscope.collector.errors import StorageUnavailable

RECORD_HEADER = struct.Struct("<III")
SEGMENT_SUFFIX = ".spool"
DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class SpoolRecord:
    """Where one durable record sits: bytes [start, end) of segment `segment`."""

    segment: int
    start: int
    end: int
    spans: int


def segment_path(directory: Path, segment: int) -> Path:
    return directory / f"{segment:012d}{SEGMENT_SUFFIX}"


def list_segments(directory: Path) -> list[int]:
    return sorted(int(p.name[: -len(SEGMENT_SUFFIX)]) for p in directory.glob(f"*{SEGMENT_SUFFIX}")
                  if p.name[: -len(SEGMENT_SUFFIX)].isdigit())


def read_payloads(path: Path, start: int, end: int) -> Iterator[bytes]:
    """The payloads of the records in bytes [start, end) of a segment (a range recovery or the writer vouched for)."""
    with open(path, "rb") as segment:
        segment.seek(start)
        data = segment.read(end - start)
    offset = 0
    while offset < len(data):
        length, _crc, _spans = RECORD_HEADER.unpack_from(data, offset)
        offset += RECORD_HEADER.size
        yield data[offset: offset + length]
        offset += length


def recover_segment(path: Path, start: int) -> list[SpoolRecord]:
    """Scan a segment from `start`, return its whole records, and truncate a torn tail left by a crash."""
    segment = int(path.name[: -len(SEGMENT_SUFFIX)])
    records: list[SpoolRecord] = []
    with open(path, "r+b") as file:
        data = memoryview(file.read())
        offset = start
        while offset + RECORD_HEADER.size <= len(data):
            length, crc, spans = RECORD_HEADER.unpack_from(data, offset)
            end = offset + RECORD_HEADER.size + length
            # spans == 0: zeros, not a record (every record carries a span; and zeros pass the CRC of nothing) —
            # a filesystem can leave a zero-filled block after a crash
            if spans == 0 or end > len(data) or zlib.crc32(data[offset + RECORD_HEADER.size: end]) != crc:
                break
            records.append(SpoolRecord(segment, offset, end, spans))
            offset = end
        if offset < len(data):
            file.truncate(offset)
            file.flush()
            os.fsync(file.fileno())
    return records


class SpoolWriter:
    """Appends records from any thread; one writer thread writes and fsyncs them in groups.

    `append` returns a future that completes when the record is on disk (or fails with StorageUnavailable);
    `on_durable` is called from the writer thread with the records of each fsynced group, in order.
    """

    def __init__(self, directory: Path, first_segment: int, on_durable: Callable[[list[SpoolRecord]], None],
                 segment_bytes: int = DEFAULT_SEGMENT_BYTES) -> None:
        self._directory = directory
        self._segment = first_segment
        self._segment_bytes = segment_bytes
        self._on_durable = on_durable
        self._pending: list[tuple[bytes, int, concurrent.futures.Future[None]]] = []
        self._condition = threading.Condition()
        self._closing = False
        self._failure: OSError | None = None
        self._fd = self._open_segment(first_segment)
        self._offset = 0
        self._thread = threading.Thread(target=self._run, name="spool-writer", daemon=True)
        self._thread.start()

    def append(self, payload: bytes, spans: int) -> concurrent.futures.Future[None]:
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        with self._condition:
            if self._failure is not None:
                raise StorageUnavailable(f"spool write failed earlier: {self._failure}")
            if self._closing:
                raise StorageUnavailable("spool is closed")
            self._pending.append((payload, spans, future))
            self._condition.notify()
        return future

    def close(self) -> None:
        """Write and fsync everything already appended, then stop the writer thread."""
        with self._condition:
            self._closing = True
            self._condition.notify()
        self._thread.join()
        os.close(self._fd)

    def _open_segment(self, segment: int) -> int:
        fd = os.open(segment_path(self._directory, segment), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        directory_fd = os.open(self._directory, os.O_RDONLY)
        try:
            os.fsync(directory_fd)  # the new file's directory entry must survive a crash too
        finally:
            os.close(directory_fd)
        return fd

    def _run(self) -> None:
        while True:
            with self._condition:
                while not self._pending and not self._closing:
                    self._condition.wait()
                group, self._pending = self._pending, []
                if not group and self._closing:
                    return
            try:
                records = self._write_group(group)
            except OSError as exc:
                with self._condition:
                    self._failure = exc
                for _, _, future in group:
                    future.set_exception(StorageUnavailable(f"spool write failed: {exc}"))
                continue
            self._on_durable(records)
            for _, _, future in group:
                future.set_result(None)

    def _write_group(self, group: list[tuple[bytes, int, concurrent.futures.Future[None]]]) -> list[SpoolRecord]:
        records = []
        for payload, spans, _ in group:
            if self._offset >= self._segment_bytes:
                os.fdatasync(self._fd)
                os.close(self._fd)
                self._segment += 1
                self._fd = self._open_segment(self._segment)
                self._offset = 0
            header = RECORD_HEADER.pack(len(payload), zlib.crc32(payload), spans)
            written = os.writev(self._fd, (header, payload))
            if written != len(header) + len(payload):
                raise OSError(f"short write to the spool ({written} of {len(header) + len(payload)} bytes)")
            records.append(SpoolRecord(self._segment, self._offset, self._offset + written, spans))
            self._offset += written
        os.fdatasync(self._fd)  # before any Export of this group is answered: fsync first, acknowledge after
        return records
