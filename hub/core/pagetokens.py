"""Page cursors sealed for the client: opaque and unforgeable.

A keyset cursor holds the sort values of the last row a page read (a search's codes, dates or
names; the timeline's time, type and id), and that row may be one the caller was not shown (a
consent, a scope's query, another patient's record). Sealed with Fernet (``cryptography``:
AES-128-CBC and HMAC-SHA256), a link tells nothing of it, and a client cannot make a cursor of
its own to probe where hidden rows lie. The key is the deployment's: ``<data_dir>/auth/
page-key`` (mode 0600), made on first use by whichever process comes first and shared by every
process that shares the data directory, as the token signing key is; a new key only makes the
links given before it stale (400, search again).
"""

from __future__ import annotations

import os
import secrets
import threading
from functools import lru_cache
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from hub.core.errors import bad_request

KEY_FILE = "page-key"


class PageTokens:
    def __init__(self, data_dir: Path | str):
        self.path = Path(data_dir) / "auth" / KEY_FILE
        self._lock = threading.Lock()
        self._fernet: Fernet | None = None

    def seal(self, cursor: str) -> str:
        return self._key().encrypt(cursor.encode()).decode().rstrip("=")

    def open(self, token: str) -> str:
        """The cursor a sealed token holds; 400 for anything this deployment did not seal."""
        try:
            return self._key().decrypt(token + "=" * (-len(token) % 4)).decode()
        except (InvalidToken, ValueError, UnicodeError):
            raise bad_request("_cursor is not a page cursor of this server (or is stale: "
                              "search again)") from None

    def _key(self) -> Fernet:
        if self._fernet is None:
            with self._lock:
                if self._fernet is None:
                    self._fernet = Fernet(self._load_or_make())
        return self._fernet

    def _load_or_make(self) -> bytes:
        if not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{KEY_FILE}.{secrets.token_hex(6)}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(Fernet.generate_key())
                    f.flush()
                    os.fsync(f.fileno())
                try:
                    os.link(tmp, self.path)
                except FileExistsError:
                    pass  # another process made it first: use that one
            finally:
                tmp.unlink(missing_ok=True)
        return self.path.read_bytes().strip()


@lru_cache(maxsize=8)
def page_tokens(data_dir: Path | str) -> PageTokens:
    """The deployment's sealer for ``data_dir`` (one per process)."""
    return PageTokens(data_dir)
