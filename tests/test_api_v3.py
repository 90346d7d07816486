"""``POST /v3``: HL7 v3 interaction messages against a real ``hub serve`` (SQLite and PostgreSQL).

Registrations, updates and merges are written through the hub and acknowledged (MCCI_IN000002UV01);
queries are answered from the hub with the v3 response interaction; hostile, malformed, oversized
and mistyped bodies are refused with AR and the server keeps serving. The project's own messages are
``tests/fixtures/hl7v3/`` plus the small ones below; the shared samples run when present.
"""

from __future__ import annotations

import base64
import socket
import time
import uuid
from datetime import date, timedelta
from pathlib import Path

import httpx
import pytest
from lxml import etree

from fhir_mapping.base import SourceInfo
from fhir_mapping.hl7v3 import convert
from fhir_mapping.ids import encounter_id, patient_id
from hub.core import httpclient
from terminology.resident_id import check_digit

FIX = Path(__file__).parent / "fixtures" / "hl7v3"
CDA = Path(__file__).parent / "fixtures" / "quality" / "wst500-C0002-clean.xml"
SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples" / "hl7v3-interaction"
V3 = "{urn:hl7-org:v3}"
XML = {"content-type": "application/xml"}
# a connector that declares its institution and OID (local numbers then live under that OID)
INST, OID = "H0001", "1.2.156.112604.1.2.1"
DECLARED = {**XML, "x-hub-source-institution": INST, "x-hub-source-oid": OID, "x-hub-source-feed": "v3-test"}
SRC = SourceInfo(institution=INST, oid=OID, feed="v3-test")


# -- helpers --------------------------------------------------------------------------------------

def fixture(name: str) -> bytes:
    return (FIX / name).read_bytes()


def sample(name: str) -> bytes:
    path = SAMPLES / name
    if not path.is_file():
        pytest.skip("shared samples not present")
    return path.read_bytes()


def variant(data: bytes, *pairs: tuple[str, str]) -> bytes:
    """The message with text replaced (ids made unique per test, another interaction, new values)."""
    text = data.decode("utf-8")
    for old, new in pairs:
        assert old in text, old
        text = text.replace(old, new)
    return text.encode("utf-8")


def tag() -> str:
    return uuid.uuid4().hex[:8].upper()


@pytest.fixture
def v3(live) -> str:
    return f"http://127.0.0.1:{live.port}/v3"


def post(client: httpx.Client, url: str, data: bytes, headers: dict | None = None) -> httpx.Response:
    return client.post(url, content=data, headers=headers or XML)


def xml(r: httpx.Response) -> etree._Element:
    assert r.headers["content-type"].startswith(("application/xml", "text/xml", "application/hl7-v3+xml",
                                                 "application/soap+xml")), \
        r.headers["content-type"]
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    return etree.fromstring(r.content, parser)


def ack(r: httpx.Response, interaction: str = "MCCI_IN000002UV01") -> tuple[str, str, etree._Element]:
    """(acknowledgement code, detail text, root) of a v3 answer."""
    root = xml(r)
    assert root.tag == V3 + interaction, root.tag
    a = root.find(f"{V3}acknowledgement")
    text = a.find(f"{V3}acknowledgementDetail/{V3}text")
    return a.get("typeCode"), (text.get("value") if text is not None else ""), root


def target(root: etree._Element) -> str | None:
    el = root.find(f"{V3}acknowledgement/{V3}targetMessage/{V3}id")
    return None if el is None else el.get("extension")


def kept_entry(data_dir, said: str) -> dict:
    """The quarantine entry an answer names ("… quarantine entry N)")."""
    from hub.quarantine import Quarantine

    q = Quarantine(data_dir / "quarantine.sqlite")
    try:
        return q.get(int(said.rsplit("quarantine entry ", 1)[1].split(")")[0]))
    finally:
        q.close()


def query_ack(root: etree._Element) -> tuple[str, int]:
    qa = root.find(f"{V3}controlActProcess/{V3}queryAck")
    return (qa.find(f"{V3}queryResponseCode").get("code"),
            int(qa.find(f"{V3}resultTotalQuantity").get("value")))


def asked(client: httpx.Client, url: str, query: bytes, response: str, headers: dict = DECLARED
          ) -> tuple[str, int, etree._Element]:
    """(acknowledgement code, resultTotalQuantity, root) of the answer to a v3 query."""
    r = post(client, url, query, headers)
    assert r.status_code == 200, r.text
    code, _, root = ack(r, response)
    return code, query_ack(root)[1], root


def accepted(client, url, data, headers=None) -> etree._Element:
    r = post(client, url, data, headers)
    assert r.status_code == 200, r.text
    code, text, root = ack(r)
    assert code == "AA", text
    return root


def read(client: httpx.Client, ref: str) -> dict:
    r = client.get(f"/{ref}")
    assert r.status_code == 200, (ref, r.text)
    return r.json()


def ids_of(data: bytes, source: SourceInfo, rtype: str) -> list[str]:
    return [r["id"] for r in convert(data, source).resources if r["resourceType"] == rtype]


def patient_message(local: str, resident: str, name: str = "测试甲", msg: str | None = None) -> bytes:
    return variant(fixture("patient-register.xml"), ("P0001", local), ("110105198003151234", resident),
                   ("测试甲", name), ("T-MSG-0001", msg or f"M-{tag()}"))


def patient_query(value: str, root: str = "2.16.156.10011.1.3", name: str = "测试甲") -> bytes:
    return variant(fixture("patient-query.xml"),
                   ('root="2.16.156.10011.1.3" extension="110105198003151234"',
                    f'root="{root}" extension="{value}"'),
                   ("测试甲", name), ("T-MSG-0004", f"Q-{tag()}"))


def resident() -> str:
    """A fresh resident ID number that passes GB 11643 (an invalid one is neither kept nor a key), born
    within a few years of the fixture's birthTime (1980-03-15): a number a generation away from the
    record's birth date is someone else's and is not kept either."""
    n = uuid.uuid4().int
    born = date(1978, 1, 1) + timedelta(days=n % 1460)
    first17 = f"110105{born:%Y%m%d}{(n // 1460) % 1000:03d}"
    return first17 + check_digit(first17)


# small messages of the project's own (the hand-written fixtures cover patients and documents)

def _wrap(interaction: str, body: str, msg: str) -> bytes:
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<{interaction} xmlns="urn:hl7-org:v3" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" ITSVersion="XML_1.0">
  <id root="2.16.156.10011.2.5.1.1" extension="{msg}"/>
  <creationTime value="20240308100000"/>
  <interactionId root="2.16.156.10011.2.5.1.2" extension="{interaction}"/>
  <processingCode code="P"/>
  <acceptAckCode code="AL"/>
  <receiver typeCode="RCV"><device classCode="DEV" determinerCode="INSTANCE"><id><item root="2.16.156.10011.2.5.1.3" extension="PLATFORM"/></id></device></receiver>
  <sender typeCode="SND"><device classCode="DEV" determinerCode="INSTANCE"><id><item root="2.16.156.10011.2.5.1.3" extension="HIS01"/></id></device></sender>
  <controlActProcess classCode="CACT" moodCode="EVN">{body}</controlActProcess>
</{interaction}>""".encode()


def department_register(code: str, name: str) -> bytes:
    return _wrap("PRPM_IN401030UV01", f"""
    <subject typeCode="SUBJ"><registrationRequest classCode="REG" moodCode="RQO"><statusCode code="active"/>
      <subject1 typeCode="SBJ"><assignedEntity classCode="ASSIGNED">
        <id><item root="2.16.156.10011.1.26" extension="{code}"/></id>
        <code code="A03.01" codeSystem="2.16.156.10011.2.3.2.62"><displayName value="呼吸内科专业"/></code>
        <statusCode code="active"/>
        <assignedPrincipalOrganization classCode="ORG" determinerCode="INSTANCE">
          <name xsi:type="LIST_EN"><item><part value="{name}"/></item></name>
          <asAffiliate classCode="AFFL"><scoper2 classCode="ORG" determinerCode="INSTANCE">
            <id><item root="2.16.156.10011.1.26" extension="{code}-P"/></id>
            <name xsi:type="LIST_EN"><item><part value="内科"/></item></name>
          </scoper2></asAffiliate>
        </assignedPrincipalOrganization>
      </assignedEntity></subject1>
    </registrationRequest></subject>""", f"M-{tag()}")


def department_query(code: str, name: str) -> bytes:
    return _wrap("PRPM_IN406010UV01", f"""
    <queryByParameterPayload><statusCode code="new"/>
      <organizationID><value root="2.16.156.10011.1.26" extension="{code}"/></organizationID>
      <organizationName><value><part value="{name}"/></value></organizationName>
      <status><value code="active"/></status>
    </queryByParameterPayload>""", f"Q-{tag()}")


def practitioner_register(staff: str, resident_id: str, name: str, dept: str) -> bytes:
    return _wrap("PRPM_IN301010UV01", f"""
    <subject typeCode="SUBJ"><registrationRequest classCode="REG" moodCode="RQO"><statusCode code="active"/>
      <subject1 typeCode="SBJ"><healthCareProvider classCode="PROV">
        <id><item root="2.16.156.10011.1.4" extension="{staff}"/></id>
        <code code="231" codeSystem="2.16.156.10011.2.3.3.10"><displayName value="主任医师"/></code>
        <statusCode code="active"/>
        <effectiveTime><low value="20100101"/><high value="20501231"/></effectiveTime>
        <healthCarePrincipalPerson classCode="PSN" determinerCode="INSTANCE">
          <id><item root="2.16.156.10011.1.3" extension="{resident_id}"/></id>
          <name xsi:type="LIST_EN"><item><part value="{name}"/></item></name>
          <administrativeGenderCode code="2" codeSystem="2.16.156.10011.2.3.3.4"/>
          <birthTime value="19750610"/>
          <asAffiliate classCode="AFFL"><affiliatedPrincipalOrganization classCode="ORG" determinerCode="INSTANCE">
            <id><item root="2.16.156.10011.1.26" extension="{dept}"/></id>
            <name xsi:type="LIST_EN"><item><part value="呼吸内科"/></item></name>
          </affiliatedPrincipalOrganization></asAffiliate>
        </healthCarePrincipalPerson>
      </healthCareProvider></subject1>
    </registrationRequest></subject>""", f"M-{tag()}")


def practitioner_query(staff: str, low: str, high: str) -> bytes:
    return _wrap("PRPM_IN306010UV01", f"""
    <queryByParameterPayload><statusCode code="new"/>
      <administrativeGender><value code="2" codeSystem="2.16.156.10011.2.3.3.4"/></administrativeGender>
      <dOB><value><low value="{low}"/><high value="{high}"/></value></dOB>
      <providerID><value root="2.16.156.10011.1.4" extension="{staff}"/></providerID>
    </queryByParameterPayload>""", f"Q-{tag()}")


def document_query(interaction: str, patient_local: str, doc_id: str | None = None) -> bytes:
    doc = (f'<clinicalDocument.id><value root="2.16.156.10011.2.5.1.24" extension="{doc_id}"/></clinicalDocument.id>'
           if doc_id else "")
    return _wrap(interaction, f"""
    <queryByParameter><queryId extension="Q-{tag()}"/>
      <clinicalDocument.code><value code="C0002" codeSystem="2.16.156.10011.2.5.1.23"/></clinicalDocument.code>
      {doc}
      <patient.id><value><item root="2.16.156.10011.2.5.1.4" extension="{patient_local}"/></value></patient.id>
    </queryByParameter>""", f"Q-{tag()}")


# -- registrations and queries ---------------------------------------------------------------------

def test_register_then_query_finds_the_patient(client, v3):
    local, rid = f"P{tag()}", resident()
    msg = f"M-{tag()}"
    data = patient_message(local, rid, msg=msg)
    root = accepted(client, v3, data)
    assert target(root) == msg and root.find(f"{V3}id").get("extension") != msg
    (pid,) = ids_of(data, SourceInfo(), "Patient")  # institution taken from the message itself
    assert pid == patient_id("ORG0001", local)  # the same Patient the HIS's v2 feed makes
    pat = read(client, f"Patient/{pid}")
    assert {"system": "urn:oid:2.16.156.10011.1.3", "value": rid} in [
        {k: i[k] for k in ("system", "value")} for i in pat["identifier"]]

    r = post(client, v3, patient_query(rid))
    assert r.status_code == 200
    code, _, out = ack(r, "PRPA_IN201306UV02")
    assert code == "AA" and query_ack(out) == ("OK", 1)
    person = out.find(f"{V3}controlActProcess/{V3}subject/{V3}registrationEvent/{V3}subject1/{V3}patient/{V3}patientPerson")
    assert person.find(f"{V3}id/{V3}item").get("extension") == rid
    assert out.find(f"{V3}receiver/{V3}device/{V3}id/{V3}item").get("extension") == "HIS02"  # back to the asker

    # by the local patient id too; an unknown person is "no match", not an error
    r = post(client, v3, patient_query(local, root="2.16.156.10011.2.5.1.4"))
    assert query_ack(ack(r, "PRPA_IN201306UV02")[2]) == ("OK", 1)
    r = post(client, v3, patient_query(resident()))
    code, _, out = ack(r, "PRPA_IN201306UV02")
    assert code == "AA" and query_ack(out) == ("NF", 0)


def test_update_changes_the_patient(client, v3):
    local, rid = f"P{tag()}", resident()
    data = patient_message(local, rid)
    accepted(client, v3, data)
    (pid,) = ids_of(data, SourceInfo(), "Patient")
    assert read(client, f"Patient/{pid}")["meta"]["versionId"] == "1"
    update = variant(data, ("PRPA_IN201311UV02", "PRPA_IN201314UV02"), ("010-12345678", "010-55556666"))
    accepted(client, v3, update)
    pat = read(client, f"Patient/{pid}")
    assert pat["meta"]["versionId"] == "2"
    assert {"system": "phone", "value": "010-55556666"} in pat["telecom"]
    assert "010-12345678" not in str(pat["telecom"])


def test_merge_retires_the_old_patient(client, v3):
    # the merge message names no organisation: without a declared institution it would fall back to
    # the sending device and miss the registrations, so the connector declares its source
    survivor, retired, number = f"P{tag()}", f"P{tag()}", resident()
    accepted(client, v3, patient_message(survivor, number), DECLARED)
    accepted(client, v3, patient_message(retired, resident(), name="测试丙"), DECLARED)
    # the merge names the survivor with its own resident ID number (a number it stated unlike
    # the stored one would replace it: a message states each identifier system whole)
    merge = variant(fixture("patient-merge.xml"), ("P0001", survivor), ("P0002", retired),
                    ("T-MSG-0002", f"M-{tag()}"), ("110105198003151234", number))
    accepted(client, v3, merge, DECLARED)
    keep, old = patient_id(INST, survivor), patient_id(INST, retired)
    gone = read(client, f"Patient/{old}")
    assert gone["active"] is False and gone["meta"]["versionId"] == "2"
    assert gone["link"] == [{"other": {"reference": f"Patient/{keep}"}, "type": "replaced-by"}]
    kept = read(client, f"Patient/{keep}")
    assert kept.get("active", True) is True
    assert {"other": {"reference": f"Patient/{old}"}, "type": "replaces"} in kept["link"]
    # the survivor keeps its record: the merge names it, it does not state it anew (its birth
    # date, sex, phone and resident ID were gone from the current version)
    before = read(client, f"Patient/{keep}/_history/1")
    for element in ("birthDate", "gender", "telecom"):
        assert kept.get(element) == before.get(element), element
    assert {i["value"] for i in before["identifier"]} <= {i["value"] for i in kept["identifier"]}
    # the merge's Provenance names both
    (prov,) = ids_of(merge, SRC, "Provenance")
    targets = {t["reference"] for t in read(client, f"Provenance/{prov}")["target"]}
    assert {f"Patient/{keep}", f"Patient/{old}"} <= targets


def test_an_update_of_the_survivor_keeps_the_merge(client, v3):
    """A registration update of a merge's survivor carries no links (the merge is the hub's, not
    the sender's record): it erased ``replaces`` while the retired record still said replaced-by."""
    survivor, retired, number = f"P{tag()}", f"P{tag()}", resident()
    registration = patient_message(survivor, number)
    accepted(client, v3, registration, DECLARED)
    accepted(client, v3, patient_message(retired, resident(), name="测试丙"), DECLARED)
    accepted(client, v3, variant(fixture("patient-merge.xml"), ("P0001", survivor), ("P0002", retired),
                                 ("T-MSG-0002", f"M-{tag()}"), ("110105198003151234", number)), DECLARED)
    keep, old = patient_id(INST, survivor), patient_id(INST, retired)
    update = variant(registration, ("PRPA_IN201311UV02", "PRPA_IN201314UV02"), ("010-12345678", "010-55556666"))
    accepted(client, v3, update, DECLARED)
    kept = read(client, f"Patient/{keep}")
    assert {"system": "phone", "value": "010-55556666"} in kept["telecom"]  # the update is written
    assert kept["link"] == [{"other": {"reference": f"Patient/{old}"}, "type": "replaces"}]
    assert read(client, f"Patient/{old}")["link"] == [
        {"other": {"reference": f"Patient/{keep}"}, "type": "replaced-by"}]


