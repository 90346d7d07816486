"""Bad input: the right status, an OperationOutcome saying what and where, and nothing stored."""

from __future__ import annotations

import http.client
import json
import time
from contextlib import contextmanager

import httpx
import orjson
import pytest
from fhir.resources.R4B.patient import Patient
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from hub.core import httpclient
from tests.api_helpers import (
    FHIR_JSON,
    assert_outcome,
    create,
    expressions,
    patient,
    put,
    system_total,
    unique,
)


@contextmanager
def stores_nothing(client: httpx.Client):
    before = system_total(client)
    yield
    assert system_total(client) == before, "a refused request changed the store"


def post_raw(client, path, content: bytes, ctype="application/fhir+json", **headers):
    return client.post(path, content=content, headers={"content-type": ctype, **headers})


# -- unreadable bodies -------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/Patient", ""])
@pytest.mark.parametrize("body", [b'{"resourceType": "Patient",', b"", b"   ", b"\xff\xfe{}",
                                  b"{'resourceType': 'Patient'}", b'{"a": 1} trailing'])
def test_invalid_json_is_400(client, path, body):
    with stores_nothing(client):
        assert_outcome(post_raw(client, path, body), 400)


@pytest.mark.parametrize("path", ["/Patient", ""])
@pytest.mark.parametrize("body", [b"[]", b'[{"resourceType": "Patient"}]', b'"Patient"', b"42",
                                  b"null", b"true"])
def test_json_that_is_not_an_object_is_400(client, path, body):
    with stores_nothing(client):
        assert_outcome(post_raw(client, path, body), 400)


def test_missing_or_wrong_resource_type(client):
    with stores_nothing(client):
        body = assert_outcome(client.post("/Patient", json={"name": [{"family": "Wu"}]},
                                          headers=FHIR_JSON), 400)
        assert "resourceType" in expressions(body)
        body = assert_outcome(client.post("/Patient", json={"resourceType": "Observation"},
                                          headers=FHIR_JSON), 400)
        assert "resourceType" in expressions(body)
        d = patient(rid=unique())
        assert_outcome(client.put(f"/Observation/{d['id']}", json=d, headers=FHIR_JSON), 400)
        # a transaction must be a Bundle
        assert_outcome(client.post("", json=patient(), headers=FHIR_JSON), 400)
        assert_outcome(client.post("/Patient", json={"resourceType": "Nonsense"},
                                   headers=FHIR_JSON), 400)


def test_unknown_type_is_404(client):
    with stores_nothing(client):
        assert_outcome(client.post("/Patientx", json={"resourceType": "Patientx"},
                                   headers=FHIR_JSON), 404)
        assert_outcome(client.get("/Patientx/1"), 404)
        assert_outcome(client.get("/Patientx"), 404)
        assert_outcome(client.put("/Patientx/1", json={"resourceType": "Patientx", "id": "1"},
                                  headers=FHIR_JSON), 404)
        assert_outcome(client.delete("/Patientx/1"), 404)


# -- invalid resources -------------------------------------------------------------------------


