"""Logging in to the console with an external OpenID Connect provider (authorization code with
PKCE), in a real headless browser against a real ``hub serve`` and a real provider
(``oidc-provider-mock``: discovery, a login form, signed ID tokens): a person with a hub role
gets a session; one without is refused; an answer not for this login (state) is refused."""

from __future__ import annotations

from urllib.parse import parse_qs, quote, urlparse

import httpx
import pytest

from hub.core import httpclient
from tests.conftest import LiveServer, make_settings
from tests.console_helpers import base, browser, click, wait_for  # noqa: F401


@pytest.fixture(scope="module")
def provider():
    import oidc_provider_mock

    with oidc_provider_mock.run_server_in_thread() as server:
        yield f"http://localhost:{server.server_port}"


@pytest.fixture(scope="module")
def live(provider, tmp_path_factory, request):
    settings = make_settings("sqlite", tmp_path_factory.mktemp("oidc"), request)
    settings.console_oidc_issuer = provider
    settings.console_oidc_client_id = "hub-console"
    settings.console_oidc_client_secret = "a confidential client's secret"  # the provider's rule
    with LiveServer(settings) as server:
        yield server


def person(provider: str, sub: str, claims: dict) -> None:
    r = httpx.put(f"{provider}/users/{quote(sub)}", json=claims, verify=httpclient.verify())
    assert r.status_code == 204, r.text


def log_in_at_the_provider(browser, live, sub: str) -> dict[str, list[str]]:
    """From the console's login page through the provider's form; the authorization request's
    parameters as the provider received them."""
    from selenium.webdriver.common.by import By

    browser.delete_all_cookies()
    browser.get(base(live) + "/console/login?next=/console/quality")
    click(browser, browser.find_element(By.ID, "oidc"))
    asked = parse_qs(urlparse(browser.current_url).query)
    browser.find_element(By.NAME, "sub").send_keys(sub)
    click(browser, browser.find_element(By.CSS_SELECTOR, "button[type=submit]"))
    return asked


def test_a_person_with_a_role_logs_in_with_the_identity_provider(browser, live, provider):
    from selenium.webdriver.common.by import By

    person(provider, "li.yunwei@example.org", {"name": "李运维", "roles": ["steward", "nurse"]})
    asked = log_in_at_the_provider(browser, live, "li.yunwei@example.org")
    # the authorization request: code flow, PKCE with S256, a state and a nonce
    assert asked["response_type"] == ["code"] and asked["client_id"] == ["hub-console"]
    assert asked["code_challenge_method"] == ["S256"] and len(asked["code_challenge"][0]) == 43
    assert asked["state"][0] and asked["nonce"][0]
    assert asked["redirect_uri"] == [base(live) + "/console/oidc/callback"]
    # back at the hub, logged in, on the page asked for
    assert wait_for(lambda: urlparse(browser.current_url).path == "/console/quality"
                    and browser.find_elements(By.ID, "who"))
    assert browser.find_element(By.ID, "who").text == "李运维"
    assert browser.get_cookie("hub_console_oidc") is None  # the flow's cookie is gone
    # the session carries the hub's roles only: a steward's pages, not an auditor's
    browser.get(base(live) + "/console/audit")
    assert browser.find_element(By.ID, "error-status").text == "403"


def test_a_person_without_a_hub_role_is_refused(browser, live, provider):
    from selenium.webdriver.common.by import By

    person(provider, "visitor@example.org", {"name": "访客", "roles": ["nurse"]})
    log_in_at_the_provider(browser, live, "visitor@example.org")
    assert wait_for(lambda: browser.find_elements(By.ID, "oidc-error"))
    assert "none of the hub's roles" in browser.find_element(By.ID, "oidc-error").text
    assert browser.get_cookie("hub_console") is None