def test_replaying_a_registration_changes_nothing(client, v3):
    data = patient_message(f"P{tag()}", resident())
    accepted(client, v3, data)
    refs = [f"{r['resourceType']}/{r['id']}" for r in convert(data, SourceInfo()).resources]
    before = {ref: read(client, ref)["meta"]["versionId"] for ref in refs}
    first = accepted(client, v3, data)
    second = accepted(client, v3, data)
    assert {ref: read(client, ref)["meta"]["versionId"] for ref in refs} == before
    # every acknowledgement is a message of its own (fresh id), targeting the same request
    assert first.find(f"{V3}id").get("extension") != second.find(f"{V3}id").get("extension")
    assert target(first) == target(second)


def test_declared_source_places_local_numbers_under_the_institution_oid(client, v3):
    local, rid = f"P{tag()}", resident()
    data = patient_message(local, rid)
    accepted(client, v3, data, DECLARED)
    (pid,) = ids_of(data, SRC, "Patient")
    assert pid == patient_id(INST, local)
    pat = read(client, f"Patient/{pid}")
    assert f"urn:oid:{OID}.1" in {i.get("system") for i in pat["identifier"]}
    r = post(client, v3, patient_query(local, root="2.16.156.10011.2.5.1.4"), DECLARED)
    assert query_ack(ack(r, "PRPA_IN201306UV02")[2]) == ("OK", 1)
    history = client.get(f"/Patient/{pid}/_history").json()
    assert history["entry"][0]["resource"]["id"] == pid


def test_institution_and_practitioner_registration(client, v3):
    dept, staff, rid = f"D{tag()}", f"S{tag()}", resident()
    dep = department_register(dept, "呼吸内科" + dept)
    accepted(client, v3, dep, DECLARED)
    orgs = {r["id"]: r for r in convert(dep, SRC).resources if r["resourceType"] == "Organization"}
    for oid_ in orgs:
        read(client, f"Organization/{oid_}")
    d = next(read(client, f"Organization/{i}") for i, o in orgs.items()
             if any(x.get("value") == dept for x in o.get("identifier", [])))
    assert d["name"] == "呼吸内科" + dept and d["partOf"]["reference"].startswith("Organization/")

    r = post(client, v3, department_query(dept, "呼吸内科" + dept), DECLARED)
    code, _, out = ack(r, "PRPM_IN406110UV01")
    assert code == "AA" and query_ack(out) == ("OK", 1)
    ent = out.find(f"{V3}controlActProcess/{V3}subject/{V3}registrationEvent/{V3}subject1/{V3}assignedEntity")
    assert ent.find(f"{V3}id/{V3}item").get("extension") == dept
    parent = ent.find(f"{V3}assignedPrincipalOrganization/{V3}asAffiliate/{V3}affiliatedPrincipalOrganization")
    assert parent is not None  # the parent department came with the match (_include partof)

    prac = practitioner_register(staff, rid, "测试医生", dept)
    accepted(client, v3, prac, DECLARED)
    (pr_id,) = ids_of(prac, SRC, "Practitioner")
    (role_id,) = ids_of(prac, SRC, "PractitionerRole")
    p = read(client, f"Practitioner/{pr_id}")
    assert p["gender"] == "female" and p["birthDate"] == "1975-06-10"
    assert read(client, f"PractitionerRole/{role_id}")["practitioner"]["reference"] == f"Practitioner/{pr_id}"

    # birth date range (no R4 search parameter on Practitioner: filtered on the candidates)
    r = post(client, v3, practitioner_query(staff, "19750101", "19751231"), DECLARED)
    code, _, out = ack(r, "PRPM_IN306011UV01")
    assert code == "AA" and query_ack(out) == ("OK", 1)
    prov = out.find(f"{V3}controlActProcess/{V3}subject/{V3}registrationEvent/{V3}subject1/{V3}healthCareProvider")
    assert prov.find(f"{V3}id/{V3}item").get("extension") == staff
    assert prov.find(f"{V3}code").get("code") == "231"  # from the PractitionerRole (_revinclude)
    r = post(client, v3, practitioner_query(staff, "19800101", "19801231"), DECLARED)
    assert query_ack(ack(r, "PRPM_IN306011UV01")[2]) == ("NF", 0)


def test_document_register_search_and_retrieve(client, v3):
    local, doc = f"P{tag()}", f"DOC-{tag()}"
    data = variant(fixture("document-register.xml"), ("P0001", local), ("TEST-OP-0001", doc),
                   ("T-MSG-0003", f"M-{tag()}"))
    accepted(client, v3, data)
    (ref_id,) = ids_of(data, SourceInfo(), "DocumentReference")
    dr = read(client, f"DocumentReference/{ref_id}")
    assert dr["subject"]["reference"] == f"Patient/{patient_id('ORG0001', local)}"

    r = post(client, v3, document_query("RCMR_IN000029UV01", local))
    code, _, out = ack(r, "RCMR_IN000030UV01")
    assert code == "AA" and query_ack(out) == ("OK", 1)
    cd = out.find(f"{V3}controlActProcess/{V3}subject/{V3}clinicalDocument")
    assert cd.find(f"{V3}id/{V3}item").get("extension") == doc
    assert cd.find(f"{V3}recordTarget") is not None  # the subject came with it (_include)
    assert cd.find(f"{V3}storageCode") is None  # a search lists, it does not carry the document

    r = post(client, v3, document_query("RCMR_IN000031UV01", local, doc))
    code, _, out = ack(r, "RCMR_IN000032UV01")
    assert code == "AA" and query_ack(out) == ("OK", 1)
    text = out.find(f"{V3}controlActProcess/{V3}subject/{V3}clinicalDocument/{V3}storageCode/{V3}originalText")
    assert base64.b64decode(text.get("value")) == CDA.read_bytes()

    r = post(client, v3, document_query("RCMR_IN000031UV01", local, "NO-SUCH-DOC"))
    assert query_ack(ack(r, "RCMR_IN000032UV01")[2]) == ("NF", 0)


def test_a_query_without_criteria_is_an_application_error(client, v3):
    data = _wrap("PRPM_IN406010UV01", "<queryByParameterPayload><statusCode code=\"new\"/></queryByParameterPayload>",
                 f"Q-{tag()}")
    r = post(client, v3, data)
    assert r.status_code == 200
    code, text, out = ack(r, "PRPM_IN406110UV01")
    assert code == "AE" and "criteria" in text
    assert query_ack(out) == ("AE", 0)


def test_unmappable_content_is_an_application_error(client, v3):
    # no institution anywhere (no header, no organisation code, no sender id): AE with the reason
    data = variant(patient_message(f"P{tag()}", resident()),
                   ('<id><item root="2.16.156.10011.2.5.1.3" extension="HIS01"/></id>', "<id/>"),
                   ('<id><item root="2.16.156.10011.1.5" extension="ORG0001"/></id>', "<id/>"))
    data = data.replace(b'<item root="2.16.156.10011.1.5" extension="ORG0001"/>', b"")
    r = post(client, v3, data)
    assert r.status_code == 200
    code, text, root = ack(r)
    assert code == "AE" and "institution" in text
    assert target(root) is not None
    assert "kept for replay as quarantine entry" in text  # not lost: hub quarantine replay


def test_an_unsupported_interaction_is_kept_and_listed(client, v3, live):
    """A message of an interaction the hub does not support yet is refused (AR) but kept for
    replay, and /v3/metadata lists it as received and unsupported beside the supported ones."""
    # an interaction of the order family no catalogue names (not 01/02: the hub maps those)
    interaction = f"POOR_IN99{tag()[:4]}UV"
    body = _wrap(interaction, "<subject/>", f"M{tag()}")
    r = post(client, v3, body)
    assert r.status_code == 200
    code, text, _ = ack(r)
    assert code == "AR" and "unsupported" in text and "kept for replay as quarantine entry" in text
    qid = int(text.rsplit("quarantine entry", 1)[1].strip(" )"))
    post(client, v3, body)  # sent twice: counted twice
    caps = client.get(v3 + "/metadata").json()
    by_id = {i["interaction"]: i for i in caps["interactions"]}
    assert by_id["PRPA_IN201311UV02"]["supported"] is True
    assert by_id["PRPA_IN201305UV02"]["response"] == "PRPA_IN201306UV02"
    services = {s["service"]: s for s in caps["catalogue"]}
    assert services["门诊挂号信息新增服务"]["supported"] and services["住院就诊信息登记服务"]["supported"]
    assert services["医嘱信息新增服务"]["supported"] and services["手术申请信息查询服务"]["supported"]
    assert services["检验状态信息更新服务"]["supported"]
    assert services["手术排班信息新增服务"]["supported"]
    assert services["号源排班信息新增服务"]["supported"]
    assert services["号源排班信息查询服务"] == {"family": "visit", "family_name": "就诊信息交互服务",
                                          "service": "号源排班信息查询服务",
                                          "interaction": "PRSC_IN100000UV", "supported": True}
    # the outpatient appointment query shares the visit query's interaction: the sender names it
    assert services["门诊预约状态信息查询服务"]["named_by"] == "service"
    assert len(services) == len(caps["catalogue"]) == 69
    assert all(s["supported"] for s in caps["catalogue"])
    assert by_id[interaction] | {"latest": None} == {"interaction": interaction,
                                                     "supported": False, "received": 2,
                                                     "latest": None}
    # the kept message itself, as sent
    from hub.quarantine import Quarantine

    q = Quarantine(live.settings.data_dir / "quarantine.sqlite")
    try:
        entry = q.get(qid)
        assert entry["payload"] == body and entry["kind"] == "v3"
        assert entry["report"]["interaction"] == interaction
    finally:
        q.close()
    # without a token, nothing (the listing is for callers of the service)
    if live.settings.auth:
        assert httpx.get(v3 + "/metadata", verify=httpclient.verify()).status_code == 401


