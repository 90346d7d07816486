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
    form = browser.find_element(By.ID, "submit")
    form.click()
    wait_for(lambda: _gone(form))  # the next page is there


def _gone(element) -> bool:
    from selenium.common.exceptions import StaleElementReferenceException

    try:
        element.is_enabled()
        return False
    except StaleElementReferenceException:
        return True


def click(browser, element) -> None:
    """Click and wait for the page it leads to."""
    element.click()
    wait_for(lambda: _gone(element))


def wait_for(fn, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def test_log_in_and_read_the_overview_with_its_chart(browser, live, people):
    from selenium.webdriver.common.by import By

    login(browser, live, people["steward"])
    assert browser.current_url.endswith("/console/overview")
    assert browser.find_element(By.ID, "who").text == "steward 张"
    assert "总览" in browser.find_element(By.TAG_NAME, "h1").text  # Chinese first
    # ECharts drew the intake chart (a canvas in its container)
    chart = browser.find_element(By.ID, "intake")
    assert wait_for(lambda: chart.get_attribute("data-rendered") == "yes")
    assert chart.find_elements(By.TAG_NAME, "canvas")
    assert browser.find_elements(By.CSS_SELECTOR, "#lag tbody tr")  # each read model's lag
    # English on asking, remembered
    click(browser, browser.find_element(By.ID, "lang"))
    assert "Overview" in browser.find_element(By.TAG_NAME, "h1").text
    browser.get(base(live) + "/console/quarantine")
    assert "Quarantine" in browser.find_element(By.TAG_NAME, "h1").text
    browser.get(base(live) + "/console/overview?lang=zh")


def test_a_wrong_password_is_refused_and_tells_nothing_more(browser, live, people):
    from selenium.webdriver.common.by import By

    login(browser, live, people["steward"], "not the password at all")
    assert "/console/login" in browser.current_url or browser.find_elements(By.ID, "submit")
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
