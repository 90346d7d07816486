"""Test certificates made with trustme, written to a test's temporary folder (never committed).

``Pki(folder)``: a CA, a server certificate for 127.0.0.1/localhost and a client certificate it
signed, and a client certificate from another CA (the wrong one). Paths are strings.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import trustme


class Pki:
    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        self.ca = trustme.CA(organization_name="hub test CA")
        self.ca_pem = str(folder / "ca.pem")
        self.ca.cert_pem.write_to_path(self.ca_pem)
        self.server_cert, self.server_key = self._issue(self.ca, folder, "server",
                                                        "127.0.0.1", "localhost")
        self.client_cert, self.client_key = self._issue(self.ca, folder, "client",
                                                        "connector-h0001.example")
        other = trustme.CA(organization_name="not the hub's CA")
        self.stranger_cert, self.stranger_key = self._issue(other, folder, "stranger",
                                                            "stranger.example")

    @staticmethod
    def _issue(ca: trustme.CA, folder: Path, name: str, *hosts: str) -> tuple[str, str]:
        cert = ca.issue_cert(*hosts)
        cert_path, key_path = folder / f"{name}.pem", folder / f"{name}.key"
        for i, pem in enumerate(cert.cert_chain_pems):
            pem.write_to_path(str(cert_path), append=i > 0)
        cert.private_key_pem.write_to_path(str(key_path))
        return str(cert_path), str(key_path)

    def client_tls(self, with_cert: bool = True) -> dict[str, str]:
        """A sender's ``tls:`` mapping (connectors.tls): trust the CA, present the client cert."""
        tls = {"ca": self.ca_pem}
        if with_cert:
            tls.update(cert=self.client_cert, key=self.client_key)
        return tls

    def client_context(self, with_cert: bool = True, stranger: bool = False) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca_pem)
        if stranger:
            ctx.load_cert_chain(self.stranger_cert, self.stranger_key)
        elif with_cert:
            ctx.load_cert_chain(self.client_cert, self.client_key)
        return ctx