@pytest.mark.parametrize("processing", ["T", "D"])
def test_training_and_debugging_messages_are_refused_and_never_written(client, v3, live, processing):
    """As HL7 v2's MSH-11: a training or debugging message (processingCode T, D) is an AR naming
    processingCode, kept in the quarantine as the v2 connectors keep it as a dead letter, and its
    Patient is not written to the regional record."""
    data = patient_message(f"P{tag()}", resident())
    (pid,) = ids_of(data, SRC, "Patient")
    sent = variant(data, ('processingCode code="P"', f'processingCode code="{processing}"'))
    r = post(client, v3, sent, DECLARED)
    assert r.status_code == 200
    code, text, root = ack(r)
    assert code == "AR" and f"processingCode '{processing}'" in text, text
    assert "production" in text and target(root) is not None
    assert client.get(f"/Patient/{pid}").status_code == 404
    entry = kept_entry(live.settings.data_dir, text)
    assert entry["payload"] == sent and entry["report"]["rule"] == "v3.processing-code"
    accepted(client, v3, data, DECLARED)  # the same message of production is written
    assert read(client, f"Patient/{pid}")["id"] == pid


def test_a_refused_registration_is_kept_and_replays(hub, tmp_path):
    """A registration the mapper or the hub refuses is quarantined (kind v3) with its
    acknowledgement; a replay that still fails leaves it open, one that passes stores it."""
    from fhir_mapping.base import SourceInfo
    from hub import v3intake
    from hub.quarantine import Quarantine
    from hub.repository import Repository

    q = Quarantine(tmp_path / "quarantine.sqlite")
    broken = variant(patient_message(f"P{tag()}", resident()),
                     ('<id><item root="2.16.156.10011.2.5.1.3" extension="HIS01"/></id>', "<id/>"),
                     ('<id><item root="2.16.156.10011.1.5" extension="ORG0001"/></id>', "<id/>"))
    broken = broken.replace(b'<item root="2.16.156.10011.1.5" extension="ORG0001"/>', b"")
    qid = v3intake.keep(q, broken, SourceInfo(), "AE", "no institution", "v3.institution")
    ok, why = v3intake.replay(Repository(hub), q, qid)
    assert not ok and "institution" in why and q.get(qid)["status"] == "open"
    assert q.list()[0]["kind"] == "v3"
    # held back earlier (a mapping table since fixed, say): the replay stores it
    local = f"P{tag()}"
    held = v3intake.keep(q, patient_message(local, resident()), SourceInfo(institution=INST,
                         oid=OID, feed="v3-test"), "AE", "held", "test")
    ok, written = v3intake.replay(Repository(hub), q, held)
    assert ok and "Patient/" in written and q.get(held)["status"] == "replayed"
    ok, _ = v3intake.replay(Repository(hub), q, held)  # replaying again changes nothing and still succeeds
    assert ok
    q.close()


def test_a_message_kept_in_its_soap_envelope_replays(hub, tmp_path):
    """A refused message that came in a SOAP envelope is kept as the envelope; its replay reads the
    message out of it as POST /v3 does, and an envelope the hub cannot take stays open."""
    from xml.sax.saxutils import escape

    from hub import v3intake
    from hub.quarantine import Quarantine
    from hub.repository import Repository

    q = Quarantine(tmp_path / "quarantine.sqlite")
    message = patient_message(f"P{tag()}", resident())
    envelope = _envelope(SOAP11, f'<HIPMessageServer xmlns="urn:hl7-org:v3"><header>&lt;auth '
                                 f'user="x"/&gt;</header><message>{escape(message.decode())}'
                                 "</message></HIPMessageServer>")
    qid = v3intake.keep(q, envelope, SRC, "AE", "held", "test")
    ok, written = v3intake.replay(Repository(hub), q, qid)
    assert ok and "Patient/" in written and q.get(qid)["status"] == "replayed"
    demanding = envelope.replace(b"<s:Header/>", b'<s:Header><w:Security xmlns:w="urn:x" '
                                 b's:mustUnderstand="1"/></s:Header>')
    qid = v3intake.keep(q, demanding, SRC, "AR", "not understood", "v3.soap-must-understand")
    ok, why = v3intake.replay(Repository(hub), q, qid)
    assert not ok and "mustUnderstand" in why and q.get(qid)["status"] == "open"
    q.close()


