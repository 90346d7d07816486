"""What every console page shares: the router, the words (Chinese first), the page renderer
with its security headers, the error page, the forms' CSRF check."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from datetime import datetime
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import yaml
from fastapi import APIRouter, Request, staticfiles
from fastapi.responses import HTMLResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape

from hub.access.policy import OPERATIONS
from hub.auth.sessions import AUDIENCE, COOKIE, ISSUER, SESSION_S, session_log
from hub.core.access import Action
from hub.core.errors import FhirError
from hub.core.fhirtime import local_zone, zone_name

router = APIRouter()

LANG_COOKIE = "hub_console_lang"
STATIC = Path(str(resources.files("hub.console").joinpath("static")))
LANGS = ("zh", "en")
# Apache ECharts, fetched by `make console-assets` (not in the repository): without it the chart
# pages say so instead of leaving the charts blank
ECHARTS = STATIC / "vendor" / "echarts.min.js"


@lru_cache(maxsize=1)
def words() -> dict[str, dict[str, str]]:
    return yaml.safe_load(resources.files("hub.console").joinpath("i18n.yaml").read_text("utf-8"))


def say(request: Request, key: str) -> str:
    """The word ``key`` in the reader's language."""
    return words().get(key, {}).get(lang_of(request), key)


_env = Environment(loader=PackageLoader("hub.console", "templates"),
                   autoescape=select_autoescape(["html"]))


def shown_time(value: Any) -> str:
    """A time as every console page shows it: in the platform's zone (HUB_TIMEZONE), with its
    offset, ``2026-12-07 08:32:27 +08:00``. Epoch seconds or an ISO/FHIR value; a value without
    a zone is already the platform's (hub.core.fhirtime); a date alone, or what is no time
    (``23:59:60``), is shown as it is."""
    if value is None or value == "":
        return ""
    zone = local_zone()
    if isinstance(value, int | float):
        at = datetime.fromtimestamp(float(value), zone)
    else:
        text = str(value)
        if "T" not in text:
            return text
        try:
            at = datetime.fromisoformat(text)
        except ValueError:
            return text
        at = at.replace(tzinfo=zone) if at.tzinfo is None else at.astimezone(zone)
    return f"{at:%Y-%m-%d %H:%M:%S} {zone_name(zone)}"


_env.filters["datetime"] = shown_time


def lang_of(request: Request) -> str:
    asked = request.query_params.get("lang") or request.cookies.get(LANG_COOKIE) or "zh"
    return asked if asked in LANGS else "zh"


# the menu: each page with the operation its GET is checked by
MENU = (("overview", "$console-overview"), ("connectors", "$console-connectors"),
        ("quarantine", "$console-quarantine"), ("quality", "$console-quality"),
        ("identity", "$mpi-review"), ("mapping", "$unmapped-codes"),
        ("record", "$console-record"), ("terminology", "$console-terminology"),
        ("jobs", "$console-overview"), ("audit", "$console-audit"))


# what a person must hold to log in: a role some console page is for (a connector's role
# opens none); one refusal for a local user and one of an identity provider
CONSOLE_ROLES = frozenset().union(*(OPERATIONS[op][0] for _, op in MENU))
NO_CONSOLE_ROLE = "your account has none of the hub's roles that open the console"


def menu_of(request: Request) -> list[str]:
    """The pages the signed-in person may open, judged by the policy their pages are (a link
    to a page that answers 403 is no way in)."""
    actor = getattr(request.state, "actor", None)
    if actor is None:
        return []
    policy = request.app.state.repo.policy
    shown = []
    for name, operation in MENU:
        try:
            policy.check(actor, Action("operation", None, None, operation))
        except FhirError:
            continue
        shown.append(name)
    return shown


