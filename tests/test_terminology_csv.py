"""CSV code systems and concept maps (``terminology.csvformat``), the loader and
``hub terminology load`` / ``hub projections rebuild terminology``.

The parser is table-tested on what it accepts and refuses (with line numbers), and property-
tested: any bytes give a resource or a ``CsvError``, never another exception; generated concept
tables survive writing and reading back, hierarchy included.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from hub.core.config import Settings
from hub.core.ingest import Hub
from hub.core.resource import validate
from projections.terminology import TerminologyProjection
from terminology.csvformat import CsvError, parse, write_code_system
from terminology.loader import load, resource_id
from terminology.rows import closure, concept_rows
from terminology.service import TerminologyService

DEPT_CSV = """\
# url: https://example.org/CodeSystem/department
# name: Department
# version: 2024
# oid: 2.16.156.10011.99.5.1
code,display,parent,inactive,abstract,definition,display@en,specialty
01,内科,,,true,,Internal medicine,
0101,心血管内科,01,,,,Cardiology,cardiac
0102,呼吸内科,01,,,,Respiratory medicine,
0103,旧科室,01,是,,,,
0301,急诊内科,01|03,,,,,
03,急诊,,,,,,
"""
MAP_CSV = """\
# url: https://example.org/ConceptMap/h0042-sex
# target: http://hl7.org/fhir/ValueSet/administrative-gender
# equivalence: equivalent
source_system,source_code,source_display,target_system,target_code,target_display,equivalence,comment
2.16.156.10011.99.1.42.3,M,男,http://hl7.org/fhir/administrative-gender,male,Male,equivalent,
2.16.156.10011.99.1.42.3,F,女,http://hl7.org/fhir/administrative-gender,female,Female,,
2.16.156.10011.99.1.42.3,U,不详,http://hl7.org/fhir/administrative-gender,unknown,,wider,不详
2.16.156.10011.99.1.42.3,X,?,,,,,
"""


def test_code_system_csv():
    d = parse(DEPT_CSV.encode())
    validate("CodeSystem", orjson.dumps(d), d)  # a valid R4 CodeSystem
    assert d["url"] == "https://example.org/CodeSystem/department" and d["version"] == "2024"
    assert d["identifier"] == [{"system": "urn:ietf:rfc:3986",
                                "value": "urn:oid:2.16.156.10011.99.5.1"}]
    assert d["count"] == 6 and d["hierarchyMeaning"] == "is-a"
    rows, parents, props = concept_rows(d)
    by_code = {r[0]: r for r in rows}
    assert by_code["01"][4] == 1  # abstract
    assert by_code["0103"][3] == 0  # inactive
    assert closure(parents)["0301"] == {"01", "03"}
    assert ("0101", "specialty", "cardiac") in props
    c0101 = next(c for c in d["concept"] if c["code"] == "0101")
    assert c0101["designation"] == [{"language": "en", "value": "Cardiology"}]


def test_concept_map_csv():
    d = parse(MAP_CSV.encode("gb18030"))  # GB 18030 files are read too
    validate("ConceptMap", orjson.dumps(d), d)
    (group,) = d["group"]
    assert group["source"] == "urn:oid:2.16.156.10011.99.1.42.3"
    assert group["target"] == "http://hl7.org/fhir/administrative-gender"
    assert [(e["code"], [t["equivalence"] for t in e.get("target", [])])
            for e in group["element"]] == [("M", ["equivalent"]), ("F", ["equivalent"]),
                                           ("U", ["wider"]), ("X", ["unmatched"])]
    # F's empty cell takes the file's "# equivalence:"; a row without a target is stored as R4
    # says "no match": a target of equivalence unmatched
    assert group["element"][3]["target"] == [{"equivalence": "unmatched"}]
    assert d["targetCanonical"] == "http://hl7.org/fhir/ValueSet/administrative-gender"


def test_a_narrower_or_inexact_map_without_a_comment_breaks_cmd_1():
    """A warning, not a refusal: HL7's own example maps (cm-administrative-gender-v2) break it."""
    from hub.core import invariants

    cm = {"resourceType": "ConceptMap", "status": "active", "group": [{
        "source": "http://a", "target": "http://b", "element": [
            {"code": "K", "target": [{"code": "2823-3", "equivalence": "wider"},
                                     {"code": "2824-1", "equivalence": "narrower"}]}]}]}
    validate("ConceptMap", orjson.dumps(cm), cm)  # the model's checks pass
    found: list = []
    invariants.check("ConceptMap", cm, "ConceptMap", found)
    (issue,) = found
    assert (issue.code, issue.severity) == ("invariant", "warning")
    assert issue.diagnostics.startswith("cmd-1:")
    assert issue.expression == "ConceptMap.group[0].element[0].target[1]"
    cm["group"][0]["element"][0]["target"][1]["comment"] = "potassium in serum only"
    found.clear()
    invariants.check("ConceptMap", cm, "ConceptMap", found)
    assert not found


