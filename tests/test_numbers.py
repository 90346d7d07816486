"""A number written in a source document keeps its written precision in the FHIR JSON the mappers
make (fhir_mapping.numbers): an HL7 v2 NM, a CDA PQ or MO, an HL7 v3 quantity; and a connector
unit read from Kafka keeps the mappers' numbers as they wrote them."""

from __future__ import annotations

import decimal

import orjson
from hypothesis import example, given, strategies as st
from lxml import etree

from fhir_mapping import numbers
from fhir_mapping.cda import dt as cda_dt
from fhir_mapping.hl7v2 import datatypes as v2_dt
from fhir_mapping.hl7v3.orders import _quantity as v3_quantity

_TEXTS = st.from_regex(r"[+-]?([0-9]{1,12}(\.[0-9]{0,10})?|\.[0-9]{1,10})", fullmatch=True)


def _fraction_digits(text: str) -> int:
    return len(text.split(".", 1)[1]) if "." in text else 0


@given(_TEXTS)
def test_a_decimal_keeps_its_value_and_its_written_precision(text):
    value = numbers.decimal(text)
    assert value is not None
    written = orjson.dumps(value).decode()
    assert decimal.Decimal(written) == decimal.Decimal(text.rstrip(".") or "0")
    # as many digits after the point as were written (a trailing "." has none)
    if not isinstance(value, int):
        assert _fraction_digits(written) == _fraction_digits(text.rstrip("."))
    assert numbers.value_of(value) == float(decimal.Decimal(written))


@example("٠.50")  # Arabic-Indic digits: a Fragment orjson wrote into invalid JSON
@example("१२")
@given(st.text(max_size=12))
def test_anything_else_is_not_a_number_or_a_valid_json_one(text):
    """Other scripts' digits (Python's float() reads "٠.5") are not numbers here: each value made
    is one JSON can carry."""
    value = numbers.decimal(text)
    if not text.isascii():
        assert value is None
    if value is not None:
        assert orjson.loads(orjson.dumps(value)) == numbers.value_of(value)
        assert orjson.dumps(value).isascii()


def test_each_source_family_keeps_them():
    assert orjson.dumps(v2_dt.decimal("1.50")) == b"1.50"
    pq = etree.fromstring('<value xmlns="urn:hl7-org:v3" value="6.50" unit="mmol/L"/>')
    assert orjson.dumps(cda_dt.quantity(pq, {})) == b'{"value":6.50,"unit":"mmol/L"}'
    mo = etree.fromstring('<value xmlns="urn:hl7-org:v3" value="40000.00" currency="CNY"/>')
    assert b'"value":40000.00' in orjson.dumps(cda_dt.money(mo, {}))
    v3 = etree.fromstring('<doseQuantity xmlns="urn:hl7-org:v3" value="0.50" unit="g"/>')
    assert orjson.dumps(v3_quantity(v3)) == b'{"value":0.50,"unit":"g"}'


def test_a_connector_unit_read_from_kafka_keeps_them():
    from hub.worker import _decode

    unit = (b'{"unit_id":"u1","resources":[{"resourceType":"Observation","id":"o1",'
            b'"valueQuantity":{"value":1.50},"referenceRange":[{"low":{"value":0.0000010}}]}]}')
    out = orjson.dumps(_decode(unit)["resources"][0])
    assert b'"value":1.50' in out and b'"value":0.0000010' in out


def test_an_exponent_is_read_only_where_the_source_allows_one():
    """HL7 v3 REAL and PQ values may carry an exponent, kept as written; HL7 v2's NM may not."""
    assert orjson.dumps({"v": numbers.decimal("1.5e3", exponent=True)}) == b'{"v":1.5e3}'
    assert orjson.dumps({"v": numbers.decimal("+2E-3", exponent=True)}) == b'{"v":2E-3}'
    assert numbers.value_of(numbers.decimal("1.5e3", exponent=True)) == 1500.0
    assert numbers.decimal("1.5e3") is None
    for bad in ("1.5e", "e3", "1.5e3.1", "01.5e3", "1.5e1234", "١.5e3"):
        assert numbers.decimal(bad, exponent=True) is None, bad


def test_an_integer_beyond_64_bits_is_kept_as_written():
    """A payer-split amount of 20000000000000000000 (hypothesis found it) came out as a Python
    int no JSON writer of the hub takes: the conversion could not be written at all."""
    import orjson

    from fhir_mapping import numbers

    v = numbers.decimal("20000000000000000000")
    assert orjson.dumps({"value": v}) == b'{"value":20000000000000000000}'
    assert numbers.decimal("9223372036854775807") == 9223372036854775807


def test_a_cda_unit_of_one_is_ucum_unity_not_dropped():
    """``unit="1"`` (a count, a ratio) was stored with no unit at all, as if none was said."""
    pq = etree.fromstring('<value xmlns="urn:hl7-org:v3" value="3" unit="1"/>')
    assert cda_dt.quantity(pq, {}) == {"value": 3, "unit": "1",
                                       "system": "http://unitsofmeasure.org", "code": "1"}
    bare = etree.fromstring('<value xmlns="urn:hl7-org:v3" value="3"/>')
    assert cda_dt.quantity(bare, {}) == {"value": 3}
