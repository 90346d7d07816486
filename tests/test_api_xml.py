"""FHIR XML in and out (R4 formats.html#xml): bodies sent as application/fhir+xml, answers in XML
when asked (_format, Accept), the same content as JSON, and hostile XML refused."""

from __future__ import annotations

import re

import orjson
import pytest

from hub.synth import Region
from tests.api_helpers import FHIR_JSON, assert_outcome, create, patient, system_total, unique

XML = {"content-type": "application/fhir+xml", "accept": "application/fhir+xml"}
SAMPLE = [d for d in Region(seed=5, people=6).iter_resources()
          if d["resourceType"] in ("Patient", "Encounter", "Observation", "Condition",
                                   "MedicationRequest", "Procedure", "Organization")][:60]


def _content(d: dict) -> dict:
    return {k: v for k, v in d.items() if k not in ("meta", "id")}


def test_round_trip_through_xml_keeps_the_content(client):
    for d in SAMPLE:
        d = {k: v for k, v in d.items() if k != "id"}
        # references to records not here are kept as they are: the hub stores them regardless
        json_id = create(client, d).json()["id"]
        xml = client.get(f"/{d['resourceType']}/{json_id}", params={"_format": "xml"})
        assert xml.status_code == 200 and xml.headers["content-type"].startswith("application/fhir+xml")
        assert xml.content.lstrip().startswith(b"<?xml") and b'xmlns="http://hl7.org/fhir"' in xml.content
        r = client.post(f"/{d['resourceType']}", content=xml.content, headers=XML)
        assert r.status_code == 201, r.text
        assert r.headers["content-type"].startswith("application/fhir+xml")
        back = client.get(r.headers["location"].split("/_history")[0].split("/fhir")[1]).json()
        assert _content(back) == _content(d), d["resourceType"]


def test_searches_and_errors_answer_in_xml(client):
    rid = create(client, patient(family="XmlWang")).json()["id"]
    b = client.get("/Patient", params={"family": "XmlWang"}, headers={"accept": "application/fhir+xml"})
    assert b.status_code == 200 and b.content.count(b"<Patient>") == 1 and b"<Bundle" in b.content
    missing = client.get("/Patient/not-there", headers={"accept": "application/fhir+xml"})
    assert missing.status_code == 404 and b"<OperationOutcome" in missing.content
    assert client.get(f"/Patient/{rid}", headers={"accept": "application/fhir+json"}).json()["id"] == rid


def test_what_xml_cannot_hold_is_refused_on_the_way_in_and_replaced_on_the_way_out(client):
    """U+FFFE was stored, then every XML answer holding it was a 500 (or a dropped connection);
    an answer echoing it from the query string still is XML, with U+FFFD in its place."""
    for raw in ('{"resourceType":"Patient","name":[{"family":"a\ufffeb"}]}'.encode(),
                b'{"resourceType":"Patient","name":[{"family":"a\\uFFFFb"}]}'):
        r = client.post("/Patient", content=raw, headers={"content-type": "application/fhir+json"})
        assert r.status_code == 400 and "U+FFF" in r.text, r.text
    r = client.get("/Patient", params={"x\ufffey": "1", "_format": "xml", "_count": "1"})
    assert r.status_code == 200 and "x\ufffdy" in r.text, r.text[:300]


@pytest.mark.parametrize("accept,fmt,answered", [
    # a generic type asked for is answered in that type (http.html#mime-type)
    ("application/json", None, "application/json"),
    ("application/xml", None, "application/xml"),
    ("text/json", None, "text/json"),
    (None, "application/json", "application/json"),
    (None, "json", "application/fhir+json"),
    (None, "xml", "application/fhir+xml"),
    # quality values decide (RFC 9110 12.5.1), not which format is named at all
    ("application/fhir+xml;q=0.9, application/fhir+json;q=0.1", None, "application/fhir+xml"),
    ("application/fhir+json;q=0, application/fhir+xml", None, "application/fhir+xml"),
    ("application/fhir+xml, application/fhir+json", None, "application/fhir+json"),
    ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", None, "application/xml"),
    ("application/fhir+json; fhirVersion=4.0", None, "application/fhir+json"),
    # another FHIR version is not what this server writes (it was answered in R4)
    ("application/fhir+xml; fhirVersion=3.0", None, None),
    ("application/fhir+json; fhirVersion=5.0, application/fhir+xml", None,
     "application/fhir+xml"),
    ("*/*", None, "application/fhir+json"),
    ("text/csv", None, None),
    ("application/fhir+json;q=0", None, None),
])
def test_the_answer_is_in_the_type_asked_for(client, accept, fmt, answered):
    rid = create(client, patient(family="AcceptWang")).json()["id"]
    r = client.get(f"/Patient/{rid}", headers={"accept": accept} if accept else {},
                   params={"_format": fmt} if fmt else {})
    if answered is None:
        assert r.status_code == 406 and "OperationOutcome" in r.text
        return
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].split(";")[0] == answered
    if "json" in answered:
        assert r.json()["id"] == rid
    else:
        assert r.content.lstrip().startswith(b"<?xml") and b"<Patient" in r.content