def test_options_win_over_header_comments():
    d = parse(DEPT_CSV, url="https://example.org/other", version="2025", id="dept")
    assert (d["url"], d["version"], d["id"]) == ("https://example.org/other", "2025", "dept")


REFUSED = [
    # (file, the line and words of the first problem)
    ("code,display\n01,a\n", (0, "url is missing")),
    ("# url: u\ncode,display\n01,a\n01,b\n", (4, "listed again (first on line 3)")),
    ("# url: u\ncode,parent\n01,02\n", (3, "parent '02' of '01' is not a code")),
    ("# url: u\ncode,parent\na,b\nb,c\nc,a\n", (5, "the parents loop: a -> b -> c -> a")),
    ("# url: u\ncode,display\n,empty\n", (3, "code is empty")),
    ("# url: u\ncode,display\ntwo  spaces,x\n", (3, "not a valid code")),
    ("# url: u\ncode,inactive\n01,perhaps\n", (3, "inactive must be true or false")),
    ("# url: u\ncode,display\n01,a,extra\n", (3, "3 cells but 2 columns")),
    ("# url: u\ndisplay\nx\n", (0, "needs a code column")),
    ("# url: u\ncode,code\n1,2\n", (2, "given twice")),
    ("# url: u\n# kind: Nonsense\ncode\n1\n", (0, "kind must be")),
    ("# url: u\ncode,bad column!\n1,x\n", (0, "not a property name")),
    ("# url: u\ncode\n", (0, "no concepts")),
    ("# url: u\n", (2, "no header row")),
    ("# url: u\ncode,display\n\"01,unterminated\n", (None, None)),
    ("# url: u\nsource_code,target_code\nM,male\n", (0, "source_system is missing")),
    ("# url: u\nsource_system,source_code,target_system,target_code,equivalence\n"
     "a,M,b,male,same\n", (3, "equivalence must be")),
    # a target without equivalence says nothing about meaning: never read as "equivalent"
    ("# url: u\nsource_system,source_code,target_system,target_code\na,M,b,male\n",
     (0, "needs an equivalence column")),
    ("# url: u\nsource_system,source_code,target_system,target_code,equivalence\n"
     "a,M,b,male,equivalent\na,F,b,female,\n", (4, "F -> female has no equivalence")),
    ("# url: u\n# equivalence: same\nsource_system,source_code,target_system,target_code\n"
     "a,M,b,male\n",
     (0, "equivalence 'same' must be")),
    ("# url: u\nsource_system,source_code,target_system,target_code,colour\n", (0,
                                                                                "unknown column")),
    ("# url: u\nsource_system,source_code,target_system,target_code,equivalence\n"
     "a b,M,c,d,equivalent\n",
     (3, "must be URIs")),
    ("# url: u\nsource_system,source_code,target_system,target_code,equivalence,comment\n"
     "a,M,b,male,equivalent,\na,K,b,k,narrower,\n", (4, "a narrower mapping needs a comment")),
    ("# url: u\nsource_system,source_code,target_system,target_code,equivalence\n"
     "a,N,b,n,inexact\n", (3, "an inexact mapping needs a comment")),
]


@pytest.mark.parametrize("text,first", REFUSED)
def test_refused_with_line_numbers(text, first):
    with pytest.raises(CsvError) as e:
        parse(text.encode())
    line, words = first
    if line is not None:
        assert e.value.problems[0][0] == line, e.value.problems
    if words:
        assert words in e.value.problems[0][1], e.value.problems


def test_hostile_files():
    with pytest.raises(CsvError, match="NUL"):
        parse(b"# url: u\ncode\n0\x001\n")
    with pytest.raises(CsvError, match="neither UTF-8 nor GB 18030"):
        parse(b"# url: u\ncode\n\xff\xfe\xfd\xfc\n")
    huge = "# url: u\ncode,display\n01," + "x" * (2 << 20) + "\n"
    with pytest.raises(CsvError):  # a cell over the field limit
        parse(huge)
    many = "# url: u\ncode\n" + "dup\n" * 10_000
    with pytest.raises(CsvError) as e:
        parse(many)
    assert len(e.value.problems) <= 20  # reported, not flooded
    formula = parse("# url: u\ncode,display\n01,=HYPERLINK(\"http://x\")\n")
    assert formula["concept"][0]["display"].startswith("=")  # kept as text, never evaluated


@hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000) | st.text(max_size=500).map(
    lambda t: ("# url: u\ncode,display,parent\n" + t).encode()))
def test_any_bytes_give_a_resource_or_a_csv_error(raw):
    try:
        d = parse(raw)
    except CsvError as e:
        assert e.problems and all(isinstance(n, int) and what for n, what in e.problems)
        return
    assert d["resourceType"] in ("CodeSystem", "ConceptMap")
    orjson.dumps(d)


CODE = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e, exclude_characters='",|'),
               min_size=1, max_size=12)
DISPLAY = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), max_size=20) \
    .map(str.strip)


@st.composite
def concept_tables(draw):
    codes = draw(st.lists(CODE, min_size=1, max_size=30, unique=True))
    concepts = []
    for i, code in enumerate(codes):
        # parents only among earlier codes: a hierarchy without loops
        parents = draw(st.lists(st.sampled_from(codes[:i]), max_size=2, unique=True)) if i else []
        concepts.append({"code": code, "display": draw(DISPLAY), "parents": parents,
                         "inactive": draw(st.booleans())})
    return concepts


@hsettings(max_examples=100, deadline=None)
@given(concept_tables())
def test_written_tables_read_back(concepts):
    d = parse(write_code_system(concepts, {"url": "http://example.org/cs", "name": "T"}))
    rows, parents, _ = concept_rows(d)
    assert [r[0] for r in rows] == [c["code"] for c in concepts]
    for r, c in zip(rows, concepts):
        assert (r[2] or "") == c["display"]
        assert r[3] == int(not c["inactive"])
        assert parents.get(c["code"], set()) == set(c["parents"])


# -- the loader and the command line -------------------------------------------------------------


def test_loader_reads_json_bundles_ndjson_csv_and_refuses_others(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "dept.csv").write_text(DEPT_CSV, encoding="utf-8")
    (folder / "map.csv").write_text(MAP_CSV, encoding="utf-8")
    vs = {"resourceType": "ValueSet", "url": "http://example.org/vs", "status": "active",
          "compose": {"include": [{"system": "https://example.org/CodeSystem/department"}]}}
    ns = {"resourceType": "NamingSystem", "name": "N", "status": "active", "kind": "codesystem",
          "date": "2024", "uniqueId": [{"type": "oid", "value": "1.2.3"}]}
    (folder / "bundle.json").write_text(json.dumps({"resourceType": "Bundle", "type": "collection",
                                                    "entry": [{"resource": vs}, {"resource": ns}]}))
    with gzip.open(folder / "more.ndjson.gz", "wt") as f:
        f.write(json.dumps({"resourceType": "Patient", "id": "p"}) + "\n")
        f.write(json.dumps({"resourceType": "CodeSystem", "url": "http://x", "status": "bogus",
                            "content": "complete"}) + "\n")
    (folder / "README.md").write_text("not content")
    settings = Settings(data_dir=tmp_path / "data")
    settings.database_url = None
    hub = Hub(settings.open_store())
    try:
        report = load(hub, [folder])
        assert report.counts == {("CodeSystem", "created"): 1, ("ConceptMap", "created"): 1,
                                 ("ValueSet", "created"): 1, ("NamingSystem", "created"): 1}
        assert report.concepts == 6 and report.map_elements == 4 and report.rejected == 2
        whys = " ".join(why for _, why in report.problems)
        assert "Patient is not a terminology resource" in whys and "bogus" in whys
        # loading again changes nothing: ids derived from url and version
        again = load(hub, [folder])
        assert set(again.counts) == {(t, "unchanged") for t in ("CodeSystem", "ConceptMap",
                                                                "ValueSet", "NamingSystem")}
        assert hub.read("ValueSet", resource_id(vs)) is not None
    finally:
        hub.store.close()


