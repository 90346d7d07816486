"""The console against a careless or hostile world: sessions end on the server (logging out, or an
administrator disabling the user, ends every session of it at once: a signed cookie alone stayed
valid for its eight hours); breaking the glass is the reader's own choice on the console's form,
never a link a feed wrote."""

from __future__ import annotations

import re
import uuid

import httpx

from hub.auth.clients import REGISTRY_FILE
from hub.auth.users import UserRegistry
from hub.core import httpclient
from tests.console_helpers import PASSWORD, base, live  # noqa: F401 - fixtures
from tests.console_helpers import console_user as _user
from tests.console_helpers import logged_in as _logged_in


def _fake_daemon(answers: dict):
    """A connector daemon's status API answering ``answers`` by path (started; shut it down)."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Daemon(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the standard library's name
            body = json.dumps(answers.get(self.path.split("?")[0], [])).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Daemon)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _csrf(page: httpx.Response) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)


def _btg(page: httpx.Response) -> str:
    return re.search(r'name="btg" value="([^"]+)"', page.text).group(1)


def _overview(live, cookie: str) -> int:
    return httpx.get(base(live) + "/console/overview", cookies={"hub_console": cookie},
                     timeout=30, verify=httpclient.verify()).status_code


def test_logging_out_ends_the_session_on_the_server(live):
    name = _user(live)
    c = _logged_in(live, name)
    cookie = c.cookies["hub_console"]
    page = c.get("/console/overview")
    assert page.status_code == 200
    csrf = _csrf(page)
    assert c.post("/console/logout", data={"csrf": csrf}).status_code == 303
    # the cookie kept (copied before the logout) opens nothing any more: the login page
    assert _overview(live, cookie) == 303
    # a second session of the same user was not ended by the first one's logout
    other = _logged_in(live, name)
    assert other.get("/console/overview").status_code == 200


def test_a_clinician_can_log_out(live):
    """A clinician's logout was refused (403: the overview's roles) and the session lived on."""
    c = _logged_in(live, _user(live, ("clinician",)))
    cookie = c.cookies["hub_console"]
    csrf = _csrf(c.get("/console/terminology"))
    assert c.post("/console/logout", data={"csrf": csrf}).status_code == 303
    r = httpx.get(base(live) + "/console/terminology", cookies={"hub_console": cookie}, timeout=30, verify=httpclient.verify())
    assert r.status_code == 303  # signed out: to the login page


def test_disabling_a_user_ends_its_live_sessions(live):
    name = _user(live, ("admin",))
    c = _logged_in(live, name)
    assert c.get("/console/audit").status_code == 200
    UserRegistry(live.settings.data_dir / REGISTRY_FILE).disable(name)
    assert c.get("/console/audit").status_code == 303  # to the login page
    assert c.post("/console/login", data={"name": name, "password": PASSWORD}).status_code == 401


def test_a_link_breaks_no_glass_and_the_way_back_is_built_from_a_checked_id(live, client):
    n = uuid.uuid4().hex[:6]
    pid = f"btg-{n}"
    assert client.put(f"/Patient/{pid}", json={
        "resourceType": "Patient", "id": pid, "name": [{"family": f"林{n}"}]}).status_code == 201
    for oid, subject in ((f"o-{n}", f"Patient/{pid}"), (f"x-{n}", "http://evil.example/Patient/x")):
        assert client.put(f"/Observation/{oid}", json={
            "resourceType": "Observation", "id": oid, "status": "final", "code": {"text": "血糖"},
            "subject": {"reference": subject}}).status_code == 201
    c = _logged_in(live, _user(live, ("clinician",)))
    # an emergency purpose in a link (a feed's reference, a message) asks for the purpose again
    asked = c.get(f"/console/record/Observation/o-{n}", params={"purpose": "ETREAT"})
    assert asked.status_code == 200 and 'id="purpose-form"' in asked.text
    assert "血糖" not in asked.text
    # the console's own form carries the session's value: the reader chose it
    btg = _btg(asked)
    chosen = c.get(f"/console/record/Observation/o-{n}", params={"purpose": "ETREAT", "btg": btg})
    assert chosen.status_code == 200 and "血糖" in chosen.text
    assert f'href="/console/record/Patient/{pid}?purpose=ETREAT&amp;btg={btg}"' in chosen.text
    treat = c.get(f"/console/record/Observation/o-{n}", params={"purpose": "TREAT"})
    assert f'href="/console/record/Patient/{pid}?purpose=TREAT"' in treat.text
    # a subject that is no plain local reference gives no way back, rather than a link to it
    other = c.get(f"/console/record/Observation/x-{n}", params={"purpose": "TREAT"})
    assert other.status_code == 200 and "evil.example" not in re.sub(r"<td>[^<]*</td>", "",
                                                                     other.text).split("<table")[0]
    assert "/console/record/Patient/" not in other.text


def test_a_login_form_posted_from_another_site_is_refused(live):
    name = _user(live)
    form = {"name": name, "password": PASSWORD}
    with httpx.Client(base_url=base(live), timeout=30, verify=httpclient.verify()) as c:
        elsewhere = c.post("/console/login", data=form, headers={"origin": "http://evil.example"})
        assert elsewhere.status_code == 403 and "hub_console" not in elsewhere.cookies
        nowhere = c.post("/console/login", data=form, headers={"origin": "null"})
        assert nowhere.status_code == 403
        ours = c.post("/console/login", data=form, headers={"origin": base(live)})
        assert ours.status_code == 303 and "hub_console" in ours.cookies


def test_pages_and_files_forbid_inline_script_sniffing_and_telling_other_sites(live):
    c = _logged_in(live, _user(live, ("admin",)))
    for r in (c.get("/console/overview"), c.get("/console/login"),
              c.get("/console/static/charts.js"), c.get("/console/static/console.css")):
        assert r.status_code == 200, r.url
        csp = r.headers["content-security-policy"]
        script = next(d for d in csp.split(";") if d.strip().startswith("script-src"))
        assert "unsafe-inline" not in script and "frame-ancestors 'none'" in csp
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "same-origin"
    assert "<script>" not in c.get("/console/overview").text  # no inline script left to allow


def test_malformed_console_input_is_a_page_not_a_crash(live):
    c = _logged_in(live, _user(live, ("admin", "clinician")))
    for since in ("2024-13-45", "0000-01-01"):
        r = c.get("/console/record/Patient/x", params={"purpose": "TREAT", "since": since})
        assert r.status_code == 400 and "<html" in r.text, since
    r = c.get("/console/quarantine/99999999999999999999999")
    assert r.status_code == 404 and "<html" in r.text


def test_an_undo_is_refused_alike_whether_or_not_the_decision_exists(live):
    c = _logged_in(live, _user(live, ("clinician",)))
    csrf = _csrf(c.get("/console/record"))
    answers = {c.post(f"/console/identity/person/{uuid.uuid4().hex}/undo",
                      data={"csrf": csrf, "seq": seq}).status_code for seq in ("1", "999")}
    assert answers == {403}


def test_one_misbehaving_connector_daemon_holds_no_page(live, tmp_path):
    """A daemon answering its status as a list, with counts that are no numbers, or its dead
    letters with an error that is a string, gave the connectors page a 500 for every connector;
    it now shows as it can, and the page stands."""

    from hub.daemons import DaemonRegistry

    answers = {"/status": {"healthy": True, "sources": {"adt": {"received": "many"}},
                           "sink": "broken"},
               "/deadletters": [{"id": 1, "error": "a plain string"}],
               "/deadletters/1": {"id": 1, "error": "a plain string", "payload": "MSH|"}}

    listed = _fake_daemon(answers)
    try:
        registry = DaemonRegistry(live.settings.data_dir)
        registry.add("odd", f"http://127.0.0.1:{listed.server_port}", "token")
        c = _logged_in(live, _user(live, ("admin",)))
        assert c.get("/console/connectors").status_code == 200
        answers["/status"] = ["not", "a", "status"]
        assert c.get("/console/connectors").status_code == 200
        assert c.get("/console/connectors/odd/deadletters/1").status_code == 200
        registry.remove("odd")
    finally:
        listed.shutdown()


def test_guessing_a_password_is_held_after_ten_failures(live):
    """Forty wrong passwords in two seconds were all answered 401, then the right one let the
    guesser in. After ten failures in a quarter hour the name is held (429), the right
    password included, until the oldest failure leaves the window."""
    name = _user(live)
    with httpx.Client(base_url=base(live), timeout=30, verify=httpclient.verify()) as c:
        for _ in range(10):
            assert c.post("/console/login", data={"name": name, "password": "wrong guess"}
                          ).status_code == 401
        held = c.post("/console/login", data={"name": name, "password": PASSWORD})
        assert held.status_code == 429 and "hub_console" not in held.cookies
        assert 1 <= int(held.headers["retry-after"]) <= 900  # when to try again (RFC 6585)
        other = _user(live)  # another name is not held
        assert c.post("/console/login", data={"name": other, "password": PASSWORD}
                      ).status_code == 303


def test_a_clinician_lands_on_a_page_of_theirs(live):
    """The overview is not a clinician's page: a clinician's login landed on a 403."""
    name = _user(live, ("clinician",))
    with httpx.Client(base_url=base(live), timeout=30, verify=httpclient.verify()) as c:
        r = c.post("/console/login", data={"name": name, "password": PASSWORD})
        assert r.status_code == 303 and r.headers["location"] == "/console/record"
        assert c.get(r.headers["location"]).status_code == 200


def test_a_form_posted_after_the_session_ended_leads_back_to_its_page(live):
    """A replay posted once the session had ended sent the login to the replay's address, which
    takes only POST: the person landed on a 405 in FHIR JSON. The login leads back to the page
    the form was on."""
    with httpx.Client(base_url=base(live), timeout=30, verify=httpclient.verify()) as c:
        r = c.post("/console/quarantine/1/replay", data={"csrf": "x"},
                   headers={"referer": base(live) + "/console/quarantine"})
        assert r.status_code == 303
        assert r.headers["location"] == "/console/login?next=/console/quarantine"
        r = c.post("/console/quarantine/1/replay", data={"csrf": "x"})
        assert r.headers["location"] == "/console/login?next=/console"


def test_console_mistakes_are_pages_not_fhir_json(live):
    """An unknown console address or a malformed one answered an OperationOutcome in FHIR JSON
    inside the console; they are console pages, with their status."""
    c = _logged_in(live, _user(live, ("admin",)))
    for path, status in (("/console/nope", 404), ("/console/quarantine/abc", 400)):
        r = c.get(path)
        assert r.status_code == status and r.headers["content-type"].startswith("text/html"), path
        assert 'id="error-status"' in r.text
    missing = c.get("/console/static/nope.js")
    assert missing.status_code == 404 and "fhir" not in missing.headers["content-type"]
    assert "frame-ancestors 'none'" in missing.headers["content-security-policy"]
    assert missing.headers["x-content-type-options"] == "nosniff"


def test_a_timeline_page_counts_only_the_records_its_reader_may_see(live, client):
    """A person's timeline page counted every institution record linked to it, one a consent
    hides from the reader too: the count told that a hidden record exists."""
    from tests.api_helpers import consent

    n = uuid.uuid4().hex[:6]
    shown, hidden = f"cnt-a-{n}", f"cnt-b-{n}"
    for pid, org in ((shown, "H1"), (hidden, "H2")):
        assert client.put(f"/Patient/{pid}", json={"resourceType": "Patient", "id": pid,
                                                   "name": [{"family": f"钱{n}"}]},
                          headers={"x-hub-source-institution": org}).status_code == 201
    user = {"x-hub-user": "steward-test"}
    params = {"resourceType": "Parameters", "parameter": [
        {"name": "patient", "valueReference": {"reference": f"Patient/{shown}"}}]}
    person = client.post("/Person/$link", json=params, headers=user).json()["id"]
    params["parameter"] = [
        {"name": "patient", "valueReference": {"reference": f"Patient/{hidden}"}},
        {"name": "person", "valueReference": {"reference": f"Person/{person}"}}]
    assert client.post("/Person/$link", json=params, headers=user).status_code == 200
    c = _logged_in(live, _user(live, ("clinician",)))

    def counted() -> str:
        page = c.get(f"/console/record/Patient/{shown}", params={"purpose": "TREAT"})
        assert page.status_code == 200, page.text[:300]
        return re.search(r'id="purpose">[^<]*: (\d+)</p>', page.text).group(1)

    assert counted() == "2"
    opt_out = consent(hidden, {"type": "deny"}, "H2", policyRule={"coding": [{
        "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTOUT"}]})
    assert client.put(f"/Consent/{opt_out['id']}", json=opt_out,
                      headers={"x-hub-source-institution": "H2"}).status_code == 201
    assert counted() == "1"
    # the hidden Patient's own timeline is refused as its read is: it showed the records of
    # the person's other Patients, which told of the link
    page = c.get(f"/console/record/Patient/{hidden}", params={"purpose": "TREAT"})
    assert page.status_code == 403, page.text[:300]


def test_a_login_leads_back_to_the_page_asked_for_with_its_query(live):
    """A link to a person (or a quality filter) followed without a session lost its query on
    the way through the login: the reader landed on the overview. The query is kept; anything
    that is not a console page still leads to the overview."""
    from urllib.parse import parse_qs, urlsplit

    name = _user(live)
    asked = "/console/identity/person?ref=Patient/p-1&x=%E6%9D%A8"
    with httpx.Client(base_url=base(live), timeout=30, verify=httpclient.verify()) as c:
        r = c.get(asked)
        assert r.status_code == 303, r.text[:200]
        sent = parse_qs(urlsplit(r.headers["location"]).query)["next"][0]
        assert sent == asked, r.headers["location"]
        for nxt, lands in ((sent, asked), ("//evil.example/console/x", "/console/overview"),
                           ("/console//evil.example", "/console/overview"),
                           ("https://evil.example/console/", "/console/overview"),
                           ("/console/x?a=<script>", "/console/overview")):
            r = c.post("/console/login", data={"name": name, "password": PASSWORD, "next": nxt})
            assert r.status_code == 303 and r.headers["location"] == lands, (nxt, r.headers)


def test_the_break_the_glass_value_is_not_the_csrf_value_and_is_not_audited(live, client):
    """The session's CSRF value was the break-the-glass value of the record's links: it stood
    in the browser's history and, with the query, in the append-only audit log. The value is
    the session's own, not its CSRF value, and the audit records the query without it."""
    import base64
    import json

    from tests.console_helpers import wait_for

    n = uuid.uuid4().hex[:6]
    pid = f"glass-{n}"
    assert client.put(f"/Patient/{pid}", json={
        "resourceType": "Patient", "id": pid, "name": [{"family": f"周{n}"}]}).status_code == 201
    assert client.put(f"/Observation/o-{n}", json={
        "resourceType": "Observation", "id": f"o-{n}", "status": "final", "code": {"text": "血压"},
        "subject": {"reference": f"Patient/{pid}"}}).status_code == 201
    c = _logged_in(live, _user(live, ("clinician",)))
    csrf = _csrf(c.get("/console/record"))
    btg = _btg(c.get(f"/console/record/Patient/{pid}", params={"purpose": "ETREAT"}))
    assert btg and btg != csrf and csrf not in btg
    # the CSRF value breaks no glass
    asked = c.get(f"/console/record/Observation/o-{n}", params={"purpose": "ETREAT", "btg": csrf})
    assert 'id="purpose-form"' in asked.text and "血压" not in asked.text
    for path in (f"/console/record/Patient/{pid}", f"/console/record/Observation/o-{n}"):
        r = c.get(path, params={"purpose": "ETREAT", "btg": btg})
        assert r.status_code == 200 and 'id="purpose-form"' not in r.text, path
    auditor = httpx.Client(base_url=live.base, auth=live.client_auth(roles=("auditor",)),
                           timeout=30, verify=httpclient.verify())

    def events() -> list[dict]:
        found = auditor.get("/AuditEvent", params={"entity": f"Patient/{pid}", "_count": 100})
        return [e["resource"] for e in found.json().get("entry", [])
                if "ETREAT" in json.dumps(e["resource"].get("purposeOfEvent"))]

    assert wait_for(lambda: len(events()) >= 2)
    recorded = events()
    auditor.close()
    queries = [e.get("description") or base64.b64decode(e.get("query") or "").decode()
               for d in recorded for e in d.get("entity") or []
               if (e.get("role") or {}).get("code") == "24"]
    assert any("purpose=ETREAT" in q for q in queries), queries  # the query is recorded...
    assert not any("btg" in q for q in queries), queries  # ...without the value
    text = json.dumps(recorded)
    assert btg not in text and csrf not in text