# -- refusals ----------------------------------------------------------------------------------------

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
<!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
<!ENTITY lol9 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">]>
<PRPA_IN201311UV02 xmlns="urn:hl7-org:v3"><id extension="&lol9;"/></PRPA_IN201311UV02>"""
XXE = b"""<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<PRPA_IN201311UV02 xmlns="urn:hl7-org:v3"><id extension="&x;"/></PRPA_IN201311UV02>"""


@pytest.mark.parametrize("body,why", [
    (b"<PRPA_IN201311UV02 xmlns='urn:hl7-org:v3'><id extension='1'/>", "well-formed"),
    (BILLION_LAUGHS, "DOCTYPE"),
    (XXE, "DOCTYPE"),
    (b"<ADT_A01 xmlns='urn:hl7-org:v3'><id extension='1'/></ADT_A01>", "unsupported"),
    (b"<PRPA_IN201311UV02><id extension='1'/></PRPA_IN201311UV02>", "namespace"),
    (b"   ", "empty"),
    (b"<PRPA_IN201311UV02 xmlns='urn:hl7-org:v3'>" + b"<a>" * 200 + b"</a>" * 200 + b"</PRPA_IN201311UV02>",
     "deeper"),
], ids=["not-well-formed", "billion-laughs", "external-entity", "unknown-interaction", "not-v3", "empty",
        "too-deep"])
def test_bad_messages_are_rejected_and_the_server_keeps_serving(client, v3, body, why):
    t0 = time.monotonic()
    r = post(client, v3, body)
    assert time.monotonic() - t0 < 5
    assert r.status_code == 200
    code, text, _ = ack(r)
    assert code == "AR" and why in text, text
    assert client.get("/metadata").status_code == 200
    accepted(client, v3, patient_message(f"P{tag()}", resident()))


@pytest.mark.parametrize("ctype", ["application/json", "text/plain", None])
def test_wrong_content_type_is_rejected_with_415(client, v3, ctype):
    headers = {"content-type": ctype} if ctype else {}
    r = client.post(v3, content=fixture("patient-register.xml"), headers=headers)
    assert r.status_code == 415
    code, text, _ = ack(r)
    assert code == "AR" and "Content-Type" in text


@pytest.mark.parametrize("ctype", ["text/xml; charset=utf-8", "application/hl7-v3+xml"])
def test_every_xml_media_type_is_accepted(client, v3, ctype):
    r = post(client, v3, patient_message(f"P{tag()}", resident()), {"content-type": ctype})
    assert r.status_code == 200 and r.headers["content-type"].startswith(ctype.split(";")[0])
    assert ack(r)[0] == "AA"


def test_oversized_bodies_are_rejected(client, v3):
    # over the XML limit of the v3 endpoint (10 MB, below the hub's 64 MB body limit)
    big = fixture("patient-register.xml").replace(b"<processingModeCode/>",
                                                  b"<!--" + b"x" * (10 * 1024 * 1024 + 1) + b"-->")
    r = post(client, v3, big)
    assert r.status_code == 413
    code, text, _ = ack(r)
    assert code == "AR" and "limit" in text
    accepted(client, v3, patient_message(f"P{tag()}", resident()))


def test_a_declared_length_over_the_hub_limit_is_refused_before_reading(live, client, v3):
    with socket.create_connection(("127.0.0.1", live.port), timeout=10) as s:
        s.sendall(b"POST /v3 HTTP/1.1\r\nHost: x\r\nContent-Type: application/xml\r\n"
                  b"Content-Length: 100000000000\r\n\r\n<PRPA")
        s.shutdown(socket.SHUT_WR)
        raw = b""
        while chunk := s.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413") and b"xml" in head.lower()
    assert b'acknowledgement typeCode="AR"' in body
    assert client.get("/metadata").status_code == 200


# -- the shared samples ----------------------------------------------------------------------------

REGISTRATIONS = ["H02/H0201Rt.xml", "H02/H0202Rt.xml", "H02/H0203Rt.xml", "H03/H0301Rt.xml",
                 "H03/H0302Rt.xml", "H04/H0401Rt.xml", "H04/H0402Rt.xml", "H06/H0601Rt.xml"]
QUERIES = {"H02/H0204Rt.xml": "PRPA_IN201306UV02", "H03/H0303Rt.xml": "PRPM_IN406110UV01",
           "H04/H0403Rt.xml": "PRPM_IN306011UV01", "H06/H0602Rt.xml": "RCMR_IN000030UV01",
           "H06/H0603Rt.xml": "RCMR_IN000032UV01"}


def test_shared_samples(client, v3):
    # the patient samples write the template's label where the local id goes (患者ID): no key
    code, text, _ = ack(post(client, v3, sample("H02/H0201Rt.xml"), DECLARED))
    assert code == "AE" and "no usable identifier" in text and "kept for replay" in text, text
    for name in REGISTRATIONS:
        data = sample(name)
        if name.startswith("H02/"):
            data = data.replace('extension="被合并患者ID"'.encode(), b'extension="P0199"') \
                .replace('extension="患者ID"'.encode(), b'extension="P0201"')
        code, text, root = ack(post(client, v3, data, DECLARED))
        assert code == "AA", (name, text)
    for name, response in QUERIES.items():
        r = post(client, v3, sample(name), DECLARED)
        assert r.status_code == 200
        code, text, out = ack(r, response)
        assert code == "AA", (name, text)
        assert query_ack(out)[0] in ("OK", "NF")  # the samples query placeholder values
    # the sample queries with the values the sample registrations carry find them
    dept = variant(sample("H03/H0303Rt.xml"), ('extension="5240"', 'extension="123901test"'))
    assert query_ack(ack(post(client, v3, dept, DECLARED), QUERIES["H03/H0303Rt.xml"])[2]) == ("OK", 1)
    prac = variant(sample("H04/H0403Rt.xml"), ('extension="100403"', 'extension="huangxiaofeng12345"'),
                   ('"2011010101"', '"19570101"'), ('"2011020202"', '"19571231"'), ("李医生", "刘永好"))
    # staff id OR resident ID number: the update sample registered a second staff record of that
    # person, but the samples' resident ID number fails its check digit, so it is no identifier of
    # either record (fhir_mapping.identifiers): only the staff id finds its record
    assert query_ack(ack(post(client, v3, prac, DECLARED), QUERIES["H04/H0403Rt.xml"])[2]) == ("OK", 1)
    doc = variant(sample("H06/H0603Rt.xml"), ('extension="PatientID"', 'extension="11"'),
                  ('extension="文档流水号"', 'extension="22"'), ('extension="住院号"', 'extension="11"'),
                  ('extension="门诊号"', 'extension="11"'))
    out = ack(post(client, v3, doc, DECLARED), QUERIES["H06/H0603Rt.xml"])[2]
    assert query_ack(out) == ("OK", 1)
    # the merge sample retired its prior registration
    merge = convert(sample("H02/H0203Rt.xml").replace('extension="被合并患者ID"'.encode(),
                                                      b'extension="P0199"')
                    .replace('extension="患者ID"'.encode(), b'extension="P0201"'), SRC)
    (old,) = [p for p in merge.resources if p["resourceType"] == "Patient" and p.get("active") is False]
    assert read(client, f"Patient/{old['id']}")["active"] is False


# -- SOAP envelopes (the platforms' service buses) --------------------------------------------------

SOAP11 = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP12 = "http://www.w3.org/2003/05/soap-envelope"


def _strip_decl(data: bytes) -> str:
    text = data.decode("utf-8")
    return text.split("?>", 1)[1] if text.startswith("<?xml") else text


def _envelope(ns: str, body: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?><s:Envelope xmlns:s="{ns}"><s:Header/>'
            f"<s:Body>{body}</s:Body></s:Envelope>").encode()


def _soap_body(r: httpx.Response, ns: str) -> etree._Element:
    root = xml(r)
    assert root.tag == f"{{{ns}}}Envelope", root.tag
    return root.find(f"{{{ns}}}Body")[0]


def test_soap_11_inline_and_soap_12_string_parameter(client, v3):
    from xml.sax.saxutils import escape

    local, rid = f"P{tag()}", resident()
    # SOAP 1.1, the message inline in the Body: answered inline in a 1.1 envelope
    r = post(client, v3, _envelope(SOAP11, _strip_decl(patient_message(local, rid))),
             {"content-type": "text/xml; charset=utf-8", "soapaction": '"urn:hl7-org:v3/x"'})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/xml")
    answer = _soap_body(r, SOAP11)
    assert answer.tag == V3 + "MCCI_IN000002UV01"
    assert answer.find(f"{V3}acknowledgement").get("typeCode") == "AA"

    # SOAP 1.2, the query as the escaped text of HIPMessageServer's message parameter: the
    # answer as the escaped text of HIPMessageServerResult, in a 1.2 envelope
    call = (f'<HIPMessageServer xmlns="urn:hl7-org:v3"><action>PRPA_IN201305UV02</action>'
            f"<message>{escape(patient_query(rid).decode())}</message></HIPMessageServer>")
    r = post(client, v3, _envelope(SOAP12, call), {"content-type": "application/soap+xml"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/soap+xml")
    response = _soap_body(r, SOAP12)
    assert response.tag == V3 + "HIPMessageServerResponse"
    result = response.find(f"{V3}HIPMessageServerResult").text
    out = etree.fromstring(result.encode())
    assert out.tag == V3 + "PRPA_IN201306UV02" and query_ack(out) == ("OK", 1)

    # the same in CDATA, and an operation of another name and namespace
    call = (f'<m:Submit xmlns:m="http://bus.example/"><m:input><![CDATA['
            f"{patient_query(rid).decode()}]]></m:input></m:Submit>")
    r = post(client, v3, _envelope(SOAP11, call), {"content-type": "text/xml"})
    response = _soap_body(r, SOAP11)
    assert response.tag == "{http://bus.example/}SubmitResponse"
    out = etree.fromstring(response.find("{http://bus.example/}SubmitResult").text.encode())
    assert query_ack(out) == ("OK", 1)

    # the escaped message keeps the declaration its client wrote it with (gb2312): the text is
    # characters by then, read as such, not refused as bytes that are no GB2312
    declared = patient_query(rid).decode()
    declared = '<?xml version="1.0" encoding="gb2312"?>' + declared.split("?>", 1)[-1] \
        if declared.startswith("<?xml") else '<?xml version="1.0" encoding="gb2312"?>' + declared
    call = (f'<HIPMessageServer xmlns="urn:hl7-org:v3"><action>PRPA_IN201305UV02</action>'
            f"<message>{escape(declared)}</message></HIPMessageServer>")
    r = post(client, v3, _envelope(SOAP12, call), {"content-type": "application/soap+xml"})
    result = _soap_body(r, SOAP12).find(f"{V3}HIPMessageServerResult").text
    assert query_ack(etree.fromstring(result.encode())) == ("OK", 1)


@pytest.mark.parametrize("ns,status", [(SOAP11, 500), (SOAP12, 400)])
def test_a_soap_envelope_without_a_message_is_a_fault(client, v3, ns, status):
    ctype = "text/xml" if ns == SOAP11 else "application/soap+xml"
    for body in ("", "<op xmlns='http://x/'><action>nothing here</action></op>"):
        r = post(client, v3, _envelope(ns, body), {"content-type": ctype})
        assert r.status_code == status
        fault = _soap_body(r, ns)
        assert fault.tag == f"{{{ns}}}Fault"
    # a refused message inside an envelope is an AR acknowledgement in one, kept as any other
    r = post(client, v3, _envelope(ns, "<PRPA_IN999999UV02 xmlns='urn:hl7-org:v3'/>"),
             {"content-type": ctype})
    assert r.status_code == 200
    answer = _soap_body(r, ns)
    assert answer.find(f"{V3}acknowledgement").get("typeCode") == "AR"


def test_the_wsdl_describes_the_service(client, v3, live):
    r = httpx.get(v3 + "/wsdl", verify=httpclient.verify())  # no token: a service description, like /fhir/metadata
    assert r.status_code == 200
    root = etree.fromstring(r.content)
    assert root.tag == "{http://schemas.xmlsoap.org/wsdl/}definitions"
    addresses = [a.get("location") for a in root.iter() if etree.QName(a).localname == "address"]
    assert addresses == [v3, v3]  # a SOAP 1.1 and a 1.2 port
    assert client.get(v3, params={"wsdl": ""}).content == r.content
    # as SOAP tools fetch it: GET /v3?wsdl without credentials (access control is on here)
    anonymous = httpx.get(v3 + "?wsdl", verify=httpclient.verify())
    assert anonymous.status_code == 200 and anonymous.content == r.content
    assert httpx.head(v3 + "?wsdl", verify=httpclient.verify()).status_code == 200
    # only that: another query, or a message, still needs a token
    for other in (httpx.get(v3, verify=httpclient.verify()), httpx.get(v3 + "?wsdl&x=1", verify=httpclient.verify()), httpx.get(v3 + "?WSDL=1", verify=httpclient.verify()),
                  httpx.post(v3 + "?wsdl", content=b"<x/>", headers={"content-type": "text/xml"}, verify=httpclient.verify())):
        assert other.status_code == 401, (other.request.url, other.request.method)


# -- visits (H07) -----------------------------------------------------------------------------------

def visit_message(interaction: str, local: str, serial: str, *pairs: tuple[str, str]) -> bytes:
    data = variant(fixture("visit-register.xml"), ("P0001", local), ("VS0001", serial),
                   ("V-MSG-0001", f"V-{tag()}"), *pairs)
    return data.replace(b"PRPA_IN400001UV", interaction.encode())


def test_a_visit_is_registered_updated_and_discharged(client, v3):
    local, rid, serial = f"P{tag()}", resident(), f"VS{tag()}"
    accepted(client, v3, patient_message(local, rid))  # the patient, registered first (H02)
    pid = patient_id("ORG0001", local)
    # an inpatient admission (patient type 3): in progress, at the department, admitted by a doctor
    accepted(client, v3, visit_message("PRPA_IN400001UV", local, serial,
                                       ('code="1" codeSystem="2.16.156.10011.2.3.1.271"',
                                        'code="3" codeSystem="2.16.156.10011.2.3.1.271"')))
    found = client.get("/Encounter", params={"subject": f"Patient/{pid}"}).json()
    (entry,) = found["entry"]
    enc = entry["resource"]
    assert enc["class"]["code"] == "IMP" and enc["status"] == "in-progress"
    assert enc["period"] == {"start": "2024-03-08T09:30:00+08:00"}
    assert enc["location"][0]["location"]["display"] == "呼吸内科"
    assert enc["participant"][0]["type"][0]["coding"][0]["code"] == "ADM"
    assert enc["reasonCode"] == [{"text": "咳嗽三天"}]
    assert enc["id"] == encounter_id("ORG0001", local, serial)  # the visit the HL7 v2 feed keys so too
    assert read(client, f"Patient/{pid}")["name"]  # the registered Patient is kept as it was
    # moved to another department (an update), then discharged
    accepted(client, v3, visit_message("PRPA_IN400002UV", local, serial,
                                       ('code="1" codeSystem="2.16.156.10011.2.3.1.271"',
                                        'code="3" codeSystem="2.16.156.10011.2.3.1.271"'),
                                       ("呼吸内科", "心内科")))
    enc = read(client, f"Encounter/{enc['id']}")
    assert enc["meta"]["versionId"] == "2"
    # the location history: where it was, then where it is
    assert [(loc["location"]["display"], loc["status"]) for loc in enc["location"]] == \
        [("呼吸内科", "completed"), ("心内科", "active")]
    accepted(client, v3, visit_message("PRPA_IN400003UV", local, serial,
                                       ('code="1" codeSystem="2.16.156.10011.2.3.1.271"',
                                        'code="3" codeSystem="2.16.156.10011.2.3.1.271"'),
                                       ('<low value="20240308093000"/>',
                                        '<low value="20240308093000"/><high value="20240312110000"/>')))
    enc = read(client, f"Encounter/{enc['id']}")
    assert enc["status"] == "finished" and enc["period"]["end"] == "2024-03-12T11:00:00+08:00"


def test_an_outpatient_registration_and_a_visit_that_cannot_be_mapped(client, v3):
    local, serial = f"P{tag()}", f"VS{tag()}"
    accepted(client, v3, visit_message("PRPA_IN400001UV", local, serial))
    enc = read(client, f"Encounter/{encounter_id('ORG0001', local, serial)}")
    assert enc["class"]["code"] == "AMB" and enc["status"] == "arrived"
    assert enc["subject"]["reference"] == f"Patient/{patient_id('ORG0001', local)}"
    # a patient type outside the table: AE naming the element, kept for replay
    r = post(client, v3, visit_message("PRPA_IN400001UV", local, f"VS{tag()}",
                                       ('code="1" codeSystem="2.16.156.10011.2.3.1.271"',
                                        'code="7" codeSystem="2.16.156.10011.2.3.1.271"')))
    code, text, _ = ack(r)
    assert code == "AE" and "patient type" in text and "kept for replay" in text
    # no usable visit id (fillers only): never a key
    r = post(client, v3, visit_message("PRPA_IN400001UV", local, "-", ('extension="MZ0001"',
                                                                       'extension="无"')))
    code, text, _ = ack(r)
    assert code == "AE" and "usable id" in text


def test_a_discharge_naming_only_its_end_keeps_what_the_visit_had(client, v3):
    import re

    local, serial = f"P{tag()}", f"VS{tag()}"
    accepted(client, v3, visit_message("PRPA_IN400001UV", local, serial,
                                       ('code="1" codeSystem="2.16.156.10011.2.3.1.271"',
                                        'code="3" codeSystem="2.16.156.10011.2.3.1.271"')))
    # the discharge names the visit, the patient and its end: no doctor, department or reason
    bare = visit_message("PRPA_IN400003UV", local, serial,
                         ('code="1" codeSystem="2.16.156.10011.2.3.1.271"',
                          'code="3" codeSystem="2.16.156.10011.2.3.1.271"'),
                         ('<low value="20240308093000"/>', '<high value="20240315100000"/>'))
    for element in ("admitter", "reasonCode"):
        bare = re.sub(rf"<{element}[ >].*?</{element}>".encode(), b"", bare, flags=re.S)
    # the department too (the institution stays: it names whose visit this is)
    bare = re.sub(rb'<location classCode="PLC".*?</location>', b"", bare, flags=re.S)
    assert b"admitter" not in bare and "呼吸内科".encode() not in bare
    accepted(client, v3, bare)
    enc = read(client, f"Encounter/{encounter_id('ORG0001', local, serial)}")
    assert enc["status"] == "finished"
    assert enc["period"] == {"start": "2024-03-08T09:30:00+08:00",
                             "end": "2024-03-15T10:00:00+08:00"}
    assert enc["participant"][0]["type"][0]["coding"][0]["code"] == "ADM"
    assert enc["location"][0]["location"]["display"] == "呼吸内科"
    assert enc["reasonCode"] == [{"text": "咳嗽三天"}]


def visit_query(criteria: str) -> bytes:
    return fixture("visit-query.xml").replace(b"<!--CRITERIA-->", criteria.encode()).replace(
        b"VQ-MSG-0001", f"VQ-{tag()}".encode())


def test_visits_are_queried_by_visit_patient_time_and_type(client, v3):
    local, serial, other = f"P{tag()}", f"VS{tag()}", f"VS{tag()}"
    admit = ('code="1" codeSystem="2.16.156.10011.2.3.1.271"',
             'code="3" codeSystem="2.16.156.10011.2.3.1.271"')
    accepted(client, v3, visit_message("PRPA_IN400001UV", local, serial, admit))
    accepted(client, v3, visit_message("PRPA_IN400001UV", local, other,
                                       ("20240308093000", "20240401080000")))

    def answer(criteria: str) -> tuple[str, int, etree._Element]:
        return asked(client, v3, visit_query(criteria), "PRPA_IN900350UV02", XML)

    # by the visit's serial number: the admission, with its doctor and department
    code, n, root = answer(f'<careEventID><value><item root="2.16.156.10011.2.5.1.9" '
                           f'extension="{serial}"/></value></careEventID>')
    assert code == "AA" and n == 1
    ev = root.find(f"{V3}controlActProcess/{V3}subject/{V3}encounterEvent")
    assert ev.find(f"{V3}code").get("code") == "3"
    assert ev.find(f"{V3}effectiveTime/{V3}low").get("value") == "20240308093000"
    assert ev.find(f"{V3}subject/{V3}patient/{V3}id/{V3}item").get("extension") == local
    assert ev.find(f"{V3}admitter/{V3}assignedPerson/{V3}id/{V3}item").get("extension") == "D001"
    assert ev.find(f".//{V3}serviceDeliveryLocation/{V3}location/{V3}name/{V3}item/{V3}part"
                   ).get("value") == "呼吸内科"
    # by the patient: both visits; with a time frame, the March one; by type, the outpatient one
    patient = (f'<patientId><value><item root="2.16.156.10011.2.5.1.4" extension="{local}"/>'
               f"</value></patientId>")
    assert answer(patient)[:2] == ("AA", 2)
    march = ('<encounterTimeframe><value><low value="20240301"/><high value="20240331"/>'
             "</value></encounterTimeframe>")
    assert answer(patient + march)[:2] == ("AA", 1)
    outpatient = ('<typeOfEncounter><value><item code="1" codeSystem="2.16.156.10011.2.3.1.271"/>'
                  "</value></typeOfEncounter>")
    _, n, root = answer(patient + outpatient)
    assert n == 1 and root.find(f".//{V3}encounterEvent/{V3}id/{V3}item[@root='2.16.156.10011.2.5.1.9']"
                                ).get("extension") == other
    # nobody's: no match, not an error
    code, n, _ = answer(f'<careEventID><value><item root="2.16.156.10011.2.5.1.9" '
                        f'extension="VS{tag()}"/></value></careEventID>')
    assert (code, n) == ("AA", 0)


def _transfer(local: str, serial: str, old: str, new: str, at: str) -> bytes:
    def place(tag_: str, type_code: str, dept: str, name: str) -> str:
        return (f'<{tag_} typeCode="{type_code}"><time xsi:type="IVL_TS"><low value="{at}"/></time>'
                '<statusCode/><serviceDeliveryLocation classCode="SDLOC">'
                '<location classCode="PLC" determinerCode="INSTANCE">'
                f'<id><item root="2.16.156.10011.1.26" extension="{dept}"/></id>'
                f'<name xsi:type="DSET_EN"><item><part value="{name}"/></item></name>'
                '<locatedEntityHasParts classCode="LOCE"><locatedPlace classCode="PLC" '
                'determinerCode="INSTANCE"><id><item root="2.16.156.10011.1.22" extension="03"/></id>'
                '<name xsi:type="DSET_EN"><item><part value="3床"/></item></name></locatedPlace>'
                f"</locatedEntityHasParts></location></serviceDeliveryLocation></{tag_}>")
    body = ('<subject typeCode="SUBJ"><encounterEvent classCode="ENC" moodCode="EVN"><id>'
            f'<item root="2.16.156.10011.2.5.1.9" extension="{serial}"/></id>'
            '<subject typeCode="SBJ"><patient classCode="PAT"><id>'
            f'<item root="2.16.156.10011.2.5.1.4" extension="{local}"/></id></patient></subject>'
            + place("location1", "DST", new[0], new[1]) + place("location2", "LOC", old[0], old[1])
            + "</encounterEvent></subject>")
    # the institution as the platform's connector states it (the message names none)
    return _wrap("PRPA_IN302011UV", body, f"T-{tag()}")


def test_a_ward_transfer_adds_to_the_visits_location_history(client, v3):
    local, serial = f"P{tag()}", f"VS{tag()}"
    accepted(client, v3, visit_message("PRPA_IN400001UV", local, serial,
                                       ('code="1" codeSystem="2.16.156.10011.2.3.1.271"',
                                        'code="3" codeSystem="2.16.156.10011.2.3.1.271"')))
    accepted(client, v3, _transfer(local, serial, ("0801", "呼吸内科"), ("0802", "心内科"),
                                   "20240310143000"), {**XML, "x-hub-source-institution": "ORG0001"})
    enc = read(client, f"Encounter/{encounter_id('ORG0001', local, serial)}")
    history = [(loc["location"].get("display"), loc["status"], loc.get("period"))
               for loc in enc["location"]]
    assert history[-2:] == [("呼吸内科 3床", "completed", {"end": "2024-03-10T14:30:00+08:00"}),
                            ("心内科 3床", "active", {"start": "2024-03-10T14:30:00+08:00"})]
    # the rest of the visit is as admitted
    assert enc["participant"][0]["type"][0]["coding"][0]["code"] == "ADM"
    assert enc["period"]["start"] == "2024-03-08T09:30:00+08:00" and enc["class"]["code"] == "IMP"


@pytest.mark.parametrize("body", [
    _envelope(SOAP12, "<op xmlns='http://x/'><message>&lt;!DOCTYPE r [&lt;!ENTITY x SYSTEM "
                      "'file:///etc/passwd'&gt;]&gt;&lt;PRPA_IN201311UV02 xmlns='urn:hl7-org:v3'&gt;"
                      "&lt;id extension='&amp;x;'/&gt;&lt;/PRPA_IN201311UV02&gt;</message></op>"),
    _envelope(SOAP11, "<op xmlns='http://x/'><message>&lt;not xml</message></op>"),
], ids=["entities-in-the-escaped-message", "unreadable-message"])
def test_hostile_or_broken_messages_in_envelopes_are_refused_and_the_server_keeps_serving(
        client, v3, body):
    r = post(client, v3, body, {"content-type": "text/xml"})
    assert r.status_code == 200
    assert b"root:" not in r.content  # nothing of the host's files comes back
    # refused with AR: a message inside an envelope is answered inside one, escaped
    assert b'typeCode="AR"' in r.content or b"typeCode=&quot;AR&quot;" in r.content
    accepted(client, v3, patient_message(f"P{tag()}", resident()))


def _fault(r: httpx.Response, ns: str) -> tuple[str, str]:
    """(fault code, reason) of a SOAP Fault answer, in the request's SOAP version."""
    assert r.headers["content-type"].startswith("text/xml" if ns == SOAP11 else "application/soap+xml")
    fault = _soap_body(r, ns)
    assert fault.tag == f"{{{ns}}}Fault"
    if ns == SOAP11:
        return fault.findtext("faultcode"), fault.findtext("faultstring")
    return (fault.findtext(f"{{{ns}}}Code/{{{ns}}}Value"),
            fault.findtext(f"{{{ns}}}Reason/{{{ns}}}Text"))


