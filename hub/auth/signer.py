"""The hub's own signing key, which signs the access tokens the token endpoint issues.

An ES256 (P-256) key, generated with ``cryptography`` on first use and kept as PEM in
``<data_dir>/auth/signing-key.pem`` (mode 0600, in a 0700 folder). Its key id is the RFC 7638
thumbprint of its public JWK. ``rotate()`` makes a new key and keeps the one before it in
``signing-key.previous.pem``: the JWK Set lists both, so tokens the previous key signed verify until
they expire (tokens live minutes; rotate again only after the longest of them has expired).

Several processes (``hub serve --workers N``, ``hub auth rotate-key``) share the files: the first
key is created with an exclusive link so one process wins the race, a rotation replaces files
atomically, and each signer reloads the files when they change.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from hub.auth.keys import public_jwk

__all__ = ["ALGORITHM", "Signer"]

ALGORITHM = "ES256"
KEY_FILE = "signing-key.pem"
PREVIOUS_FILE = "signing-key.previous.pem"
# the keys before it, newest first (a second rotation within a token's life made its tokens
# invalid: only one previous key was kept)
OLDER = tuple(f"signing-key.previous-{n}.pem" for n in range(2, 6))
RECHECK_S = 1.0


@dataclass(frozen=True, slots=True)
class _Key:
    kid: str
    private: ec.EllipticCurvePrivateKey
    public: ec.EllipticCurvePublicKey
    jwk: dict  # public, with kid, use and alg


class Signer:
    def __init__(self, data_dir: Path | str):
        self.folder = Path(data_dir) / "auth"
        self._lock = threading.Lock()
        self._seen: tuple | None = None  # the files' identity when last loaded
        self._keys: list[_Key] = []  # current first, then the previous one
        self._checked = 0.0  # when the files were last looked at (monotonic seconds)

    @property
    def path(self) -> Path:
        return self.folder / KEY_FILE

    @property
    def kid(self) -> str:
        return self._load()[0].kid

    def jwks(self) -> dict:
        """The public JWK Set: the current key and the one before the last rotation."""
        return {"keys": [dict(k.jwk) for k in self._load()]}

    def public_key(self, kid: str) -> Any | None:
        """The public key with id ``kid`` (current or previous), or None."""
        return next((k.public for k in self._load() if k.kid == kid), None)

    def issue(self, claims: dict, ttl_s: int) -> str:
        """A JWT of ``claims`` signed with the current key, with ``iat``, ``exp`` (``ttl_s`` seconds
        on), a random ``jti`` and the key's ``kid`` in its header."""
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        key = self._load()[0]
        now = int(time.time())
        payload = {**claims, "iat": now, "exp": now + int(ttl_s), "jti": secrets.token_urlsafe(16)}
        return jwt.encode(payload, key.private, algorithm=ALGORITHM, headers={"kid": key.kid})

    def rotate(self) -> str:
        """Sign with a new key from now on, keeping the current one and up to four before it
        (their tokens verify until they expire); the new kid."""
        with self._lock:
            self._ensure_folder()
            chain = [self.folder / n for n in (PREVIOUS_FILE, *OLDER)]
            for newer, older in reversed(list(zip(chain, chain[1:]))):  # shift, the oldest out
                if newer.exists():
                    self._write(older, newer.read_bytes(), replace=True)
            if self.path.exists():
                self._write(self.folder / PREVIOUS_FILE, self.path.read_bytes(), replace=True)
            self._write(self.path, _new_pem(), replace=True)
            self._seen = None
        return self.kid

    # -- the files -------------------------------------------------------------------------------

    def _load(self) -> list[_Key]:
        """The keys, current first. The files are looked at again at most every ``RECHECK_S``
        (every token checked asks): a rotation by another process counts within that."""
        with self._lock:
            now = time.monotonic()
            if self._seen is not None and now - self._checked < RECHECK_S:
                return self._keys
            self._checked = now
            if not self.path.exists():
                self._ensure_folder()
                self._write(self.path, _new_pem(), replace=False)
            names = (KEY_FILE, PREVIOUS_FILE, *OLDER)
            seen = tuple(_identity(self.folder / n) for n in names)
            if seen != self._seen:
                keys = [_read(self.path)]
                for name in names[1:]:
                    previous = self.folder / name
                    if previous.exists():
                        old = _read(previous)
                        if all(old.kid != k.kid for k in keys):
                            keys.append(old)
                self._keys, self._seen = keys, seen
            return self._keys

    def _ensure_folder(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        os.chmod(self.folder, 0o700)

    def _write(self, path: Path, pem: bytes, replace: bool) -> None:
        """Write ``pem`` to ``path`` with mode 0600 through a temporary file: atomically replacing
        it, or (``replace`` False) only when no other process has created it meanwhile."""
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
                f.flush()
                os.fsync(f.fileno())
            if replace:
                os.replace(tmp, path)
            else:
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    pass  # another process made the key first: use that one
        finally:
            tmp.unlink(missing_ok=True)


def _new_pem() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _read(path: Path) -> _Key:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError(f"{path} is not a P-256 EC private key")
    jwk = public_jwk(key.public_key())
    return _Key(jwk["kid"], key, key.public_key(), {**jwk, "use": "sig", "alg": ALGORITHM})


def _identity(path: Path) -> tuple | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size