@pytest.mark.parametrize("change, where", [
    ({"name": [{"given": "Xiaoming"}]}, "Patient.name[0].given"),
    ({"name": [{"given": [5]}]}, "Patient.name[0].given[0]"),
    ({"birthDate": "1990-13-45"}, "Patient.birthDate"),
    ({"telecom": [{"system": "phone", "value": ""}]}, "Patient.telecom[0].value"),
    ({"favouriteColour": "blue"}, "Patient.favouriteColour"),
    ({"name": []}, "Patient.name"),
    ({"gender": None}, "Patient.gender"),
    ({"name": [{}]}, "Patient.name[0]"),
    ({"name": [{"given": [None]}]}, "Patient.name[0].given[0]"),
    # a narrative is XHTML FHIR can carry: it was stored as any string, then broke the XML
    # form, and a script in it reached every viewer
    ({"text": {"status": "generated", "div": "not xml"}}, "Patient.text.div"),
    ({"text": {"status": "generated", "div": "<div>no namespace</div>"}}, "Patient.text.div"),
    ({"text": {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">'
               '<script>alert(1)</script>x</div>'}}, "Patient.text.div"),
    ({"text": {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">'
               '<a href="javascript:alert(1)">x</a></div>'}}, "Patient.text.div"),
    # a browser drops tab, CR and LF anywhere in a URL before it reads the scheme
    *[({"text": {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml" '
                 f'xmlns:xlink="http://www.w3.org/1999/xlink">{html}</div>'}}, "Patient.text.div")
      for html in ('<a href="java&#x09;script:alert(1)">x</a>',
                   '<a href="java&#x0A;script:alert(document.domain)">x</a>',
                   '<a href="jav&#13;ascript:alert(1)">x</a>', '<a href="java\tscript:alert(1)">x</a>',
                   '<a href=" &#x0D; javascript:alert(1)">x</a>',
                   '<a href="VB&#x09;Script:msgbox(1)">x</a>',
                   '<a href="data:image/svg+xml,&lt;svg onload=alert(1)&gt;">x</a>',
                   '<a href="data: text/html;base64,PHNjcmlwdD4=">x</a>',
                   '<a xlink:href="java&#x0A;script:alert(1)">x</a>',
                   '<img src="java&#x09;script:alert(1)" alt="x"/>',
                   '<table background="javascript:alert(1)"><tr><td>x</td></tr></table>',
                   '<p style="background:url(&quot;java\\73 cript:alert(1)&quot;)">x</p>')],
    # a DOCTYPE: XHTML narratives declare no entities (one in the text broke every later read)
    *[({"text": {"status": "generated", "div": f'{doctype}<div xmlns="http://www.w3.org/1999/xhtml">'
                 f'{text}</div>'}}, "Patient.text.div")
      for doctype, text in (('<!DOCTYPE div [<!ENTITY x "EXPANDED">]>', "a &x; b"),
                            ('<!DOCTYPE div [<!ENTITY x "EXPANDED">]>', '<p title="&x;">x</p>'),
                            ("<!DOCTYPE div>", "x"))],
    ({"contained": [{"resourceType": "Basic", "id": "b", "code": {"text": "x"}, "text": {
        "status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml"> </div>'}}]},
     "Patient.contained[0].text.div"),
    # a repeating primitive and its _ array line up item by item (R4 JSON)
    ({"name": [{"given": ["A"], "_given": [None, {"id": "x"}]}]}, "Patient.name[0]._given"),
    ({"name": [{"given": ["A", None], "_given": [{"id": "x"}, None]}]},
     "Patient.name[0].given[1]"),
    ({"identifier": [{"system": "urn:oid:1.2", "value": "x"}, {}]}, "Patient.identifier[1]"),
    ({"active": "maybe"}, "Patient.active"),
    ({"multipleBirthInteger": 1.5}, "Patient.multipleBirthInteger"),
])
def test_invalid_resource_is_422_with_expression(client, change, where):
    d = patient() | change
    with stores_nothing(client):
        body = assert_outcome(client.post("/Patient", json=d, headers=FHIR_JSON), 422)
        assert where in expressions(body), body
        d["id"] = unique()
        body = assert_outcome(put(client, d), 422)
        assert where in expressions(body), body
        body = assert_outcome(client.put("/Patient", params={"identifier": f"urn:oid:1|{unique()}"},
                                         json=d, headers=FHIR_JSON), 422)
        assert where in expressions(body)


def test_a_contained_resource_holding_contained_is_refused_naming_dom_2(client):
    """R4 dom-2: a contained resource contains none itself (it was stored); a write, a
    transaction entry and $validate say so, naming the invariant."""
    inner = {"resourceType": "Basic", "id": "c", "code": {"text": "y"}}
    d = patient() | {"contained": [{"resourceType": "Basic", "id": "b", "code": {"text": "x"},
                                    "contained": [inner]}]}
    with stores_nothing(client):
        body = assert_outcome(client.post("/Patient", json=d, headers=FHIR_JSON), 422)
        assert "Patient.contained[0].contained" in expressions(body) and "dom-2" in json.dumps(body), body
        r = client.post("/", json={"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": d, "request": {"method": "POST", "url": "Patient"}}]}, headers=FHIR_JSON)
        assert r.status_code == 422 and "dom-2" in r.text, r.text
    r = client.post("/Patient/$validate", json=d, headers=FHIR_JSON)
    assert "dom-2" in r.text and '"error"' in r.text, r.text
    # one level of contained is as before
    ok = patient() | {"contained": [inner]}
    assert client.post("/Patient", json=ok, headers=FHIR_JSON).status_code == 201


def test_a_value_absent_beside_its_extensions_is_taken(client):
    """R4 JSON pads a repeating primitive with null where only extensions are known
    (given [null] with _given [{extension: data-absent-reason}]): it was refused as "null
    inside an array", in JSON and in the XML that says the same."""
    absent = {"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason",
              "valueCode": "unknown"}
    d = patient() | {"name": [{"family": "王", "given": ["A", None, "D"],
                               "_given": [None, {"extension": [absent]}, None]}]}
    r = client.post("/Patient", json=d, headers=FHIR_JSON)
    assert r.status_code == 201, r.text
    stored = client.get(f"/Patient/{r.json()['id']}").json()["name"][0]
    assert stored["given"] == ["A", None, "D"] and stored["_given"][1] == {"extension": [absent]}
    xml = client.get(f"/Patient/{r.json()['id']}", params={"_format": "xml"}).text
    back = client.post("/Patient", content=xml.encode(),
                       headers={"content-type": "application/fhir+xml"})
    assert back.status_code == 201, back.text


def test_many_problems_are_all_reported(client):
    d = patient(birthDate="nope", active="maybe", gender=None)
    body = assert_outcome(client.post("/Patient", json=d, headers=FHIR_JSON), 422)
    assert {"Patient.birthDate", "Patient.active", "Patient.gender"} <= set(expressions(body))


@pytest.mark.parametrize("change, where", [
    ({"active": "yes"}, "Patient.active"),
    ({"active": "true"}, "Patient.active"),
    ({"multipleBirthInteger": "5"}, "Patient.multipleBirthInteger"),
    ({"gender": "robot"}, "Patient.gender"),
    ({"birthDate": 19800102}, "Patient.birthDate"),
    ({"name": {"family": "Wang"}}, "Patient.name"),
    ({"contained": [{"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                     "valueQuantity": {"value": "5.4"}}]}, "Patient.contained[0].valueQuantity.value"),
    # in a repeating element: a number among strings, a code outside its required binding
    ({"name": [{"family": "Wang", "given": ["Wei", 5]}]}, "Patient.name[0].given[1]"),
    ({"contained": [{"resourceType": "AllergyIntolerance", "patient": {"reference": "#"},
                     "category": ["food", "robots"]}]}, "Patient.contained[0].category[1]"),
])
def test_wrong_json_primitive_types_and_codes_are_refused(client, change, where):
    """The models would coerce these; the hub stores JSON as sent, so it must refuse them."""
    before = system_total(client)
    body = assert_outcome(client.post("/Patient", json=patient() | change, headers=FHIR_JSON), 422)
    assert where in expressions(body), body
    assert system_total(client) == before


# -- update rules ------------------------------------------------------------------------------


def test_update_id_rules(client):
    rid = unique()
    with stores_nothing(client):
        body = assert_outcome(client.put(f"/Patient/{rid}", json=patient(rid=unique()),
                                         headers=FHIR_JSON), 400)
        assert "Patient.id" in expressions(body)
        assert_outcome(client.put(f"/Patient/{rid}", json=patient(), headers=FHIR_JSON), 400)
        assert_outcome(client.put("/Patient", json=patient(), headers=FHIR_JSON), 400)
    assert_outcome(client.get(f"/Patient/{rid}"), 404)


@pytest.mark.parametrize("bad_id", ["bad$id", "with space", "x" * 200, "a_b", "ü"])
def test_invalid_id_is_400(client, bad_id):
    with stores_nothing(client):
        assert_outcome(client.put(f"/Patient/{bad_id}", json=patient(rid=bad_id),
                                  headers=FHIR_JSON), 400)
        assert_outcome(client.get(f"/Patient/{bad_id}"), 400)
        assert_outcome(client.delete(f"/Patient/{bad_id}"), 400)
        assert_outcome(client.get(f"/Patient/{bad_id}/_history"), 400)


@pytest.mark.parametrize("value", ["abc", 'W/"x"', 'W/"1', "1.5", 'W/""'])
def test_malformed_if_match_is_400(client, value):
    d = patient(rid=unique())
    put(client, d)
    d["gender"] = "male"
    with stores_nothing(client):
        assert_outcome(put(client, d, **{"if-match": value}), 400)
        assert_outcome(client.delete(f"/Patient/{d['id']}", headers={"if-match": value}), 400)
        r = client.post("", json={"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": d, "request": {"method": "PUT", "url": f"Patient/{d['id']}",
                                        "ifMatch": value}}]}, headers=FHIR_JSON)
        body = assert_outcome(r, 400)
        assert "Bundle.entry[0].request.ifMatch" in str(body)
    assert_outcome(client.get(f"/Patient/{d['id']}", headers={"if-none-match": "abc"}), 400)


# -- HTTP level --------------------------------------------------------------------------------


def test_body_with_too_large_content_length_is_413(client, live):
    """Refused on the header alone: the client has sent only the first bytes of the body."""
    limit = live.settings.max_body
    with stores_nothing(client):
        for path, declared in (("/fhir/Patient", limit + 1), ("/fhir", limit * 4)):
            conn = http.client.HTTPConnection("127.0.0.1", live.port, timeout=10)
            try:
                conn.putrequest("POST", path)
                conn.putheader("content-type", "application/fhir+json")
                conn.putheader("content-length", str(declared))
                conn.endheaders(b'{"resourceType": "Patient", "text": "')
                r = conn.getresponse()
                assert r.status == 413
                assert r.getheader("content-type").startswith("application/fhir+json")
                assert orjson.loads(r.read())["resourceType"] == "OperationOutcome"
            finally:
                conn.close()


def test_chunked_body_over_the_limit_is_413(client, live):
    limit = live.settings.max_body
    chunk = b"x" * (1 << 20)

    def body():  # no Content-Length: httpx sends it chunked
        yield b'{"resourceType": "Patient", "text": "'
        for _ in range(limit // len(chunk) + 2):
            yield chunk
        yield b'"}'

    with stores_nothing(client):
        r = client.post("/Patient", content=body(), headers=FHIR_JSON)
        assert_outcome(r, 413)
        assert "content-length" not in r.request.headers
    # and the server keeps serving
    assert client.get("/metadata").status_code == 200


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded", None])
def test_wrong_content_type_is_415(client, ctype):
    headers = {"content-type": ctype} if ctype else {}
    raw = orjson.dumps(patient())
    d = patient(rid=unique())
    with stores_nothing(client):
        assert_outcome(client.post("/Patient", content=raw, headers=headers), 415)
        assert_outcome(client.put(f"/Patient/{d['id']}", content=orjson.dumps(d), headers=headers),
                       415)
        assert_outcome(client.post("", content=raw, headers=headers), 415)


def test_json_content_types_are_accepted(client):
    for ctype in ("application/fhir+json", "application/json",
                  "application/fhir+json; charset=utf-8", "application/json+fhir"):
        r = client.post("/Patient", content=orjson.dumps(patient()),
                        headers={"content-type": ctype})
        assert r.status_code == 201, (ctype, r.text)


def test_methods_a_url_lacks_are_405(client):
    rid = create(client, patient()).json()["id"]
    with stores_nothing(client):
        # an empty patch changes nothing: no new version
        assert client.patch(f"/Patient/{rid}", content=b"[]",
                            headers={"content-type": "application/json-patch+json"}).status_code == 200
        # a conditional patch without criteria, as a conditional update without them
        assert_outcome(client.request("PATCH", "/Patient", content=b"[]", headers={
            "content-type": "application/json-patch+json"}), 400)
        assert_outcome(client.delete("/Patient"), 405)  # deleting a whole type


def allow(r: httpx.Response) -> set[str]:
    return {m.strip() for m in r.headers.get("allow", "").split(",") if m.strip()}


@pytest.mark.parametrize("path", ["/metadata", "/_history", "/.well-known/smart-configuration"])
@pytest.mark.parametrize("method", ["PUT", "POST", "DELETE", "PATCH"])
def test_a_fixed_path_is_405_to_other_methods_not_a_resource_type(client, path, method):
    """/metadata is no resource type "metadata" of /{type}: another method is a 405 naming
    the ones it takes (it was a 404 Unknown resource type, or a transaction)."""
    with stores_nothing(client):
        r = client.request(method, path, content=orjson.dumps(patient()), headers=FHIR_JSON)
        assert_outcome(r, 405)
        assert allow(r) == {"GET", "HEAD"}, r.headers


def test_a_405_allows_what_every_route_of_the_path_takes(client):
    """Allow is the union over the routes of the path, not the first route's methods."""
    r = client.request("OPTIONS", "/Patient")
    assert_outcome(r, 405)
    assert allow(r) == {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"}, r.headers
    r = client.put(f"/Patient/{unique()}/$everything", json={})
    assert_outcome(r, 405)
    assert allow(r) == {"GET", "HEAD", "POST"}, r.headers
    # a literal segment is its route's: _history is no id of a read, update or delete
    for method in ("PUT", "DELETE", "POST"):
        r = client.request(method, "/Patient/_history", content=b"{}", headers=FHIR_JSON)
        assert_outcome(r, 405)
        assert allow(r) == {"GET", "HEAD"}, (method, r.headers)
    # a handler's own 405 names what the other routes of its path take
    r = client.delete("/Patient")
    assert allow(r) == {"GET", "HEAD", "POST", "PUT", "PATCH"}, r.headers
    # a Person is read only: its writes' handler, which only refuses, allows nothing
    r = client.put(f"/Person/{unique()}", json={"resourceType": "Person"}, headers=FHIR_JSON)
    assert_outcome(r, 405)
    assert allow(r) == {"GET", "HEAD"}, r.headers
    r = client.get("/Person/_history")
    assert_outcome(r, 405)
    assert allow(r) == set(), r.headers


def test_unknown_urls_are_404(client, live):
    for url in (f"{live.base}/Patient/1/_history/1/more", f"{live.base}/Patient/1/nothing",
                live.base.rsplit("/fhir", 1)[0] + "/nothing", f"{live.base}/$nothing/x/y/z"):
        assert_outcome(client.get(url), 404)


# -- what the JSON text may not carry: control characters, lone surrogates, duplicate keys ------


@pytest.mark.parametrize("escape", ["\\u0000", "\\u0001", "\\b", "\\f", "\\u001F", "\\u000b"])
def test_control_characters_in_strings_are_400_naming_the_element(client, escape):
    body = ('{"resourceType":"Patient","name":[{"family":"Wang","given":["Xiao%sming"]}]}'
            % escape).encode()
    with stores_nothing(client):
        for r in (post_raw(client, "/Patient", body),
                  client.put("/Patient", params={"identifier": f"urn:oid:1.2|{unique()}"},
                             content=body, headers=FHIR_JSON)):
            outcome = assert_outcome(r, 400)
            assert expressions(outcome) == ["Patient.name[0].given[0]"], outcome


def test_tab_cr_lf_and_escaped_text_that_looks_like_a_control_character_are_kept(client):
    body = (b'{"resourceType":"Patient","name":[{"family":"C:\\\\u0000 is fine",'
            b'"text":"a\\tb\\r\\nc"}]}')
    r = post_raw(client, "/Patient", body)
    assert r.status_code == 201, r.text
    assert r.json()["name"][0] == {"family": "C:\\u0000 is fine", "text": "a\tb\r\nc"}


def test_control_characters_in_a_transaction_refuse_it_and_a_batch_only_the_entry(client):
    good, bad = patient(), patient(family="W\x00ng")
    entries = [{"resource": good, "request": {"method": "POST", "url": "Patient"}},
               {"resource": bad, "request": {"method": "POST", "url": "Patient"}}]
    with stores_nothing(client):
        r = client.post("", content=orjson.dumps(
            {"resourceType": "Bundle", "type": "transaction", "entry": entries}), headers=FHIR_JSON)
        assert expressions(assert_outcome(r, 400)) == ["Bundle.entry[1].resource.name[0].family"]
    r = client.post("", content=orjson.dumps(
        {"resourceType": "Bundle", "type": "batch", "entry": entries}), headers=FHIR_JSON)
    assert r.status_code == 200, r.text
    first, second = r.json()["entry"]
    assert first["response"]["status"].startswith("201")
    assert second["response"]["status"].startswith("400")
    assert second["response"]["outcome"]["issue"][0]["expression"] == [
        "Bundle.entry[1].resource.name[0].family"]


def test_a_transaction_is_checked_for_control_characters_before_any_entry_is_validated(client):
    """Entry 0 would fail validation (422); the NUL of entry 1 is found first, in the text."""
    entries = [{"resource": patient(gender="neither"),
                "request": {"method": "POST", "url": "Patient"}},
               {"resource": patient(family="W\x00ng"),
                "request": {"method": "POST", "url": "Patient"}}]
    r = client.post("", content=orjson.dumps(
        {"resourceType": "Bundle", "type": "transaction", "entry": entries}), headers=FHIR_JSON)
    assert expressions(assert_outcome(r, 400)) == ["Bundle.entry[1].resource.name[0].family"]


@pytest.mark.parametrize("char", ["%00", "%1F"])
def test_control_characters_in_conditional_criteria_are_400_on_either_engine(client, char):
    """Criteria are parsed from If-None-Exist, an entry's url or ifNoneExist and a conditional
    reference, none of which is the query string: PostgreSQL answered a NUL with a 500."""
    criteria = f"identifier=urn:oid:1.2|a{char}b"
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "pulse"},
           "subject": {"reference": f"Patient?{criteria}"}}

    def transaction(entry: dict) -> httpx.Response:
        return client.post("", content=orjson.dumps(
            {"resourceType": "Bundle", "type": "transaction", "entry": [entry]}), headers=FHIR_JSON)

    with stores_nothing(client):
        refused = [
            (client.post("/Patient", json=patient(),
                         headers={**FHIR_JSON, "if-none-exist": criteria}), None),
            (transaction({"resource": patient(), "request": {
                "method": "POST", "url": "Patient", "ifNoneExist": criteria}}),
             "Bundle.entry[0].request.ifNoneExist"),
            (transaction({"resource": patient(), "request": {
                "method": "PUT", "url": f"Patient?{criteria}"}}), "Bundle.entry[0].request.url"),
            (transaction({"request": {"method": "DELETE", "url": f"Patient?{criteria}"}}),
             "Bundle.entry[0].request.url"),
            (transaction({"resource": obs, "request": {"method": "POST", "url": "Observation"}}),
             "Bundle.entry[0]"),
            (client.post("/Observation", json=obs, headers=FHIR_JSON), None),
        ]
        for r, where in refused:
            outcome = assert_outcome(r, 400)
            assert "control character" in outcome["issue"][0]["diagnostics"], outcome
            if where:
                assert expressions(outcome) == [where], outcome
    # a batch refuses the entry, and stores the others
    good = [patient(rid=f"cc-{unique()}") for _ in range(2)]
    r = client.post("", content=orjson.dumps({"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": good[0], "request": {"method": "PUT", "url": f"Patient/{good[0]['id']}"}},
        {"resource": patient(), "request": {"method": "POST", "url": "Patient",
                                            "ifNoneExist": criteria}},
        {"resource": good[1], "request": {"method": "PUT", "url": f"Patient/{good[1]['id']}"}}]}),
        headers=FHIR_JSON)
    assert r.status_code == 200, r.text
    assert [e["response"]["status"][:3] for e in r.json()["entry"]] == ["201", "400", "201"]
    for d in good:
        assert client.get(f"/Patient/{d['id']}").status_code == 200


def test_control_characters_in_the_bundle_itself_are_400(client):
    b = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"fullUrl": "urn:uuid:\x01", "resource": patient(),
         "request": {"method": "POST", "url": "Patient"}}]}
    with stores_nothing(client):
        r = client.post("", content=orjson.dumps(b), headers=FHIR_JSON)
        assert expressions(assert_outcome(r, 400)) == ["Bundle.entry[0].fullUrl"]