def test_a_consent_denying_an_institution_holds_in_the_console_as_in_the_api(live, client,
                                                                             monkeypatch):
    """A Consent denying Organization/H2 refused H2's clinicians through the API, but the
    console knew no one's institution: an H2 clinician logged in read the record. A person's
    institution is kept with their user (``hub auth user add --institution``) and judged as a
    token's; a person (or a token) naming none could be of H2, so the deny holds for them too."""
    import io

    from hub.cli import main
    from tests.api_helpers import consent

    n = uuid.uuid4().hex[:6]
    pid, oid = f"inst-{n}", f"inst-o-{n}"
    h1 = {"x-hub-source-institution": "H1"}
    assert client.put(f"/Patient/{pid}", json={"resourceType": "Patient", "id": pid, "name": [
        {"family": f"孙{n}"}]}, headers=h1).status_code == 201
    assert client.put(f"/Observation/{oid}", json={
        "resourceType": "Observation", "id": oid, "status": "final",
        "code": {"text": f"病毒载量{n}"}, "subject": {"reference": f"Patient/{pid}"}},
        headers=h1).status_code == 201
    deny = consent(pid, {"type": "deny", "actor": [{"role": {"coding": [{"code": "PRCP"}]},
                                                    "reference": {"reference": "Organization/H2"}}]},
                   "H1")
    assert client.put(f"/Consent/{deny['id']}", json=deny, headers=h1).status_code == 201
    h2 = f"h2-{n}"
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    assert main(["auth", "user", "add", h2, "--role", "clinician", "--institution", "H2",
                 "--data-dir", str(live.settings.data_dir)]) == 0
    people = {"H2": h2, "H3": _user(live, ("clinician",), "H3"),
              "": _user(live, ("clinician",))}
    for institution, name in people.items():
        c = _logged_in(live, name)
        r = c.get(f"/console/record/Observation/{oid}", params={"purpose": "TREAT"})
        shown = f"病毒载量{n}" in r.text
        assert (r.status_code, shown) == ((200, True) if institution == "H3" else (403, False)), \
            (institution, r.status_code)
        api = httpx.Client(base_url=live.base, timeout=30, headers={"x-purpose-of-use": "TREAT"},
                           auth=live.client_auth(roles=("clinician",), scope="user/*.rs",
                                                 institution=institution), verify=httpclient.verify())
        assert api.get(f"/Observation/{oid}").status_code == (200 if institution == "H3" else 403)
        api.close()