@pytest.mark.parametrize("body,status", [
    (b"<Patient xmlns='http://hl7.org/fhir'><id value='x'", 400),  # not well-formed
    (b"<Patient><gender value='male'/></Patient>", 400),  # not the FHIR namespace
    (b"<Nope xmlns='http://hl7.org/fhir'/>", 400),  # no such resource type
    (b"<Patient xmlns='http://hl7.org/fhir'><gender value='male'/><bogus value='1'/></Patient>", 422),
    (b"<!DOCTYPE p [<!ENTITY e SYSTEM 'file:///etc/passwd'>]>"
     b"<Patient xmlns='http://hl7.org/fhir'><gender value='&e;'/></Patient>", 400),  # XXE
    (b"<!DOCTYPE p [<!ENTITY a 'aaaaaaaaaa'><!ENTITY b '&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;'>"
     b"<!ENTITY c '&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;'><!ENTITY d '&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;'>]>"
     b"<Patient xmlns='http://hl7.org/fhir'><gender value='&d;'/></Patient>", 400),  # entities
    (orjson.dumps(patient()), 400),  # JSON sent as XML
    # what FHIR XML does not have: each a 422 naming its element
    (b"<Patient xmlns='http://hl7.org/fhir'><active value='yes'/></Patient>", 422),
    (b"<Patient xmlns='http://hl7.org/fhir'><gender value='male'/><gender value='female'/>"
     b"</Patient>", 422),  # a single element twice
    (b"<Patient xmlns='http://hl7.org/fhir'><multipleBirthInteger value='1.5'/></Patient>", 422),
    (b"<Patient xmlns='http://hl7.org/fhir'><gender>male</gender></Patient>", 422),  # no value
    (b"<Patient xmlns='http://hl7.org/fhir' colour='red'><gender value='male'/></Patient>", 422),
    # an attribute a primitive's element has not (it was dropped without a word)
    (b"<Patient xmlns='http://hl7.org/fhir'><gender value='male' foo='bar'/></Patient>", 422),
    (b"<Patient xmlns='http://hl7.org/fhir'><contained><Nope/></contained></Patient>", 422),
    (b"<Patient xmlns='http://hl7.org/fhir'><contained><Patient/><Patient/></contained>"
     b"</Patient>", 422),
    # text beside the value (it was dropped: which birth date did the sender mean?), text
    # between elements, and elements out of the definition's order (all were taken)
    (b"<Patient xmlns='http://hl7.org/fhir'><birthDate value='1970-01-01'>1980-02-02"
     b"</birthDate></Patient>", 422),
    (b"<Patient xmlns='http://hl7.org/fhir'><gender value='male'/>female</Patient>", 422),
    (b"<Patient xmlns='http://hl7.org/fhir'><name><family value='Li'/>Wang</name></Patient>", 422),
    (b"<Patient xmlns='http://hl7.org/fhir'><birthDate value='1970-01-01'/>"
     b"<gender value='male'/></Patient>", 422),
    (b"<Patient xmlns='http://hl7.org/fhir'><name><family value='Li'/></name>"
     b"<gender value='male'/><name><family value='Wang'/></name></Patient>", 422),
])
def test_hostile_or_malformed_xml_is_refused_and_stores_nothing(client, body, status):
    before = system_total(client)
    r = client.post("/Patient", content=body, headers=XML)
    assert r.status_code == status, r.text[:300]
    assert b"<OperationOutcome" in r.content
    assert system_total(client) == before
    assert client.get("/metadata").status_code == 200


_ENTITY_BODY = ('<!DOCTYPE Patient [<!ENTITY x "EXPANDED-ENTITY">]><Patient xmlns="http://hl7.org/fhir">'
                '<name><family value="&x;"/></name></Patient>')


def _encoded(codec: str, declared: str | None) -> bytes:
    head = f'<?xml version="1.0" encoding="{declared}"?>' if declared else ""
    return (head + _ENTITY_BODY).encode(codec)