_SOURCE = {k: v for k, v in DECLARED.items() if k.startswith("x-hub-source")}
SOAP_REQUESTS = {SOAP11: {"content-type": "text/xml; charset=utf-8", "soapaction": '""', **_SOURCE},
                 SOAP12: {"content-type": "application/soap+xml; charset=utf-8", **_SOURCE}}


@pytest.mark.parametrize("ns,status,sender", [(SOAP11, 500, "soap:Client"), (SOAP12, 400, "soap:Sender")])
def test_an_unreadable_hostile_or_oversized_soap_request_is_a_soap_fault(client, v3, live, ns, status,
                                                                        sender):
    """A SOAP sender reads a Fault, not a bare MCCI: a not-well-formed envelope, one with a
    DOCTYPE, a body over the limit (read, or refused by its declared length before reading) are
    Client/Sender faults, with the status the SOAP HTTP bindings give; what was read is kept in the
    quarantine as a bare unreadable message is."""

    broken = _envelope(ns, "<foo>")
    hostile = BILLION_LAUGHS.replace(b"<PRPA_IN201311UV02", b"<s:Envelope xmlns:s='" + ns.encode()
                                     + b"'><s:Body><PRPA_IN201311UV02").replace(
        b"</PRPA_IN201311UV02>", b"</PRPA_IN201311UV02></s:Body></s:Envelope>")
    for body, why, headers in ((broken, "not well-formed", SOAP_REQUESTS[ns]),
                               (hostile, "DOCTYPE", SOAP_REQUESTS[ns]),
                               # no SOAPAction: SOAP by its Envelope
                               (broken, "not well-formed", {"content-type": "text/xml"})):
        r = post(client, v3, body, headers)
        assert r.status_code == status, r.text
        code, reason = _fault(r, ns)
        assert code == sender and why in reason and b"root:" not in r.content
        assert kept_entry(live.settings.data_dir, reason)["payload"] == body
    big = _envelope(ns, "<!--" + "x" * (10 * 1024 * 1024 + 1) + "-->")
    for headers in (SOAP_REQUESTS[ns], {"content-type": "text/xml"}):
        r = post(client, v3, big, headers)
        assert r.status_code == status
        code, reason = _fault(r, ns)
        assert code == sender and "exceeds the limit" in reason
    # refused before any byte of the body is read: by its headers
    with socket.create_connection(("127.0.0.1", live.port), timeout=10) as s:
        s.sendall(b"POST /v3 HTTP/1.1\r\nHost: x\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in SOAP_REQUESTS[ns].items()).encode()
            + b"Content-Length: 100000000000\r\n\r\n<s:Envelope")
        s.shutdown(socket.SHUT_WR)
        raw = b""
        while chunk := s.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status}".encode()), head
    assert b"Fault" in body and b"exceeds the limit" in body
    accepted(client, v3, patient_message(f"P{tag()}", resident()))


@pytest.mark.parametrize("ns,must", [(SOAP11, "1"), (SOAP12, "true")])
def test_a_header_block_the_hub_must_understand_is_a_must_understand_fault(client, v3, ns, must):
    """The hub understands no SOAP header block: one marked mustUnderstand and targeted at it
    (no actor/role, or next) is a MustUnderstand fault and nothing is written; one not marked,
    or targeted at another node, is ignored."""
    data = patient_message(f"P{tag()}", resident())
    (pid,) = ids_of(data, SRC, "Patient")
    role = "actor" if ns == SOAP11 else "role"
    security = (f'<w:Security xmlns:w="http://docs.oasis-open.org/wss/2004/01/'
                f'oasis-200401-wss-wssecurity-secext-1.0.xsd" s:mustUnderstand="{must}"/>')
    body = _envelope(ns, _strip_decl(data)).replace(b"<s:Header/>",
                                                   f"<s:Header>{security}</s:Header>".encode())
    r = post(client, v3, body, SOAP_REQUESTS[ns])
    assert r.status_code == 500  # both SOAP HTTP bindings: a MustUnderstand fault is a 500
    code, reason = _fault(r, ns)
    assert code == "soap:MustUnderstand" and "Security" in reason
    if ns == SOAP12:
        (nu,) = xml(r).find(f"{{{ns}}}Header")
        assert nu.tag == f"{{{ns}}}NotUnderstood" and nu.get("qname").endswith(":Security")
    assert client.get(f"/Patient/{pid}").status_code == 404
    for harmless in (security.replace(f's:mustUnderstand="{must}"', 's:mustUnderstand="0"'),
                     security.replace("/>", f' s:{role}="http://elsewhere.example/node"/>')):
        body = _envelope(ns, _strip_decl(data)).replace(
            b"<s:Header/>", f"<s:Header>{harmless}</s:Header>".encode())
        r = post(client, v3, body, SOAP_REQUESTS[ns])
        assert r.status_code == 200
        assert _soap_body(r, ns).find(f"{V3}acknowledgement").get("typeCode") == "AA"


def test_the_soap_parameter_named_message_is_the_message_and_a_refusal_keeps_the_envelope(
        client, v3, live):
    """Another parameter holding markup before it (a header, credentials) is not taken for the
    message; of another bus's parameters, the one that is an HL7 v3 message is. A message refused
    inside an envelope is kept as the whole envelope, to replay."""
    from xml.sax.saxutils import escape

    data = patient_message(f"P{tag()}", resident())
    (pid,) = ids_of(data, SRC, "Patient")
    call = ('<HIPMessageServer xmlns="urn:hl7-org:v3"><header>&lt;auth user="x"/&gt;</header>'
            f"<message>{escape(data.decode())}</message></HIPMessageServer>")
    r = post(client, v3, _envelope(SOAP11, call), SOAP_REQUESTS[SOAP11])
    assert r.status_code == 200
    answer = etree.fromstring(_soap_body(r, SOAP11).find(f"{V3}HIPMessageServerResult").text.encode())
    assert answer.find(f"{V3}acknowledgement").get("typeCode") == "AA"
    assert read(client, f"Patient/{pid}")["id"] == pid
    other = patient_message(f"P{tag()}", resident())
    (other_pid,) = ids_of(other, SRC, "Patient")
    call = ('<m:Submit xmlns:m="http://bus.example/"><m:auth>&lt;auth user="x"/&gt;</m:auth>'
            f"<m:input>{escape(other.decode())}</m:input></m:Submit>")
    r = post(client, v3, _envelope(SOAP12, call), SOAP_REQUESTS[SOAP12])
    assert r.status_code == 200
    assert read(client, f"Patient/{other_pid}")["id"] == other_pid
    # refused inside the envelope: the envelope is kept, not only the message's parameter
    refused = variant(patient_message(f"P{tag()}", resident()),
                      ('processingCode code="P"', 'processingCode code="T"'))
    envelope = _envelope(SOAP11, call.replace(escape(other.decode()), escape(refused.decode())))
    r = post(client, v3, envelope, SOAP_REQUESTS[SOAP11])
    assert r.status_code == 200
    result = _soap_body(r, SOAP11).find("{http://bus.example/}SubmitResult").text
    code, text, _ = ack(httpx.Response(200, content=result.encode(),
                                       headers={"content-type": "application/xml"}))
    assert code == "AR" and "processingCode" in text
    entry = kept_entry(live.settings.data_dir, text)
    assert entry["payload"] == envelope and entry["report"]["interaction"] == "PRPA_IN201311UV02"


# -- orders (H08) and requests (H09) -----------------------------------------------------------------

def order_message(name: str, local: str, serial: str, *pairs: tuple[str, str],
                  interaction: str = "POOR_IN200901UV") -> bytes:
    """One of the order fixtures for this patient and visit, its order numbers made unique."""
    data = variant(fixture(name), ("P0001", local), ("VS0001", serial), *pairs)
    data = data.replace(b"MSG-0001", f"MSG-{tag()}".encode())
    return data.replace(b"POOR_IN200901UV", interaction.encode())


def order_query(criteria: str) -> bytes:
    return fixture("order-query.xml").replace(b"<!--CRITERIA-->", criteria.encode()).replace(
        b"OQ-MSG-0001", f"OQ-{tag()}".encode())


def _search_one(client: httpx.Client, rtype: str, system: str, value: str) -> dict:
    found = client.get(f"/{rtype}", params={"identifier": f"{system}|{value}"}).json()
    (entry,) = found["entry"]
    return entry["resource"]


