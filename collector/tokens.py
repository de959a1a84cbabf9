"""Bearer tokens from a file, re-read when the file changes, so that a token is rotated without a restart: write the
new token beside the old one, move clients over, then remove the old one.

The file holds one token per line (blank lines and `#` comments ignored). A presented token is compared with every
token in constant time (`hmac.compare_digest`, and no early exit), so the time of a refusal says nothing about how
close a guess was. A file that cannot be read keeps the tokens last read (and logs why), so a half-written rotation
does not lock every client out; a file that never could be read fails start-up.
"""

from __future__ import annotations

import hmac
import logging
from pathlib import Path

from hopscope.collector.file_watch import FileWatch

log = logging.getLogger("hopscope.collector")
SCHEME = "bearer "


class TokenFileError(ValueError):
    """The token file is missing, unreadable or holds no token."""


def _read(path: Path) -> tuple[bytes, ...]:
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise TokenFileError(f"cannot read token file {path}: {exc.strerror}") from None
    tokens = tuple(line.strip().encode() for line in lines if line.strip() and not line.lstrip().startswith("#"))
    if not tokens:
        raise TokenFileError(f"token file {path} holds no token (one per line)")
    return tokens


class TokenFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._tokens = _read(path)
        self._watch = FileWatch([path])

    def _refresh(self) -> None:
        with self._watch.lock:
            if not self._watch.changed():
                return
            try:
                self._tokens = _read(self.path)
                log.info("token file %s re-read: %d token(s)", self.path, len(self._tokens))
            except TokenFileError as exc:
                log.error("%s; keeping the %d token(s) read before", exc, len(self._tokens))

    def accepts(self, authorization: str | None) -> bool:
        """Whether an `Authorization` header value carries one of the tokens (`Bearer <token>`)."""
        self._refresh()
        if not authorization or not authorization[:len(SCHEME)].lower() == SCHEME:
            return False
        presented = authorization[len(SCHEME):].strip().encode()
        matched = False
        for token in self._tokens:
            matched |= hmac.compare_digest(presented, token)
        return matched
