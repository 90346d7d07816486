"""Every WS/T 483 health-record document type is known: none falls to "type unknown"."""

from __future__ import annotations

import pytest

from fhir_mapping.cda import tables
from tests.cda_docs import mapped, wst500


def test_wst483_table_has_the_twenty_types():
    rows = [d for d in tables().documents_by_code.values() if d["family"] == "wst483"]
    assert sorted(int(d["templateId"].rsplit(".", 1)[1]) for d in rows) == list(range(1, 21))
    assert sorted(d["part"] for d in rows) == sorted(f"EHR-SD-{n}" for n in range(1, 21))
    assert len({d["code"] for d in rows}) == 20 and all(d["code"].startswith("HSD") for d in rows)


@pytest.mark.parametrize("n", range(1, 21))
def test_every_wst483_type_maps_with_its_name(n):
    row = tables().documents_by_template[f"2.16.156.10011.2.1.1.{n}"]
    conv, t = mapped(wst500(code=row["code"], template=row["templateId"]))
    assert conv.kind == f"cda:{row['code']}"
    comp = t["Composition"][0]
    assert comp["type"]["coding"][0] == {"system": "urn:oid:2.16.156.10011.2.4", "code": row["code"],
                                         "display": row["name"]}
    assert not [f for f in conv.findings if f.rule == "cda.document.type-unknown"]
