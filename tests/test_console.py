"""The operator console (``/console``) in a real headless browser: Debian's chromium driven by
Selenium against a real ``hub serve``. A person logs in, reads the overview (the intake chart drawn
by ECharts), finds a refused message in the quarantine, reads it with its findings marked, replays
it after the fix and sees the result through the API; the audit page; the language switch;
what a person without the role, without a session, or with a forged form gets."""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path

import httpx
import pytest

from hub.auth.clients import REGISTRY_FILE
from hub.auth.users import UserRegistry
from tests.conftest import BACKENDS, LiveServer, make_settings

FIX = Path(__file__).parent / "fixtures" / "hl7v3"
PASSWORD = "correct horse battery"


def _driver():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not binary or not driver:
        pytest.fail("chromium and chromedriver are needed (make test installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                 "--window-size=1280,900"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


@pytest.fixture(scope="module", params=BACKENDS)
def live(request, tmp_path_factory):
    """The hub with the access audit on (the suites' servers run without it): no page shows a
    person's data without an AuditEvent."""
    settings = make_settings(request.param, tmp_path_factory.mktemp("console"), request)
    settings.audit = True
    with LiveServer(settings) as server:
        yield server


@pytest.fixture(scope="module")
def browser():
    d = _driver()
    d.set_page_load_timeout(30)
    yield d
    d.quit()


@pytest.fixture(scope="module")
def people(live):
    users = UserRegistry(live.settings.data_dir / REGISTRY_FILE)
    names = {role: f"{role}-{uuid.uuid4().hex[:6]}" for role in ("steward", "clinician", "auditor")}
    for role, name in names.items():
        users.add(name, PASSWORD, [role], display=f"{role} 张")
    return names


def base(live) -> str:
    return f"http://127.0.0.1:{live.port}"


def login(browser, live, name: str, password: str = PASSWORD, path: str = "/console/overview"):
    from selenium.webdriver.common.by import By

    browser.delete_all_cookies()
    browser.get(base(live) + path)
    assert "/console/login" in browser.current_url  # no session: the login page
    browser.find_element(By.ID, "name").send_keys(name)
    browser.find_element(By.ID, "password").send_keys(password)
    click(browser, browser.find_element(By.ID, "submit"))


def _new_page(browser) -> bool:
    """Whether the page the last click led to is loaded (the old page's marker is gone)."""
    from selenium.common.exceptions import WebDriverException

    try:
        return bool(browser.execute_script(
            "return window.__old === undefined && document.readyState === 'complete'"))
    except WebDriverException:  # between two pages
        return False


def click(browser, element) -> None:
    """Click and wait for the page it leads to."""
    browser.execute_script("window.__old = true")
    element.click()
    assert wait_for(lambda: _new_page(browser)), "the next page did not load"


def wait_for(fn, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def test_log_in_and_read_the_overview_with_its_chart(browser, live, people):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    # two institutions' feeds write today (a connector client's institution is its token's)
    inst = {k: f"H{k}{uuid.uuid4().hex[:4].upper()}" for k in ("A", "B")}
    for key, n in (("A", 3), ("B", 1)):
        auth = live.client_auth(roles=("connector",), institution=inst[key]) \
            if live.settings.auth else None
        with httpx.Client(base_url=live.base, auth=auth, timeout=30) as c:
            for i in range(n):
                r = c.post("/Patient", json={"resourceType": "Patient", "name": [{"family": "甲"}]},
                           headers={"x-hub-source-feed": f"adt-{key.lower()}"})
                assert r.status_code == 201, r.text
    login(browser, live, people["steward"])
    assert browser.current_url.endswith("/console/overview")
    assert browser.find_element(By.ID, "who").text == "steward 张"
    assert "总览" in browser.find_element(By.TAG_NAME, "h1").text  # Chinese first
    # ECharts drew the intake chart (a canvas in its container)
    chart = browser.find_element(By.ID, "intake")
    assert wait_for(lambda: chart.get_attribute("data-rendered") == "yes")
    assert chart.find_elements(By.TAG_NAME, "canvas")
    assert browser.find_elements(By.CSS_SELECTOR, "#lag tbody tr")  # each read model's lag
    assert browser.find_element(By.ID, "kept").get_attribute("data-rendered") == "yes"

    def totals() -> dict[str, str]:
        return {r.find_element(By.TAG_NAME, "th").text: r.find_element(By.TAG_NAME, "td").text
                for r in browser.find_elements(By.CSS_SELECTOR, "#by-type tbody tr")
                if r.find_elements(By.TAG_NAME, "th")}

    def counted() -> bool:  # once the intake counts have today's writes
        browser.get(base(live) + "/console/overview?by=institution")
        return totals().get(inst["A"]) == "3" and totals().get(inst["B"]) == "1"

    assert wait_for(counted)
    # one institution's intake by feed
    Select(browser.find_element(By.ID, "by")).select_by_value("feed")
    Select(browser.find_element(By.ID, "institution")).select_by_value(inst["A"])
    click(browser, browser.find_element(By.ID, "show"))
    assert totals() == {"adt-a": "3"}
    assert wait_for(lambda: browser.find_element(By.ID, "intake").get_attribute("data-rendered") == "yes")
    # English on asking, remembered
    click(browser, browser.find_element(By.ID, "lang"))
    assert "Overview" in browser.find_element(By.TAG_NAME, "h1").text
    browser.get(base(live) + "/console/quarantine")
    assert "Quarantine" in browser.find_element(By.TAG_NAME, "h1").text
    browser.get(base(live) + "/console/overview?lang=zh")


def test_a_wrong_password_is_refused_and_tells_nothing_more(browser, live, people):
    from selenium.webdriver.common.by import By

    login(browser, live, people["steward"], "not the password at all")
    assert browser.get_cookie("hub_console") is None  # no session
    assert browser.find_element(By.CSS_SELECTOR, "[role=alert]").text == "用户名或密码错误"
    login(browser, live, "nobody-" + uuid.uuid4().hex[:6], PASSWORD)
    assert browser.find_element(By.CSS_SELECTOR, "[role=alert]").text == "用户名或密码错误"


def test_find_a_refused_message_read_its_findings_and_replay_it(browser, live, people):
    """A v3 visit with a patient type the table lacks is refused and kept; the steward finds it,
    reads it with the element the finding names marked, replays it: refused again (the table
    still lacks the type), and the entry stays open with the reason."""
    from selenium.webdriver.common.by import By

    tag = uuid.uuid4().hex[:8].upper()
    visit = (FIX / "visit-register.xml").read_text("utf-8").replace("VS0001", f"VS{tag}").replace(
        "V-MSG-0001", f"V-{tag}").replace('code="1" codeSystem="2.16.156.10011.2.3.1.271"',
                                          'code="7" codeSystem="2.16.156.10011.2.3.1.271"')
    auth = live.client_auth(roles=("connector",)) if live.settings.auth else None
    r = httpx.post(base(live) + "/v3", content=visit.encode(), auth=auth,
                   headers={"content-type": "application/xml"})
    assert b'typeCode="AE"' in r.content
    qid = int(r.text.rsplit("quarantine entry", 1)[1].split(")")[0])
    login(browser, live, people["steward"], path="/console/quarantine")
    row = browser.find_element(By.ID, f"entry-{qid}")
    assert "patient type" in row.text
    click(browser, row.find_element(By.TAG_NAME, "a"))
    marked = browser.find_elements(By.CSS_SELECTOR, "#payload mark")
    assert marked and any("<code" in m.text for m in marked)  # the element the finding names
    click(browser, browser.find_element(By.CSS_SELECTOR, "button.replay"))
    notice = browser.find_element(By.ID, "notice").text
    assert f"#{qid}" in notice and "仍被拒绝" in notice  # still refused: the table has no type 7
    assert browser.find_element(By.ID, f"entry-{qid}")


def test_a_replay_that_passes_stores_the_message(browser, live, people):
    """A registration kept while the hub could not take it (busy) is replayed from the console:
    the list shows it replayed and the API has the visit it carried."""
    from selenium.webdriver.common.by import By

    from fhir_mapping.base import SourceInfo
    from hub import v3intake
    from hub.quarantine import Quarantine

    tag = uuid.uuid4().hex[:8].upper()
    message = (FIX / "visit-register.xml").read_bytes().replace(b"VS0001", f"VS{tag}".encode()) \
        .replace(b"V-MSG-0001", f"V-{tag}".encode())
    q = Quarantine(live.settings.data_dir / "quarantine.sqlite")
    qid = v3intake.keep(q, message, SourceInfo(institution="H0001"), "AE",
                        "the hub was busy", "v3.hub-busy", "PRPA_IN400001UV")
    q.close()
    login(browser, live, people["steward"], path=f"/console/quarantine/{qid}")
    click(browser, browser.find_element(By.CSS_SELECTOR, "button.replay"))
    notice = browser.find_element(By.ID, "notice").text
    assert f"#{qid}" in notice and "已重新处理" in notice
    row = browser.find_element(By.ID, f"entry-{qid}")
    assert "replayed" in row.text
    auth = live.client_auth() if live.settings.auth else None
    found = httpx.get(base(live) + "/fhir/Encounter", params={"identifier": f"VS{tag}"},
                      auth=auth).json()
    assert len(found["entry"]) == 1


def test_quality_per_institution_rule_and_type_drilled_down_to_the_document(browser, live, people):
    """A document with a finding (an ID number failing its check digit) sent by an institution:
    the quality page counts it per institution, rule and type and draws the trend; a click on
    the institution filters; the document opens with its finding and its source line marked.
    An auditor reads the counts but not the document."""
    from selenium.webdriver.common.by import By

    n = uuid.uuid4().hex[:6].upper()
    inst = f"HQ{n}"
    doc = (Path(__file__).parent / "fixtures" / "quality" / "wst500-C0002-clean.xml").read_bytes()
    doc = doc.replace(b"TEST-OP-0001", f"TEST-Q-{n}".encode()) \
        .replace(b"MZ20240305001", f"MZ{n}".encode()) \
        .replace(b"110105198003151234", b"110105198003151235")  # a wrong check digit
    auth = live.client_auth(roles=("connector",), institution=inst) if live.settings.auth else None
    r = httpx.post(base(live) + "/cda", content=doc, auth=auth, timeout=60,
                   headers={"content-type": "application/xml", "x-hub-source-institution": inst})
    assert r.status_code == 201, r.text
    login(browser, live, people["steward"], path="/console/quality")

    def listed() -> bool:
        browser.refresh()
        return inst in browser.find_element(By.ID, "per-institution").text

    assert wait_for(listed)  # once the quality counts have the report
    assert browser.find_element(By.ID, "trend").get_attribute("data-rendered") == "yes"
    click(browser, browser.find_element(By.LINK_TEXT, inst))
    assert inst in browser.find_element(By.ID, "filter-institution").text
    rules = browser.find_element(By.ID, "per-rule").text
    assert "cda.resident-id.valid" in rules
    rows = browser.find_elements(By.CSS_SELECTOR, "#documents tbody tr")
    assert len(rows) == 1 and "accept-with-warnings" in rows[0].text
    click(browser, rows[0].find_element(By.CSS_SELECTOR, "a.report"))
    assert "cda.resident-id.valid" in browser.find_element(By.ID, "findings").text
    marked = browser.find_elements(By.CSS_SELECTOR, "#payload mark")
    assert any("110105198003151235" in m.text for m in marked)
    report_url = browser.current_url
    login(browser, live, people["auditor"], path="/console/quality")
    assert browser.find_element(By.ID, "per-institution")
    browser.get(report_url)
    assert browser.find_element(By.ID, "error-status").text == "403"


def test_an_auditor_reviews_a_break_the_glass_access_and_searches_the_accesses(
        browser, live, people, client):
    """A clinician reads a record breaking the glass (ETREAT) and once for treatment; the
    auditor finds the emergency access on the audit page, reviews it (not justified needs a
    reason), the review is an AuditEvent of the log naming the access; the accesses to the
    patient are found by the patient's reference, each with who, what and why."""
    from selenium.webdriver.common.by import By

    n = uuid.uuid4().hex[:6]
    pid = f"btg-{n}"
    assert client.put(f"/Patient/{pid}", json={"resourceType": "Patient", "id": pid,
                                               "name": [{"family": "急诊"}]}).status_code in (200, 201)
    auth = live.client_auth(roles=("clinician",), name=f"急诊医生 {n}") if live.settings.auth \
        else None
    for purpose in ("ETREAT", "TREAT"):
        r = httpx.get(f"{live.base}/Patient/{pid}", auth=auth,
                      headers={"x-purpose-of-use": purpose})
        assert r.status_code == 200, r.text
    login(browser, live, people["auditor"], path="/console/audit")

    def access_row():
        browser.get(base(live) + "/console/audit")
        return next((r for r in browser.find_elements(By.CSS_SELECTOR, "#emergency tbody tr")
                     if f"Patient/{pid}" in r.text), None)

    row = wait_for(access_row)
    assert row is not None and "ETREAT" in row.text, browser.find_element(By.TAG_NAME, "main").text[:2000]
    access_id = row.get_attribute("id").removeprefix("access-")
    # not justified without a reason: refused, nothing recorded
    click(browser, row.find_element(By.CSS_SELECTOR, "button.unjustified"))
    assert browser.find_element(By.ID, "error-status").text == "400"
    browser.get(base(live) + "/console/audit")
    row = browser.find_element(By.ID, f"access-{access_id}")
    row.find_element(By.CSS_SELECTOR, "input.note").send_keys("无急诊就诊记录")
    click(browser, row.find_element(By.CSS_SELECTOR, "button.unjustified"))
    assert "已复核" in browser.find_element(By.ID, "notice").text
    review = browser.find_element(By.ID, f"access-{access_id}").find_element(By.CLASS_NAME, "review")
    assert "不合理" in review.text and people["auditor"] in review.text and "无急诊就诊记录" in review.text
    assert not review.find_elements(By.TAG_NAME, "form")
    auditor = httpx.Client(base_url=live.base, auth=live.client_auth(roles=("auditor",)) if
                           live.settings.auth else None)
    found = auditor.get("/AuditEvent", params={"entity": f"AuditEvent/{access_id}"}).json()
    [event] = [e["resource"] for e in found.get("entry", [])]
    assert event["type"]["code"] == "emergency-access-review"
    assert event["outcomeDesc"] == "unjustified: 无急诊就诊记录"
    auditor.close()
    # who read the patient's record, when and why
    browser.find_element(By.ID, "a-patient").send_keys(f"Patient/{pid}")
    click(browser, browser.find_element(By.ID, "a-search"))
    rows = [r.text for r in browser.find_elements(By.CSS_SELECTOR, "#accesses tbody tr")]
    reads = [r for r in rows if "read" in r]
    assert any("ETREAT" in r for r in reads) and any("TREAT" in r and "ETREAT" not in r
                                                       for r in reads)
    # a steward has no audit page; a clinician cannot review
    cookie = browser.get_cookie("hub_console")["value"]
    login(browser, live, people["steward"], path="/console/audit")
    assert browser.find_element(By.ID, "error-status").text == "403"
    r = httpx.post(base(live) + f"/console/audit/{access_id}/review",
                   data={"csrf": "forged", "finding": "justified"},
                   cookies={"hub_console": cookie}, follow_redirects=False)
    assert r.status_code == 403


def test_who_may_see_what(browser, live, people):
    """A clinician has no console pages; an auditor sees the audit, not the quarantine; a form
    not from the session is refused; without a session, the login page."""
    from selenium.webdriver.common.by import By

    login(browser, live, people["clinician"])
    assert browser.find_element(By.ID, "error-status").text == "403"
    assert browser.find_element(By.CSS_SELECTOR, "[role=alert]").text == "您没有查看此页面或执行此操作的权限"
    login(browser, live, people["auditor"], path="/console/audit")
    assert browser.current_url.endswith("/console/audit")
    assert browser.find_element(By.ID, "emergency")
    browser.get(base(live) + "/console/quarantine")
    assert browser.find_element(By.ID, "error-status").text == "403"
    # a replay posted without the session's CSRF value
    cookie = browser.get_cookie("hub_console")["value"]
    r = httpx.post(base(live) + "/console/quarantine/1/replay", data={"csrf": "forged"},
                   cookies={"hub_console": cookie}, follow_redirects=False)
    assert r.status_code == 403
    r = httpx.get(base(live) + "/console/overview", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/console/login")
    # the session cookie is no API token
    r = httpx.get(base(live) + "/fhir/Patient", headers={"authorization": f"Bearer {cookie}"})
    assert r.status_code == 401 or not live.settings.auth


def test_a_steward_decides_the_review_queue_side_by_side(browser, live, people, client):
    """Two reviews the matcher opened: the steward sees each pair side by side with the evidence,
    links one (same person), marks the other as different people; the API shows the link and
    the queue empty of both."""
    from selenium.webdriver.common.by import By

    from hub.mpi.identity import IdentityService

    prefix = uuid.uuid4().hex[:6]
    ids = []
    for who, given in (("a", "四"), ("b", "四"), ("c", "思"), ("d", "斯")):
        pid = f"{prefix}-{who}"
        r = client.put(f"/Patient/{pid}", json={
            "resourceType": "Patient", "id": pid, "name": [{"family": "李", "given": [given]}],
            "gender": "female", "birthDate": "1975-03-04",
            "identifier": [{"system": f"urn:oid:1.2.3.{who}", "value": f"MR-{pid}"}]})
        assert r.status_code in (200, 201), r.text
        ids.append(pid)
    a, b, c, d = ids
    store = live.settings.open_store()
    matcher = IdentityService.open(store, live.settings.data_dir / f"matcher-{prefix}")
    try:
        matcher.auto_decide(f"Patient/{a}", "new", [], 1.0, {}, "r1")
        matcher.auto_decide(f"Patient/{b}", "review", [f"Patient/{a}"], 0.71,
                            {"name": {"level": "exact", "weight": 6.2},
                             "birth_date": {"level": "exact", "weight": 4.1}}, "r1")
        matcher.auto_decide(f"Patient/{c}", "review", [f"Patient/{a}"], 0.52,
                            {"name": {"level": "similar", "weight": 1.3}}, "r1")
        matcher.auto_decide(f"Patient/{d}", "review", [f"Patient/{a}"], 0.55,
                            {"name": {"level": "similar", "weight": 1.1}}, "r1")
    finally:
        matcher.close()
        store.close()
    login(browser, live, people["steward"], path="/console/identity")

    def section(patient: str):
        return next(s for s in browser.find_elements(By.CSS_SELECTOR, "section.review")
                    if f"Patient/{patient}" in s.find_element(By.TAG_NAME, "thead").text)

    sb = wait_for(lambda: section(b))
    assert "李四" in sb.find_element(By.CSS_SELECTOR, "table.pair tbody").text
    assert "6.2" in sb.find_element(By.CSS_SELECTOR, "table.evidence").text
    click(browser, sb.find_element(By.CSS_SELECTOR, "button.accept"))
    assert "已确认为同一人" in browser.find_element(By.ID, "notice").text
    sc = section(c)
    sc.find_element(By.CSS_SELECTOR, "input.reason").send_keys("不同的人：名字不同")
    click(browser, sc.find_element(By.CSS_SELECTOR, "button.reject"))
    assert "已标记为不同的人" in browser.find_element(By.ID, "notice").text
    # set aside undecided: closed, nothing linked, nothing marked
    click(browser, section(d).find_element(By.CSS_SELECTOR, "button.dismiss"))
    assert "已关闭，未作判断" in browser.find_element(By.ID, "notice").text
    assert not [s for s in browser.find_elements(By.CSS_SELECTOR, "section.review")
                if any(f"Patient/{x}" in s.text for x in (b, c, d))]
    linked_d = client.get("/Person", params={"link": f"Patient/{d}"}).json()["entry"][0]
    assert [x["target"]["reference"] for x in linked_d["resource"]["link"]] == [f"Patient/{d}"]
    person = client.get("/Person", params={"link": f"Patient/{a}"}).json()["entry"][0]["resource"]
    assert sorted(x["target"]["reference"] for x in person["link"]) == \
        sorted([f"Patient/{a}", f"Patient/{b}"])
    # each Patient shown was read as the steward's access: audited
    auditor = httpx.Client(base_url=live.base, auth=live.client_auth(roles=("auditor",)) if
                           live.settings.auth else None)

    def audited() -> bool:
        audit = auditor.get("/AuditEvent", params={"entity": f"Patient/{b}", "_count": 100}).json()
        return any("console:" in str(e["resource"]["agent"]) for e in audit.get("entry", []))

    assert wait_for(audited)
    auditor.close()


def test_a_steward_reads_a_persons_history_and_undoes_a_link(browser, live, people, client):
    """The matcher linked two records; the steward finds the person by one of them, reads its
    history (who decided what, when), undoes the link (the API shows two persons), then undoes
    the unlink (one person again); each undo is a decision of its own in the history."""
    from selenium.webdriver.common.by import By

    from hub.mpi.identity import IdentityService

    prefix = uuid.uuid4().hex[:6]
    a, b = f"{prefix}-h1", f"{prefix}-h2"
    for pid in (a, b):
        r = client.put(f"/Patient/{pid}", json={
            "resourceType": "Patient", "id": pid, "name": [{"family": "周", "given": ["敏"]}],
            "gender": "female", "birthDate": "1982-06-01"})
        assert r.status_code in (200, 201), r.text
    store = live.settings.open_store()
    matcher = IdentityService.open(store, live.settings.data_dir / f"matcher-{prefix}")
    try:
        matcher.auto_decide(f"Patient/{a}", "new", [], 1.0, {}, "r1")
        matcher.auto_decide(f"Patient/{b}", "link", [f"Patient/{a}"], 0.97, {}, "r1")
    finally:
        matcher.close()
        store.close()

    def persons_of_a() -> list[str]:
        found = client.get("/Person", params={"link": f"Patient/{a}"}).json()
        return sorted(x["target"]["reference"] for x in found["entry"][0]["resource"]["link"])

    assert wait_for(lambda: persons_of_a() == [f"Patient/{a}", f"Patient/{b}"])
    login(browser, live, people["steward"], path="/console/identity")
    browser.find_element(By.ID, "person-ref").send_keys(f"Patient/{b}")
    click(browser, browser.find_element(By.ID, "person-open"))
    assert {f"link-Patient/{a}", f"link-Patient/{b}"} <= {
        r.get_attribute("id") for r in browser.find_elements(By.CSS_SELECTOR, "#links tbody tr")}
    assert "周敏" in browser.find_element(By.ID, "links").text  # read (audited) as the steward's

    def decisions() -> list:
        return browser.find_elements(By.CSS_SELECTOR, "#history tbody tr")

    newest = decisions()[0]  # the matcher joined b to a's person (a link, or a merge of persons)
    assert ("关联" in newest.text or "合并" in newest.text) and f"Patient/{b}" in newest.text and "matcher" in newest.text
    click(browser, newest.find_element(By.CSS_SELECTOR, "button.undo"))
    assert "已撤销" in browser.find_element(By.ID, "notice").text
    assert wait_for(lambda: persons_of_a() == [f"Patient/{a}"])  # b has its own person again
    newest = decisions()[0]
    assert ("解除关联" in newest.text or "拆分" in newest.text) and people["steward"] in newest.text
    click(browser, newest.find_element(By.CSS_SELECTOR, "button.undo"))
    assert "已撤销" in browser.find_element(By.ID, "notice").text
    assert wait_for(lambda: persons_of_a() == [f"Patient/{a}", f"Patient/{b}"])
    assert len(decisions()) >= 4  # two by the matcher, two by the steward, newest first
    # a person nobody knows: a clear page, not a crash
    browser.get(base(live) + "/console/identity/person?ref=Patient/nobody-" + prefix)
    assert browser.find_element(By.ID, "error-status").text == "404"


def test_browse_code_systems_and_look_a_code_up(browser, live, people, client):
    from selenium.webdriver.common.by import By

    n = uuid.uuid4().hex[:6]
    url = f"https://example.org/CodeSystem/console-{n}"
    cs = {"resourceType": "CodeSystem", "id": f"console-{n}", "url": url, "status": "active",
          "title": f"科室分类 {n}", "content": "complete", "hierarchyMeaning": "is-a",
          "concept": [{"code": "IM", "display": "内科",
                       "concept": [{"code": "IM-R", "display": "呼吸内科"}]}]}
    assert client.put(f"/CodeSystem/console-{n}", json=cs).status_code in (200, 201)
    login(browser, live, people["clinician"], path="/console/terminology")

    def listed() -> bool:
        browser.get(base(live) + f"/console/terminology?q={n}")
        return url in browser.find_element(By.ID, "systems").text

    assert wait_for(listed)  # once the terminology read model has it
    click(browser, browser.find_element(By.LINK_TEXT, url))
    browser.find_element(By.ID, "code").send_keys("IM-R")
    click(browser, browser.find_element(By.ID, "lookup"))
    assert browser.find_element(By.ID, "display").text == "呼吸内科"
    assert "IM" in browser.find_element(By.ID, "concept").text  # its parent
    code = browser.find_element(By.ID, "code")
    code.clear()
    code.send_keys("XX")
    click(browser, browser.find_element(By.ID, "lookup"))
    assert browser.find_element(By.ID, "display").text == "该代码系统中没有此代码"


def test_a_clinician_finds_a_person_and_reads_the_record_with_a_purpose(browser, live, people,
                                                                         client):
    from selenium.webdriver.common.by import By

    n = uuid.uuid4().hex[:6]
    pid = f"rec-{n}"
    family = f"欧阳{n}"
    assert client.put(f"/Patient/{pid}", json={
        "resourceType": "Patient", "id": pid, "name": [{"family": family, "given": ["娜"]}],
        "gender": "female", "birthDate": "1988-08-08",
        "identifier": [{"system": "urn:oid:1.2.3.9", "value": f"MR{n}9"}]}).status_code in (200, 201)
    assert client.put(f"/Observation/obs-{n}", json={
        "resourceType": "Observation", "id": f"obs-{n}", "status": "final",
        "code": {"text": "血红蛋白"}, "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": "2024-05-06T09:00:00+08:00",
        "valueQuantity": {"value": 128, "unit": "g/L"}}).status_code in (200, 201)
    login(browser, live, people["clinician"], path="/console/record")

    def found() -> list:
        browser.get(base(live) + f"/console/record?q=MR{n}9")  # by an identifier
        return browser.find_elements(By.LINK_TEXT, f"{family}娜")

    click(browser, wait_for(found)[0])  # once the search index has it
    # nothing is shown before a purpose is given
    assert not browser.find_elements(By.ID, "timeline")
    click(browser, browser.find_element(By.ID, "open"))
    assert "TREAT" in browser.find_element(By.ID, "purpose").text

    def shown() -> bool:
        browser.refresh()
        return "血红蛋白" in browser.find_element(By.ID, "timeline").text

    assert wait_for(shown)  # once the timeline read model has it
    auditor = httpx.Client(base_url=live.base, auth=live.client_auth(roles=("auditor",)) if
                           live.settings.auth else None)

    def audited() -> bool:
        found = auditor.get("/AuditEvent", params={"entity": f"Patient/{pid}", "_count": 100})
        return any(e["resource"].get("purposeOfEvent") and "console:" in str(e["resource"]["agent"])
                   for e in found.json().get("entry", []))

    assert wait_for(audited)
    auditor.close()
    # a steward has no shared record
    login(browser, live, people["steward"], path="/console/record")
    assert browser.find_element(By.ID, "error-status").text == "403"


def test_a_clinician_finds_a_person_by_card_qr_and_opens_an_encounter_a_report_and_a_document(
        browser, live, people, client):
    """By an electronic health card's QR payload to the person; from the timeline into an
    encounter (what was recorded in it), a report (its results with values) and a CDA document
    (rendered: its header and sections); each opened resource read audited with the purpose."""
    import base64

    from selenium.webdriver.common.by import By

    n = uuid.uuid4().hex[:6]
    pid, card = f"qr-{n}", f"HC{n.upper()}"
    patient = {"reference": f"Patient/{pid}"}
    cda = (Path(__file__).parent / "fixtures" / "cda" / "C0030-critical-condition-notice.xml")
    writes = [
        ("Patient", pid, {"name": [{"family": f"诸葛{n}", "given": ["亮"]}], "gender": "male",
                          "identifier": [{"system": "urn:oid:2.16.156.10011.1.19",
                                          "value": card}]}),
        ("Encounter", f"enc-{n}", {"status": "finished", "subject": patient,
                                   "class": {"system": "http://terminology.hl7.org/CodeSystem/"
                                             "v3-ActCode", "code": "AMB", "display": "门诊"},
                                   "period": {"start": "2024-05-06T08:30:00+08:00"}}),
        ("Observation", f"hb-{n}", {"status": "final", "code": {"text": "血红蛋白"},
                                    "subject": patient, "encounter": {"reference": f"Encounter/enc-{n}"},
                                    "effectiveDateTime": "2024-05-06T09:00:00+08:00",
                                    "valueQuantity": {"value": 96, "unit": "g/L"}}),
        ("DiagnosticReport", f"cbc-{n}", {"status": "final", "code": {"text": "血常规"},
                                          "subject": patient,
                                          "encounter": {"reference": f"Encounter/enc-{n}"},
                                          "effectiveDateTime": "2024-05-06T09:00:00+08:00",
                                          "result": [{"reference": f"Observation/hb-{n}"}]}),
        ("Binary", f"doc-{n}", {"contentType": "application/xml", "securityContext": patient,
                                "data": base64.b64encode(cda.read_bytes()).decode()}),
        ("DocumentReference", f"doc-{n}", {"status": "current", "subject": patient,
                                           "type": {"text": "病危（重）通知书"},
                                           "date": "2024-05-06T10:00:00+08:00",
                                           "content": [{"attachment": {
                                               "contentType": "application/xml",
                                               "url": f"Binary/doc-{n}"}}]}),
    ]
    for rtype, rid, body in writes:
        r = client.put(f"/{rtype}/{rid}", json={"resourceType": rtype, "id": rid, **body})
        assert r.status_code in (200, 201), r.text
    login(browser, live, people["clinician"], path="/console/record")

    def found() -> list:
        browser.get(base(live) + f"/console/record?q={card}:1")  # a static card's QR payload
        return browser.find_elements(By.LINK_TEXT, f"诸葛{n}亮")

    click(browser, wait_for(found)[0])
    click(browser, browser.find_element(By.ID, "open"))  # for treatment

    def timeline_has(*what: str) -> bool:
        browser.refresh()
        text = browser.find_element(By.ID, "timeline").text
        return all(w in text for w in what)

    assert wait_for(lambda: timeline_has("门诊", "血常规", "病危"))
    click(browser, browser.find_element(By.LINK_TEXT, "门诊"))
    assert "TREAT" in browser.find_element(By.ID, "purpose").text
    related = browser.find_element(By.ID, "related").text
    assert "血红蛋白" in related and "血常规" in related  # what was recorded in the encounter
    click(browser, browser.find_element(By.LINK_TEXT, "血常规"))
    assert "96 g/L" in browser.find_element(By.ID, "related").text  # the report's result
    click(browser, browser.find_element(By.LINK_TEXT, "返回时间线"))
    click(browser, browser.find_element(By.PARTIAL_LINK_TEXT, "病危"))
    rendered = browser.find_element(By.ID, "cda")
    assert rendered.find_element(By.ID, "cda-title").text == "病危（重）通知书"
    assert "测试患者丙" in rendered.text and "重症肺炎" in rendered.text
    assert "保管机构" in rendered.text  # the header's labels in the reader's language
    # an expired dynamic payload is refused as such, not searched as a name
    browser.get(base(live) + f"/console/record?q={card}:0:1700000000")
    assert browser.find_element(By.ID, "error-status").text == "400"
    auditor = httpx.Client(base_url=live.base, auth=live.client_auth(roles=("auditor",)) if
                           live.settings.auth else None)

    def audited(ref: str) -> bool:
        found = auditor.get("/AuditEvent", params={"entity": ref, "_count": 100})
        return any(e["resource"].get("purposeOfEvent") and "console:" in str(e["resource"]["agent"])
                   for e in found.json().get("entry", []))

    assert wait_for(lambda: audited(f"DocumentReference/doc-{n}") and audited(f"Binary/doc-{n}")
                    and audited(f"DiagnosticReport/cbc-{n}"))
    auditor.close()


def test_a_steward_maps_an_unmapped_local_code_and_renormalises(browser, live, people, client):
    """The steward finds a local code on the worklist, looks the standard code up in its code
    system, maps it (a ConceptMap written), starts a renormalisation from the page and watches
    it finish on the jobs page; the stored resources then carry the standard coding."""
    from selenium.webdriver.common.by import By

    n = uuid.uuid4().hex[:6].upper()
    local = f"urn:oid:2.16.156.10011.99.7.1.{int(n, 16) % 100000}"
    target = f"https://example.org/CodeSystem/lab-{n}"
    code = f"GLU{n}"
    assert client.put(f"/CodeSystem/lab-{n}", json={
        "resourceType": "CodeSystem", "id": f"lab-{n}", "url": target, "status": "active",
        "content": "complete", "concept": [
            {"code": "2345-7", "display": "Glucose [Mass/volume] in Serum or Plasma"},
            {"code": "718-7", "display": "Hemoglobin [Mass/volume] in Blood"}]}).status_code \
        in (200, 201)
    for i in range(2):
        assert client.put(f"/Observation/map-{n}-{i}", json={
            "resourceType": "Observation", "id": f"map-{n}-{i}", "status": "final",
            "code": {"coding": [{"system": local, "code": code, "display": "血糖"}]},
            "subject": {"reference": "Patient/p-map"}}).status_code in (200, 201)
    login(browser, live, people["steward"], path="/console/mapping")

    def looked_up() -> list:
        browser.get(base(live) + f"/console/mapping?find_system={target}&find=glucose")
        return browser.find_elements(By.CSS_SELECTOR, "#found a.use")

    use = wait_for(looked_up)  # once the terminology read model has the code system
    assert use and "2345-7" in browser.find_element(By.ID, "found").text
    assert "718-7" not in browser.find_element(By.ID, "found").text
    click(browser, use[0])

    def row():
        return next((r for r in browser.find_elements(By.CSS_SELECTOR, "#unmapped tbody tr")
                     if code in r.text), None)

    def listed():
        found = row()
        if found is None:
            browser.refresh()
        return found

    found = wait_for(listed)  # once the unmapped-codes read model has them
    assert found is not None and "2" in found.text  # two resources carry it
    assert found.find_element(By.CSS_SELECTOR, "input.target-code").get_attribute("value") == "2345-7"
    assert found.find_element(By.CSS_SELECTOR, "input.target-system").get_attribute("value") == target
    click(browser, found.find_element(By.CSS_SELECTOR, "button.map"))
    assert f"{code} → 2345-7" in browser.find_element(By.ID, "notice").text
    maps = client.get("/ConceptMap", params={"_count": 200}).json().get("entry", [])
    elements = [e for m in maps for g in m["resource"].get("group", []) if g["source"] == local
                for e in g.get("element", []) if e["code"] == code]
    assert elements and elements[0]["target"][0]["code"] == "2345-7"
    # the terminology service translates with it, once its read model has the map
    assert wait_for(lambda: "2345-7" in client.get("/ConceptMap/$translate", params={
        "system": local, "code": code, "targetsystem": target}).text)
    # the stored resources gain the standard coding by a renormalisation started here
    click(browser, browser.find_element(By.ID, "renormalise"))
    assert browser.current_url.split("?")[0].endswith("/console/jobs")

    def finished() -> str:
        browser.get(base(live) + "/console/jobs")
        job = browser.find_elements(By.CSS_SELECTOR, "#jobs tr.renormalise")[0]
        return job.text if "已完成" in job.find_element(By.CLASS_NAME, "status").text else ""

    done = wait_for(finished, 30)
    assert "2 updated" in done and people["steward"] in done
    for i in range(2):
        codings = client.get(f"/Observation/map-{n}-{i}").json()["code"]["coding"]
        assert {(c["system"], c["code"]) for c in codings} >= {(local, code), (target, "2345-7")}