# the DOCTYPE in encodings where the bytes "<!doctype" never appear: each was a 201 storing the
# entity's text (the check looked for those bytes)
HIDDEN_DOCTYPE = {
    "utf-16-bom": _encoded("utf-16", "UTF-16"), "utf-16-undeclared": _encoded("utf-16", None),
    "utf-16le-no-bom": _encoded("utf-16-le", "UTF-16LE"), "utf-32": _encoded("utf-32", "UTF-32"),
    "ebcdic": _encoded("cp037", "IBM037"), "utf-7": _encoded("utf-7", "UTF-7"),
    "utf-7-markup": b'<?xml version="1.0" encoding="UTF-7"?>+ADw-!DOCTYPE Patient +AFs-+ADw-!ENTITY x '
                    b'+ACI-EXPANDED-ENTITY+ACI-+AD4-+AF0-+AD4-<Patient xmlns="http://hl7.org/fhir">'
                    b'<name><family value="&x;"/></name></Patient>',
}


@pytest.mark.parametrize("body", HIDDEN_DOCTYPE.values(), ids=HIDDEN_DOCTYPE.keys())
def test_a_doctype_in_another_encoding_is_refused_wherever_xml_is_read(client, body):
    """A resource, a transaction holding it, and the operations reading Parameters in XML:
    refused, nothing stored, the entity never expanded."""
    from hub.api.fhirxml import json_to_xml

    before = system_total(client)
    tx = json_to_xml(orjson.dumps({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}}]}))
    tx = tx[tx.index(b"<Bundle"):]  # its XML declaration left out: _reencode writes one
    tx_hostile = tx.replace(b"<Bundle", b"<!DOCTYPE Bundle [<!ENTITY x 'EXPANDED-ENTITY'>]><Bundle", 1)
    for path, content in (("/Patient", body), ("", _reencode(tx_hostile, body)),
                          ("/Patient/$validate", body), ("/Patient/$match", body)):
        r = client.post(path, content=content, headers=XML)
        assert r.status_code in (400, 415), (path, r.status_code, r.text[:300])
        assert b"<OperationOutcome" in r.content and b"EXPANDED-ENTITY" not in r.content
    assert system_total(client) == before
    assert client.get("/Patient", params={"family": "EXPANDED-ENTITY"}).json().get("total", 0) == 0


def _reencode(xml: bytes, like: bytes) -> bytes:
    """``xml`` (UTF-8, no declaration) in the encoding of the hostile sample ``like``."""
    for codec, label, bom in (("utf-32", "UTF-32", b"\xff\xfe\x00\x00"), ("utf-16", "UTF-16", b"\xff\xfe")):
        if like.startswith(bom):
            return (f'<?xml version="1.0" encoding="{label}"?>' + xml.decode()).encode(codec)
    for codec, label in (("utf-16-le", "UTF-16LE"), ("cp037", "IBM037"), ("utf-7", "UTF-7")):
        if f'encoding="{label}"'.encode(codec) in like:
            return (f'<?xml version="1.0" encoding="{label}"?>' + xml.decode()).encode(codec)
    return xml


@pytest.mark.parametrize("codec,label", [("utf-16", "UTF-16"), ("iso-8859-1", "ISO-8859-1"),
                                         ("gb18030", "GB18030"), ("utf-16", None)])
def test_a_fhir_xml_body_is_utf_8_as_json_is(client, codec, label):
    """FHIR bodies are UTF-8 (http.html#mime-type), XML as JSON: another encoding is a 415, as a
    charset= other than UTF-8 is; a UTF-8 body (with or without its BOM or declaration) is taken."""
    decl = f'<?xml version="1.0" encoding="{label}"?>' if label else ""
    text = '<Patient xmlns="http://hl7.org/fhir"><name><family value="Gómez"/></name></Patient>'
    r = client.post("/Patient", content=(decl + text).encode(codec), headers=XML)
    assert r.status_code == 415 and "UTF-8" in r.text, r.text[:300]
    for body in (text.encode(), b"\xef\xbb\xbf" + text.encode(),
                 ('<?xml version="1.0" encoding="utf-8"?>' + text).encode()):
        r = client.post("/Patient", content=body, headers=XML)
        assert r.status_code == 201, r.text[:300]


def test_a_transaction_in_xml(client):
    d = patient(family="XmlTx")
    tx = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": d, "request": {"method": "POST", "url": "Patient"}}]}
    from hub.api.fhirxml import json_to_xml

    r = client.post("", content=json_to_xml(orjson.dumps(tx)), headers=XML)
    assert r.status_code == 200, r.text
    assert b"<Bundle" in r.content and b"201" in r.content