def test_orders_are_registered_stopped_and_keep_what_an_update_leaves_out(client, v3):
    local, serial, n = f"P{tag()}", f"VS{tag()}", tag()
    drug, exam = f"YZ{n}1", f"YZ{n}2"
    accepted(client, v3, visit_message("PRPA_IN400001UV", local, serial), DECLARED)
    new = order_message("order-new.xml", local, serial, ("YZ0001", drug), ("YZ0002", exam))
    accepted(client, v3, new, DECLARED)
    med = _search_one(client, "MedicationRequest", f"urn:oid:{OID}.4", drug)
    assert med["status"] == "active" and med["intent"] == "order"
    assert med["subject"]["reference"] == f"Patient/{patient_id(INST, local)}"
    assert med["encounter"]["reference"] == f"Encounter/{encounter_id(INST, local, serial)}"
    read(client, med["encounter"]["reference"])  # the visit the registration wrote
    assert med["medicationCodeableConcept"]["text"] == "阿莫西林胶囊"
    dosage = med["dosageInstruction"][0]
    assert dosage["route"]["coding"][0]["display"] == "口服"
    assert dosage["timing"]["code"]["coding"][0]["code"] == "TID"
    assert dosage["doseAndRate"][0]["doseQuantity"] == {"value": 0.5, "unit": "g"}
    assert med["dispenseRequest"]["quantity"] == {"value": 42, "unit": "粒"}
    assert med["dispenseRequest"]["validityPeriod"]["end"] == "2024-03-17T10:00:00+08:00"
    assert [c["text"] for c in med["category"]] == ["药品", "长期医嘱"]
    assert med["note"] == [{"text": "青霉素皮试阴性后使用"}]
    assert read(client, med["requester"]["reference"])["name"][0]["text"] == "张医生"
    ct = _search_one(client, "ServiceRequest", f"urn:oid:{OID}.4", exam)
    assert ct["code"] == {"text": "胸部CT平扫"} and ct["performer"][0]["display"] == "放射科"
    # the drug is stopped (aborted): revoked, the rest as ordered
    stop = order_message("order-new.xml", local, serial, ("YZ0001", drug), ("YZ0002", exam),
                         ('<statusCode code="active"/>\n            <effectiveTime xsi:type="QSC_TS" '
                          'validTimeLow="20240310100000"',
                          '<statusCode code="aborted"/>\n            <effectiveTime xsi:type="QSC_TS" '
                          'validTimeLow="20240310100000"'), interaction="POOR_IN200902UV")
    accepted(client, v3, stop, DECLARED)
    med = read(client, f"MedicationRequest/{med['id']}")
    assert med["status"] == "stopped" and med["meta"]["versionId"] == "2"
    assert med["dispenseRequest"]["quantity"]["value"] == 42
    # an update that leaves out the status, the dispensing and the note keeps them
    import re
    bare = order_message("order-new.xml", local, serial, ("YZ0001", drug), ("YZ0002", exam),
                         interaction="POOR_IN200902UV")
    for block in (rb"<component2>\s*<supplyRequest.*?</component2>", rb"<subjectOf6.*?</subjectOf6>"):
        bare = re.sub(block, b"", bare, count=1, flags=re.S)
    bare = bare.replace(b'<statusCode code="active"/>', b"", 1)
    assert "青霉素".encode() not in bare and b"supplyRequest" not in bare
    accepted(client, v3, bare, DECLARED)
    med = read(client, f"MedicationRequest/{med['id']}")
    # nothing it names differs from what is stored: no new version
    assert med["meta"]["versionId"] == "2" and med["status"] == "stopped"
    assert med["dispenseRequest"]["quantity"]["value"] == 42
    assert med["note"] == [{"text": "青霉素皮试阴性后使用"}]


def test_requests_by_kind_with_specimen_form_and_reason(client, v3):
    local, serial, n = f"P{tag()}", f"VS{tag()}", tag()
    form, barcode = f"SQ{n}", f"BC{n}"
    lab = order_message("request-lab.xml", local, serial, ("SQ0001", form), ("BC0001", barcode),
                        ("YZ1001", f"YZ{n}1"), ("YZ1002", f"YZ{n}2"))
    accepted(client, v3, lab, DECLARED)
    found = client.get("/ServiceRequest", params={"requisition": f"urn:oid:{OID}.17|{form}",
                                                  "_include": "ServiceRequest:specimen"}).json()
    requests = [e["resource"] for e in found["entry"] if e["resource"]["resourceType"] == "ServiceRequest"]
    specimens = [e["resource"] for e in found["entry"] if e["resource"]["resourceType"] == "Specimen"]
    assert sorted(r["code"]["text"] for r in requests) == ["C反应蛋白", "血常规"]
    for r in requests:
        assert r["category"][0]["coding"][0]["code"] == "108252007"  # laboratory
        assert r["priority"] == "stat" and r["status"] == "active"
        assert r["reasonCode"][0]["coding"][0]["code"] == "J18.900"
        assert {"text": "空腹采血"} in r["note"]
    (specimen,) = specimens
    assert specimen["accessionIdentifier"]["value"] == barcode
    assert specimen["type"]["text"] == "静脉血"
    surgery = order_message("request-surgery.xml", local, serial, ("SS0001", f"SS{n}"),
                            ("YZ2001", f"YZ{n}3"))
    accepted(client, v3, surgery, DECLARED)
    op = _search_one(client, "ServiceRequest", f"urn:oid:{OID}.4", f"YZ{n}3")
    assert op["category"][0]["coding"][0]["code"] == "387713003"  # surgical procedure
    assert op["code"]["coding"][0] == {"system": "urn:oid:2.16.156.10011.2.3.3.12",
                                       "code": "47.0901", "display": "腹腔镜阑尾切除术"}
    assert op["occurrencePeriod"] == {"start": "2024-03-16T08:00:00+08:00"}


def test_orders_that_cannot_be_mapped_are_refused_naming_the_element_and_kept(client, v3):
    local, serial = f"P{tag()}", f"VS{tag()}"
    # no usable order number (a filler), and a status outside ActStatus
    for pairs, words in (((('extension="YZ0001"', 'extension="-"'),), "order number"),
                         ((('<statusCode code="active"/>', '<statusCode code="maybe"/>'),),
                          "statusCode")):
        r = post(client, v3, order_message("order-new.xml", local, serial, *pairs), DECLARED)
        code, text, _ = ack(r)
        assert code == "AE" and words in text and "kept for replay" in text, text
    # no patient: AE, nothing written
    r = post(client, v3, order_message("request-surgery.xml", local, serial,
                                       ("<subject typeCode=\"SBJ\">", "<subjectOf typeCode=\"SBJ\">"),
                                       ("</subject>\n          </encounter>",
                                        "</subjectOf>\n          </encounter>")), DECLARED)
    code, text, _ = ack(r)
    assert code == "AE" and "patient" in text


def test_orders_and_requests_are_queried_by_order_form_visit_author_time_and_patient(client, v3):
    local, serial, n = f"P{tag()}", f"VS{tag()}", tag()
    accepted(client, v3, visit_message("PRPA_IN400001UV", local, serial), DECLARED)
    accepted(client, v3, order_message("order-new.xml", local, serial, ("YZ0001", f"YZ{n}1"),
                                       ("YZ0002", f"YZ{n}2")), DECLARED)
    accepted(client, v3, order_message("request-lab.xml", local, serial, ("SQ0001", f"SQ{n}"),
                                       ("BC0001", f"BC{n}"), ("YZ1001", f"YZ{n}3"),
                                       ("YZ1002", f"YZ{n}4")), DECLARED)
    # a request another system wrote through REST, for the same patient: found too
    rest = {"resourceType": "ServiceRequest", "status": "active", "intent": "order",
            "identifier": [{"system": f"urn:oid:{OID}.4", "value": f"YZ{n}5"}],
            "code": {"text": "心电图"}, "authoredOn": "2024-04-02T10:00:00+08:00",
            "subject": {"reference": f"Patient/{patient_id(INST, local)}",
                        "identifier": {"system": f"urn:oid:{OID}.1", "value": local}}}
    assert client.post("/ServiceRequest", json=rest).status_code == 201

    def answer(criteria: str) -> tuple[str, int, etree._Element]:
        return asked(client, v3, order_query(criteria), "QUMT_IN020040UV01")

    def act(root: str, ext: str) -> str:
        return f'<actId><value><item root="{root}" extension="{ext}"/></value></actId>'

    # by the drug's order number: a placerGroup with its drug, author and patient
    code, count, root = answer(act("2.16.156.10011.1.28", f"YZ{n}1"))
    assert (code, count) == ("AA", 1)
    group = root.find(f"{V3}controlActProcess/{V3}subject/{V3}placerGroup")
    sa = group.find(f"{V3}component2/{V3}substanceAdministrationRequest")
    assert sa.find(f"{V3}id/{V3}item").get("extension") == f"YZ{n}1"
    assert sa.find(f"{V3}statusCode").get("code") == "active"
    assert sa.find(f".//{V3}manufacturedProduct/{V3}name/{V3}item/{V3}part").get("value") == "阿莫西林胶囊"
    assert group.find(f"{V3}author/{V3}time").get("value") == "20240310091000"
    assert group.find(f".//{V3}assignedEntity/{V3}id/{V3}item").get("extension") == "D001"
    assert group.find(f".//{V3}encounter/{V3}subject/{V3}patient/{V3}id/{V3}item"
                      ).get("extension") == local
    # by the request form: its two items (no drug order has a form)
    code, count, root = answer(act("2.16.156.10011.1.24", f"SQ{n}"))
    assert (code, count) == ("AA", 2)
    items = root.findall(f"{V3}controlActProcess/{V3}subject/{V3}observationRequest")
    assert sorted(i.find(f"{V3}component2/{V3}observationRequest/{V3}code").get("code")
                  for i in items) == ["CBC", "CRP"]
    assert {i.find(f"{V3}id/{V3}item").get("extension") for i in items} == {f"SQ{n}"}
    # by the specimen's barcode, as the laboratory asks
    assert answer(act("2.16.156.10011.1.14", f"BC{n}"))[:2] == ("AA", 2)
    # by the visit: the two orders and the two items (the REST request names no visit)
    assert answer(act("2.16.156.10011.2.5.1.9", serial))[:2] == ("AA", 4)
    # by the patient: all five; with a time frame, the REST one of April
    patient = (f'<patientId><value><item root="2.16.156.10011.2.5.1.4" extension="{local}"/>'
               f"</value></patientId>")
    assert answer(patient)[:2] == ("AA", 5)
    april = ('<effectiveTime><value><low value="20240401"/><high value="20240430"/></value>'
             "</effectiveTime>")
    code, count, root = answer(patient + april)
    assert (code, count) == ("AA", 1)
    assert root.find(f".//{V3}component2/{V3}observationRequest/{V3}id/{V3}item"
                     ).get("extension") == f"YZ{n}5"
    # by the author and the patient: what 张医生 (D001) wrote
    author = ('<authorId><value><item root="2.16.156.10011.1.4" extension="D001"/></value>'
              "</authorId>")
    assert answer(patient + author)[:2] == ("AA", 4)
    # nobody's: no match, not an error
    assert answer(act("2.16.156.10011.1.28", f"YZ{tag()}"))[:2] == ("AA", 0)


def test_a_diet_order_is_written_stopped_and_answers_the_order_query(client, v3):
    """A diet order (膳食医嘱) in an order message is a NutritionOrder: the order query finds it by
    its number, the patient and the visit, answered like the orders that are no drug; its stop
    (an update naming only its status) keeps the diet."""
    import re

    local, serial, n = f"P{tag()}", f"VS{tag()}", tag()
    accepted(client, v3, visit_message("PRPA_IN400001UV", local, serial), DECLARED)
    diet = order_message("order-new.xml", local, serial, ("YZ0001", f"YZ{n}1"),
                         ("YZ0002", f"YZ{n}2"), ('<displayName value="检查"/>', '<displayName value="膳食"/>'),
                         ("胸部CT平扫", "低盐低脂半流质饮食"))
    accepted(client, v3, diet, DECLARED)
    order = _search_one(client, "NutritionOrder", f"urn:oid:{OID}.4", f"YZ{n}2")
    assert order["oralDiet"]["type"] == [{"text": "低盐低脂半流质饮食"}] and order["status"] == "active"
    assert order["patient"]["reference"] == f"Patient/{patient_id(INST, local)}"

    def answer(criteria: str) -> tuple[str, int, etree._Element]:
        return asked(client, v3, order_query(criteria), "QUMT_IN020040UV01")

    act = (f'<actId><value><item root="2.16.156.10011.1.28" extension="YZ{n}2"/></value>'
           f"</actId>")
    code, count, root = answer(act)
    assert (code, count) == ("AA", 1)
    item = root.find(f".//{V3}component2/{V3}observationRequest")
    assert item.find(f"{V3}id/{V3}item").get("extension") == f"YZ{n}2"
    assert item.find(f"{V3}code/{V3}originalText").get("value") == "低盐低脂半流质饮食"
    assert root.find(f".//{V3}author/{V3}assignedEntity/{V3}id/{V3}item").get("extension") == "D001"
    patient = (f'<patientId><value><item root="2.16.156.10011.2.5.1.4" extension="{local}"/>'
               f"</value></patientId>")
    assert answer(patient)[:2] == ("AA", 2)  # the drug order and the diet
    visit = f'<actId><value><item root="2.16.156.10011.2.5.1.9" extension="{serial}"/></value></actId>'
    assert answer(visit)[:2] == ("AA", 2)
    # stopped by an update that names only the diet's number and status
    stop = order_message("order-new.xml", local, serial, ("YZ0001", f"YZ{n}1"),
                         ("YZ0002", f"YZ{n}2"), ('<displayName value="检查"/>', '<displayName value="膳食"/>'),
                         ("胸部CT平扫", "低盐低脂半流质饮食"), interaction="POOR_IN200902UV")
    stop = re.sub(rb'(<observationRequest classCode="OBS" moodCode="RQO">.*?)<statusCode code="active"/>',
                  rb'\1<statusCode code="cancelled"/>', stop, count=1, flags=re.S)
    stop = re.sub(rb'<effectiveTime xsi:type="QSC_TS" validTimeLow="20240311080000"/>', b"", stop)
    accepted(client, v3, stop, DECLARED)
    order = read(client, f"NutritionOrder/{order['id']}")
    assert order["status"] == "revoked" and order["meta"]["versionId"] == "2"
    assert order["oralDiet"]["type"] == [{"text": "低盐低脂半流质饮食"}]
    assert order["oralDiet"]["schedule"][0]["repeat"]["boundsPeriod"]["start"].startswith("2024-03-11")


