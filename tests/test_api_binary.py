"""Binary in its native form (R4 http.html#binary), on both backends: a client that stores a PDF
or an image sends and reads the bytes themselves; it got a 415 for the upload and a 406 for the
read, and had to wrap and unwrap base64 itself."""

from __future__ import annotations

import base64

import pytest

from tests.api_helpers import FHIR_JSON, assert_outcome, unique

PDF = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n"


def test_a_native_upload_is_read_back_as_its_bytes_and_as_fhir(client, live):
    rid = f"bin-{unique()[:12]}"
    r = client.put(f"/Binary/{rid}", content=PDF, headers={"content-type": "application/pdf"})
    assert r.status_code == 201, r.text
    assert r.headers["etag"] == 'W/"1"'
    native = client.get(f"/Binary/{rid}", headers={"accept": "application/pdf"})
    assert native.status_code == 200 and native.content == PDF
    assert native.headers["content-type"].startswith("application/pdf")
    assert native.headers["etag"] == 'W/"1"' and native.headers["last-modified"]
    # FHIR asked for (or anything, */*): the resource, its data the same bytes in base64
    for accept in ("application/fhir+json", "*/*"):
        d = client.get(f"/Binary/{rid}", headers={"accept": accept}).json()
        assert d["resourceType"] == "Binary" and d["contentType"] == "application/pdf"
        assert base64.b64decode(d["data"]) == PDF
    assert client.get(f"/Binary/{rid}/_history/1", headers={"accept": "image/png"}).content == PDF
    # a conditional read of the content is one of the resource's
    held = client.get(f"/Binary/{rid}", headers={"accept": "application/pdf",
                                                 "if-none-match": native.headers["etag"]})
    assert held.status_code == 304 and not held.content


def test_a_native_create_keeps_its_security_context(client, live):
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
    r = client.post("/Binary", content=png, headers={
        "content-type": "image/png", "x-security-context": "Patient/p-ctx"})
    assert r.status_code == 201, r.text
    location = r.headers["location"].split("/fhir/", 1)[1].rsplit("/_history", 1)[0]
    native = client.get(f"/{location}", headers={"accept": "image/png"})
    assert native.content == png and native.headers["x-security-context"] == "Patient/p-ctx"
    assert client.get(f"/{location}").json()["securityContext"] == {"reference": "Patient/p-ctx"}


def test_only_a_binary_is_native(client, live):
    """Another type still takes and gives FHIR only; an empty native body is refused."""
    r = client.post("/Observation", content=PDF, headers={"content-type": "application/pdf"})
    assert_outcome(r, 415)
    pid = f"p-{unique()[:12]}"
    assert client.put(f"/Patient/{pid}", json={"resourceType": "Patient", "id": pid},
                      headers=FHIR_JSON).status_code == 201
    assert_outcome(client.get(f"/Patient/{pid}", headers={"accept": "application/pdf"}), 406)
    assert_outcome(client.post("/Binary", content=b"", headers={"content-type": "text/plain"}), 400)


def test_native_content_never_runs_in_a_browser(client, live):
    """An HTML Binary read natively from the hub's origin (where the console lives) is
    sandboxed and never sniffed into another type."""
    page = b"<html><script>alert(document.cookie)</script></html>"
    r = client.post("/Binary", content=page, headers={"content-type": "text/html"})
    assert r.status_code == 201, r.text
    location = r.headers["location"].split("/fhir/", 1)[1].rsplit("/_history", 1)[0]
    native = client.get(f"/{location}", headers={"accept": "text/html"})
    assert native.content == page
    assert "sandbox" in native.headers["content-security-policy"]
    assert native.headers["x-content-type-options"] == "nosniff"


def _stored_binary(client, **fields) -> str:
    """A Binary written as FHIR JSON (where any string the models take could be sent), by id."""
    rid = f"bin-{unique()[:12]}"
    d = {"resourceType": "Binary", "id": rid, "data": base64.b64encode(b"hello").decode()} | fields
    r = client.put(f"/Binary/{rid}", json=d, headers=FHIR_JSON)
    assert r.status_code == 201, r.text
    return rid


def test_a_stored_content_type_no_header_can_carry_is_served_as_plain_bytes(client, live):
    """A contentType with characters a header cannot carry (not ASCII) is answered as
    application/octet-stream (it was a 500), and a securityContext reference that cannot be a
    header is left out (it dropped the connection); one with a line break is refused on write,
    as JSON and as a native upload."""
    rid = _stored_binary(client, contentType="text/plain; name=检验报告",
                         securityContext={"reference": "Patient/a\nX-Injected: 1"})
    native = client.get(f"/Binary/{rid}", headers={"accept": "text/plain"})
    assert native.status_code == 200 and native.content == b"hello"
    assert native.headers["content-type"] == "application/octet-stream"
    assert "x-security-context" not in native.headers and "x-injected" not in native.headers
    body = assert_outcome(client.put(f"/Binary/{rid}", json={
        "resourceType": "Binary", "id": rid, "contentType": "text/html\nX-Injected: 1",
        "data": "aGVsbG8="}, headers=FHIR_JSON), 422)
    assert body["issue"][0]["expression"] == ["Binary.contentType"], body
    assert_outcome(client.post("/Binary", content=b"x", headers={
        "content-type": "text/plain; name=检验报告".encode()}), 400)