def test_a_bundle_entry_orjson_cannot_write_is_a_400_not_a_crash(client):
    """21 digits: parsed exactly (as a Python int), beyond what orjson writes (64 bits)."""
    body = (b'{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"POST",'
            b'"url":"Patient"},"resource":{"resourceType":"Patient",'
            b'"multipleBirthInteger":123456789012345678901}}]}')
    with stores_nothing(client):
        r = post_raw(client, "", body)
        assert r.status_code == 200, r.text
        (entry,) = r.json()["entry"]
        assert entry["response"]["status"].startswith("400"), entry
        assert entry["response"]["outcome"]["issue"][0]["expression"] == [
            "Bundle.entry[0].resource"]


def test_duplicate_keys_are_400_naming_the_key(client):
    with stores_nothing(client):
        r = post_raw(client, "/Patient",
                     b'{"resourceType":"Patient","gender":"male","gender":"female"}')
        outcome = assert_outcome(r, 400)
        assert expressions(outcome) == ["Patient.gender"]
        assert outcome["issue"][0]["code"] == "structure"
        r = client.put("/Patient", params={"identifier": f"urn:oid:1.2|{unique()}"},
                       content=b'{"resourceType":"Patient","name":[{"family":"A","family":"B"}]}',
                       headers=FHIR_JSON)
        assert expressions(assert_outcome(r, 400)) == ["Patient.name[0].family"]
        for btype in ("transaction", "batch"):
            body = orjson.dumps({"resourceType": "Bundle", "type": btype, "entry": [
                {"resource": patient(), "request": {"method": "POST", "url": "Patient"}}]})
            r = post_raw(client, "", body.replace(b'"method":"POST"',
                                                  b'"method":"DELETE","method":"POST"'))
            assert expressions(assert_outcome(r, 400)) == ["Bundle.entry[0].request.method"]