def test_users_of_a_file_from_before_institutions_have_none(tmp_path):
    import sqlite3

    path = tmp_path / REGISTRY_FILE
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE user (name TEXT PRIMARY KEY, display TEXT NOT NULL, roles TEXT "
                   "NOT NULL, hash BLOB NOT NULL, salt BLOB NOT NULL, status TEXT NOT NULL, "
                   "created TEXT NOT NULL)")
    db.close()
    users = UserRegistry(path)
    users.add("old", PASSWORD, ["clinician"])
    users.add("new", PASSWORD, ["clinician"], institution="H2")
    assert {u.name: u.institution for u in users.list()} == {"old": "", "new": "H2"}
    assert users.check("new", PASSWORD).institution == "H2"


def _access_row(page: httpx.Response, aid: str) -> str:
    return re.search(rf'<tr id="access-{re.escape(aid)}">.*?</tr>', page.text, re.S).group(0)


def test_a_break_the_glass_access_is_reviewed_by_someone_else_and_every_finding_stays(
        live, client):
    """An administrator reviewed their own break-the-glass access as justified, over an
    auditor's "unjustified" (the page showed the newest review only), and any AuditEvent id
    took a review. The access's own agent is refused; only emergency accesses take a review;
    every review stays on the page."""
    from tests.console_helpers import wait_for

    n = uuid.uuid4().hex[:6]
    pid = f"rev-{n}"
    assert client.put(f"/Patient/{pid}", json={
        "resourceType": "Patient", "id": pid, "name": [{"family": f"吴{n}"}]}).status_code == 201
    me = _user(live, ("admin",))
    adm = _logged_in(live, me)
    btg = _btg(adm.get(f"/console/record/Patient/{pid}", params={"purpose": "ETREAT"}))
    assert adm.get(f"/console/record/Patient/{pid}",
                   params={"purpose": "ETREAT", "btg": btg}).status_code == 200
    assert adm.get(f"/console/record/Patient/{pid}", params={"purpose": "TREAT"}).status_code == 200

    def access_id() -> str | None:
        page = adm.get("/console/audit")
        for m in re.finditer(r'<tr id="access-([^"]+)">(.*?)</tr>', page.text, re.S):
            if f"Patient/{pid}" in m.group(2) and f"console:{me}" in m.group(2):
                return m.group(1)
        return None

    aid = wait_for(access_id)
    assert aid
    csrf = _csrf(adm.get("/console/audit"))
    own = adm.post(f"/console/audit/{aid}/review", data={"csrf": csrf, "finding": "justified",
                                                         "note": "mine"})
    assert own.status_code == 403 and "other than the person who made it" in own.text
    row = _access_row(adm.get("/console/audit"), aid)
    assert "<form" not in row and 'class="muted pending"' in row
    # the TREAT read of the same record is no emergency access: no review of it
    auditor_api = httpx.Client(base_url=live.base, auth=live.client_auth(roles=("auditor",)),
                               timeout=30, verify=httpclient.verify())
    treat = [e["resource"]["id"] for e in auditor_api.get(
        "/AuditEvent", params={"entity": f"Patient/{pid}", "_count": 100}).json()["entry"]
        if "TREAT" in str(e["resource"].get("purposeOfEvent"))
        and "ETREAT" not in str(e["resource"].get("purposeOfEvent"))]
    auditor_api.close()
    assert treat
    aud = _logged_in(live, _user(live, ("auditor",)))
    acsrf = _csrf(aud.get("/console/audit"))
    r = aud.post(f"/console/audit/{treat[0]}/review", data={"csrf": acsrf, "finding": "justified"})
    assert r.status_code == 404
    r = aud.post(f"/console/audit/{aid}/review", data={"csrf": acsrf, "finding": "unjustified",
                                                        "note": "无急诊"})
    assert r.status_code == 303
    other = _logged_in(live, _user(live, ("admin",)))
    r = other.post(f"/console/audit/{aid}/review", data={
        "csrf": _csrf(other.get("/console/audit")), "finding": "justified", "note": "后补"})
    assert r.status_code == 303
    row = _access_row(aud.get("/console/audit"), aid)
    assert "finding-unjustified" in row and "无急诊" in row  # the finding stays
    assert "finding-justified" in row and "后补" in row
    assert "<form" not in row  # reviewed by others than the one who broke the glass


