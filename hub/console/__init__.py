"""The operator console at ``/console``: pages a regional information centre's staff work in, in
Chinese first (English by ``?lang=en``), served by the hub itself.

People log in with a local user (``hub auth user add``, ``hub.auth.users``); the session is a
hub-signed token in an HttpOnly, SameSite=Strict cookie whose audience is the console only (it is
no API bearer token), turned into the caller by ``hub.api.caller`` like any token, so each page
and action is checked by the access policy (``$console-*`` operations: roles) and audited like the
API. Forms carry the session's CSRF value besides.

Pages: the overview (intake per day and type over two weeks, drawn with Apache ECharts;
resources per type; each read model's lag; open quarantine entries), the quarantine (entries
with their reason, one entry with its findings and its payload, the lines the findings point at
marked; replay), the identity review (the matcher's review queue, each pair side by side with
its evidence; same person / not the same person), the access audit (break-the-glass accesses to
review). Templates are Jinja2 (``templates/``), the words ``i18n.yaml``, ECharts is fetched by
``make console-assets``.
"""

from __future__ import annotations

from hub.console import audit, codes, connectors, identity, intake, login, oidc, quality, record  # noqa: F401  (their routes)
from hub.console.common import SECURITY_HEADERS, STATIC, StaticFiles, error_page, router

__all__ = ["SECURITY_HEADERS", "STATIC", "StaticFiles", "error_page", "router"]