def page(request: Request, template: str, current: str, **values: Any) -> HTMLResponse:
    lang = lang_of(request)
    said = words()
    claims = getattr(request.state, "console_claims", None) or {}
    html = _env.get_template(template).render(
        t=lambda key: said.get(key, {}).get(lang, key), lang=lang, page=current,
        user=claims.get("name"), csrf=claims.get("csrf", ""), btg=btg_value(request),
        menu=menu_of(request) if claims else [], lang_href=lang_link(request, lang),
        charts_missing=not ECHARTS.is_file(), **values)
    response = HTMLResponse(html, headers={"cache-control": "no-store", **SECURITY_HEADERS})
    if request.query_params.get("lang") in LANGS:
        response.set_cookie(LANG_COOKIE, lang, max_age=365 * 86400, samesite="strict")
    return response


def lang_link(request: Request, lang: str) -> str:
    """The link to this page in the other language, with the rest of the page's query (the
    person, the filters, the purpose it was read with)."""
    other = "en" if lang == "zh" else "zh"
    kept = [(k, v) for k, v in request.query_params.multi_items() if k != "lang"]
    return "?" + urlencode([*kept, ("lang", other)])


# the pages' own script files and the vendored ECharts only (no inline script: an injected
# element could run none), no frames, no other origin; no sniffing a file into another type;
# the console's addresses (a record's, with its purpose) never sent to another site
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; script-src 'self'; style-src 'self' "
                               "'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'; "
                               "form-action 'self'; base-uri 'none'; object-src 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
}


class StaticFiles(staticfiles.StaticFiles):
    """The console's script, style and chart library, with the pages' security headers."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers.update(SECURITY_HEADERS)
        return response


@lru_cache(maxsize=1)
def _details() -> list[tuple[re.Pattern[str], dict[str, str]]]:
    """The ``detail_*`` words as patterns of their English (``{name}``: any text)."""
    out = []
    for key, said in words().items():
        if key.startswith("detail_"):
            parts = re.split(r"\{(\w+)\}", said["en"])
            pattern = "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>.+)"
                              for i, p in enumerate(parts))
            out.append((re.compile(pattern), said))
    return out


def said_detail(request: Request, detail: str) -> str:
    """An error page's detail, said in English by the HTTP layer, in the reader's language (a
    page in Chinese said "The query string holds a control character" under its Chinese title);
    one the words do not hold stays as it is."""
    lang = lang_of(request)
    for pattern, said in _details():
        found = pattern.fullmatch(detail)
        if found:
            return said[lang].format(**found.groupdict())
    return detail


def error_page(request: Request, status: int, detail: str) -> HTMLResponse:
    """A refusal on a console page, as a page (the API answers an OperationOutcome)."""
    key = {400: "bad_request", 403: "forbidden", 404: "not_found", 413: "too_large",
           431: "too_large", 503: "unavailable"}.get(status, "failed")
    response = page(request, "error.html", "error", status=status, key=key,
                    detail=said_detail(request, detail))
    response.status_code = status
    return response


def start_session(request: Request, response: Response, subject: str, name: str,
                  roles: list[str], user: str | None, fhir_user: str,
                  institution: str | None = None, issuer: str | None = None) -> None:
    """Sign ``subject`` in: a session begun in the session log (so that logging out or disabling
    the user ends it on the server too) and its cookie set on ``response``. ``institution``: the
    one the person works for (the consents that name institutions are judged by it), as an API
    token's ``hub_institution``; ``issuer``: the identity provider whose subject it is (None: a
    user of the hub's own)."""
    state = request.app.state
    sid = session_log(state).begin(subject if issuer is None else f"{subject} ({issuer})", user)
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": subject, "name": name,
              "fhirUser": f"Practitioner/console-{quote(fhir_user, safe='')}", "hub_roles": roles,
              "scope": "user/*.cruds", "csrf": secrets.token_urlsafe(24), "sid": sid}
    if institution:
        claims["hub_institution"] = institution
    if issuer:
        claims["hub_issuer"] = issuer
    token = state.auth_signer.issue(claims, SESSION_S)
    response.set_cookie(COOKIE, token, max_age=SESSION_S, httponly=True, samesite="strict",
                        secure=secure_cookies(request), path="/console")