def test_a_notice_shows_only_when_this_session_made_it(live):
    """Any console page showed the text of ``?notice=`` in its notice bar (phishing words in the
    console's own voice), through a login too. A notice shows only when this session's action
    made it."""
    name = _user(live)
    c = _logged_in(live, name)
    r = c.post("/console/mapping", data={
        "csrf": _csrf(c.get("/console/mapping")), "system": "urn:local", "code": f"c-{name}",
        "target_system": "http://loinc.org", "target_code": "2345-7"})
    assert r.status_code == 303
    made = r.headers["location"]
    assert f"c-{name}" in c.get(made).text.split('id="notice"')[1][:200]
    forged = "/console/mapping?notice=" + "Your password expired: call 555-0100"
    for page in (c.get(forged), _logged_in(live, name).get(made)):  # another session's notice
        assert page.status_code == 200 and 'id="notice"' not in page.text
    with httpx.Client(base_url=base(live), timeout=30, verify=httpclient.verify()) as fresh:  # through a login
        login = fresh.get(forged)
        assert login.status_code == 303
        from urllib.parse import parse_qs, urlsplit
        nxt = parse_qs(urlsplit(login.headers["location"]).query)["next"][0]
        r = fresh.post("/console/login", data={"name": name, "password": PASSWORD, "next": nxt})
        page = fresh.get(r.headers["location"])
        assert page.status_code == 200 and 'id="notice"' not in page.text


def test_a_document_refused_again_on_each_replay_is_kept_once_per_day(live):
    """The overview's quarantine per day counted every entry, each refused replay of a document
    adding one: refused and replayed twice, one document drew as three."""
    import json

    broken = b"<ClinicalDocument xmlns='urn:hl7-org:v3'><id/>"  # refused however often replayed
    c = _logged_in(live, _user(live))

    def kept_today() -> int:
        page = c.get("/console/overview")
        assert page.status_code == 200, page.text[:300]
        kept = json.loads(re.search(r'<script id="kept-data" type="application/json">(.*?)'
                                    r'</script>', page.text, re.S).group(1))
        return sum(s["data"][-1] for s in kept["series"] if s["name"] == "cda")

    before = kept_today()
    auth = live.client_auth(roles=("connector",), institution=f"HQ{uuid.uuid4().hex[:4]}") \
        if live.settings.auth else None
    with httpx.Client(base_url=base(live), auth=auth, timeout=30, verify=httpclient.verify()) as fhir:
        refused = fhir.post("/cda", content=broken, headers={"content-type": "application/xml"})
    assert refused.status_code == 422, refused.text[:300]
    qid = int(refused.headers["x-quarantine-id"])
    assert kept_today() == before + 1
    for _ in range(2):  # refused again: a new entry, the old one superseded
        csrf = _csrf(c.get("/console/quarantine"))
        r = c.post(f"/console/quarantine/{qid}/replay", data={"csrf": csrf},
                   follow_redirects=False)
        assert r.status_code == 303, r.text[:300]
        [qid] = [e["id"] for e in _open_entries(live) if e["id"] > qid]
    assert kept_today() == before + 1


def _open_entries(live) -> list[dict]:
    from hub.quarantine import Quarantine

    q = Quarantine(live.settings.data_dir / "quarantine.sqlite")
    try:
        return q.list("open", limit=10_000)
    finally:
        q.close()


def test_the_quarantine_page_shows_the_newest_first_and_pages_to_the_oldest(live):
    """With more entries than a page holds, the newest were never shown (the oldest 500 were,
    reversed) and nothing said the list was cut."""
    from hub.quarantine import Quarantine

    tag = uuid.uuid4().hex[:8]
    q = Quarantine(live.settings.data_dir / "quarantine.sqlite")
    try:
        mine = [q.put("v3", b"<x/>", {"institution": f"HP{tag}"}, {}, f"probe {tag} {i}")
                for i in range(510)]
        total = q.count(None)
    finally:
        q.close()
    c = _logged_in(live, _user(live))
    page = c.get("/console/quarantine")
    assert page.status_code == 200, page.text[:300]
    ids = [int(i) for i in re.findall(r'<tr id="entry-(\d+)"', page.text)]
    assert ids[0] == mine[-1] and ids == sorted(ids, reverse=True)  # the newest first
    assert re.search(rf"{len(ids)} / {total}\b", page.text)  # says the list is cut
    seen = list(ids)
    while (older := re.search(r'id="older" href="([^"]+)"', page.text)) is not None:
        page = c.get(older.group(1).replace("&amp;", "&"))
        assert page.status_code == 200 and 'id="newest"' in page.text
        seen += [int(i) for i in re.findall(r'<tr id="entry-(\d+)"', page.text)]
    assert len(seen) == total and set(mine) <= set(seen) and seen == sorted(seen, reverse=True)


def test_a_long_timeline_shows_the_newest_first_and_pages_to_the_oldest(live, client):
    """A timeline of more records than a page showed the oldest 200 and silently left out the
    newest, the ones a clinician reads first."""
    from datetime import date, timedelta

    pid = f"long-{uuid.uuid4().hex[:8]}"
    assert client.put(f"/Patient/{pid}", json={"resourceType": "Patient", "id": pid},
                      headers={"x-hub-source-institution": "H1"}).status_code == 201
    day0 = date(2001, 1, 1)
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Observation", "status": "final",
                      "code": {"text": f"HR-{i:03d}"}, "subject": {"reference": f"Patient/{pid}"},
                      "effectiveDateTime": f"{day0 + timedelta(days=i)}T08:00:00+08:00",
                      "valueQuantity": {"value": 60 + i % 40, "unit": "/min"}},
         "request": {"method": "POST", "url": "Observation"}} for i in range(230)]}
    r = client.post("/", json=bundle, headers={"x-hub-source-institution": "H1"})
    assert r.status_code == 200, r.text[:300]
    c = _logged_in(live, _user(live, ("clinician",)))

    def labels(page: httpx.Response) -> list[str]:
        assert page.status_code == 200, page.text[:300]
        return re.findall(r'class="open" href="[^"]*">(HR-\d{3})</a>', page.text)

    page = c.get(f"/console/record/Patient/{pid}", params={"purpose": "TREAT"})
    first = labels(page)
    assert first[0] == "HR-229" and len(first) == 200  # the newest first
    assert 'id="more"' in page.text  # says that more exist
    older = re.search(r'id="older" href="\?([^"]+)"', page.text).group(1).replace("&amp;", "&")
    page = c.get(f"/console/record/Patient/{pid}?{older}")
    rest = labels(page)
    assert rest[-1] == "HR-000" and 'id="more"' not in page.text
    assert first + rest == [f"HR-{i:03d}" for i in range(229, -1, -1)]  # nothing lost, none twice
    # the filters stay on the next page's link; a cursor of no page of this server is refused
    page = c.get(f"/console/record/Patient/{pid}",
                 params={"purpose": "TREAT", "kind": "result", "since": "2001-01-10"})
    older = re.search(r'id="older" href="\?([^"]+)"', page.text).group(1).replace("&amp;", "&")
    assert "kind=result" in older and "since=2001-01-10" in older
    bad = c.get(f"/console/record/Patient/{pid}", params={"purpose": "TREAT", "cursor": "x"})
    assert bad.status_code == 400


