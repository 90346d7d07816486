"""The console's connectors page in a real headless browser, against a real ``hub serve`` and a
real connector daemon (``hub connector run``) registered with ``hub connector register``: its
health, throughput and counters; its dead letters with their reasons; one dead letter's payload
(audited); a replay after the fix stores the message (seen through the API); replay of every open
one; a stopped daemon shown unreachable; the daemon's admin endpoints refuse a caller without its
token."""

from __future__ import annotations

import secrets
import uuid

import httpx
import yaml

from connectors.kinds import converter
from connectors.mllp_client import MLLPClient, ack_code
from connectors.testing import ConnectorProcess, adt_message, region_patients, wait_until
from hub.auth.clients import REGISTRY_FILE
from hub.auth.users import UserRegistry
from hub.cli import main
from hub.core import httpclient
from tests.conftest import LiveServer, free_port, make_settings
from tests.console_helpers import PASSWORD, base, browser, click, login, wait_for  # noqa: F401
from tests.test_connector_deadletter import batch_size_of
from tests.test_connector_e2e import INFO, connector_config, needs_v2


@needs_v2
def test_watch_a_connector_read_its_dead_letters_and_replay_them(browser, tmp_path, request):
    from selenium.webdriver.common.by import By

    patients = list(region_patients(4, seed=33))
    normal = [adt_message(p, "A04", f"C{i}", "202403010800+0800")
              for i, p in enumerate(patients[:3])]
    big = adt_message({**patients[3], "name": [{"family": "司马" * 1500, "given": ["光"]}]},
                      "A04", "CBIG", "202403010800+0800")
    unsupported = normal[0].replace(b"ADT^A04^ADT_A01", b"ZZZ^Z99").replace(b"|C0|", b"|CZ|")
    settings = make_settings("sqlite", tmp_path, request)
    settings.audit = True
    settings.max_body = max(batch_size_of(m) for m in normal) + 200  # the big one is refused
    hub = LiveServer(settings).__enter__()
    try:
        users = UserRegistry(settings.data_dir / REGISTRY_FILE)
        steward, clinician = (f"{r}-{uuid.uuid4().hex[:6]}" for r in ("steward", "clinician"))
        users.add(steward, PASSWORD, ["steward"], display="运维 王")
        users.add(clinician, PASSWORD, ["clinician"])
        token = secrets.token_urlsafe(24)
        (tmp_path / "admin.token").write_text(token + "\n")
        status_port = free_port()
        cfg = connector_config(tmp_path, hub.base, free_port(), status_port,
                               **hub.sink_credentials("H0001", tmp_path / "keys"))
        config = yaml.safe_load(cfg.read_text())
        config["status"]["admin_token_file"] = "admin.token"
        cfg.write_text(yaml.safe_dump(config, allow_unicode=True))
        assert main(["connector", "register", str(cfg), "--data-dir", str(settings.data_dir)]) == 0

        with ConnectorProcess(cfg, status_port) as conn:
            with MLLPClient("127.0.0.1", config["sources"][0]["port"]) as c:
                answers = [ack_code(c.send(m)) for m in [*normal, big, unsupported]]
            assert answers == ["AA", "AA", "AA", "AA", "AR"]
            wait_until(lambda: conn.status()["sources"]["adt"]["lag"] == 0, 30, what="delivery")

            # the daemon's dead letters are not for whoever reaches its port
            admin = f"http://127.0.0.1:{status_port}"
            assert httpx.get(admin + "/deadletters", verify=httpclient.verify()).status_code == 401
            assert httpx.post(admin + "/deadletters/replay",
                              headers={"authorization": "Bearer wrong"}, verify=httpclient.verify()).status_code == 401
            assert httpx.get(admin + "/status", verify=httpclient.verify()).status_code == 200  # no patient data in it

            login(browser, hub, steward, path="/console/connectors")
            row = browser.find_element(By.ID, "connector-adt")
            assert "正常" in row.find_element(By.CLASS_NAME, "state").text  # healthy
            assert row.find_element(By.CLASS_NAME, "deadletters").text == "2"
            assert float(row.find_element(By.CLASS_NAME, "throughput").text) > 0
            click(browser, row.find_element(By.LINK_TEXT, "adt"))
            letters = {r.find_elements(By.TAG_NAME, "td")[4].text: r for r in
                       browser.find_elements(By.CSS_SELECTOR, "#deadletters tbody tr")}
            assert set(letters) == {"CZ", "CBIG"}
            assert "413" in letters["CBIG"].text or "large" in letters["CBIG"].text.lower()
            assert "not supported" in letters["CZ"].text

            # one dead letter: its reason and its payload as sent, shown audited
            link = letters["CZ"].find_element(By.TAG_NAME, "a")
            dl_id = link.text
            click(browser, link)
            assert "ZZZ^Z99" in browser.find_element(By.ID, "payload").text
            assert "AR" in browser.find_element(By.ID, "reason").text
            auditor = httpx.Client(base_url=hub.base, auth=hub.client_auth(roles=("auditor",)), verify=httpclient.verify())
            wait_for(lambda: any(
                f"dead letter {dl_id} of connector adt" in str(e["resource"])
                for e in auditor.get("/AuditEvent", params={"_count": 200}).json().get("entry", [])))
            assert any(f"dead letter {dl_id} of connector adt" in str(e["resource"]) for e in
                       auditor.get("/AuditEvent", params={"_count": 200}).json()["entry"])
            auditor.close()

            # the fix (the hub takes larger bodies), then the big one replayed from the console
            hub.__exit__(None, None, None)
            hub.settings.max_body = 64 << 20
            hub.__enter__()
            login(browser, hub, steward, path="/console/connectors/adt")
            row = next(r for r in browser.find_elements(By.CSS_SELECTOR, "#deadletters tbody tr")
                       if "CBIG" in r.text)
            click(browser, row.find_element(By.CSS_SELECTOR, "button.replay"))
            assert "已重新处理: 1" in browser.find_element(By.ID, "notice").text
            [unit] = converter("hl7v2")(big, INFO)
            wait_until(lambda: httpx.get(f"{hub.base}/{unit.patient_key}",
                                         headers=hub.headers, verify=httpclient.verify()).status_code == 200, 30,
                       what="the replayed patient")
            family = httpx.get(f"{hub.base}/{unit.patient_key}", headers=hub.headers, verify=httpclient.verify()).json()
            assert family["name"][0]["family"] == "司马" * 1500

            # every open one: the mapper still refuses ZZZ (kept, as a new dead letter)
            click(browser, browser.find_element(By.ID, "replay-all"))
            notice = browser.find_element(By.ID, "notice").text
            assert "已重新处理: 0" in notice and "仍被拒绝: 1" in notice
            statuses = sorted(d["status"] for d in httpx.get(
                admin + "/deadletters?status=all",
                headers={"authorization": f"Bearer {token}"}, verify=httpclient.verify()).json())
            assert statuses == ["open", "replayed", "superseded"]

            # English on asking
            browser.get(base(hub) + "/console/connectors?lang=en")
            assert "Healthy" in browser.find_element(By.ID, "connector-adt").text

        # the daemon stopped: shown unreachable, the page still answers
        browser.get(base(hub) + "/console/connectors?lang=zh")
        assert "无法连接" in browser.find_element(By.ID, "connector-adt").text

        # a clinician has no connectors page, and a form without the session's CSRF value fails
        cookie = browser.get_cookie("hub_console")["value"]
        r = httpx.post(base(hub) + "/console/connectors/adt/replay", data={"csrf": "forged"},
                       cookies={"hub_console": cookie}, follow_redirects=False, verify=httpclient.verify())
        assert r.status_code == 403
        login(browser, hub, clinician, path="/console/connectors")
        assert browser.find_element(By.ID, "error-status").text == "403"
    finally:
        hub.__exit__(None, None, None)
