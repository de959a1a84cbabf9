"""Has a file changed since it was last read? For the files hopscope re-reads while it runs (token files, TLS
certificates), so that a rotation needs no restart. A file's identity is its inode, size and mtime: a rename over
it (how Kubernetes updates a Secret volume) and a rewrite in place both change it. Looked at most once per
RECHECK_SECONDS, because the callers ask on every request or handshake."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

RECHECK_SECONDS = 1.0

Identity = tuple[tuple[int, int, int] | None, ...]


def _identity(paths: Sequence[Path]) -> Identity:
    def one(path: Path) -> tuple[int, int, int] | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns
    return tuple(one(path) for path in paths)


class FileWatch:
    def __init__(self, paths: Sequence[Path]) -> None:
        self._paths = list(paths)
        self._identity = _identity(self._paths)
        self._checked = time.monotonic()
        self.lock = threading.Lock()   # held while `changed()` is true: the caller re-reads under it

    def changed(self) -> bool:
        """True (once) when the files changed since the last call that returned True; call with `lock` held."""
        now = time.monotonic()
        if now - self._checked < RECHECK_SECONDS:
            return False
        self._checked = now
        identity = _identity(self._paths)
        if identity == self._identity:
            return False
        self._identity = identity
        return True
