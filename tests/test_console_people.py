"""The console's pages about people, in a real headless browser: the identity review and a person's
history with undo, the shared record (by name, identifier or health card QR; an encounter, a
report, a CDA document opened), the access audit."""

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
        # the evidence as the matcher gives it (hub.mpi.incremental): per candidate
        matcher.auto_decide(f"Patient/{b}", "review", [f"Patient/{a}"], 0.71, {
            f"Patient/{a}": {"weight": 10.3, "score": 0.71, "fields": {
                "name": {"level": "exact", "weight": 6.2},
                "birth_date": {"level": "exact", "weight": 4.1}}}}, "r1")
        matcher.auto_decide(f"Patient/{c}", "review", [f"Patient/{a}"], 0.52, {
            f"Patient/{a}": {"weight": 1.3, "score": 0.52, "fields": {
                "name": {"level": "similar", "weight": 1.3}}}}, "r1")
        matcher.auto_decide(f"Patient/{d}", "review", [f"Patient/{a}"], 0.55, {
            f"Patient/{a}": {"weight": 1.1, "score": 0.55, "fields": {
                "name": {"level": "similar", "weight": 1.1}}}}, "r1")
    finally:
        matcher.close()
        store.close()
    login(browser, live, people["steward"], path="/console/identity")

    def section(patient: str):
        return next(s for s in browser.find_elements(By.CSS_SELECTOR, "section.review")
                    if f"Patient/{patient}" in s.find_element(By.TAG_NAME, "thead").text)

    sb = wait_for(lambda: section(b))
    assert "李四" in sb.find_element(By.CSS_SELECTOR, "table.pair tbody").text
    # the evidence field by field, and its total, for the candidate
    evidence = sb.find_element(By.CSS_SELECTOR, "table.evidence")
    assert f"Patient/{a}" in evidence.find_element(By.TAG_NAME, "caption").text
    assert [[td.text for td in tr.find_elements(By.TAG_NAME, "td")]
            for tr in evidence.find_elements(By.CSS_SELECTOR, "tbody tr")] == [
        ["birth_date", "exact", "4.1"], ["name", "exact", "6.2"]]
    assert "10.3" in evidence.find_element(By.CSS_SELECTOR, "tfoot").text
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
                           live.settings.auth else None, verify=httpclient.verify())

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
                           live.settings.auth else None, verify=httpclient.verify())

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
                           live.settings.auth else None, verify=httpclient.verify())

    def audited(ref: str) -> bool:
        found = auditor.get("/AuditEvent", params={"entity": ref, "_count": 100})
        return any(e["resource"].get("purposeOfEvent") and "console:" in str(e["resource"]["agent"])
                   for e in found.json().get("entry", []))

    assert wait_for(lambda: audited(f"DocumentReference/doc-{n}") and audited(f"Binary/doc-{n}")
                    and audited(f"DiagnosticReport/cbc-{n}"))
    auditor.close()


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
                      headers={"x-purpose-of-use": purpose}, verify=httpclient.verify())
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
                           live.settings.auth else None, verify=httpclient.verify())
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
                   cookies={"hub_console": cookie}, follow_redirects=False, verify=httpclient.verify())
    assert r.status_code == 403
