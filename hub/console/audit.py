"""The access audit: break-the-glass accesses to review."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import Response

from hub.access.chain import emergency_accesses
from hub.api.caller import authorize
from hub.console.common import page, router
from hub.core.access import Action

# -- audit ------------------------------------------------------------------------------------

@router.api_route("/console/audit", methods=["GET", "HEAD"], name="console-audit",
                  include_in_schema=False)
def audit_page(request: Request) -> Response:
    authorize(request, Action("operation", None, None, "$console-audit"))
    log = getattr(request.app.state.repo, "audit_records", None)
    found = emergency_accesses(log) if log is not None else []
    rows = [{"time": a["recorded"], "who": a["who"], "whose": ", ".join(a["what"][:3]),
             "what": "/".join(a["access"]), "why": a["purpose"], "outcome": a["outcome"]}
            for a in reversed(found[-200:])]
    return page(request, "audit.html", "audit", emergency=rows)
