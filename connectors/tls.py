"""TLS settings of the connectors' sockets, the ``tls:`` mapping of a source or sink.

A listener (the MLLP source): ``tls: {cert, key, client_ca}``: its certificate (chain) and key,
PEM files; with ``client_ca`` a sender must present a certificate that CA signed (mutual TLS).
A sender (the HTTP sink, the MLLP client): ``tls: {ca, cert, key}``: the CA that signed the
server's certificate (default: the system's trusted CAs), and the client certificate and key for
mutual TLS. Paths in a connector's YAML file are relative to that file (connectors.config).
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any

from hub.core.errors import HubError


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
    return {k: str(v) for k, v in tls.items() if v}


def server_context(tls: Any, where: str = "tls") -> ssl.SSLContext:
    """The context of a listener: its certificate, and with ``client_ca`` client certificates
    required (CERT_REQUIRED: a sender without one signed by that CA fails the handshake)."""
    t = _checked(tls, SERVER_KEYS, where)
    if "cert" not in t:
        raise TlsConfigError(f"{where}: a listener's tls needs 'cert' (and 'key' unless the cert "
                             "file holds it)")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(t["cert"], t.get("key"))
    if "client_ca" in t:
        ctx.load_verify_locations(cafile=t["client_ca"])
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(tls: Any, where: str = "tls") -> ssl.SSLContext:
    """The context of a sender: the server's certificate checked (against ``ca``, else the
    system's CAs, and its host name), and with ``cert`` a client certificate presented."""
    t = _checked(tls, CLIENT_KEYS, where)
    if "key" in t and "cert" not in t:
        raise TlsConfigError(f"{where}: tls 'key' without 'cert'")
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=t.get("ca"))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if "cert" in t:
        ctx.load_cert_chain(t["cert"], t.get("key"))
    return ctx
