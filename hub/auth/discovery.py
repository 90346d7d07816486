"""An OpenID Connect provider's metadata, from its discovery document
(``{issuer}/.well-known/openid-configuration``): where its key set is for the API's tokens
(``HUB_AUTH_ISSUER`` without ``HUB_AUTH_JWKS_URL``), its endpoints for the console's login."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import httpx

from hub.core import httpclient
from hub.core.errors import FhirError

__all__ = ["DISCOVERY_PATH", "provider_metadata"]

DISCOVERY_PATH = "/.well-known/openid-configuration"


def provider_metadata(issuer: str, needs: Iterable[str] = ("jwks_uri", "issuer"),
                      timeout_s: float = 10.0) -> dict[str, Any]:
    """The discovery document of ``issuer``, holding each of ``needs`` as a string; a 502
    ``transient`` FhirError when the provider does not answer with one."""
    issuer = issuer.rstrip("/")
    try:
        r = httpclient.get(issuer + DISCOVERY_PATH, timeout=timeout_s)
        r.raise_for_status()
        meta = r.json()
    except (httpx.HTTPError, ValueError) as e:
        raise FhirError(502, "transient", f"The identity provider {issuer} did not answer: {e}") from None
    if not isinstance(meta, dict):
        raise FhirError(502, "transient", f"The identity provider {issuer}'s metadata is not a JSON object")
    for key in needs:
        if not isinstance(meta.get(key), str):
            raise FhirError(502, "transient", f"The identity provider's metadata has no {key}")
    return meta