def test_an_account_without_a_console_role_cannot_log_in(live):
    """A connector's account logged in to a console of 403 pages only; it is refused as an
    identity provider's person without a role is."""
    name = _user(live, ("connector",))
    with httpx.Client(base_url=base(live), timeout=30, verify=httpclient.verify()) as c:
        r = c.post("/console/login", data={"name": name, "password": PASSWORD},
                   follow_redirects=False)
        assert r.status_code == 403 and "hub_console" not in r.cookies
        assert "none of the hub&#39;s roles" in r.text and 'id="refused"' in r.text
        r = c.post("/console/login", data={"name": name, "password": "wrong password 123"})
        assert r.status_code == 401 and 'id="refused"' not in r.text  # the password first


_PAGES = ("overview", "connectors", "quarantine", "quality", "identity", "mapping", "record",
          "terminology", "jobs", "audit")


def test_the_menu_shows_the_pages_a_persons_roles_open_and_no_other(live):
    """Every person saw every page in the menu, most of them leading to a 403."""
    expected = {"clinician": {"record", "terminology"},
                "auditor": {"overview", "quality", "terminology", "jobs", "audit"},
                "steward": set(_PAGES) - {"record", "audit"}, "admin": set(_PAGES)}
    for role, pages in expected.items():
        c = _logged_in(live, _user(live, (role,)))
        nav = re.search(r'<nav aria-label="console">(.*?)</nav>',
                        c.get("/console/terminology").text, re.S).group(1)
        assert set(re.findall(r'href="/console/(\w+)"', nav)) == pages, role
        for name in _PAGES:  # what the menu shows opens; what it leaves out is refused
            assert c.get(f"/console/{name}").status_code == (200 if name in pages else 403), \
                (role, name)


def test_the_language_link_keeps_the_pages_query(live):
    """The language link was ``?lang=en`` alone: switching dropped the person looked for, the
    filters, the purpose the record was read with."""
    from urllib.parse import parse_qs

    c = _logged_in(live, _user(live, ("clinician",)))
    page = c.get("/console/record", params={"q": "张三", "lang": "zh"})
    href = re.search(r'id="lang" href="\?([^"]*)"', page.text).group(1).replace("&amp;", "&")
    assert parse_qs(href) == {"q": ["张三"], "lang": ["en"]}
    page = c.get("/console/record?" + href)
    assert page.status_code == 200 and 'value="张三"' in page.text and 'lang="en"' in page.text


def test_an_error_page_says_its_detail_in_the_pages_language(live):
    """A page in Chinese said its detail in English: "The query string holds a control
    character", "No console page at /console/nosuchpage"."""
    c = _logged_in(live, _user(live, ("admin", "clinician")))
    for path, zh, en in (
            ("/console/overview?q=%07", "查询字符串含有控制字符",
             "The query string holds a control character"),
            ("/console/nosuchpage", "没有此控制台页面：/console/nosuchpage",
             "No console page at /console/nosuchpage")):
        page = c.get(path + ("&" if "?" in path else "?") + "lang=zh")  # the language remembered
        assert '<html lang="zh' in page.text and zh in page.text and en not in page.text, page.text
        page = c.get(path + ("&" if "?" in path else "?") + "lang=en")
        assert '<html lang="en' in page.text and en in page.text and zh not in page.text, page.text


def test_a_refused_query_or_body_is_a_console_page_and_the_api_still_answers_fhir(live, client):
    """A control character in a console page's query was refused before the console saw it, in
    FHIR JSON; so was a body over the limit. They are console pages in the reader's language,
    with their status; the API's answer is as it was."""
    import socket

    c = _logged_in(live, _user(live, ("admin", "clinician")))
    for path in ("/console/record?q=%00", "/console/terminology?q=%00&lang=en",
                 "/console/overview?institution=%00"):
        r = c.get(path)
        assert r.status_code == 400 and r.headers["content-type"].startswith("text/html"), path
        assert 'id="error-status"' in r.text and 'aria-label="console"' in r.text, path  # menu
    assert "The request is not valid" in c.get("/console/terminology?q=%00&lang=en").text
    assert "请求无效" in c.get("/console/record?q=%01&lang=zh").text
    api = client.get("/Patient?name=%00")
    assert api.status_code == 400 and api.headers["content-type"].startswith(
        "application/fhir+json") and api.json()["resourceType"] == "OperationOutcome"
    # a declared body past the limit, unread: the console's page, and the connection closed
    host, port = live.settings.host, live.port
    with socket.create_connection((host, port), timeout=30) as s:
        s.sendall(b"POST /console/mapping HTTP/1.1\r\nHost: %s:%d\r\nCookie: hub_console=%s\r\n"
                  b"Content-Type: application/x-www-form-urlencoded\r\n"
                  b"Content-Length: 99999999999\r\n\r\n"
                  % (host.encode(), port, c.cookies["hub_console"].encode()))
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413") and b"text/html" in head, head
    assert b'id="error-status"' in body


def test_console_messages_say_what_was_asked_for_and_a_missing_system_is_said_in_the_page(live):
    """A quality report not found named the resource type it is stored as ("OperationOutcome/…
    is not known"); looking a standard code up in a code system not loaded turned the whole
    mapping page into a 404."""
    c = _logged_in(live, _user(live, ("steward",)))
    r = c.get("/console/quality/report/nope", params={"lang": "en"})
    assert r.status_code == 404 and "No quality report nope" in r.text
    assert "OperationOutcome" not in r.text
    r = c.get("/console/mapping", params={"find": "%", "find_system": "http://example.org/none",
                                          "lang": "en"})
    assert r.status_code == 200 and 'id="find-unloaded"' in r.text
    assert "This code system is not loaded" in r.text and 'id="unmapped"' in r.text


def test_every_unreviewed_break_the_glass_access_of_the_window_can_be_reached(live, client):
    """The review list held the newest 200 emergency accesses: older ones of the ninety days,
    unreviewed, dropped out of sight. The page says how many older ones there are and links to
    them."""
    n = uuid.uuid4().hex[:6]
    pid = f"page-{n}"
    assert client.put(f"/Patient/{pid}", json={
        "resourceType": "Patient", "id": pid, "name": [{"family": f"郑{n}"}]}).status_code == 201
    first_name = _user(live, ("clinician",))
    first = _logged_in(live, first_name)
    btg = _btg(first.get(f"/console/record/Patient/{pid}", params={"purpose": "ETREAT"}))
    assert first.get(f"/console/record/Patient/{pid}",
                     params={"purpose": "ETREAT", "btg": btg}).status_code == 200
    many = _logged_in(live, _user(live, ("clinician",)))
    btg = _btg(many.get(f"/console/record/Patient/{pid}", params={"purpose": "ETREAT"}))
    for _ in range(201):
        assert many.get(f"/console/record/Patient/{pid}",
                        params={"purpose": "ETREAT", "btg": btg}).status_code == 200
    aud = _logged_in(live, _user(live, ("auditor",)))

    def rows(page: httpx.Response) -> list[str]:
        return re.findall(r'<tr id="access-[^"]+">(.*?)</tr>', page.text, re.S)

    newest = aud.get("/console/audit")
    assert len(rows(newest)) == 200
    assert not any(f"console:{first_name}" in r for r in rows(newest))
    older = re.search(r'id="emergency-older">[^<]*: (\d+)</a>', newest.text)
    assert older and int(older.group(1)) >= 1
    link = re.search(r'href="(/console/audit\?older=\d+)" id="emergency-older"', newest.text)
    pages = [aud.get(link.group(1))]
    while (link := re.search(r'href="(/console/audit\?older=\d+)" id="emergency-older"',
                             pages[-1].text)) is not None:
        pages.append(aud.get(link.group(1)))
    mine = [r for p in pages for r in rows(p) if f"console:{first_name}" in r]
    assert mine and "<form" in mine[0]  # shown, with its review form


