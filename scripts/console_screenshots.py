"""The README's screenshots of the operator console (docs/console/*.png), made again from
nothing: a fresh data directory with a small demo region, a connector daemon with a dead letter,
two CDA documents (one with a finding), a renormalisation run; then headless chromium logs in as
the demo user and photographs the main pages.

    .venv/bin/python scripts/console_screenshots.py [--out docs/console]

Needs Debian's chromium and chromium-driver (``make browser``) and, for the Chinese text, a CJK
font (``apt-get install fonts-noto-cjk``).
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(url: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"{url} did not answer")


def _client(data: Path, base: str, institution: str, roles: tuple[str, ...]):
    """A registered client of the hub (its token source) and its private key file."""
    from hub.auth.backend_client import BackendServicesAuth, new_key, private_pem, public_jwks
    from hub.auth.clients import open_registry

    key = new_key()
    client = open_registry(data).add(f"screens {institution}", public_jwks(key),
                                     institution=institution, roles=roles,
                                     scopes="system/*.cruds")
    pem = data / f"{client.client_id}.pem"
    pem.write_bytes(private_pem(key))
    auth = BackendServicesAuth(base + "/auth/token", client.client_id, key, "system/*.cruds")
    return auth, client.client_id, pem


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "console")
    p.add_argument("--people", type=int, default=300)
    args = p.parse_args(argv)
    hub = str(Path(sys.executable).parent / "hub")
    tmp = Path(tempfile.mkdtemp(prefix="hub-screens-"))
    data, port, status_port = tmp / "data", _port(), _port()
    env = {**os.environ, "HUB_DATA_DIR": str(data), "HUB_PORT": str(port), "HUB_AUDIT": "1"}
    run = {"env": env, "check": True, "stdout": subprocess.DEVNULL}
    subprocess.run([hub, "demo", "--people", str(args.people)], **run)
    subprocess.run([hub, "terminology", "load", "--builtin"], **run)
    out = subprocess.run([hub, "auth", "demo-client"], env=env, check=True, capture_output=True,
                         text=True).stdout
    password = next(line.split("password ")[1].split()[0] for line in out.splitlines()
                    if line.startswith("console:"))
    base = f"http://127.0.0.1:{port}"
    procs = [subprocess.Popen([hub, "serve"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)]
    try:
        _wait(base + "/ready")
        # two institutions' CDA documents: one clean, one whose ID number fails its check digit
        doc = (FIXTURES / "quality" / "wst500-C0002-clean.xml").read_bytes()
        for inst, changes in (("H0002", {}), ("H0003", {
                b"110105198003151234": b"110105198003151235",  # fails its check digit
                b'root="2.16.156.10011.1.5" extension="H0001"':
                    b'root="2.16.156.10011.1.5" extension="H0003"'})):
            body = doc.replace(b"TEST-OP-0001", f"SCREEN-{inst}".encode())
            for old, new in changes.items():
                body = body.replace(old, new)
            auth, _, _ = _client(data, base, inst, ("connector",))
            r = httpx.post(base + "/cda", content=body, auth=auth, timeout=60,
                           headers={"content-type": "application/xml"})
            assert r.status_code in (200, 201), [i.get("details") for i in r.json().get("issue", [])]
        document = r.headers["location"].split("/fhir/", 1)[1]
        # a connector daemon with one message it cannot convert (a dead letter)
        _, client_id, pem = _client(data, base, "H0001", ("connector",))
        inbox = tmp / "inbox"
        inbox.mkdir()
        (tmp / "admin.token").write_text(secrets.token_urlsafe(24))
        config = tmp / "h0001-adt.yaml"
        config.write_text(yaml.safe_dump({
            "name": "h0001-adt", "state_dir": str(tmp / "state"),
            "institution": {"code": "H0001", "oid": "1.2.156.112604.1.1", "name": "市第一人民医院"},
            "status": {"host": "127.0.0.1", "port": status_port,
                       "admin_token_file": str(tmp / "admin.token")},
            "sources": [{"type": "folder", "name": "adt-drop", "path": str(inbox),
                         "kind": "hl7v2", "pattern": "*.hl7", "settle_ms": 200}],
            "sink": {"type": "http", "url": base + "/fhir", "client_id": client_id,
                     "private_key": str(pem)}}, allow_unicode=True))
        procs.append(subprocess.Popen([hub, "connector", "run", str(config)], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        _wait(f"http://127.0.0.1:{status_port}/health")
        subprocess.run([hub, "connector", "register", str(config)], **run)
        good = (FIXTURES / "hl7v2" / "adt_a01_utf8.hl7").read_bytes()
        (inbox / "a01.hl7").write_bytes(good)
        (inbox / "zzz.hl7").write_bytes(good.replace(b"ADT^A01", b"ZZZ^Z99"))
        time.sleep(3)
        _photograph(base, password, document, args.out)
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)


def _photograph(base: str, password: str, document: str, out: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1000",
                 "--disable-dev-shm-usage", "--hide-scrollbars"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    out.mkdir(parents=True, exist_ok=True)
    try:
        driver.get(base + "/console/login")
        driver.find_element(By.ID, "name").send_keys("demo")
        driver.find_element(By.ID, "password").send_keys(password)
        driver.find_element(By.ID, "submit").click()
        time.sleep(1)
        # a renormalisation run, for the jobs page
        driver.get(base + "/console/mapping")
        driver.find_element(By.ID, "renormalise").click()
        time.sleep(2)
        shots = {
            "overview": "/console/overview",
            "connectors": "/console/connectors/h0001-adt",
            "quality": "/console/quality",
            "jobs": "/console/jobs",
            "quarantine": "/console/quarantine",
        }
        for name, path in shots.items():
            driver.get(base + path)
            time.sleep(1.5)  # the charts' animation
            driver.save_screenshot(str(out / f"{name}.png"))
        # the documents' patient, found by the ID number on the record page
        driver.get(base + "/console/record?q=110105198003151234")
        links = driver.find_elements(By.CSS_SELECTOR, "#patients a")
        if links:
            pid = links[0].get_attribute("href").rsplit("/", 1)[1]
            driver.get(f"{base}/console/identity/person?ref=Patient/{pid}")
            driver.save_screenshot(str(out / "person.png"))
            driver.get(f"{base}/console/record/{document}?purpose=TREAT")
            time.sleep(0.5)
            driver.save_screenshot(str(out / "document.png"))
    finally:
        driver.quit()
    print("wrote", ", ".join(sorted(p.name for p in out.glob("*.png"))))


if __name__ == "__main__":
    main()
