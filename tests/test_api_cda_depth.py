"""POST /cda stores what the deeper WS/T 500 mapping makes: the report, its results and specimen, the
prescription's MedicationRequest and the fees, each readable on its own."""

from __future__ import annotations

from tests.cda_docs import ident, wst500
from tests.test_cda_charges import fee
from tests.test_cda_reports import lab_report

XML = {"content-type": "application/xml", "x-hub-source-institution": "H44000077",
       "x-hub-source-feed": "cda-test"}


def _stored(client, r) -> dict[str, list[dict]]:
    assert r.status_code == 201, r.text
    doc_ref = client.get("/" + r.headers["location"].split("/fhir/", 1)[1]).json()
    comp = client.get("/" + doc_ref["context"]["related"][0]["reference"]).json()
    bundle = client.get(f"/Bundle?identifier={comp['identifier']['value']}").json()
    out: dict[str, list[dict]] = {}
    for e in bundle.get("entry", []):
        doc = e["resource"]
        for entry in doc.get("entry", []):
            res = entry["resource"]
            if res["resourceType"] in ("DiagnosticReport", "Specimen", "ChargeItem", "Observation"):
                out.setdefault(res["resourceType"], []).append(client.get(f"/{entry['fullUrl']}").json())
    return out


def test_lab_report_and_fees_are_stored_and_readable(client):
    t = _stored(client, client.post("/../cda", content=lab_report(), headers=XML))
    (rep,) = t["DiagnosticReport"]
    assert rep["conclusion"] == "血常规未见明显异常" and len(rep["result"]) == 2
    assert t["Specimen"][0]["type"]["text"] == "静脉血"
    fees = ('<component><section><code code="48768-6" codeSystem="2.16.840.1.113883.6.1"/><entry>'
            + fee("HDSD00.12.169", "住院总费用", "4734.88") + "</entry></section></component>")
    doc = wst500(doc_id="FEES-1", code="C0032", template="2.16.156.10011.2.1.1.52", sections=fees,
                 patient_ids=ident("2.16.156.10011.1.3", "11010519491231002X"))
    t = _stored(client, client.post("/../cda", content=doc, headers=XML))
    assert t["ChargeItem"][0]["priceOverride"] == {"value": 4734.88, "currency": "CNY"}