def test_a_bundle_with_one_rejected_entry_stores_none_of_it(tmp_path):
    """A file is one unit: a ValueSet stored without the CodeSystem beside it would answer
    wrongly, so one bad entry keeps every entry of its file out, each problem named."""
    ok = {"resourceType": "CodeSystem", "url": "http://example.org/ok", "status": "active",
          "content": "complete", "concept": [{"code": "a"}]}
    bad = {**ok, "url": "http://example.org/bad", "status": "bogus"}
    vs = {"resourceType": "ValueSet", "url": "http://example.org/vs", "status": "active",
          "compose": {"include": [{"system": "http://example.org/bad"}]}}
    patient = {"resourceType": "Patient", "id": "p"}
    bundle = tmp_path / "b.json"
    bundle.write_text(json.dumps({"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": r} for r in (ok, bad, vs, patient)]}))
    settings = Settings(data_dir=tmp_path / "data")
    settings.database_url = None
    hub = Hub(settings.open_store())
    try:
        report = load(hub, [bundle])
        assert report.counts == {} and report.rejected == 2 and report.held == 2
        where = dict(report.problems)
        assert "bogus" in where[f"{bundle}#entry[1]"]
        assert "not a terminology resource" in where[f"{bundle}#entry[3]"]
        assert "2 valid entries held back" in where[str(bundle)]
        for r in (ok, vs):
            assert hub.store.latest(r["resourceType"], resource_id(r)) is None
    finally:
        hub.store.close()


def hub_cli(*args: str, data: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hub.cli", *args, "--data-dir", str(data)],
                          capture_output=True, text=True, timeout=120)


def test_cli_load_then_rebuild(tmp_path):
    (tmp_path / "dept.csv").write_text(DEPT_CSV, encoding="utf-8")
    data = tmp_path / "data"
    r = hub_cli("terminology", "load", str(tmp_path / "dept.csv"), "--version", "2025", data=data)
    assert r.returncode == 0, r.stderr
    assert "CodeSystem 1 (1 created); 6 concepts" in r.stdout
    assert "terminology read model: 1 code systems, 6 concepts" in r.stdout
    r = hub_cli("terminology", "load", str(tmp_path / "missing.csv"), data=data)
    assert r.returncode == 2 and "does not exist" in r.stderr
    bad = tmp_path / "bad.csv"
    bad.write_text("# url: u\ncode\n01\n01\n")
    r = hub_cli("terminology", "load", str(bad), data=data)
    assert r.returncode == 1 and "bad.csv:4: code '01' is listed again" in r.stdout
    r = hub_cli("projections", "rebuild", "terminology", data=data)
    assert r.returncode == 0 and "terminology: applied" in r.stdout, r.stderr
    model = TerminologyProjection(data / "terminology.sqlite")
    svc = TerminologyService(model.path)
    try:
        assert svc.descendants("urn:oid:2.16.156.10011.99.5.1", "01") == {
            "01", "0101", "0102", "0103", "0301"}
        assert svc.code_system("https://example.org/CodeSystem/department").version == "2025"
    finally:
        svc.close()
        model.close()


NO_EQUIVALENCE = """\
# url: http://b.example/ConceptMap/lab-csv
source_system,source_code,target_system,target_code
urn:oid:1.2.3.4.5.7,NA,http://loinc.org,2951-2
"""


def test_a_csv_map_without_equivalence_is_refused_unless_the_operator_gives_one(tmp_path):
    """A mapping row that says nothing about meaning is not loaded as "equivalent" (and then
    applied to every record of the code): the operator states it, or the file is refused."""
    (tmp_path / "noeq.csv").write_text(NO_EQUIVALENCE, encoding="utf-8")
    data = tmp_path / "data"
    r = hub_cli("terminology", "load", str(tmp_path / "noeq.csv"), data=data)
    assert r.returncode == 1 and "needs an equivalence column" in r.stdout, r.stdout
    r = hub_cli("terminology", "load", str(tmp_path / "noeq.csv"), "--equivalence", "equivalent",
                data=data)
    assert r.returncode == 0 and "ConceptMap 1 (1 created)" in r.stdout, r.stdout + r.stderr


def test_a_later_version_of_a_map_is_current_whatever_its_text_sorts_as(tmp_path):
    """v10 corrects v9: it is the one in force, though "v10" < "v9" as text."""
    data = tmp_path / "data"
    for version, target in (("v9", "B01AA03"), ("v10", "B01AC06")):
        f = tmp_path / f"{version}.json"
        f.write_bytes(orjson.dumps({
            "resourceType": "ConceptMap", "url": "http://b.example/cm/drug", "version": version,
            "status": "active", "group": [{
                "source": "urn:oid:1.2.3.4.5.8", "target": "http://www.whocc.no/atc",
                "element": [{"code": "D001", "target": [{"code": target,
                                                         "equivalence": "equivalent"}]}]}]}))
        r = hub_cli("terminology", "load", str(f), data=data)
        assert r.returncode == 0, r.stdout + r.stderr
    svc = TerminologyService(data / "terminology.sqlite")
    try:
        (current,) = svc.concept_maps()
        assert current.version == "v10"
        assert svc.concept_map("http://b.example/cm/drug").version == "v10"
    finally:
        svc.close()