def test_the_identity_pages_show_a_steward_only_the_patients_it_may_see(live, client):
    """A steward of another institution than the one a patient's consent lets see her opened the
    person page by her hidden Patient: it showed her person, the other records' names, birth
    dates and institutions, her link ("（无权查看）") and the history naming her. Her Patient now
    finds nothing (as an unknown one), the person found by a record the steward sees lists
    neither her link nor a decision naming her, that decision cannot be undone by this steward,
    and a review about her is not in the queue, nor decided; the steward who may see her is
    shown all of it."""
    from hub.mpi.identity import IdentityService
    from tests.api_helpers import consent

    n = uuid.uuid4().hex[:6]
    shown, hidden, other = f"idp-a-{n}", f"idp-b-{n}", f"idp-c-{n}"
    h1 = {"x-hub-source-institution": "H1"}
    for pid, family in ((shown, f"赵{n}"), (hidden, f"钱{n}"), (other, f"孙{n}")):
        assert client.put(f"/Patient/{pid}", json={"resourceType": "Patient", "id": pid,
                                                   "name": [{"family": family}],
                                                   "birthDate": "1961-02-03"},
                          headers=h1).status_code == 201
    deny = consent(hidden, {"type": "deny"}, "H1")
    assert client.put(f"/Consent/{deny['id']}", json=deny, headers=h1).status_code == 201
    store = live.settings.open_store()
    matcher = IdentityService.open(store, live.settings.data_dir / f"matcher-{n}")
    try:  # the matcher asks whether another record is hers
        matcher.auto_decide(f"Patient/{hidden}", "new", [], 1.0, {}, "r1")
        matcher.auto_decide(f"Patient/{other}", "review", [f"Patient/{hidden}"], 0.7, {}, "r1")
    finally:
        matcher.close()
        store.close()
    user = {"x-hub-user": "steward-test"}

    def link(patient: str, person: str | None = None) -> str:
        params = {"resourceType": "Parameters", "parameter": [
            {"name": "patient", "valueReference": {"reference": f"Patient/{patient}"}},
            *([{"name": "person", "valueString": f"Person/{person}"}] if person else [])]}
        r = client.post("/Person/$link", json=params, headers=user)
        assert r.status_code == 200, r.text
        return r.json()["id"]

    person = link(hidden, link(shown))
    home = _logged_in(live, _user(live, ("steward",), "H1"))
    away = _logged_in(live, _user(live, ("steward",), "H2"))
    page = home.get("/console/identity/person", params={"ref": f"Patient/{shown}"})
    assert page.status_code == 200 and f"link-Patient/{hidden}" in page.text, page.text[:300]
    seq = re.search(rf'id="decision-(\d+)">(?:(?!</tr>).)*Patient/{hidden}</td>', page.text,
                    re.S).group(1)
    rid = re.search(rf'id="review-([^"]+)">(?:(?!</section>).)*Patient/{other}',
                    home.get("/console/identity").text, re.S).group(1)  # the review about her

    unknown = away.get("/console/identity/person", params={"ref": f"Patient/nobody-{n}"})
    for ref in (f"Patient/{hidden}", hidden):
        r = away.get("/console/identity/person", params={"ref": ref})
        assert r.status_code == unknown.status_code == 404, r.text[:300]
        assert person not in r.text and f"赵{n}" not in r.text
    page = away.get("/console/identity/person", params={"ref": f"Patient/{shown}"})
    assert page.status_code == 200 and f"link-Patient/{shown}" in page.text, page.text[:300]
    assert f"赵{n}" in page.text  # the record it sees, read as its own
    for leaked in (hidden, f"钱{n}", "（无权查看）", f'id="decision-{seq}"'):
        assert leaked not in page.text, leaked
    undo = away.post(f"/console/identity/person/{person}/undo",
                     data={"csrf": _csrf(page), "seq": seq})
    assert undo.status_code == 404, undo.text[:300]
    queue = away.get("/console/identity")
    assert queue.status_code == 200 and hidden not in queue.text and other not in queue.text
    decided = away.post(f"/console/identity/{rid}/decide",
                        data={"csrf": _csrf(queue), "decision": "accept"})
    assert decided.status_code == 403, decided.text[:300]
    page = home.get("/console/identity/person", params={"ref": f"Patient/{shown}"})
    assert f'id="decision-{seq}"' in page.text and f"link-Patient/{hidden}" in page.text


def test_a_deleted_record_on_the_person_page_is_said_deleted_not_hidden(live, client):
    """A Patient deleted after it was linked showed on its person's page as "（无权查看）" (not
    shown to you) to a steward who may see it: one who may see a deletion is told it is one."""
    n = uuid.uuid4().hex[:6]
    kept, gone = f"idd-a-{n}", f"idd-b-{n}"
    h1 = {"x-hub-source-institution": "H1"}
    for pid, family in ((kept, f"周{n}"), (gone, f"吴{n}")):
        assert client.put(f"/Patient/{pid}", json={"resourceType": "Patient", "id": pid,
                                                   "name": [{"family": family}],
                                                   "birthDate": "1962-03-04"},
                          headers=h1).status_code == 201
    user = {"x-hub-user": "steward-test"}
    person = None
    for pid in (kept, gone):
        params = {"resourceType": "Parameters", "parameter": [
            {"name": "patient", "valueReference": {"reference": f"Patient/{pid}"}},
            *([{"name": "person", "valueString": f"Person/{person}"}] if person else [])]}
        r = client.post("/Person/$link", json=params, headers=user)
        assert r.status_code == 200, r.text
        person = r.json()["id"]
    assert client.delete(f"/Patient/{gone}", headers=h1).status_code in (200, 204)
    home = _logged_in(live, _user(live, ("steward",), "H1"))
    page = home.get("/console/identity/person", params={"ref": f"Patient/{kept}"})
    assert page.status_code == 200, page.text[:300]
    row = re.search(rf'id="link-Patient/{gone}".*?</tr>', page.text, re.S)
    assert row is not None, page.text[:2000]
    assert "（已删除）" in row.group(0) and "（无权查看）" not in row.group(0), row.group(0)


def _identity_params(**refs: str) -> dict:
    return {"resourceType": "Parameters", "parameter": [
        {"name": k, "valueString": v} for k, v in refs.items()]}


def _hidden_people(client, n: str, *pids: str) -> None:
    """Patients institution HB wrote, each with a bare deny naming HB: only HB sees them."""
    from tests.api_helpers import consent

    hb = {"x-hub-source-institution": "HB"}
    for i, pid in enumerate(pids):
        assert client.put(f"/Patient/{pid}", json={
            "resourceType": "Patient", "id": pid, "name": [{"family": f"隐{i}{n}"}],
            "birthDate": "1970-01-0" + str(i + 1)}, headers=hb).status_code == 201
        deny = consent(pid, {"type": "deny"}, "HB")
        assert client.put(f"/Consent/{deny['id']}", json=deny, headers=hb).status_code == 201


