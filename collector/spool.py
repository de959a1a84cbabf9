"""The write-ahead spool: where an Export becomes durable, and so where it is acknowledged.

Each accepted request is appended as one record to a segment file and fsynced before its Export is answered.
Appends that arrive while an fsync is running wait for the next one and share it (group commit), so durability
costs one fsync per burst, not one per request. DuckDB then catches up from the spool at its own pace; after a
crash, the records past the watermark that DuckDB committed with its rows are replayed (store.py), which makes the
replay idempotent.

On disk: `<dir>/<segment:012d>.spool`, a sequence of records

    b"HSPL" | u32 payload length | u32 crc32(payload) | u32 span count (+ 2^31 on a group's first record) | payload

little-endian; the payload is a serialised ExportTraceServiceRequest. The magic lets recovery find the next record
after damaged bytes, and the group flag lets it tell damage from a torn write: a group is written only after every
byte before it was fsynced, so bytes that are followed by a whole group-first record were durable, hence
acknowledged, and unreadable bytes there are corruption — never cut away silently (spool_recovery.py).

A write that fails (a full disk, an I/O error) fails its whole group, is rolled back, and leaves the spool
unwritable until a probe finds room again: Exports meanwhile get a retryable refusal and /readyz says not ready.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from hopscope.collector.errors import StorageUnavailable

log = logging.getLogger("hopscope.collector")

MAGIC = b"HSPL"
RECORD_HEADER = struct.Struct("<4sIII")
GROUP_START = 1 << 31  # flag on the span count of a group's first record
SEGMENT_SUFFIX = ".spool"
DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
PROBE_BYTES = 1024 * 1024  # room a probe must find before an unwritable spool takes appends again
PROBE_SECONDS = 1.0


@dataclass(frozen=True)
class SpoolRecord:
    """Where one durable record sits: bytes [start, end) of segment `segment`."""

    segment: int
    start: int
    end: int
    spans: int


def segment_path(directory: Path, segment: int) -> Path:
    return directory / f"{segment:012d}{SEGMENT_SUFFIX}"


def segment_number(path: Path) -> int:
    return int(path.name[: -len(SEGMENT_SUFFIX)])


def list_segments(directory: Path) -> list[int]:
    return sorted(int(p.name[: -len(SEGMENT_SUFFIX)]) for p in directory.glob(f"*{SEGMENT_SUFFIX}")
                  if p.name[: -len(SEGMENT_SUFFIX)].isdigit())


def encode_record(payload: bytes, spans: int, group_start: bool) -> bytes:
    """A record's header (the payload follows it)."""
    return RECORD_HEADER.pack(MAGIC, len(payload), zlib.crc32(payload), spans | (GROUP_START if group_start else 0))


def read_payloads(path: Path, start: int, end: int) -> Iterator[bytes]:
    """The payloads of the records in bytes [start, end) of a segment (a range recovery or the writer vouched for)."""
    with open(path, "rb") as segment:
        segment.seek(start)
        data = segment.read(end - start)
    offset = 0
    while offset < len(data):
        _magic, length, _crc, _spans = RECORD_HEADER.unpack_from(data, offset)
        offset += RECORD_HEADER.size
        yield data[offset: offset + length]
        offset += length


def fsync_directory(directory: Path) -> None:
    """Make a file's creation, rename or removal in `directory` survive a crash."""
    directory_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(directory_fd)
    finally:
        os.close(directory_fd)


