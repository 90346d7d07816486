"""What the console's browser tests share: Debian's chromium driven by Selenium, a real
``hub serve`` with the access audit on, people of each role, logging in, clicking and waiting."""


from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path

import httpx
import pytest

from hub.auth.clients import REGISTRY_FILE
from hub.auth.users import UserRegistry
from hub.core import httpclient
from tests.conftest import LiveServer, make_settings

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
def live(request, tmp_path_factory):
    """The hub with the access audit on (the suites' servers run without it): no page shows a
    person's data without an AuditEvent. On SQLite: the console reads through the repository,
    whose engines the API suites run on both stores."""
    settings = make_settings("sqlite", tmp_path_factory.mktemp("console"), request)
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


def console_user(live, roles=("steward",), institution: str = "") -> str:
    """A new console user of these roles (password PASSWORD), of ``institution`` if given."""
    name = f"session-{uuid.uuid4().hex[:6]}"
    UserRegistry(live.settings.data_dir / REGISTRY_FILE).add(name, PASSWORD, list(roles),
                                                             institution=institution)
    return name


def logged_in(live, name: str) -> httpx.Client:
    """An HTTP client with ``name``'s console session: the pages without a browser."""
    c = httpx.Client(base_url=base(live), timeout=30, verify=httpclient.verify())
    r = c.post("/console/login", data={"name": name, "password": PASSWORD})
    assert r.status_code == 303 and "hub_console" in r.cookies, r.text[:300]
    return c


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