def test_a_person_whose_only_role_opens_no_console_page_is_refused(browser, live, provider):
    """A connector's role is a hub role, but no console page is for it: the session held only
    pages that answered 403."""
    from selenium.webdriver.common.by import By

    browser.delete_all_cookies()
    person(provider, "feed@example.org", {"name": "接口", "roles": ["connector"]})
    log_in_at_the_provider(browser, live, "feed@example.org")
    assert wait_for(lambda: browser.find_elements(By.ID, "oidc-error"))
    assert "none of the hub's roles" in browser.find_element(By.ID, "oidc-error").text
    assert browser.get_cookie("hub_console") is None


def test_an_answer_not_for_this_login_is_refused(live, provider):
    # a callback without the flow's cookie (another browser's code, or a forged one)
    r = httpx.get(base(live) + "/console/oidc/callback", params={"code": "x", "state": "y"},
                  follow_redirects=False, verify=httpclient.verify())
    assert r.status_code == 403 and "hub_console=" not in r.headers.get("set-cookie", "")
    # the flow's cookie, but another state
    start = httpx.get(base(live) + "/console/oidc/start", follow_redirects=False, verify=httpclient.verify())
    assert start.status_code == 303 and start.headers["location"].startswith(provider)
    flow = start.cookies.get("hub_console_oidc")
    assert flow
    r = httpx.get(base(live) + "/console/oidc/callback", params={"code": "x", "state": "other"},
                  cookies={"hub_console_oidc": flow}, follow_redirects=False, verify=httpclient.verify())
    assert r.status_code == 403 and "state" in r.text
    # the right state but a code the provider never issued
    state = parse_qs(urlparse(start.headers["location"]).query)["state"][0]
    r = httpx.get(base(live) + "/console/oidc/callback", params={"code": "x", "state": state},
                  cookies={"hub_console_oidc": flow}, follow_redirects=False, verify=httpclient.verify())
    assert r.status_code == 403 and "hub_console=" not in r.headers.get("set-cookie", "")


def _session(live, sub: str) -> httpx.Client:
    """A console session through the provider, without a browser: the start, the provider's
    form posted, its redirect back followed."""
    c = httpx.Client(base_url=base(live), timeout=30, verify=httpclient.verify())
    start = c.get("/console/oidc/start", params={"next": "/console/record"})
    assert start.status_code == 303, start.text[:300]
    back = httpx.post(start.headers["location"], data={"sub": sub}, timeout=30, verify=httpclient.verify())
    assert back.status_code in (302, 303), back.text[:300]
    r = c.get(back.headers["location"])
    assert r.status_code == 200 and "hub_console" in c.cookies, r.text[:300]
    return c


def test_the_institution_the_provider_names_is_judged_by_consents(live, provider):
    """The console read only the roles of the ID token: a clinician of H2, whom a Consent
    denying Organization/H2 refused through the API, read the record in the console. The
    institution is read from the claim API tokens carry it in (HUB_AUTH_INSTITUTION_CLAIM)."""
    import uuid

    n = uuid.uuid4().hex[:6]
    pid, oid = f"oidc-{n}", f"oidc-o-{n}"
    h1 = {"x-hub-source-institution": "H1"}
    with httpx.Client(base_url=live.base, auth=live.auth, headers=h1, timeout=30, verify=httpclient.verify()) as api:
        assert api.put(f"/Patient/{pid}", json={"resourceType": "Patient", "id": pid}
                       ).status_code == 201
        assert api.put(f"/Observation/{oid}", json={
            "resourceType": "Observation", "id": oid, "status": "final",
            "code": {"text": f"机密{n}"}, "subject": {"reference": f"Patient/{pid}"}}
            ).status_code == 201
        deny = {"resourceType": "Consent", "id": f"c-{n}", "status": "active",
                "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/"
                                                "consentscope", "code": "patient-privacy"}]},
                "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
                "patient": {"reference": f"Patient/{pid}"},
                "organization": [{"reference": "Organization/H1"}],
                "provision": {"type": "deny", "actor": [{"role": {"coding": [{"code": "PRCP"}]},
                                                         "reference": {
                                                             "reference": "Organization/H2"}}]}}
        assert api.put(f"/Consent/c-{n}", json=deny).status_code == 201
    for institution, shown in (("H2", False), ("H3", True), (None, False)):
        sub = f"dr-{institution}-{n}@example.org"
        claims = {"name": "医生", "roles": ["clinician"]}
        if institution:
            claims["institution"] = institution
        person(provider, sub, claims)
        c = _session(live, sub)
        r = c.get(f"/console/record/Observation/{oid}", params={"purpose": "TREAT"})
        assert (r.status_code, f"机密{n}" in r.text) == ((200, True) if shown else (403, False)), \
            institution
        c.close()


