"""A real small filesystem for full-disk tests: a tmpfs of a few MiB mounted in the test's directory (the suite runs
as root, as CI does), and a filler file that takes all but a given number of its bytes."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def small_tmpfs(mount: Path, mib: int) -> Iterator[Path]:
    mount.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mib}m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=True)


def fill(mount: Path, leave_bytes: int) -> Path:
    """A file that takes the filesystem's free space down to about `leave_bytes`."""
    stats = os.statvfs(mount)
    free = stats.f_bavail * stats.f_frsize
    filler = mount / f"filler-{len(list(mount.glob('filler-*')))}"
    with open(filler, "wb") as file:
        file.truncate(0)
        os.posix_fallocate(file.fileno(), 0, max(0, free - leave_bytes))
    return filler