def test_a_requests_status_is_its_forms_task_and_answers_the_status_query(client, v3):
    local, serial, n = f"P{tag()}", f"VS{tag()}", tag()
    form = f"SQ{n}"
    accepted(client, v3, order_message("request-lab.xml", local, serial, ("SQ0001", form),
                                       ("BC0001", f"BC{n}"), ("YZ1001", f"YZ{n}1"),
                                       ("YZ1002", f"YZ{n}2")), DECLARED)

    def lab_status(name: str) -> bytes:
        return variant(fixture("lab-status.xml"), ("SQ0001", form), ("P0001", local),
                       ("LS-MSG-0001", f"LS-{tag()}"), ("已采样", name))

    accepted(client, v3, lab_status("已采样"), DECLARED)
    accepted(client, v3, lab_status("已报告"), DECLARED)
    found = client.get("/Task", params={"group-identifier": f"urn:oid:{OID}.17|{form}"}).json()
    (entry,) = found["entry"]
    task = entry["resource"]
    assert task["status"] == "completed" and task["meta"]["versionId"] == "2"
    history = client.get(f"/Task/{task['id']}/_history").json()
    assert sorted(e["resource"]["businessStatus"]["text"] for e in history["entry"]) == \
        ["已报告", "已采样"]
    r = post(client, v3, order_query(f'<actId><value><item root="2.16.156.10011.1.24" '
                                      f'extension="{form}"/></value></actId>'), DECLARED)
    code, _, root = ack(r, "QUMT_IN020040UV01")
    assert code == "AA" and query_ack(root)[1] == 3  # the two items and the form's status
    steps = root.findall(f".//{V3}processStep/{V3}code/{V3}displayName")
    assert [s.get("value") for s in steps] == ["已报告"]


def test_an_appointment_is_booked_and_a_cancellation_keeps_its_time(client, v3):
    local, n = f"P{tag()}", tag()

    def booking(interaction: str, *pairs: tuple[str, str]) -> bytes:
        data = variant(fixture("outpatient-appointment.xml"), ("P0001", local), ("YY0001", f"YY{n}"),
                       ("OA-MSG-0001", f"OA-{tag()}"), *pairs)
        return data.replace(b"PRPA_IN410001UV", interaction.encode())

    accepted(client, v3, booking("PRPA_IN410001UV"), DECLARED)
    found = client.get("/Appointment", params={"identifier": f"urn:oid:2.16.156.10011.2.5.1.11|YY{n}"})
    (entry,) = found.json()["entry"]
    appt = entry["resource"]
    assert appt["status"] == "booked" and appt["start"] == "2024-03-20T09:30:00+08:00"
    assert appt["participant"][0]["actor"]["reference"] == f"Patient/{patient_id(INST, local)}"
    # cancelled by a message that names only the appointment, its patient and status
    import re
    bare = booking("PRPA_IN410002UV", ('code="active"', 'code="cancelled"'))
    bare = re.sub(rb"<effectiveTime>.*?</effectiveTime>", b"", bare, flags=re.S)
    accepted(client, v3, bare, DECLARED)
    appt = read(client, f"Appointment/{appt['id']}")
    assert appt["status"] == "cancelled" and appt["start"] == "2024-03-20T09:30:00+08:00"
    assert appt["meta"]["versionId"] == "2"


def test_an_appointment_width_beyond_any_calendar_is_no_end(client, v3):
    """A width of 1e400 minutes (or 99999999999) is no end, not a 500 with nothing kept."""
    for width in ("1e400", "99999999999", "-1e308"):
        local, n = f"P{tag()}", tag()
        data = variant(fixture("outpatient-appointment.xml"), ("P0001", local), ("YY0001", f"YY{n}"),
                       ("OA-MSG-0001", f"OA-{tag()}"),
                       ('<high value="20240320094500"/>', f'<width value="{width}" unit="min"/>'))
        accepted(client, v3, data, DECLARED)
        found = client.get("/Appointment", params={
            "identifier": f"urn:oid:2.16.156.10011.2.5.1.11|YY{n}"}).json()
        (entry,) = found["entry"]
        assert entry["resource"]["start"] == "2024-03-20T09:30:00+08:00"
        assert "end" not in entry["resource"], width


def test_a_dictionary_is_registered_updated_without_losing_codes_and_queried(client, v3):
    name = f"dict{tag()}"
    reg = variant(fixture("terminology-register.xml"), ("orderItemType", name),
                  ("TR-MSG-0001", f"TR-{tag()}"))
    accepted(client, v3, reg, DECLARED)
    url = f"https://fhir-region-hub.example/CodeSystem/local/{INST}/{name}"
    found = client.get("/CodeSystem", params={"url": url}).json()
    (entry,) = found["entry"]
    cs = entry["resource"]
    assert [c["code"] for c in cs["concept"]] == ["01", "02", "09"]
    assert cs["title"] == "医嘱项目类型" and cs["version"] == "2024.1"
    # the terminology service knows it
    r = client.get("/CodeSystem/$lookup", params={"system": url, "code": "02"})
    assert r.status_code == 200, r.text
    assert any(p.get("valueString") == "检查" for p in r.json()["parameter"])
    vs = client.get("/ValueSet", params={"url": url}).json()["entry"][0]["resource"]
    assert vs["compose"]["include"][0]["system"] == url
    # an update naming one changed item and one new one keeps the third
    update = variant(reg, ("PRVS_IN000001UV01", "PRVS_IN000002UV01"),
                     ('<valueSetItems><code code="01"><displayName value="药品"/></code><statusCode code="1"/></valueSetItems>\n'
                      '            <valueSetItems><code code="02"><displayName value="检查"/></code><statusCode code="1"/></valueSetItems>\n'
                      '            <valueSetItems><code code="09"><displayName value="其他（停用）"/></code><statusCode code="0"/></valueSetItems>',
                      '<valueSetItems><code code="02"><displayName value="检查（影像）"/></code><statusCode code="1"/></valueSetItems>'
                      '<valueSetItems><code code="03"><displayName value="检验"/></code><statusCode code="1"/></valueSetItems>'))
    update = update.replace(b"<id root=\"2.16.156.10011.2.5.1.1\" extension=\"TR-",
                            b"<id root=\"2.16.156.10011.2.5.1.1\" extension=\"TU-")
    accepted(client, v3, update, DECLARED)
    cs = read(client, f"CodeSystem/{cs['id']}")
    assert {c["code"]: c["display"] for c in cs["concept"]} == \
        {"01": "药品", "02": "检查（影像）", "03": "检验", "09": "其他（停用）"}
    assert cs["count"] == 4

    def query(items: str) -> etree._Element:
        body = variant(fixture("terminology-query.xml"), ("orderItemType", name),
                       ("<!--ITEMS-->", items), ("TQ-MSG-0001", f"TQ-{tag()}"))
        r = post(client, v3, body, DECLARED)
        code, _, root = ack(r, "PRVS_IN000004UV01")
        assert code == "AA"
        return root

    root = query("")
    answered = f"{V3}controlActProcess/{V3}subject/{V3}registrationRequest/{V3}subject1/{V3}valueSet"
    items = root.findall(f"{answered}/{V3}valueSetItems/{V3}code")
    assert sorted(i.get("code") for i in items) == ["01", "02", "03", "09"]
    root = query('<valueSetItems><code code="03"/></valueSetItems>')
    (item,) = root.findall(f"{answered}/{V3}valueSetItems")
    assert item.find(f"{V3}code/{V3}displayName").get("value") == "检验"
    assert query_ack(query('<valueSetItems><code code="77"/></valueSetItems>'))[1] == 0


def test_a_surgery_request_and_its_schedule_answer_the_order_query(client, v3):
    local, serial, n = f"P{tag()}", f"VS{tag()}", tag()
    form = f"SS{n}"
    accepted(client, v3, order_message("request-surgery.xml", local, serial, ("SS0001", form),
                                       ("YZ2001", f"YZ{n}")), DECLARED)
    schedule = variant(fixture("surgery-schedule.xml"), ("SS0001", form), ("PB0001", f"PB{n}"),
                       ("P0001", local), ("SC-MSG-0001", f"SC-{tag()}"))
    accepted(client, v3, schedule, DECLARED)
    r = post(client, v3, order_query(f'<actId><value><item root="2.16.156.10011.1.24" '
                                      f'extension="{form}"/></value></actId>'), DECLARED)
    code, _, root = ack(r, "QUMT_IN020040UV01")
    assert code == "AA" and query_ack(root)[1] == 2  # the operation requested and its booking
    appt = root.find(f"{V3}controlActProcess/{V3}subject/{V3}actAppointment")
    assert appt.find(f"{V3}id").get("extension") == f"PB{n}"
    assert appt.find(f"{V3}effectiveTime/{V3}low").get("value") == "20240316080000"
    assert [p.find(f"{V3}assignedPerson/{V3}code/{V3}displayName").get("value")
            for p in appt.findall(f"{V3}performer")] == ["主刀医生", "麻醉医生"]
    assert appt.find(f"{V3}referencedOrder/{V3}actOrder/{V3}id").get("extension") == form


def test_a_clinic_session_and_its_slots_are_registered_and_a_slot_is_taken(client, v3):
    n = tag()
    session = variant(fixture("schedule-register.xml"), ("PB20240320-0801", f"PB{n}"),
                      ("SR-MSG-0001", f"SR-{tag()}"))
    accepted(client, v3, session, DECLARED)
    (entry,) = client.get("/Schedule", params={"identifier": f"PB{n}"}).json()["entry"]
    schedule = entry["resource"]
    found = client.get("/Slot", params={"schedule": f"Schedule/{schedule['id']}",
                                        "status": "free"}).json()
    assert [e["resource"]["start"] for e in found["entry"]] == ["2024-03-20T08:00:00+08:00"]
    taken = variant(session, ('<statusCode code="normal"/>', '<statusCode code="booked"/>'),
                    ("PRSC_IN030101UV", "PRSC_IN030102UV")).replace(
        b"SR-", b"SU-")
    accepted(client, v3, taken, DECLARED)
    found = client.get("/Slot", params={"schedule": f"Schedule/{schedule['id']}",
                                        "status": "free"}).json()
    assert not found.get("entry")


def _booking(local: str, number: str, *pairs: tuple[str, str]) -> bytes:
    return variant(fixture("outpatient-appointment.xml"), ("P0001", local), ("YY0001", number),
                   ("OA-MSG-0001", f"OA-{tag()}"), *pairs)


APPOINTMENTS = "门诊预约状态信息查询服务"