def _link(client, patient: str, person: str | None = None) -> str:
    refs = {"patient": f"Patient/{patient}", **({"person": f"Person/{person}"} if person else {})}
    r = client.post("/Person/$link", json=_identity_params(**refs),
                    headers={"x-hub-user": "steward-test"})
    assert r.status_code == 200, r.text
    return r.json()["id"]


def _merge(client, source: str, target: str) -> None:
    r = client.post("/Person/$merge", json=_identity_params(
        source=f"Person/{source}", target=f"Person/{target}"), headers={"x-hub-user": "stB"})
    assert r.status_code == 200, r.text


def _decisions(page: httpx.Response) -> list[str]:
    return re.findall(r'id="decision-(\d+)"', page.text)


def test_a_steward_cannot_undo_or_find_a_person_wholly_hidden_from_it(live, client):
    """Two persons whose every Patient a consent hides from institution HA were merged: a
    steward of HA undid that merge (and re-merged) from the console by guessing the decision's
    number, since a merge names Persons only and no Patient of them was judged; and the merged
    person's page answered 403 naming the survivor. Both now answer as an unknown person or
    decision, and the merge stands."""
    n = uuid.uuid4().hex[:6]
    a_pid, b_pid = f"idh-a-{n}", f"idh-b-{n}"
    _hidden_people(client, n, a_pid, b_pid)
    a, b = _link(client, a_pid), _link(client, b_pid)
    _merge(client, a, b)
    home = _logged_in(live, _user(live, ("steward",), "HB"))
    away = _logged_in(live, _user(live, ("steward",), "HA"))
    page = home.get("/console/identity/person", params={"ref": f"Person/{b}"})
    assert page.status_code == 200 and f"link-Patient/{a_pid}" in page.text, page.text[:300]
    seqs = _decisions(page)
    assert len(seqs) >= 3, page.text[:2000]  # two links and the merge

    unknown = away.get("/console/identity/person", params={"ref": f"Person/nobody-{n}"})
    assert unknown.status_code == 404 and "is not known" in unknown.text
    for ref in (f"Person/{a}", f"Person/{b}"):
        r = away.get("/console/identity/person", params={"ref": ref})
        assert r.status_code == 404 and f"{ref} is not known" in r.text, r.text[:300]
        for leaked in ({a, b} - {ref.split("/")[1]}):
            assert leaked not in r.text
    csrf = _csrf(away.get("/console/identity"))
    for person in (a, b):
        for seq in seqs:
            r = away.post(f"/console/identity/person/{person}/undo",
                          data={"csrf": csrf, "seq": seq}, follow_redirects=False)
            assert r.status_code == 404 and f"has no decision #{seq}" in r.text, (seq, r.text[:300])
    hb = live.client_auth(roles=("steward",), scope="system/Patient.rs system/Person.rs",
                          institution="HB")  # the merge stands, told to whoever sees them
    merged = client.get(f"/Person/{a}", auth=hb).json()
    assert merged.get("active") is False and \
        merged["link"][0]["target"]["reference"] == f"Person/{b}", merged
    assert _decisions(home.get("/console/identity/person", params={"ref": f"Person/{b}"})) == seqs


def test_a_person_partly_hidden_shows_no_decision_naming_its_hidden_persons_and_undoes_none(
        live, client):
    """A person holding a record a steward sees and a person wholly hidden from it merged in:
    the page of the person listed the merge (the hidden person's id, and that it was merged
    here) and let the steward undo it. Now a decision naming a person wholly hidden is not
    shown, and no decision of a person not wholly shown is undone (nor offered), as changing it
    changes who its hidden records are; the steward who sees every record still may."""
    n = uuid.uuid4().hex[:6]
    seen_pid, hidden_pid = f"idq-a-{n}", f"idq-b-{n}"
    assert client.put(f"/Patient/{seen_pid}", json={
        "resourceType": "Patient", "id": seen_pid, "name": [{"family": f"显{n}"}],
        "birthDate": "1971-02-03"}, headers={"x-hub-source-institution": "HA"}).status_code == 201
    _hidden_people(client, n, hidden_pid)
    shown, hidden = _link(client, seen_pid), _link(client, hidden_pid)
    _merge(client, hidden, shown)
    home = _logged_in(live, _user(live, ("steward",), "HB"))
    away = _logged_in(live, _user(live, ("steward",), "HA"))
    full = home.get("/console/identity/person", params={"ref": f"Person/{shown}"})
    assert full.status_code == 200 and hidden in full.text, full.text[:300]
    merge_seq = re.search(rf'id="decision-(\d+)">(?:(?!</tr>).)*Person/{hidden} → Person/{shown}',
                          full.text, re.S).group(1)
    page = away.get("/console/identity/person", params={"ref": f"Patient/{seen_pid}"})
    assert page.status_code == 200 and f"link-Patient/{seen_pid}" in page.text, page.text[:300]
    for leaked in (hidden, hidden_pid, f'id="decision-{merge_seq}"'):
        assert leaked not in page.text, leaked
    assert _decisions(page) and 'class="undo"' not in page.text  # its own link: shown, not undone
    for seq in _decisions(full):
        r = away.post(f"/console/identity/person/{shown}/undo",
                      data={"csrf": _csrf(page), "seq": seq}, follow_redirects=False)
        assert r.status_code == 404, (seq, r.text[:300])
    assert client.get(f"/Person/{hidden}").json().get("active") is False
    undone = home.post(f"/console/identity/person/{shown}/undo",
                       data={"csrf": _csrf(full), "seq": merge_seq}, follow_redirects=False)
    assert undone.status_code == 303, undone.text[:300]
    assert client.get(f"/Person/{hidden}").json().get("active") is not False


def _cda_of(n: str, doc_id: str, version: object) -> bytes:
    from tests.cda_docs import wst500

    return wst500(doc_id=doc_id, set_id=f"SET-{doc_id}", version=version, name=f"郑{n}") \
        .replace(b"H44000077", f"C{n}".encode())  # each test's custodian its own


