"""What every console page shares: the router, the words (Chinese first), the page renderer
with its security headers, the error page, the forms' CSRF check."""

from __future__ import annotations

import re
import secrets
from datetime import datetime
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, PackageLoader, select_autoescape

from hub.core.errors import FhirError
from hub.core.fhirtime import local_zone

router = APIRouter()

LANG_COOKIE = "hub_console_lang"
STATIC = Path(str(resources.files("hub.console").joinpath("static")))
LANGS = ("zh", "en")


@lru_cache(maxsize=1)
def words() -> dict[str, dict[str, str]]:
    return yaml.safe_load(resources.files("hub.console").joinpath("i18n.yaml").read_text("utf-8"))


def say(request: Request, key: str) -> str:
    """The word ``key`` in the reader's language."""
    return words().get(key, {}).get(lang_of(request), key)


_env = Environment(loader=PackageLoader("hub.console", "templates"),
                   autoescape=select_autoescape(["html"]))
# the times shown: in the platform's zone (HUB_TIMEZONE)
_env.filters["datetime"] = lambda ts: datetime.fromtimestamp(float(ts), local_zone()).strftime(
    "%Y-%m-%d %H:%M:%S")


def lang_of(request: Request) -> str:
    asked = request.query_params.get("lang") or request.cookies.get(LANG_COOKIE) or "zh"
    return asked if asked in LANGS else "zh"


def page(request: Request, template: str, current: str, **values: Any) -> HTMLResponse:
    lang = lang_of(request)
    said = words()
    claims = getattr(request.state, "console_claims", None) or {}
    html = _env.get_template(template).render(
        t=lambda key: said.get(key, {}).get(lang, key), lang=lang, page=current,
        user=claims.get("name"), csrf=claims.get("csrf", ""), **values)
    response = HTMLResponse(html, headers={"cache-control": "no-store",
                                           "content-security-policy": _CSP})
    if request.query_params.get("lang") in LANGS:
        response.set_cookie(LANG_COOKIE, lang, max_age=365 * 86400, samesite="strict")
    return response


# the pages' own scripts and the vendored ECharts only; no frames, no other origin
_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' "
        "'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'")


def error_page(request: Request, status: int, detail: str) -> HTMLResponse:
    """A refusal on a console page, as a page (the API answers an OperationOutcome)."""
    key = {403: "forbidden", 404: "not_found"}.get(status, "failed")
    response = page(request, "error.html", "error", status=status, key=key, detail=detail)
    response.status_code = status
    return response


def check_csrf(request: Request, form: Any) -> None:
    claims = getattr(request.state, "console_claims", None) or {}
    sent = form.get("csrf") or ""
    if not claims.get("csrf") or not secrets.compare_digest(str(sent), claims["csrf"]):
        raise FhirError(403, "forbidden", "The form is not from this session (CSRF check)")


def safe_next(value: str) -> str:
    return value if re.fullmatch(r"/console/[A-Za-z0-9/_-]*", value or "") else "/console/overview"