class SpoolWriter:
    """Appends records from any thread; one writer thread writes and fsyncs them in groups.

    `append` returns a future that completes when the record is on disk (or fails with StorageUnavailable);
    `on_durable` is called from the writer thread with the records of each fsynced group, in order. After a failed
    write, `unwritable` holds the error and appends are refused at once until a probe (every `probe_seconds`) finds
    room for PROBE_BYTES: a full disk clears by itself once space returns, without a restart.
    """

    def __init__(self, directory: Path, first_segment: int, on_durable: Callable[[list[SpoolRecord]], None],
                 segment_bytes: int = DEFAULT_SEGMENT_BYTES, probe_seconds: float = PROBE_SECONDS) -> None:
        self._directory = directory
        self._segment = first_segment
        self._segment_bytes = segment_bytes
        self._probe_seconds = probe_seconds
        self._on_durable = on_durable
        self._pending: list[tuple[bytes, int, concurrent.futures.Future[None]]] = []
        self._condition = threading.Condition()
        self._closing = False
        self._unwritable: OSError | None = None
        self._unwritable_since = 0.0
        self._fd = self._open_segment(first_segment)
        self._offset = 0
        self._thread = threading.Thread(target=self._run, name="spool-writer", daemon=True)
        self._thread.start()

    @property
    def unwritable(self) -> OSError | None:
        """The error of the last failed write while the spool refuses appends; None while it takes them."""
        return self._unwritable

    def append(self, payload: bytes, spans: int) -> concurrent.futures.Future[None]:
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        with self._condition:
            if self._unwritable is not None:
                raise StorageUnavailable(f"the spool cannot be written ({describe_os_error(self._unwritable)}); "
                                         "retry later")
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
        try:
            fsync_directory(self._directory)  # the new file's directory entry must survive a crash too
        except OSError:
            os.close(fd)
            raise
        return fd

    def _run(self) -> None:
        while True:
            with self._condition:
                while not self._pending and not self._closing:
                    if self._unwritable is None:
                        self._condition.wait()
                    elif not self._condition.wait(self._probe_seconds):
                        break
                group, self._pending = self._pending, []
                if not group and self._closing:
                    return
            if not group:
                self._probe()
                continue
            try:
                records = self._write_group(group)
            except OSError as exc:
                self._set_unwritable(exc)
                for _, _, future in group:
                    future.set_exception(StorageUnavailable(f"spool write failed ({describe_os_error(exc)}); "
                                                            "retry later"))
                continue
            self._set_unwritable(None)
            self._on_durable(records)
            for _, _, future in group:
                future.set_result(None)

    def _write_group(self, group: list[tuple[bytes, int, concurrent.futures.Future[None]]]) -> list[SpoolRecord]:
        """Write and fsync a group, or roll all of it back: a failed group is answered with a refusal, so none of
        its bytes may be replayed after a crash (the client resends them)."""
        start = (self._segment, self._offset)
        records = []
        try:
            for index, (payload, spans, _) in enumerate(group):
                if self._offset >= self._segment_bytes:
                    self._roll()
                header = encode_record(payload, spans, group_start=index == 0)
                written = _write_all(self._fd, header, payload)
                records.append(SpoolRecord(self._segment, self._offset, self._offset + written, spans))
                self._offset += written
            os.fdatasync(self._fd)  # before any Export of this group is answered: fsync first, acknowledge after
        except OSError:
            self._roll_back(*start)
            raise
        return records

    def _roll(self) -> None:
        """Continue in a new segment; the old one is complete and durable before the new one exists."""
        os.fdatasync(self._fd)
        fd = self._open_segment(self._segment + 1)
        os.close(self._fd)
        self._fd, self._segment, self._offset = fd, self._segment + 1, 0

    def _roll_back(self, segment: int, offset: int) -> None:
        """Undo a failed group: drop the segments it opened and cut the one it began in back to where it began.
        Cutting needs no free space; if it fails anyway, the next probe cuts again before the spool takes writes."""
        if self._segment != segment:
            os.close(self._fd)
            for opened in range(segment + 1, self._segment + 1):
                segment_path(self._directory, opened).unlink(missing_ok=True)
            self._fd = os.open(segment_path(self._directory, segment), os.O_WRONLY | os.O_APPEND)
            self._segment = segment
        self._offset = offset
        try:
            os.ftruncate(self._fd, offset)
            os.fdatasync(self._fd)
        except OSError as exc:
            log.error("could not cut the spool back after a failed write (the next probe retries): %s", exc)

    def _probe(self) -> None:
        """Is there room again? Reserve PROBE_BYTES past the end and give them back."""
        try:
            os.ftruncate(self._fd, self._offset)
            os.posix_fallocate(self._fd, self._offset, PROBE_BYTES)
            os.ftruncate(self._fd, self._offset)
        except OSError as exc:
            self._set_unwritable(exc)
            return
        self._set_unwritable(None)

    def _set_unwritable(self, error: OSError | None) -> None:
        with self._condition:
            was = self._unwritable
            self._unwritable = error
        if error is not None and was is None:
            self._unwritable_since = time.monotonic()
            log.error("the spool cannot be written (%s): refusing Exports (retryable) and probing for room every "
                      "%g s", describe_os_error(error), self._probe_seconds)
        elif error is None and was is not None:
            log.warning("the spool is writable again after %.1f s: taking Exports",
                        time.monotonic() - self._unwritable_since)


def _write_all(fd: int, header: bytes, payload: bytes) -> int:
    """One writev; if the disk had room for part only, write the rest, which raises the real error (ENOSPC)."""
    total = len(header) + len(payload)
    written = os.writev(fd, (header, payload))
    while written < total:
        written += os.write(fd, (header + payload)[written:])
    return written


def describe_os_error(error: OSError) -> str:
    return error.strerror or str(error)