def test_a_kept_payload_is_shown_to_its_institution_and_its_patients_readers_only(live):
    """A steward of one institution opened another's quarantined document in full, one about a
    patient whose consent hid them from it too, and the AuditEvent named no patient. An entry is
    shown to its own institution's people (or the region's, of none), its payload only when its
    Patient is shown to the reader, and the view is audited under that Patient."""
    import json

    from fhir_mapping.base import SourceInfo
    from fhir_mapping.cda import convert
    from tests.api_helpers import consent
    from tests.console_helpers import wait_for

    n = uuid.uuid4().hex[:6].upper()
    ha, hb = f"HA{n}", f"HB{n}"
    sender = httpx.Client(base_url=base(live), timeout=60, verify=httpclient.verify(),
                          auth=live.client_auth(roles=("connector",), institution=hb),
                          headers={"x-hub-source-institution": hb})
    xml = {"content-type": "application/xml"}
    good = _cda_of(n, f"D1-{n}", 1)
    assert sender.post("/cda", content=good, headers=xml).status_code == 201
    pid = convert(good, SourceInfo(institution=hb)).patient_key.split("/", 1)[1]
    deny = consent(pid, {"type": "deny"}, hb)
    assert sender.put(f"/fhir/Consent/{deny['id']}", json=deny).status_code == 201
    refused = sender.post("/cda", content=_cda_of(n, f"D2-{n}", "abc"), headers=xml)
    assert refused.status_code == 422, refused.text[:300]
    qid = int(refused.headers["x-quarantine-id"])

    away = _logged_in(live, _user(live, ("steward",), ha))
    listed = away.get("/console/quarantine")
    assert listed.status_code == 200 and f'id="entry-{qid}"' not in listed.text
    for r in (away.get(f"/console/quarantine/{qid}"),
              away.post(f"/console/quarantine/{qid}/replay", data={"csrf": _csrf(listed)})):
        assert r.status_code == 404 and f"郑{n}" not in r.text, (r.status_code, r.text[:300])
    # the region's administrator (of no institution) is held to the patient's consent
    region = _logged_in(live, _user(live, ("admin",)))
    assert f'id="entry-{qid}"' in region.get("/console/quarantine").text
    withheld = region.get(f"/console/quarantine/{qid}")
    assert withheld.status_code == 403 and f"郑{n}" not in withheld.text, withheld.text[:300]
    home = _logged_in(live, _user(live, ("steward",), hb))
    assert f'id="entry-{qid}"' in home.get("/console/quarantine").text
    shown = home.get(f"/console/quarantine/{qid}")
    assert shown.status_code == 200 and f"郑{n}" in shown.text

    auditor = httpx.Client(base_url=live.base, auth=live.client_auth(roles=("auditor",)),
                           timeout=30, verify=httpclient.verify())

    def views() -> list[dict]:
        found = auditor.get("/AuditEvent", params={"patient": f"Patient/{pid}", "_count": 100})
        return [e["resource"] for e in found.json().get("entry", [])
                if "$console-quarantine" in json.dumps(e["resource"].get("subtype"))]

    assert wait_for(lambda: {v["outcome"] for v in views()} >= {"0", "4"}, timeout=20), views()
    auditor.close()
    sender.close()


def test_a_dead_letter_is_shown_to_its_connectors_institution_only(live, tmp_path):
    """Any steward read every connector's dead letters. A connector is its institution's: its
    page, dead letters and replays are another institution's people's as an unknown one's."""
    import json

    from hub.daemons import DaemonRegistry
    from tests.api_helpers import consent
    from tests.console_helpers import wait_for

    n = uuid.uuid4().hex[:6].upper()
    ha, hb = f"HA{n}", f"HB{n}"
    letter = {"id": 1, "kind": "hl7v2", "stage": "convert", "error": {"reason": "odd"},
              "payload": f"MSH|^~\\&|\rPID|1||R{n}||郑^{n}"}
    # a document about a patient of hers whose consent hides them from everyone else
    sender = httpx.Client(base_url=base(live), timeout=60, verify=httpclient.verify(),
                          auth=live.client_auth(roles=("connector",), institution=hb),
                          headers={"x-hub-source-institution": hb})
    made = sender.post("/cda", content=_cda_of(n, f"D1-{n}", 1),
                       headers={"content-type": "application/xml"})
    assert made.status_code == 201, made.text[:300]
    pid = sender.get(made.headers["location"]).json()["subject"]["reference"].split("/")[1]
    deny = consent(pid, {"type": "deny"}, hb)
    assert sender.put(f"/fhir/Consent/{deny['id']}", json=deny).status_code == 201
    sender.close()
    document = {"id": 2, "kind": "cda", "stage": "deliver", "error": {"reason": "busy"},
                "payload": _cda_of(n, f"D2-{n}", 2).decode()}
    answers = {"/status": {"healthy": True, "sources": {}, "sink": {}},
               "/deadletters": [{k: v for k, v in d.items() if k != "payload"}
                                for d in (letter, document)],
               "/deadletters/1": letter, "/deadletters/2": document}

    listed = _fake_daemon(answers)
    name = f"feed-{n.lower()}"
    registry = DaemonRegistry(live.settings.data_dir)
    try:
        registry.add(name, f"http://127.0.0.1:{listed.server_port}", "token", institution=hb)
        away = _logged_in(live, _user(live, ("steward",), ha))
        page = away.get("/console/connectors")
        assert page.status_code == 200 and name not in page.text
        for r in (away.get(f"/console/connectors/{name}"),
                  away.get(f"/console/connectors/{name}/deadletters/1"),
                  away.post(f"/console/connectors/{name}/deadletters/1/replay",
                            data={"csrf": _csrf(page)})):
            assert r.status_code == 404 and f"郑^{n}" not in r.text, (r.status_code, r.text[:300])
        home = _logged_in(live, _user(live, ("steward",), hb))
        assert name in home.get("/console/connectors").text
        shown = home.get(f"/console/connectors/{name}/deadletters/1")
        assert shown.status_code == 200 and f"郑^{n}" in shown.text
        # the document's Patient is told (as its mapping keys it): hidden from the region's
        # administrator by her consent, shown to her institution and audited under her
        region = _logged_in(live, _user(live, ("admin",)))
        withheld = region.get(f"/console/connectors/{name}/deadletters/2")
        assert withheld.status_code == 403 and f"郑{n}" not in withheld.text
        shown = home.get(f"/console/connectors/{name}/deadletters/2")
        assert shown.status_code == 200 and f"郑{n}" in shown.text
        auditor = httpx.Client(base_url=live.base, auth=live.client_auth(roles=("auditor",)),
                               timeout=30, verify=httpclient.verify())

        def views() -> set[str]:
            found = auditor.get("/AuditEvent", params={"patient": f"Patient/{pid}"}).json()
            return {e["resource"]["outcome"] for e in found.get("entry", [])
                    if "$console-connectors" in json.dumps(e["resource"].get("subtype"))}

        assert wait_for(lambda: views() >= {"0", "4"}, timeout=20), views()
        auditor.close()
    finally:
        registry.remove(name)
        listed.shutdown()


def test_the_quality_page_lists_no_document_whose_report_it_may_not_open(live):
    """A steward of another institution saw, among the documents behind a quality count, one of a
    patient whose consent hid her from it (its institution, type and decision), though its report
    did not open. The list leaves out what the reader may not open."""
    from fhir_mapping.base import SourceInfo
    from fhir_mapping.cda import convert
    from tests.api_helpers import consent
    from tests.console_helpers import wait_for

    n = uuid.uuid4().hex[:6].upper()
    ha, hb = f"HA{n}", f"HB{n}"
    sender = httpx.Client(base_url=base(live), timeout=60, verify=httpclient.verify(),
                          auth=live.client_auth(roles=("connector",), institution=hb),
                          headers={"x-hub-source-institution": hb})
    doc = _cda_of(n, f"DQ-{n}", 1)
    made = sender.post("/cda", content=doc, headers={"content-type": "application/xml"})
    assert made.status_code == 201, made.text[:300]
    rid = made.json()["id"]
    pid = convert(doc, SourceInfo(institution=hb)).patient_key.split("/", 1)[1]
    deny = consent(pid, {"type": "deny"}, hb)
    assert sender.put(f"/fhir/Consent/{deny['id']}", json=deny).status_code == 201
    sender.close()
    link = f"/console/quality/report/{rid}"
    home = _logged_in(live, _user(live, ("steward",), hb))
    assert wait_for(lambda: link in home.get("/console/quality", params={"institution": hb}).text,
                    timeout=20)
    away = _logged_in(live, _user(live, ("steward",), ha))
    assert away.get(link).status_code == 403
    page = away.get("/console/quality", params={"institution": hb})
    assert page.status_code == 200 and link not in page.text, page.text[-2000:]
