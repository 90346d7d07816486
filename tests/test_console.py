"""The operator console (``/console``) in a real headless browser: logging in, the overview with its
charts, the quarantine and its replay, the language switch, what a person without the role,
without a session, or with a forged form gets."""

from __future__ import annotations

import uuid

import httpx

from hub.core import httpclient
from tests.console_helpers import (  # noqa: F401 - fixtures
    FIX,
    PASSWORD,
    base,
    browser,
    click,
    live,
    login,
    people,
    wait_for,
)


def test_log_in_and_read_the_overview_with_its_chart(browser, live, people):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    # two institutions' feeds write today (a connector client's institution is its token's)
    inst = {k: f"H{k}{uuid.uuid4().hex[:4].upper()}" for k in ("A", "B")}
    for key, n in (("A", 3), ("B", 1)):
        auth = live.client_auth(roles=("connector",), institution=inst[key]) \
            if live.settings.auth else None
        with httpx.Client(base_url=live.base, auth=auth, timeout=30, verify=httpclient.verify()) as c:
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
                   headers={"content-type": "application/xml"}, verify=httpclient.verify())
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
                      auth=auth, verify=httpclient.verify()).json()
    assert len(found["entry"]) == 1


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
                   cookies={"hub_console": cookie}, follow_redirects=False, verify=httpclient.verify())
    assert r.status_code == 403
    r = httpx.get(base(live) + "/console/overview", follow_redirects=False, verify=httpclient.verify())
    assert r.status_code == 303 and r.headers["location"].startswith("/console/login")
    # the session cookie is no API token
    r = httpx.get(base(live) + "/fhir/Patient", headers={"authorization": f"Bearer {cookie}"}, verify=httpclient.verify())
    assert r.status_code == 401 or not live.settings.auth