# decimals whose trailing zeros, leading zeros or exponent carry their precision, date-times
# with a fraction of a second, a partial date, an instant in UTC
WRITTEN = (b'{"resourceType":"Observation","status":"final","code":{"text":"x"},'
           b'"effectiveDateTime":"2020-03-01T10:00:00.5-03:00","issued":"2020-03-01T10:00:00Z",'
           b'"valueQuantity":{"value":1.50,"unit":"mg"},"component":['
           b'{"code":{"text":"a"},"valueQuantity":{"value":100.000}},'
           b'{"code":{"text":"b"},"valueQuantity":{"value":0.0000010}},'
           b'{"code":{"text":"c"},"valueQuantity":{"value":1e2}},'
           b'{"code":{"text":"d"},"valueDateTime":"2020"}]}')
VALUES = [b"1.50", b"100.000", b"0.0000010", b"1e2", b"2020-03-01T10:00:00.5-03:00",
          b"2020-03-01T10:00:00Z", b"2020"]


def test_values_keep_their_written_form_in_xml_both_ways(client):
    """R4 keeps a decimal's precision as written: 1.50 mg is not 1.5 mg. Read and written through
    the models, XML turned 1.50 into 1.5, 0.0000010 into 1e-06 and .5 s into .500000 s."""
    oid = client.post("/Observation", content=WRITTEN, headers=FHIR_JSON).json()["id"]
    xml = client.get(f"/Observation/{oid}", params={"_format": "xml"}).content
    for v in VALUES:
        assert b'value="' + v + b'"' in xml, v
    r = client.post("/Observation", content=xml.replace(f'<id value="{oid}"/>'.encode(), b""),
                    headers=XML)
    assert r.status_code == 201, r.text
    back = client.get(r.headers["location"].split("/_history")[0].split("/fhir")[1]).content
    for v in VALUES:  # the JSON stored holds each as written
        assert re.search(rb'[:\[]"?' + re.escape(v) + rb'"?[,}\]]', back), (v, back)


def test_operations_take_their_parameters_in_xml(client):
    """$validate and $match read a Parameters body in XML as they read it in JSON (both said
    "the body is not valid JSON" though the Content-Type was accepted)."""
    def params(resource: dict) -> bytes:
        from hub.api.fhirxml import json_to_xml

        return json_to_xml(orjson.dumps({"resourceType": "Parameters", "parameter": [
            {"name": "resource", "resource": resource}]}))

    ok = client.post("/Patient/$validate", content=params(patient()), headers=XML)
    assert ok.status_code == 200 and b"<OperationOutcome" in ok.content, ok.text
    assert b'<severity value="error"/>' not in ok.content
    bad = client.post("/Patient/$validate", content=params(patient(gender="neither")), headers=XML)
    assert b'<severity value="error"/>' in bad.content, bad.text
    d = patient(family="XmlMatch")
    create(client, d)
    found = client.post("/Patient/$match", content=params(d), headers=XML)
    assert found.status_code == 200, found.text
    assert b"<Bundle" in found.content and b"XmlMatch" in found.content


def test_a_value_over_the_xml_parsers_limit_is_a_413_that_says_to_send_json(client):
    body = (b'<Binary xmlns="http://hl7.org/fhir"><contentType value="text/plain"/><data value="'
            + b"QUFB" * 3_000_000 + b'"/></Binary>')
    r = client.post("/Binary", content=body, headers=XML)
    assert r.status_code == 413 and b"over 10 MB" in r.content, r.text[:300]


def _obs(value: str) -> bytes:
    return ('<Observation xmlns="http://hl7.org/fhir"><status value="final"/><code><text '
            f'value="x"/></code>{value}</Observation>').encode()


@pytest.mark.parametrize("element,where", [
    # R4's lexical forms, which JSON's numbers are too: no plus sign, no leading zero
    ('<valueInteger value="+5"/>', "Observation.valueInteger"),
    ('<valueInteger value="007"/>', "Observation.valueInteger"),
    ('<valueInteger value="-007"/>', "Observation.valueInteger"),
    ('<valueInteger value="00"/>', "Observation.valueInteger"),
    # beyond 64 bits: a 500 (orjson writes no such integer)
    ('<valueInteger value="99999999999999999999999"/>', "Observation.valueInteger"),
    ('<valueInteger value="-99999999999999999999999"/>', "Observation.valueInteger"),
    ('<valueInteger value="2147483648"/>', "Observation.valueInteger"),
    # beyond a double: a 400 saying the body was not JSON
    ('<valueQuantity><value value="1e400"/></valueQuantity>', "Observation.valueQuantity.value"),
    ('<valueQuantity><value value="-1e400"/></valueQuantity>', "Observation.valueQuantity.value"),
])
def test_a_number_xml_cannot_give_as_fhir_is_a_422_naming_its_element(client, element, where):
    r = client.post("/Observation", content=_obs(element),
                    headers={**XML, "accept": "application/fhir+json"})
    outcome = assert_outcome(r, 422)
    assert outcome["issue"][0]["expression"] == [where], outcome


