"""Fees of WS/T 500 documents (病案首页 费用, 处方药品金额) are ChargeItems with their amount in CNY."""

from __future__ import annotations

import orjson

from fhir_mapping.cda import convert_traced
from tests.cda_docs import SRC, by_type, wst500
from tests.test_cda_helpers import check_no_silent_drops, invalid_resources

HDSD = 'codeSystem="2.16.156.10011.2.2.4"'
DE = 'codeSystem="2.16.156.10011.2.2.1"'


def fee(code, label, value, *nested, system=HDSD, currency=' currency="元"'):
    rels = "".join(f'<entryRelationship typeCode="COMP">{n}</entryRelationship>' for n in nested)
    return (f'<observation classCode="OBS" moodCode="EVN"><code code="{code}" {system} displayName="{label}"/>'
            f'<value xsi:type="MO" value="{value}"{currency}/>{rels}</observation>')


def run(*entries):
    sec = ('<component><section><code code="48768-6" codeSystem="2.16.840.1.113883.6.1"/><title>费用</title>'
           + "".join(f"<entry>{e}</entry>" for e in entries) + "</section></component>")
    conv, trace = convert_traced(wst500(code="C0032", template="2.16.156.10011.2.1.1.52", sections=sec), SRC)
    assert invalid_resources(conv) == []
    check_no_silent_drops(conv, trace)
    return conv, by_type(conv)


def test_front_page_fees_are_charge_items_in_cny():
    conv, t = run(fee("HDSD00.12.169", "住院总费用", "4734.88", fee("HDSD00.12.170", "住院总费用-自付金额（元）", "1332.67")),
                  fee("HDSD00.12.113", "西药费", "193.79", fee("HDSD00.12.114", "西药费-抗菌药物费用", "10.00")),
                  fee("HDSD00.12.092", "其他费", "0", currency=""),
                  '<observation classCode="OBS" moodCode="EVN"><code code="DE07.00.007.00" ' + DE +
                  ' displayName="医疗付款方式代码"/><value xsi:type="CD" code="01" displayName="城镇职工基本医疗保险" '
                  'codeSystem="2.16.156.10011.2.3.1.269"/></observation>')
    items = {c["code"]["coding"][0]["code"]: c for c in t["ChargeItem"]}
    assert set(items) == {"HDSD00.12.169", "HDSD00.12.113", "HDSD00.12.114", "HDSD00.12.092"}
    total = items["HDSD00.12.169"]
    assert total["priceOverride"] == {"value": 4734.88, "currency": "CNY"}
    assert total["extension"][0]["valueMoney"] == {"value": 1332.67, "currency": "CNY"}  # self-paid share
    assert items["HDSD00.12.114"]["partOf"] == [{"reference": f"ChargeItem/{items['HDSD00.12.113']['id']}"}]
    assert items["HDSD00.12.092"]["priceOverride"] == {"value": 0, "currency": "CNY"}
    assert all(c["subject"]["reference"].startswith("Patient/") and c["quantity"] == {"value": 1} for c in items.values())
    (pay,) = t["Observation"]  # the payment method is no fee
    assert pay["valueCodeableConcept"]["coding"][0]["code"] == "01"


def test_prescription_amount_is_a_charge_item():
    conv, t = run(fee("DE07.00.004.00", "处方药品金额", "4.00", system=DE))
    (c,) = t["ChargeItem"]
    # the amount as written: 4.00 yuan, not 4.0
    assert orjson.dumps(c["priceOverride"]) == b'{"value":4.00,"currency":"CNY"}'
    assert c["code"]["coding"][0]["display"] == "处方药品金额"
