"""Console sessions: a token the hub signs for the operator console's own audience, carried in a
cookie. The API's caller check (``hub.api.caller``) and the console (``hub.console``) share these
names and the verifier; such a token opens no API call (its audience is the console's)."""

from __future__ import annotations

from typing import Any

from hub.auth.verifier import Verifier

COOKIE = "hub_console"
AUDIENCE = ISSUER = "hub-console"
SESSION_S = 8 * 3600


def session_verifier(state: Any) -> Verifier:
    """The verifier of console sessions for an application's ``state`` (its signer), made once."""
    if getattr(state, "console_verifier", None) is None:
        state.console_verifier = Verifier(AUDIENCE, own=state.auth_signer, issuer=ISSUER)
    return state.console_verifier
