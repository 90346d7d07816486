"""Binary in its native form (R4 http.html#binary), on both backends: a client that stores a PDF
or an image sends and reads the bytes themselves; it got a 415 for the upload and a 406 for the
read, and had to wrap and unwrap base64 itself."""

from __future__ import annotations

import base64

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