_FORBIDDEN = [chr(c) for c in range(0x20) if chr(c) not in "\t\n\r"]


@hsettings(max_examples=30, deadline=None,
           suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(before=st.text(max_size=8), bad=st.sampled_from(_FORBIDDEN), after=st.text(max_size=8),
       ascii_=st.booleans())
def test_random_strings_with_a_control_character_are_refused(client, before, bad, after, ascii_):
    body = json.dumps({"resourceType": "Patient",
                       "name": [{"family": "Wang", "text": before + bad + after}]},
                      ensure_ascii=ascii_).encode()
    r = post_raw(client, "/Patient", body)
    assert r.status_code == 400, (body, r.text[:300])
    assert expressions(r.json()) == ["Patient.name[0].text"], r.text


@hsettings(max_examples=25, deadline=None,
           suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(scheme=st.sampled_from(["javascript:", "vbscript:", "data:text/html,"]),
       blanks=st.lists(st.tuples(st.integers(0, 16), st.sampled_from(
           ["\t", "\n", "\r", "&#x09;", "&#x0A;", "&#13;", "&#9;", "&#10;"])), min_size=1,
           max_size=3),
       lead=st.sampled_from(["", " ", "&#x20;", "&#x09;", "\n"]),
       upper=st.booleans(), attribute=st.sampled_from(["href", "src", "xlink:href"]))
def test_a_script_url_with_blanks_a_browser_drops_is_refused(client, scheme, blanks, lead, upper,
                                                              attribute):
    """A browser strips tab, CR and LF anywhere in a URL, and spaces and controls before it,
    so ``java&#x09;script:`` runs as ``javascript:`` does: wherever they fall in the scheme
    the narrative is refused, and nothing is stored."""
    url = scheme.upper() if upper else scheme
    for at, blank in sorted(blanks, reverse=True):
        at = min(at, len(url) - 1)  # within the scheme, up to its colon
        url = url[:at] + blank + url[at:]
    element = "img" if attribute == "src" else "a"
    div = (f'<div xmlns="http://www.w3.org/1999/xhtml" xmlns:xlink="http://www.w3.org/1999/xlink">'
           f'<{element} {attribute}="{lead}{url}alert(1)" title="x">x</{element}></div>')
    with stores_nothing(client):
        r = client.post("/Patient", json=patient(text={"status": "generated", "div": div}),
                        headers=FHIR_JSON)
        assert r.status_code == 422, (div, r.text[:300])
        assert "Patient.text.div" in expressions(r.json())


def test_links_that_run_nothing_are_kept(client):
    """What looks like a script scheme but is none is stored: a path, a query, an SVG image."""
    for html in ('<a href="https://example.org/javascript:help">x</a>',
                 '<a href="notes/java script.html">x</a>', '<a href="#javascript">x</a>',
                 '<img src="data:image/svg+xml;base64,PHN2Zz48L3N2Zz4=" alt="chart"/>',
                 '<p style="color: red">x</p>'):
        div = f'<div xmlns="http://www.w3.org/1999/xhtml">{html}</div>'
        r = client.post("/Patient", json=patient(text={"status": "generated", "div": div}),
                        headers=FHIR_JSON)
        assert r.status_code == 201, (html, r.text[:300])


def test_hostile_bodies_are_answered_and_the_server_keeps_serving(client, live):
    """Bodies built to make the new checks slow or deep: each a 400 in bounded time."""
    many = b'{"resourceType":"Patient",' + b'"a":1,' * 300_000 + b'"b":1}'  # 1.8 MB of repeats
    deep = (b'{"resourceType":"Patient","x":' + b"[" * 1000 + b'"\\u0000"' + b"]" * 1000
            + b"}")
    # escaped quotes and colons defeat the fast duplicate test: the slow one runs on 1.4 MB
    escapes = (b'{"resourceType":"Patient","text":{"status":"generated","div":"'
               + b"\\u0022:" * 200_000 + b'","status":"additional"}}')
    with stores_nothing(client):
        for body in (many, deep, escapes):
            started = time.monotonic()
            r = post_raw(client, "/Patient", body)
            assert 400 <= r.status_code < 500, r.text[:300]
            assert r.json()["resourceType"] == "OperationOutcome"
            assert time.monotonic() - started < 10
    assert client.get("/metadata").status_code == 200
    assert live.proc.poll() is None


# -- random input ------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
_known = set(Patient.model_fields) | {f.alias for f in Patient.model_fields.values() if f.alias}
not_patient_fields = st.text(min_size=1, max_size=10).filter(
    lambda k: k not in _known and not k.startswith("_"))
patient_like = st.builds(
    lambda extra: {"resourceType": "Patient", **extra},
    st.dictionaries(not_patient_fields, json_values, min_size=1, max_size=3),
)
bundle_like = st.builds(
    lambda btype, entries: {"resourceType": "Bundle", "type": btype, "entry": entries},
    st.sampled_from(["transaction", "batch", "collection", "searchset"]) | st.text(max_size=8),
    st.lists(st.dictionaries(st.sampled_from(["request", "resource", "fullUrl"]), json_values,
                             min_size=1), min_size=1, max_size=3),
)
random_bodies = (st.binary(max_size=200)
                 | json_values.map(orjson.dumps)
                 | patient_like.map(orjson.dumps))


@hsettings(max_examples=60, deadline=None,
           suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=random_bodies, path=st.sampled_from(["/Patient", ""]))
def test_random_bodies_get_4xx_outcomes(client, body, path):
    r = post_raw(client, path, body)
    assert 400 <= r.status_code < 500, (r.status_code, body, r.text[:300])
    assert r.json()["resourceType"] == "OperationOutcome"


@hsettings(max_examples=40, deadline=None,
           suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(b=bundle_like)
def test_random_bundles_never_crash(client, b):
    r = client.post("", json=b, headers=FHIR_JSON)
    if b["type"] in ("transaction", "batch") and r.status_code == 200:
        # a batch answers per entry; each failing entry carries its own outcome
        for e in r.json()["entry"]:
            assert not e["response"]["status"].startswith("2")
            assert e["response"]["outcome"]["resourceType"] == "OperationOutcome"
    else:
        assert 400 <= r.status_code < 500, (r.status_code, b, r.text[:300])
        assert r.json()["resourceType"] == "OperationOutcome"


def test_random_input_stored_nothing_and_server_still_serves(client):
    """Runs after the property tests above in this module: nothing they sent was stored."""
    r = client.get("/_history", params={"_count": "1000"})
    assert r.status_code == 200
    for e in r.json().get("entry", []):
        res = e.get("resource") or {}
        assert res.get("resourceType") != "Bundle"
        assert not (set(res) - _known - {"resourceType", "meta", "id"}), res
    assert client.get("/metadata").status_code == 200


def test_create_ignores_whatever_id_the_body_carries(client):
    r = client.post("/Patient", content=orjson.dumps({"resourceType": "Patient", "id": "not valid!"}),
                    headers=FHIR_JSON)
    assert r.status_code == 201, r.text
    assert r.json()["id"] != "not valid!"


def test_store_outage_is_a_503_and_the_server_recovers(pg_databases, tmp_path):
    """The PostgreSQL database disappears under a running server: 503 + Retry-After, no crash."""
    import psycopg

    from hub.core.config import Settings
    from tests.conftest import PG_ADMIN, LiveServer

    dsn = pg_databases.new()
    settings = Settings(data_dir=tmp_path)
    settings.database_url = dsn
    with LiveServer(settings) as server, httpx.Client(base_url=server.base, timeout=30, auth=server.auth, verify=httpclient.verify()) as c:
        assert c.post("/Patient", content=b'{"resourceType":"Patient"}',
                      headers=FHIR_JSON).status_code == 201
        name = dsn.rsplit("/", 1)[1]
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        r = c.get("/Patient/x")
        assert r.status_code == 503, r.text
        assert r.headers.get("retry-after") == "1"
        assert r.json()["resourceType"] == "OperationOutcome"
        assert c.get("/metadata").status_code == 200  # still serving


def test_a_query_too_complex_for_the_index_is_400_not_503(client):
    ids = ",".join(f"p{i}" for i in range(40000))
    r = client.post("/Patient/_search", data={"_id": ids})
    body = assert_outcome(r, 400)
    assert body["issue"][0]["code"] == "too-costly"
    chain = "subject:Patient.organization:Organization.partof:Organization.partof:Organization.partof.name"
    body = assert_outcome(client.get("/Observation", params={chain: "x"}), 400)
    assert body["issue"][0]["code"] == "too-costly"
    assert client.get("/Patient", params={"_count": "1"}).status_code == 200  # still serving


@pytest.mark.parametrize("method,path", [
    ("GET", "/Observation/x1/$meta"), ("GET", "/Observation/$lastn"), ("POST", "/$reindex"),
    ("GET", "/$everything-else")])
def test_an_operation_the_hub_has_not_is_named_as_such(client, method, path):
    """They were taken for a resource type (404 "Unknown resource type '$meta'") or an id
    ("'$lastn' is not a valid FHIR id")."""
    r = client.request(method, path, headers=FHIR_JSON, content=b"{}" if method == "POST" else None)
    outcome = assert_outcome(r, 400)
    assert "operation" in outcome["issue"][0]["diagnostics"] and \
        outcome["issue"][0]["code"] == "not-supported", outcome


def test_content_type_parameters_and_odd_etags_and_ids(client):
    """A body labelled another FHIR version or another charset was read as R4 UTF-8; an opaque
    If-None-Match (a cache's) was a 400, not a mismatch; ids of dots alone were written, at a
    URL no client can reach."""
    from tests.api_helpers import patient

    body = orjson.dumps(patient())
    for ctype in ("application/fhir+json; fhirVersion=3.0",
                  "application/fhir+json; charset=iso-8859-1"):
        r = client.post("/Patient", content=body, headers={"content-type": ctype})
        assert r.status_code == 415 and r.json()["resourceType"] == "OperationOutcome", ctype
    r = client.post("/Patient", content=body,
                    headers={"content-type": "application/fhir+json; charset=UTF-8; fhirVersion=4.0"})
    assert r.status_code == 201, r.text
    rid = r.json()["id"]
    assert client.get(f"/Patient/{rid}", headers={"if-none-match": '"abc"'}).status_code == 200
    assert client.get(f"/Patient/{rid}", headers={"if-none-match": 'W/"1"'}).status_code == 304
    d = {"resourceType": "Basic", "id": "..", "code": {"text": "d"}}
    r = client.put("/Basic/%2E%2E", json=d, headers={"content-type": "application/fhir+json"})
    assert r.status_code == 400, r.text
