"""The console's pages about codes and documents, in a real headless browser: documents and quality,
code mapping with renormalisation and its progress, the terminology browser."""

from __future__ import annotations

import uuid
from pathlib import Path

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
                   headers={"content-type": "application/xml", "x-hub-source-institution": inst}, verify=httpclient.verify())
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
    # a value set over it, listed and expanded (each code a link to its look-up)
    vs_url = f"https://example.org/ValueSet/console-{n}"
    assert client.put(f"/ValueSet/console-{n}", json={
        "resourceType": "ValueSet", "id": f"console-{n}", "url": vs_url, "status": "active",
        "title": f"内科及其下级 {n}", "compose": {"include": [{"system": url, "filter": [
            {"property": "concept", "op": "is-a", "value": "IM"}]}]}}).status_code in (200, 201)

    def vs_listed() -> bool:
        browser.get(base(live) + f"/console/terminology?q={n}")
        return vs_url in browser.find_element(By.ID, "value-sets").text

    assert wait_for(vs_listed)
    click(browser, browser.find_element(By.LINK_TEXT, vs_url))
    expansion = browser.find_element(By.ID, "expansion").text
    assert "2" in expansion.splitlines()[0] and "内科" in expansion and "呼吸内科" in expansion
    click(browser, browser.find_element(By.LINK_TEXT, "IM-R"))
    assert browser.find_element(By.ID, "display").text == "呼吸内科"
