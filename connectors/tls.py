"""TLS settings of the connectors' sockets, the ``tls:`` mapping of a source or sink.

A listener (the MLLP source): ``tls: {cert, key, client_ca}``: its certificate (chain) and key,
PEM files; with ``client_ca`` a sender must present a certificate that CA signed (mutual TLS).
A sender (the HTTP sink, the MLLP client): ``tls: {ca, cert, key}``: the CA that signed the
server's certificate (default: the system's trusted CAs), and the client certificate and key for
mutual TLS. Paths in a connector's YAML file are relative to that file (connectors.config).

A key given with no value is refused, never read as absent: ``client_ca:`` left empty served
TLS without asking senders for a certificate. A file that does not load is named with its key.
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from hub.core.certificates import expired_on
from hub.core.errors import HubError

log = logging.getLogger("connectors.tls")


class TlsConfigError(HubError, ValueError):
    error_code = "config"


SERVER_KEYS = ("cert", "key", "client_ca")
CLIENT_KEYS = ("ca", "cert", "key")


def _checked(tls: Any, keys: tuple[str, ...], where: str) -> dict[str, str]:
    if not isinstance(tls, Mapping):
        raise TlsConfigError(f"{where}: 'tls' must be a mapping of {', '.join(keys)}")
    unknown = sorted(set(tls) - set(keys))
    if unknown:
        raise TlsConfigError(f"{where}: unknown tls key(s) {', '.join(map(str, unknown))}: "
                             f"expected {', '.join(keys)}")
    for k, v in tls.items():
        if v is None or (isinstance(v, str) and not v.strip()):
            raise TlsConfigError(f"{where}: tls.{k} is empty: name its PEM file, or leave "
                                 f"tls.{k} out")
        if not isinstance(v, (str, os.PathLike)):
            raise TlsConfigError(f"{where}: tls.{k} must be a PEM file's path, not {v!r}")
    return {k: os.fspath(v) for k, v in tls.items()}


def http_verify(url: str, tls: Any, where: str) -> ssl.SSLContext | bool:
    """httpx's ``verify`` for ``url`` with this ``tls`` (None: the system's CAs). A ``tls`` for
    a plain http:// URL is refused: it was ignored, and the client assertion, the tokens and
    every record went in cleartext."""
    if tls is None:
        return True
    refuse_plain(url, where)
    return client_context(tls, where)


def refuse_plain(url: Any, where: str, key: str = "url") -> None:
    """A URL given with a ``tls`` mapping that is not https:// is refused (the tls was unused)."""
    if urlsplit(str(url)).scheme.lower() != "https":
        raise TlsConfigError(f"{where}: tls is given but {key} {str(url)[:100]} is not https: "
                             f"make it https://, or leave tls out")


def _pem(key: str, path: str, where: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise TlsConfigError(f"{where}: tls.{key} {path}: {e.strerror or e}") from None


def _certificates(key: str, path: str, where: str) -> list[Any]:
    """The certificates of a PEM file; a file that holds none is refused, naming it."""
    from cryptography import x509

    data = _pem(key, path, where)
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise TlsConfigError(f"{where}: tls.{key} {path} holds no PEM certificate") from None


def _private_key(key: str, path: str, where: str) -> None:
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    data = _pem(key, path, where)
    try:
        load_pem_private_key(data, password=None)
    except (ValueError, TypeError):  # TypeError: the key is encrypted
        raise TlsConfigError(f"{where}: tls.{key} {path} holds no PEM private key (without a "
                             "password)") from None


def _load_chain(ctx: ssl.SSLContext, t: dict[str, str], where: str) -> None:
    """``cert`` (and ``key``) into ``ctx``, each file checked first so that a mistake names its
    file (ssl says only "[Errno 2]" or "PEM lib"); an expired certificate is logged, not
    refused: an operator may be mid-rotation."""
    leaf = _certificates("cert", t["cert"], where)[0]
    if "key" in t:
        _private_key("key", t["key"], where)
    try:
        ctx.load_cert_chain(t["cert"], t.get("key"))
    except ssl.SSLError as e:
        if "key" not in t:
            raise TlsConfigError(f"{where}: tls.cert {t['cert']} holds no private key (name "
                                 "its file as tls.key)") from None
        if "KEY_VALUES_MISMATCH" in str(e) or "values mismatch" in str(e):
            raise TlsConfigError(f"{where}: tls.key {t['key']} is not the key of tls.cert "
                                 f"{t['cert']}") from None
        raise TlsConfigError(f"{where}: tls.cert {t['cert']}, tls.key {t['key']} do not load: "
                             f"{e.reason or e}") from None
    ends = expired_on(leaf)
    if ends is not None:
        log.warning("%s: tls.cert %s expired (notAfter %s): peers checking it refuse the "
                    "handshake", where, t["cert"], ends.strftime("%Y-%m-%d %H:%M:%S UTC"))


def _load_cas(ctx: ssl.SSLContext, key: str, path: str, where: str) -> None:
    _certificates(key, path, where)
    try:
        ctx.load_verify_locations(cafile=path)
    except ssl.SSLError as e:
        raise TlsConfigError(f"{where}: tls.{key} {path} does not load: {e.reason or e}") from None


def server_context(tls: Any, where: str = "tls") -> ssl.SSLContext:
    """The context of a listener: its certificate, and with ``client_ca`` client certificates
    required (CERT_REQUIRED: a sender without one signed by that CA fails the handshake)."""
    t = _checked(tls, SERVER_KEYS, where)
    if "cert" not in t:
        raise TlsConfigError(f"{where}: a listener's tls needs 'cert' (and 'key' unless the cert "
                             "file holds it)")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(ctx, t, where)
    if "client_ca" in t:
        _load_cas(ctx, "client_ca", t["client_ca"], where)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(tls: Any, where: str = "tls") -> ssl.SSLContext:
    """The context of a sender: the server's certificate checked (against ``ca``, else the
    system's CAs, and its host name), and with ``cert`` a client certificate presented."""
    t = _checked(tls, CLIENT_KEYS, where)
    if "key" in t and "cert" not in t:
        raise TlsConfigError(f"{where}: tls 'key' without 'cert'")
    ca = t.get("ca")
    if ca is not None:
        _certificates("ca", ca, where)
    try:  # with cafile, that CA alone is trusted (not the system's as well)
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    except ssl.SSLError as e:
        raise TlsConfigError(f"{where}: tls.ca {ca} does not load: {e.reason or e}") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if "cert" in t:
        _load_chain(ctx, t, where)
    return ctx