def test_numbers_in_their_r4_form_are_taken_from_xml(client):
    for element, key, value in (('<valueInteger value="0"/>', "valueInteger", 0),
                                ('<valueInteger value="-7"/>', "valueInteger", -7),
                                ('<valueInteger value="2147483647"/>', "valueInteger", 2147483647),
                                ('<valueQuantity><value value="1e-400"/></valueQuantity>',
                                 "valueQuantity", {"value": 0.0})):
        r = client.post("/Observation", content=_obs(element),
                        headers={**XML, "accept": "application/fhir+json"})
        assert r.status_code == 201 and r.json()[key] == value, r.text


DIV_XML = [
    # a prefixed XHTML div in a prefixed FHIR resource: stored with its prefix and the FHIR
    # namespace's declaration on it
    ('<f:Patient xmlns:f="http://hl7.org/fhir"><f:text><f:status value="generated"/>'
     '<h:div xmlns:h="http://www.w3.org/1999/xhtml"><h:p>x</h:p></h:div></f:text>'
     '<f:active value="true"/></f:Patient>',
     '<div xmlns="http://www.w3.org/1999/xhtml"><p>x</p></div>'),
    ('<Patient xmlns="http://hl7.org/fhir" xmlns:x="urn:other"><text><status value="generated"/>'
     '<div xmlns="http://www.w3.org/1999/xhtml"><p>a &quot;b&quot;</p></div></text>'
     '<active value="true"/></Patient>',
     '<div xmlns="http://www.w3.org/1999/xhtml"><p>a "b"</p></div>'),
]


@pytest.mark.parametrize("xml,div", DIV_XML)
def test_a_narrative_from_xml_is_stored_as_xhtml_of_its_own(client, xml, div):
    r = client.post("/Patient", content=xml.encode(),
                    headers={**XML, "accept": "application/fhir+json"})
    assert r.status_code == 201, r.text
    assert r.json()["text"]["div"] == div


NARRATIVES = [
    '<div xmlns="http://www.w3.org/1999/xhtml"><p>say &quot;hi&quot; it&apos;s</p></div>',
    '<div xmlns="http://www.w3.org/1999/xhtml"><p title="a\n\nb">x<br />y</p></div>',
    '<div xmlns="http://www.w3.org/1999/xhtml">&#169; 2024 <!-- a note --><b>x</b></div>',
    "<div xmlns='http://www.w3.org/1999/xhtml' xmlns:x='urn:unused'><img src='a.png' alt=''/>"
    "</div>",
]


@pytest.mark.parametrize("div", NARRATIVES)
def test_a_resource_read_as_xml_and_sent_back_unchanged_makes_no_new_version(client, div):
    """The narrative came back from XML spelled otherwise (``"`` for ``&quot;``), so the same
    resource sent back was a new version."""
    rid = f"xv-{unique()[:12]}"
    d = {"resourceType": "Patient", "id": rid, "text": {"status": "generated", "div": div},
         "active": True}
    assert client.put(f"/Patient/{rid}", json=d, headers=FHIR_JSON).status_code == 201
    xml = client.get(f"/Patient/{rid}", headers={"accept": "application/fhir+xml"}).content
    for _ in range(2):
        r = client.put(f"/Patient/{rid}", content=xml, headers=XML)
        assert r.status_code == 200 and r.headers["etag"] == 'W/"1"', r.text
    # and the stored JSON sent back as it is read
    back = client.get(f"/Patient/{rid}").json()
    r = client.put(f"/Patient/{rid}", json=back, headers=FHIR_JSON)
    assert r.status_code == 200 and r.headers["etag"] == 'W/"1"'
    # a narrative that does differ is a new version
    d["text"]["div"] = '<div xmlns="http://www.w3.org/1999/xhtml"><p>other</p></div>'
    assert client.put(f"/Patient/{rid}", json=d, headers=FHIR_JSON).headers["etag"] == 'W/"2"'