def test_a_native_read_honours_the_quality_of_each_accepted_type(client, live):
    """RFC 9110 12.5.1: the content is answered when the Accept ranks its type above every FHIR
    format (a browser's image Accept); FHIR when FHIR ranks as high or higher."""
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(64))
    r = client.post("/Binary", content=png, headers={"content-type": "image/png"})
    location = r.headers["location"].split("/fhir/", 1)[1].rsplit("/_history", 1)[0]
    for accept in ("image/png,image/*;q=0.8,*/*;q=0.5", "image/avif,image/webp,image/*,*/*;q=0.8",
                   "application/fhir+json;q=0.5, image/png", "image/png, */*"):
        got = client.get(f"/{location}", headers={"accept": accept})
        assert got.status_code == 200 and got.content == png, accept
    for accept in ("*/*", "application/pdf, */*", "image/png;q=0.5, application/fhir+json",
                   "image/png, application/fhir+json", "image/*;q=0.9, application/*"):
        got = client.get(f"/{location}", headers={"accept": accept})
        assert got.status_code == 200 and got.json()["resourceType"] == "Binary", accept
    # another type with a non-FHIR Accept is still refused
    pid = f"p-{unique()[:12]}"
    client.put(f"/Patient/{pid}", json={"resourceType": "Patient", "id": pid}, headers=FHIR_JSON)
    assert_outcome(client.get(f"/Patient/{pid}", headers={"accept": "image/png, */*;q=0"}), 406)


def test_a_native_read_sends_the_stored_content_type_as_it_is(client, live):
    """A text type is sent without a charset the client never stored (a GB18030 text was
    labelled UTF-8)."""
    text = "检验报告：正常".encode("gb18030")
    r = client.post("/Binary", content=text, headers={"content-type": "text/plain"})
    location = r.headers["location"].split("/fhir/", 1)[1].rsplit("/_history", 1)[0]
    native = client.get(f"/{location}", headers={"accept": "text/plain"})
    assert native.content == text and native.headers["content-type"] == "text/plain"


@pytest.mark.parametrize("where,resource", [
    ("Binary.data", lambda v: {"resourceType": "Binary", "contentType": "text/plain", "data": v}),
    ("Patient.photo[0].data", lambda v: {"resourceType": "Patient",
                                         "photo": [{"contentType": "image/png", "data": v}]}),
    ("DocumentReference.content[0].attachment.data", lambda v: {
        "resourceType": "DocumentReference", "status": "current",
        "content": [{"attachment": {"contentType": "text/plain", "data": v}}]}),
    ("Patient.extension[0].valueBase64Binary", lambda v: {
        "resourceType": "Patient", "extension": [{"url": "urn:x", "valueBase64Binary": v}]}),
])
@pytest.mark.parametrize("data", ["!!!", "====", "aGVsbG8=\u00e9", "aGVsbG8=aGVs", "aGVs-bG8="])
def test_a_base64_value_that_is_no_base64_is_refused_naming_its_element(client, live, where,
                                                                        resource, data):
    """The models decode base64 leniently: "!!!" was stored, and the Binary's content read
    was then a 500."""
    r = client.post(f"/{where.split('.')[0]}", json=resource(data), headers=FHIR_JSON)
    outcome = assert_outcome(r, 422)
    assert where in outcome["issue"][0]["expression"], outcome
    assert "base64" in outcome["issue"][0]["diagnostics"].lower()


def test_base64_may_hold_the_whitespace_r4_allows_and_is_read_without_it(client, live):
    rid = _stored_binary(client, contentType="text/plain", data="aGVs\nbG8g\r\n d29y bGQ=")
    native = client.get(f"/Binary/{rid}", headers={"accept": "text/plain"})
    assert native.status_code == 200 and native.content == b"hello world"


def test_a_binary_stored_before_base64_was_checked_is_no_500(client, live):
    """Content stored before writes were checked cannot be given as its bytes: the read says so
    and how to get its FHIR form, which still reads."""
    from hub.core.ingest import Context, Hub, Op, Result

    rid = f"bin-{unique()[:12]}"
    store = live.settings.open_store()
    try:
        [done] = Hub(store).execute([Op("PUT", "Binary", rid=rid, d={
            "resourceType": "Binary", "id": rid, "contentType": "text/plain", "data": "!!!"})],
            Context(), atomic=True)
        assert isinstance(done, Result), done
    finally:
        store.close()
    outcome = assert_outcome(client.get(f"/Binary/{rid}", headers={"accept": "text/plain"}), 406)
    assert "not base64" in outcome["issue"][0]["diagnostics"]
    assert client.get(f"/Binary/{rid}").json()["data"] == "!!!"
