"""Logging in and out: a local user's name and password give a session cookie."""

from __future__ import annotations

from collections.abc import Iterable

from fastapi import Request
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from hub.access.policy import OPERATIONS
from hub.api.caller import Throttled, authorize
from hub.auth.clients import REGISTRY_FILE
from hub.auth.sessions import session_log
from hub.auth.users import UserRegistry
from hub.console.common import (
    CONSOLE_ROLES,
    NO_CONSOLE_ROLE,
    check_csrf,
    end_session,
    from_elsewhere,
    page,
    router,
    safe_next,
    start_session,
)
from hub.console.oidc import configured
from hub.core.access import Action
from hub.core.errors import FhirError

# -- login ------------------------------------------------------------------------------------

@router.get("/console", name="console", include_in_schema=False)
def console_root(request: Request) -> Response:
    authorize(request, Action("operation", None, None, "$console-overview"))
    return RedirectResponse("/console/overview", 303)


@router.api_route("/console/login", methods=["GET", "HEAD"], name="console-login",
                  include_in_schema=False)
def login_form(request: Request) -> Response:
    return page(request, "login.html", "login", failed=False, oidc=configured(request),
                next=_asked(request.query_params.get("next", "")))


@router.post("/console/login", name="console-login-post", include_in_schema=False)
async def login(request: Request) -> Response:
    if from_elsewhere(request):
        raise FhirError(403, "forbidden", "The login form was sent from another site")
    form = await request.form()
    name, password = str(form.get("name") or ""), str(form.get("password") or "")
    settings = request.app.state.settings
    log = session_log(request.app.state)
    wait = await run_in_threadpool(log.held, name) if name else 0
    if wait:  # before the password is checked: a right one tells nothing either
        raise Throttled(wait)
    users = UserRegistry(settings.data_dir / REGISTRY_FILE)
    user = await run_in_threadpool(users.check, name, password) if name and password else None
    if user is not None:
        await run_in_threadpool(log.succeeded, name)
    elif name:
        await run_in_threadpool(log.failed, name)
    if user is None:
        refused = page(request, "login.html", "login", failed=True, oidc=configured(request),
                        next=_asked(str(form.get("next") or "")))
        refused.status_code = 401
        return refused
    if not CONSOLE_ROLES.intersection(user.roles):  # a connector's account, say: no page is theirs
        refused = page(request, "login.html", "login", failed=False, oidc=configured(request),
                       refused=NO_CONSOLE_ROLE, next=_asked(str(form.get("next") or "")))
        refused.status_code = 403
        return refused
    asked = _asked(str(form.get("next") or ""))
    response = RedirectResponse(asked or landing(user.roles), 303)
    await run_in_threadpool(start_session, request, response, f"console:{user.name}",
                            user.display, list(user.roles), user.name, user.name,
                            user.institution or None)
    return response


def _asked(value: str) -> str:
    """The console page a login was asked to lead to (checked), or "" when none was."""
    return safe_next(value) if value else ""


def landing(roles: Iterable[str]) -> str:
    """Where a login lands when no page was asked for: the overview, or for a person whose
    roles do not open it (a clinician, who landed on a 403), the shared record."""
    overview = OPERATIONS["$console-overview"][0]
    return "/console/overview" if set(roles) & overview else "/console/record"


@router.post("/console/logout", name="console-logout", include_in_schema=False)
async def logout(request: Request) -> Response:
    authorize(request, Action("operation", None, None, "$console-logout"))
    check_csrf(request, await request.form())
    response = RedirectResponse("/console/login", 303)
    await run_in_threadpool(end_session, request, response)
    return response