def test_the_outpatient_appointment_query_answers_when_the_service_is_named(client, v3):
    """PRPA_IN900300UV carries both the visit queries and the outpatient appointment status query:
    the platforms tell them by the service called. Named (``?service=`` or the SOAP action), the
    query answers the patient's outpatient appointments with their status; not named, visits."""
    from xml.sax.saxutils import escape

    local, first, second = f"P{tag()}", f"YY{tag()}", f"YY{tag()}"
    accepted(client, v3, _booking(local, first), DECLARED)
    accepted(client, v3, _booking(local, second, ('code="active"', 'code="cancelled"'),
                                  ("20240320093000", "20240405140000"),
                                  ("20240320094500", "20240405141500")), DECLARED)
    accepted(client, v3, visit_message("PRPA_IN400001UV", local, f"VS{tag()}"), DECLARED)
    # a booking another system wrote through REST, for the same patient, kept: found too
    third = f"YY{tag()}"
    rest = {"resourceType": "Appointment", "status": "fulfilled",
            "identifier": [{"system": "urn:oid:2.16.156.10011.2.5.1.11", "value": third}],
            "serviceCategory": [{"coding": [{
                "system": "https://fhir-region-hub.example/CodeSystem/appointment-service",
                "code": "outpatient"}]}],
            "start": "2024-04-10T08:00:00+08:00", "end": "2024-04-10T08:15:00+08:00",
            "participant": [{"status": "accepted", "actor": {
                "reference": f"Patient/{patient_id(INST, local)}",
                "identifier": {"system": f"urn:oid:{OID}.1", "value": local}}}]}
    assert client.post("/Appointment", json=rest).status_code == 201
    patient = (f'<patientId><value><item root="2.16.156.10011.2.5.1.4" extension="{local}"/>'
               f"</value></patientId>")

    def answer(criteria: str, service: str | None = APPOINTMENTS) -> tuple[str, int, etree._Element]:
        url = v3 + (f"?service={service}" if service else "")
        return asked(client, url, visit_query(criteria), "PRPA_IN900350UV02")

    def booked(root: etree._Element) -> dict[str, str]:
        return {a.find(f"{V3}id").get("extension"): a.find(f"{V3}statusCode").get("code")
                for a in root.iter(f"{V3}encounterAppointment")}

    # the visit query, as before: the visit, no appointment
    code, n, root = answer(patient, None)
    assert (code, n) == ("AA", 1) and root.find(f".//{V3}encounterEvent") is not None
    assert not booked(root)
    # the appointment query: both bookings with their status, the patient's id, the department
    code, n, root = answer(patient)
    assert (code, n) == ("AA", 3) and root.find(f".//{V3}encounterEvent") is None
    assert booked(root) == {first: "active", second: "cancelled", third: "completed"}
    appt = next(a for a in root.iter(f"{V3}encounterAppointment")
                if a.find(f"{V3}id").get("extension") == first)
    assert appt.get("moodCode") == "APT"
    assert appt.find(f"{V3}effectiveTime/{V3}low").get("value") == "20240320093000"
    assert appt.find(f"{V3}subject/{V3}patient/{V3}id/{V3}item").get("extension") == local
    # by the appointment's number, by time frame, by department
    number = (f'<careEventID><value><item root="2.16.156.10011.2.5.1.11" extension="{second}"/>'
              f"</value></careEventID>")
    assert booked(answer(number)[2]) == {second: "cancelled"}
    april = ('<encounterTimeframe><value><low value="20240401"/><high value="20240430"/>'
             "</value></encounterTimeframe>")
    assert booked(answer(patient + april)[2]) == {second: "cancelled", third: "completed"}
    elsewhere = ('<patientLocationID><value><item root="2.16.156.10011.1.26" extension="0999"/>'
                 "</value></patientLocationID>")
    assert answer(patient + elsewhere)[:2] == ("AA", 0)
    here = elsewhere.replace("0999", "0801")
    assert answer(patient + here)[1] == 2
    # an appointment names no institution: that criterion is refused, never ignored
    org = ('<responsibleOrganization><value><item root="2.16.156.10011.1.5" extension="X1"/>'
           "</value></responsibleOrganization>")
    code, n, root = answer(patient + org)
    assert code == "AE" and n == 0
    # the service named by the SOAP action of HIPMessageServer, as the platform buses call it
    call = (f'<HIPMessageServer xmlns="urn:hl7-org:v3"><action>{APPOINTMENTS}</action>'
            f"<message>{escape(visit_query(patient).decode())}</message></HIPMessageServer>")
    r = post(client, v3, _envelope(SOAP11, call), {**DECLARED, "content-type": "text/xml"})
    out = etree.fromstring(_soap_body(r, SOAP11).find(f"{V3}HIPMessageServerResult").text.encode())
    assert booked(out) == {first: "active", second: "cancelled", third: "completed"}
    # a service that is not this interaction's changes nothing: the visit query answers
    assert answer(patient, "号源排班信息查询服务")[2].find(f".//{V3}encounterEvent") is not None


def test_a_visit_names_the_appointment_it_fulfils(client, v3):
    """An outpatient registration that fulfils a booking (``inFulfillmentOf``) points its
    Encounter at the Appointment the booking wrote, whichever of the two arrives first."""
    for booking_first in (True, False):
        local, number, serial = f"P{tag()}", f"YY{tag()}", f"VS{tag()}"
        fulfils = (f'<inFulfillmentOf typeCode="FLFS"><encounterAppointment classCode="ENC" '
                   f'moodCode="APT"><id><item root="2.16.156.10011.2.5.1.11" extension="{number}"/>'
                   f"</id></encounterAppointment></inFulfillmentOf>")
        visit = visit_message("PRPA_IN400001UV", local, serial)
        visit = visit.replace(b"</encounterEvent>", fulfils.encode() + b"</encounterEvent>", 1)
        assert fulfils.encode() in visit
        messages = [_booking(local, number), visit]
        for m in messages if booking_first else messages[::-1]:
            accepted(client, v3, m, DECLARED)
        enc = read(client, f"Encounter/{encounter_id(INST, local, serial)}")
        (ref,) = enc["appointment"]
        assert ref["identifier"]["value"] == number
        appt = read(client, ref["reference"])
        assert appt["identifier"][0]["value"] == number and appt["status"] == "booked"


def test_card_visit_and_patient_queries_find_what_was_written_through_rest(client, v3):
    """The card and visit queries answer from the hub's data, not only from v3 messages: a
    Patient with a visit card and an Encounter another system wrote through REST are found by
    the card number, the visit number, the patient and the time frame."""
    local, card, serial = f"P{tag()}", f"CARD{tag()}", f"VS{tag()}"
    patient = {"resourceType": "Patient", "name": [{"text": "测试乙"}], "gender": "male",
               "identifier": [{"system": f"urn:oid:{OID}.1", "value": local},
                              {"system": f"urn:oid:{OID}.18", "value": card}]}
    r = client.post("/Patient", json=patient)
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    encounter = {"resourceType": "Encounter", "status": "finished",
                 "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                 "identifier": [{"system": f"urn:oid:{OID}.2", "value": serial}],
                 "subject": {"reference": f"Patient/{pid}",
                             "identifier": {"system": f"urn:oid:{OID}.1", "value": local}},
                 "period": {"start": "2024-05-06T09:00:00+08:00", "end": "2024-05-06T09:40:00+08:00"}}
    assert client.post("/Encounter", json=encounter).status_code == 201
    # the card query (就诊卡信息查询: the patient query by the card's number)
    r = post(client, v3, patient_query(card, "2.16.156.10011.2.5.1.6", "测试乙"), DECLARED)
    code, _, root = ack(r, "PRPA_IN201306UV02")
    assert code == "AA" and query_ack(root) == ("OK", 1)
    assert card in {i.get("extension") for i in root.iter(f"{V3}item")}

    def visits(criteria: str) -> tuple[int, etree._Element]:
        code, n, root = asked(client, v3, visit_query(criteria), "PRPA_IN900350UV02")
        assert code == "AA"
        return n, root

    number = (f'<careEventID><value><item root="2.16.156.10011.2.5.1.9" extension="{serial}"/>'
              f"</value></careEventID>")
    n, root = visits(number)
    assert n == 1 and root.find(f".//{V3}encounterEvent/{V3}statusCode").get("code") == "completed"
    by_patient = (f'<patientId><value><item root="2.16.156.10011.2.5.1.4" extension="{local}"/>'
                  f"</value></patientId>")
    may = ('<encounterTimeframe><value><low value="20240501"/><high value="20240531"/>'
           "</value></encounterTimeframe>")
    assert visits(by_patient)[0] == 1 and visits(by_patient + may)[0] == 1
    assert visits(by_patient + may.replace("202405", "202406"))[0] == 0


def test_the_source_slot_query_answers_sessions_and_their_slots(client, v3):
    """PRSC_IN100000UV (our reading: no sample at hand): sessions by number, doctor, clinic,
    kind and time, answered as the schedule acts they were registered as, with their slots (only
    those of the status asked for, if one is)."""
    n = tag()
    accepted(client, v3, variant(fixture("schedule-register.xml"), ("PB20240320-0801", f"PB{n}"),
                                 ("SR-MSG-0001", f"SR-{tag()}"), ("D001", f"D{n}")), DECLARED)

    def answer(criteria: str) -> tuple[str, int, etree._Element]:
        body = _wrap("PRSC_IN100000UV", f"<queryByParameter><queryId extension='Q{tag()}'/>"
                     f"{criteria}</queryByParameter>", f"SQ-{tag()}")
        return asked(client, v3, body, "PRSC_IN100001UV")

    def slots(root: etree._Element) -> dict[str, str]:
        return {s.find(f"{V3}id").get("extension"): s.find(f"{V3}statusCode").get("code")
                for s in root.iter(f"{V3}resourceSlot") if s.find(f"{V3}effectiveTime") is not None}

    by_number = f'<scheduleID><value extension="PB{n}"/></scheduleID>'
    code, count, root = answer(by_number)
    assert (code, count) == ("AA", 1)
    session = root.find(f".//{V3}schedule")
    assert session.find(f"{V3}id").get("extension") == f"PB{n}"
    assert session.find(f"{V3}code").get("code") == "2"
    assert session.find(f"{V3}effectiveTime/{V3}low").get("value") == "20240320080000"
    assert session.find(f".//{V3}identifiedPerson/{V3}id/{V3}item").get("extension") == f"D{n}"
    assert session.find(f".//{V3}identifiedPlace/{V3}id/{V3}item").get("extension") == "0801"
    assert slots(root) == {"1": "normal", "2": "busy"}
    # the free slots only
    assert slots(answer(by_number + '<slotStatus><value code="normal"/></slotStatus>')[2]) == \
        {"1": "normal"}
    # by the doctor, by the clinic with the kind of slot, by the day; another day: none
    doctor = (f'<providerID><value><item root="2.16.156.10011.1.4" extension="D{n}"/></value>'
              f"</providerID>")
    assert answer(doctor)[:2] == ("AA", 1)
    day = '<effectiveTime><value><low value="20240320"/><high value="20240320"/></value></effectiveTime>'
    assert answer(doctor + day)[1] == 1
    assert answer(doctor + day.replace("20240320", "20240321"))[1] == 0
    clinic = '<locationID><value><item extension="0801"/></value></locationID>'
    assert answer(clinic + doctor + '<scheduleCode><value code="2"/></scheduleCode>')[1] == 1
    # a session another system wrote through REST, at the same clinic that day: found too
    rest = {"resourceType": "Schedule", "identifier": [{"value": f"PBR{n}"}], "active": True,
            "actor": [{"identifier": {"value": f"C{n}"}, "display": "呼吸内科门诊"}],
            "planningHorizon": {"start": "2024-03-20T13:00:00+08:00",
                                "end": "2024-03-20T17:00:00+08:00"}}
    r = client.post("/Schedule", json=rest)
    assert r.status_code == 201, r.text
    slot = {"resourceType": "Slot", "identifier": [{"value": "9"}], "status": "free",
            "schedule": {"reference": f"Schedule/{r.json()['id']}"},
            "start": "2024-03-20T13:00:00+08:00", "end": "2024-03-20T13:20:00+08:00"}
    assert client.post("/Slot", json=slot).status_code == 201
    afternoon = clinic.replace("0801", f"C{n}") + day
    code, count, root = answer(afternoon)
    assert (code, count) == ("AA", 1) and slots(root) == {"9": "normal"}
    assert root.find(f".//{V3}schedule/{V3}id").get("extension") == f"PBR{n}"
    assert answer(doctor + '<scheduleCode><value code="1"/></scheduleCode>')[1] == 0
    # a slot status outside the table: AE naming it
    code, _, root = answer(by_number + '<slotStatus><value code="odd"/></slotStatus>')
    assert code == "AE"


def test_a_message_the_hub_fails_on_is_kept_for_replay(tmp_path, monkeypatch):
    """An error of the hub's own (a mapper bug) answers AE and keeps the message, as any refusal:
    a bare 500 made senders resend it for ever, and nothing of it was kept."""
    from hub.api import v3 as v3_api
    from hub.api.app import create_app
    from hub.core.config import Settings
    from tests.conftest import app_server

    settings = Settings(data_dir=tmp_path / "data")
    settings.database_url, settings.auth, settings.audit = None, False, False

    def broken(*args, **kwargs):
        raise RuntimeError("a mapper bug")

    monkeypatch.setattr(v3_api, "_register", broken)
    data = variant(fixture("outpatient-appointment.xml"), ("OA-MSG-0001", f"OA-{tag()}"))
    with app_server(create_app(settings)) as port:
        r = httpx.post(f"http://127.0.0.1:{port}/v3", content=data, headers=DECLARED, timeout=30, verify=httpclient.verify())
    code, text, _ = ack(r)
    assert r.status_code == 200 and code == "AE" and "kept for replay" in text, (r.status_code, text)
    assert kept_entry(settings.data_dir, text)["payload"] == data


def test_a_charset_named_only_by_the_content_type_is_read(client, v3):
    """A GB 18030 message without an XML declaration, its charset given in the Content-Type,
    was read as UTF-8 and refused."""
    local, rid = f"P{tag()}", resident()
    data = patient_message(local, rid, name="测试丁").decode("utf-8").split("?>", 1)[1]
    accepted(client, v3, data.encode("gb18030"),
             {"content-type": "application/xml; charset=GB18030"})
    (pid,) = ids_of(data.encode(), SourceInfo(), "Patient")
    assert read(client, f"Patient/{pid}")["name"][0]["text"] == "测试丁"
