"""The README's Quick start names a person of the demo region `make run` loads (`hub demo`, no
options), by name, birth date and Patient ids: those ids must be that person's registrations in
that region, the master patient index must link them into one Person, and the Quick start's
``$match``, ``Person?link=`` and ``$everything`` must answer them.

The generator is deterministic and a person's records depend only on the seed, the region's size
(its institutions) and the person's index, so the person's own resources are generated alone
(``Region.resources_of``) and loaded as ``hub demo`` loads them, then asked of the application
``hub serve`` runs (in this process), which links Patients as they arrive as ``make run``'s does:
seconds, not the whole region's load.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import orjson

import hub.cli
from hub.api.app import create_app
from hub.core import httpclient
from hub.core.ingest import Context, Hub
from hub.synth import Region
from tests.conftest import app_server, make_settings

ROOT = Path(__file__).resolve().parents[1]
PATIENT_ID = re.compile(r"\bp-\d+-[A-Z]*\d+\b")
COUNT_WORDS = {2: "two", 3: "three", 4: "four", 5: "five"}


def quick_start() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return text.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]


def match_body(section: str) -> dict:
    """The Parameters the Quick start's $match command posts."""
    m = re.search(r"Patient/\$match'.*?-d '(\{.*?\})'", section, re.S)
    assert m, "the Quick start has no $match command"
    return orjson.loads(m.group(1))


def demo_options(monkeypatch, tmp_path) -> tuple[int, int]:
    """(seed, people) of `hub demo` as `make run` calls it, read from the command line's parser."""
    run = (ROOT / "Makefile").read_text().split("\nrun:", 1)[1].split("\n\n", 1)[0]
    assert re.search(r"/hub demo &&", run), run  # no options: the parser's defaults
    seen = {}

    def capture(args, settings) -> int:
        seen.update(seed=args.seed, people=args.people)
        return 0

    monkeypatch.setitem(hub.cli.COMMANDS, "demo", capture)
    assert hub.cli.main(["demo", "--data-dir", str(tmp_path / "unused")]) == 0
    return seen["seed"], seen["people"]


def test_the_quick_start_person_is_real_and_linked(monkeypatch, tmp_path, request):
    section = quick_start()
    named = list(dict.fromkeys(PATIENT_ID.findall(section)))
    assert len(named) >= 2, named
    everything = re.search(r"Patient/(p-[^/]+)/\$everything", section)
    assert everything and everything.group(1) in named
    prose = re.sub(r"\s*\n#\s*", " ", section)  # the commands' comments, unwrapped
    assert f"registered at {COUNT_WORDS[len(named)]} institutions" in prose

    seed, people = demo_options(monkeypatch, tmp_path)
    region = Region(seed=seed, people=people)
    index = int(named[0].rsplit("-", 1)[1]) % 1_000_000  # a record number ends in the person's index
    resources, truth = region.resources_of(index)
    person = region.person(index)
    # every id named is a registration of this one person, and every registration is named
    assert sorted(t.patient_reference for t in truth) == sorted(f"Patient/{p}" for p in named)
    asked = match_body(section)["parameter"][0]["resource"]
    name = asked["name"][0]
    assert (name["family"], "".join(name["given"]), asked["gender"], asked["birthDate"]) == \
        (person.family, person.given, person.gender, person.birth.isoformat())
    assert f"{person.family}{person.given} (born {person.birth.isoformat()})" in prose
    visits = sum(r["resourceType"] == "Encounter" for r in resources)
    assert f"({COUNT_WORDS[visits]} visits)" in prose

    # loaded as `hub demo` loads (its Organizations, then the person), served as `make run` serves
    items = [region.organization(i) for i in region.institutions] + resources
    monkeypatch.setenv("HUB_MPI_AUTOMATCH", "1")
    settings = make_settings("sqlite", tmp_path / "demo", request)
    settings.mpi_automatch = True
    h = Hub(settings.open_store())
    try:
        results = list(h.ingest(((orjson.dumps(d), d) for d in items), Context(source={"feed": "demo"})))
    finally:
        h.store.close()
    assert len(results) == len(items)
    # the application `hub serve` runs, in this process, its read models followed by its threads;
    # access control is another test's: this one asks what the README's commands answer
    settings.auth, settings.follow = False, "threads"
    with app_server(create_app(settings)) as port, \
            httpx.Client(base_url=f"http://127.0.0.1:{port}/fhir", timeout=30, verify=httpclient.verify()) as c:
        for pid in named:
            assert c.get(f"/Patient/{pid}").status_code == 200, pid
        r = c.post("/Patient/$match", json=match_body(section),
                   headers={"content-type": "application/fhir+json"})
        assert r.status_code == 200, r.text
        assert {e["resource"]["id"] for e in r.json()["entry"]} == set(named)
        deadline, links = time.monotonic() + 20, []
        while time.monotonic() < deadline:  # the incremental matcher links as the log arrives
            bundle = c.get("/Person", params={"link": f"Patient/{named[0]}"}).json()
            links = [sorted(lk["target"]["reference"] for lk in e["resource"].get("link", []))
                     for e in bundle.get("entry", [])]
            if links == [sorted(f"Patient/{p}" for p in named)]:
                break
            time.sleep(0.2)
        assert links == [sorted(f"Patient/{p}" for p in named)]
        r = c.get(f"/Patient/{everything.group(1)}/$everything", params={"_count": 1000},
                  headers={"X-Purpose-Of-Use": "TREAT"})
        assert r.status_code == 200, r.text
        entries = [e["resource"] for e in r.json()["entry"]]
        assert {e["id"] for e in entries if e["resourceType"] == "Patient"} == set(named)
        assert sum(e["resourceType"] == "Encounter" for e in entries) == visits