def secure_cookies(request: Request) -> bool:
    """Whether the console's cookies are Secure: over https, also behind a proxy that ends TLS
    (the hub's public base URL says https)."""
    return request.url.scheme == "https" or \
        str(request.app.state.settings.fhir_base).startswith("https:")


def public_url(request: Request, path: str) -> str:
    """The address of ``path`` (``/console/…``) as browsers reach the hub: beside the FHIR base
    of its public base URL (``HUB_BASE_URL``: a proxy that ends TLS says https there, where the
    request it forwards is plain http), else where the request came."""
    base = str(request.app.state.settings.base_url or "").rstrip("/")
    if base.startswith(("https://", "http://")):
        return base.removesuffix("/fhir") + path
    return str(request.base_url).rstrip("/") + path


def session_mac(request: Request, label: str) -> str:
    """A value only this session can make, for ``label`` (a keyed hash of the session's secret
    CSRF value: it tells nothing of that value, so it may stand in an address)."""
    claims = getattr(request.state, "console_claims", None) or {}
    key = str(claims.get("csrf") or "")
    if not key:
        return ""
    mac = hmac.new(key.encode(), label.encode("utf-8"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac[:18]).decode()


def btg_value(request: Request) -> str:
    """The value that makes an emergency purpose count on a record page: this session's, and
    never its CSRF value (it stands in the page's address, its links and the browser's
    history)."""
    return session_mac(request, "break-the-glass")


def signed_by_session(request: Request, label: str, sent: str) -> bool:
    made = session_mac(request, label)
    return bool(made) and secrets.compare_digest(made.encode(), sent.encode("utf-8", "replace"))


def with_notice(request: Request, url: str, notice: str) -> str:
    """``url`` with a notice for its page to show, signed with the session: a notice in a link
    made anywhere else (or before a new login) shows nothing."""
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}{urlencode({'notice': notice, 'ns': session_mac(request, 'notice:' + notice)})}"


def notice_of(request: Request) -> str | None:
    """The notice the page's address carries, if this session signed it; else none."""
    notice = request.query_params.get("notice")
    if not notice or not signed_by_session(request, "notice:" + notice,
                                           request.query_params.get("ns", "")):
        return None
    return notice


def end_session(request: Request, response: Response) -> None:
    claims = getattr(request.state, "console_claims", None) or {}
    if isinstance(claims.get("sid"), str):
        session_log(request.app.state).end(claims["sid"])
    response.delete_cookie(COOKIE, path="/console")


def from_elsewhere(request: Request) -> bool:
    """Did a page of another origin send this form? (login CSRF: a page elsewhere posting its
    own credentials would swap the reader's session for the attacker's.) Browsers name the
    form's origin in ``Origin``; a client that sends none is no browser posting another site's
    form. The hub's own origin is where the request came (``Host``) or its public base URL."""
    origin = request.headers.get("origin")
    if origin is None:
        return False
    ours = {request.headers.get("host", ""), urlsplit(str(request.app.state.settings.fhir_base)).netloc}
    return urlsplit(origin).netloc not in ours


def check_csrf(request: Request, form: Any) -> None:
    claims = getattr(request.state, "console_claims", None) or {}
    sent = form.get("csrf") or ""
    if not claims.get("csrf") or not secrets.compare_digest(str(sent), claims["csrf"]):
        raise FhirError(403, "forbidden", "The form is not from this session (CSRF check)")


def safe_next(value: str) -> str:
    """Where a login leads: a console page, with its query (the person or filter a link
    asked for), never anywhere else (``//host``, a scheme, a backslash: the overview)."""
    ok = re.fullmatch(r"/console/[A-Za-z0-9/_-]*(\?[A-Za-z0-9._~%&=+,:/|*!$'()@-]{0,1024})?",
                      value or "")
    return value if ok and "//" not in value else "/console/overview"