def test_behind_a_proxy_that_ends_tls_the_flow_names_the_public_https_address(
        provider, tmp_path_factory, request):
    """Behind a proxy that ends TLS (HUB_BASE_URL https, the request plain http) the redirect
    URI was built from the request (http://…) and the flow's cookie had no Secure."""
    settings = make_settings("sqlite", tmp_path_factory.mktemp("oidc-proxy"), request)
    settings.console_oidc_issuer = provider
    settings.console_oidc_client_id = "hub-console"
    server = LiveServer(settings)
    server.extra_env["HUB_BASE_URL"] = "https://hub.example/fhir"
    with server:
        start = httpx.get(base(server) + "/console/oidc/start", follow_redirects=False, verify=httpclient.verify())
    assert start.status_code == 303
    asked = parse_qs(urlparse(start.headers["location"]).query)
    assert asked["redirect_uri"] == ["https://hub.example/console/oidc/callback"]
    [flow] = [c for c in start.headers.get_list("set-cookie") if c.startswith("hub_console_oidc=")]
    assert "secure" in flow.lower()


def test_a_person_the_provider_signed_in_is_audited_as_that_providers(
        provider, tmp_path_factory, request):
    """A console session carried no issuer: what the person read was audited as a subject of the
    hub's own users (``oidc:<host>:<sub>``, the provider by its host alone, so two providers of
    one host were one), not as the provider's subject, as that provider's API tokens are."""
    import time
    import uuid

    settings = make_settings("sqlite", tmp_path_factory.mktemp("oidc-audit"), request)
    settings.console_oidc_issuer = provider
    settings.console_oidc_client_id = "hub-console"
    settings.console_oidc_client_secret = "a confidential client's secret"
    settings.audit = True
    n = uuid.uuid4().hex[:6]
    pid, sub = f"oidc-a-{n}", f"console:local-{n}"  # a local user's subject, at the provider
    with LiveServer(settings) as server:
        with httpx.Client(base_url=server.base, auth=server.auth, timeout=30, verify=httpclient.verify()) as api:
            assert api.put(f"/Patient/{pid}", json={"resourceType": "Patient", "id": pid}
                           ).status_code == 201
            person(provider, sub, {"name": "医生", "roles": ["clinician"]})
            c = _session(server, sub)
            assert c.get(f"/console/record/Patient/{pid}", params={"purpose": "TREAT"}
                         ).status_code == 200
            c.close()
            agents: list[dict] = []
            for _ in range(50):
                found = api.get("/AuditEvent", params={"entity": f"Patient/{pid}"}).json()
                agents = [e["resource"]["agent"][0]["who"] for e in found.get("entry", [])
                          if e["resource"]["resourceType"] == "AuditEvent"
                          and "TREAT" in str(e["resource"].get("purposeOfEvent"))]
                if agents:
                    break
                time.sleep(0.2)
    assert agents and all(w["identifier"]["value"] == sub for w in agents), agents
    issuer = agents[0]["identifier"]["system"]
    assert issuer.rstrip("/") == provider.rstrip("/"), agents
    assert agents[0]["display"] == f"{sub} ({issuer})"
