"""Declarative tabular mappings: the shipped files, the transforms, CSV handling and load-time checks."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import orjson
import pytest
import yaml
from fhir_mapping.base import MappingError, SourceInfo
from fhir_mapping.ids import encounter_id, stable_id
from fhir_mapping.registry import converter
from fhir_mapping.tabular import (CsvRowsError, MappingFileError, load_file, load_mapping,
                                  shipped_mappings)
from fhir_mapping.tabular.mapping import SHIPPED
from hub.core.resource import validate

FIXTURES = Path(__file__).parent / "fixtures" / "tabular"
SRC = SourceInfo(institution="H0001", oid="1.2.156.112604.1.1", name="市第一人民医院")
RID = "urn:oid:2.16.156.10011.1.3"
GBT_SEX = "urn:oid:2.16.156.10011.2.3.3.4"


def example_row(name: str) -> dict:
    return {c: s["example"] for c, s in load_mapping(name).columns.items()}


def by_type(conv) -> dict:
    return {r["resourceType"]: r for r in conv.resources}


def check_valid(resources) -> None:
    for r in resources:
        validate(r["resourceType"], orjson.dumps(r), r)


def test_shipped_mappings_load():
    assert shipped_mappings() == ["lab-result", "outpatient-visit", "prescription"]
    for name in shipped_mappings():
        m = load_mapping(name, validate)  # the example row passes the hub's validation
        assert m.name == name
        assert load_mapping(name, validate) is m  # cached


@pytest.mark.parametrize("name", ["outpatient-visit", "lab-result", "prescription"])
def test_fixture_csv_converts_and_validates(name):
    payload = (FIXTURES / f"{name}.csv").read_bytes()
    convs = converter(f"csv:{name}")(payload, SRC)
    assert len(convs) == len(payload.decode().strip().splitlines()) - 1
    for c in convs:
        assert c.kind == f"row:{name}" and c.unit_id.startswith(f"{name}:")
        assert c.patient_key and c.patient_key.startswith("Patient/")
        check_valid(c.resources)
    # the same export twice: the same ids and the same content (replay changes nothing)
    again = converter(f"csv:{name}")(payload, SRC)
    assert [orjson.dumps(c.resources) for c in again] == [orjson.dumps(c.resources) for c in convs]


def test_outpatient_visit_row():
    row = example_row("outpatient-visit")
    [conv] = converter("row:outpatient-visit")(json.dumps(row).encode(), SRC)
    res = by_type(conv)
    assert set(res) == {"Patient", "Encounter", "Condition"}
    p, e, c = res["Patient"], res["Encounter"], res["Condition"]
    assert p["id"] == stable_id("Patient", "H0001", "MR", "0012345678")
    assert conv.patient_key == f"Patient/{p['id']}"
    assert conv.unit_id == "outpatient-visit:MZ202403010001"
    assert p["identifier"][0]["system"] == "urn:oid:1.2.156.112604.1.1.1"
    assert p["identifier"][0]["value"] == "0012345678"
    assert p["identifier"][1] == {
        "use": "official", "type": p["identifier"][1]["type"], "system": RID,
        "value": "11010519491231002X"}
    assert p["name"] == [{"text": "张三", "use": "official"}]
    assert p["gender"] == "male"
    assert p["_gender"]["extension"][0]["valueCoding"] == {
        "system": GBT_SEX, "code": "1", "display": "男性"}
    assert p["birthDate"] == "1949-12-31"
    assert e["period"] == {"start": "2024-03-01T08:30:00+08:00"}
    assert e["status"] == "finished" and e["class"]["code"] == "AMB"
    assert e["subject"] == {"reference": f"Patient/{p['id']}"}
    assert e["identifier"][0]["system"] == "urn:oid:1.2.156.112604.1.1.2"
    assert e["diagnosis"][0]["condition"] == {"reference": f"Condition/{c['id']}"}
    assert c["code"]["coding"][0] == {"system": "http://hl7.org/fhir/sid/icd-10",
                                      "code": "J06.900", "display": "急性上呼吸道感染"}
    assert c["encounter"] == {"reference": f"Encounter/{e['id']}"}
    assert conv.findings == []


def test_optional_parts_are_left_out():
    row = example_row("outpatient-visit")
    row.update(diag_code=None, diag_name="", id_card_no="  ", phone=None, sex_code="",
               doctor_code=None, doctor_name=None, visit_status=None)
    [conv] = converter("row:outpatient-visit")(json.dumps(row).encode(), SRC)
    res = by_type(conv)
    assert set(res) == {"Patient", "Encounter"}  # no diagnosis, no Condition
    assert len(res["Patient"]["identifier"]) == 1
    assert "gender" not in res["Patient"] and "_gender" not in res["Patient"]
    assert "telecom" not in res["Patient"]
    assert "diagnosis" not in res["Encounter"] and "participant" not in res["Encounter"]
    assert res["Encounter"]["status"] == "finished"  # the rule's default
    check_valid(conv.resources)


def test_resident_id_checked():
    m = load_mapping("outpatient-visit")
    row = example_row("outpatient-visit")
    row["id_card_no"] = "11010519491231002x"  # lower-case x: valid, normalised
    conv = m.convert_row(row, SRC)
    assert by_type(conv)["Patient"]["identifier"][1]["value"] == "11010519491231002X"
    assert conv.findings == []
    row["id_card_no"] = "110105194912310021"  # wrong check digit: never stored, a finding
    conv = m.convert_row(row, SRC)
    assert len(by_type(conv)["Patient"]["identifier"]) == 1
    [f] = conv.findings
    assert (f.severity, f.rule, f.location) == ("warning", "tabular.identifier.check-digit",
                                                "id_card_no")
    assert "110105" not in f.message  # no personal data in findings
    row["id_card_no"] = "000000000000000000"  # placeholder: left out
    conv = m.convert_row(row, SRC)
    assert len(by_type(conv)["Patient"]["identifier"]) == 1
    assert [f.rule for f in conv.findings] == ["tabular.identifier.placeholder"]


@pytest.mark.parametrize("sex,gender,display", [
    ("1", "male", "男性"), ("2", "female", "女性"), ("9", "unknown", "未说明的性别"),
    (0, "unknown", "未知的性别")])
def test_sex_codes(sex, gender, display):
    row = example_row("outpatient-visit") | {"sex_code": sex}
    p = by_type(load_mapping("outpatient-visit").convert_row(row, SRC))["Patient"]
    assert p["gender"] == gender
    assert p["_gender"]["extension"][0]["valueCoding"]["code"] == str(sex)
    assert p["_gender"]["extension"][0]["valueCoding"]["display"] == display


def test_unknown_sex_code_refused():
    row = example_row("outpatient-visit") | {"sex_code": "5"}
    with pytest.raises(MappingError) as e:
        load_mapping("outpatient-visit").convert_row(row, SRC)
    assert e.value.location == "sex_code" and "gender" in e.value.reason


@pytest.mark.parametrize("raw,expected", [
    ("2024-03-01 08:30:00", "2024-03-01T08:30:00+08:00"),
    ("2024-03-01T08:30:00", "2024-03-01T08:30:00+08:00"),  # what the database poller writes
    ("2024-03-01 08:30", "2024-03-01T08:30:00+08:00"),
    ("2024-03-01T08:30:00.250000", "2024-03-01T08:30:00.250000+08:00"),
    ("2024-03-01T00:30:00+00:00", "2024-03-01T00:30:00+00:00"),  # an offset given is kept
    ("20240301083000", "2024-03-01T08:30:00+08:00"),
    ("2024-03-01", "2024-03-01"),
])
def test_datetime_formats(raw, expected):
    row = example_row("outpatient-visit") | {"visit_time": raw}
    e = by_type(load_mapping("outpatient-visit").convert_row(row, SRC))["Encounter"]
    assert e["period"]["start"] == expected


@pytest.mark.parametrize("raw", ["2024-02-30 08:00:00", "2024-03-01 25:00:00", "yesterday",
                                 "01/03/2024 08:00"])
def test_bad_datetime_refused_naming_the_column(raw):
    row = example_row("outpatient-visit") | {"visit_time": raw}
    with pytest.raises(MappingError) as e:
        load_mapping("outpatient-visit").convert_row(row, SRC)
    assert e.value.location == "visit_time" and e.value.rule == "tabular.value"
    assert e.value.reason.startswith("row visit_no=MZ202403010001: column visit_time is not a")
    assert raw not in e.value.reason


@pytest.mark.parametrize("raw,expected", [("19800101", "1980-01-01"),
                                          ("1980-01-01", "1980-01-01"),
                                          ("1980-01-01 00:00:00", "1980-01-01"),
                                          # a timestamptz read in UTC: the day of the mapping's
                                          # zone, not a day early
                                          ("1980-04-30T16:00:00+00:00", "1980-05-01"),
                                          ("1980-05-01T00:00:00+08:00", "1980-05-01")])
def test_birth_date(raw, expected):
    row = example_row("outpatient-visit") | {"birth_date": raw}
    p = by_type(load_mapping("outpatient-visit").convert_row(row, SRC))["Patient"]
    assert p["birthDate"] == expected


def test_required_column_missing():
    row = example_row("outpatient-visit")
    del row["visit_no"]
    with pytest.raises(MappingError) as e:
        load_mapping("outpatient-visit").convert_row(row, SRC)
    assert (e.value.location, e.value.rule, e.value.code) == ("visit_no", "tabular.required", "AE")


def test_column_names_are_case_insensitive():
    row = {k.upper(): v for k, v in example_row("outpatient-visit").items()}
    conv = load_mapping("outpatient-visit").convert_row(row, SRC)
    assert len(conv.resources) == 3


def test_source_must_declare_institution_and_oid():
    m = load_mapping("outpatient-visit")
    with pytest.raises(MappingError) as e:
        m.convert_row(example_row("outpatient-visit"), SourceInfo())
    assert e.value.code == "AR" and e.value.rule == "tabular.source.institution"
    with pytest.raises(MappingError) as e:
        m.convert_row(example_row("outpatient-visit"), SourceInfo(institution="H0001"))
    assert e.value.rule == "tabular.source.oid"


def test_not_a_json_object():
    conv = converter("row:lab-result")
    for bad in (b"[1,2]", b"{", b'"x"'):
        with pytest.raises(MappingError) as e:
            conv(bad, SRC)
        assert e.value.code == "AR"


def test_lab_result_values():
    m = load_mapping("lab-result")
    row = example_row("lab-result")
    conv = m.convert_row(row, SRC)
    [obs] = conv.resources  # Patient and Encounter are only referred to
    assert obs["subject"] == {"reference": f"Patient/{stable_id('Patient', 'H0001', 'MR', '0012345678')}"}
    assert obs["encounter"]["reference"] == \
        f"Encounter/{encounter_id('H0001', '0012345678', 'MZ202403010001')}"
    assert conv.patient_key == obs["subject"]["reference"]
    # decimals keep their written precision
    raw = orjson.dumps(obs)
    assert b'"valueQuantity":{"value":5.60,"unit":"mmol/L","system":"http://unitsofmeasure.org","code":"mmol/L"}' in raw
    assert b'"low":{"value":3.90' in raw
    assert obs["issued"] == "2024-03-01T11:20:05+08:00"
    # a comparator, a text result, a unit without a UCUM code
    obs = m.convert_row(row | {"result_value": "<0.50", "result_unit": "g/L"}, SRC).resources[0]
    assert obs["valueQuantity"]["comparator"] == "<"
    assert orjson.dumps(obs["valueQuantity"]).startswith(b'{"value":0.50,')
    obs = m.convert_row(row | {"result_value": "阴性"}, SRC).resources[0]
    assert obs["valueString"] == "阴性" and "valueQuantity" not in obs
    obs = m.convert_row(row | {"result_unit": "个/HP"}, SRC).resources[0]
    assert orjson.loads(orjson.dumps(obs["valueQuantity"])) == {"value": 5.6, "unit": "个/HP"}
    # a JSON number from the poller, exact
    payload = orjson.dumps({c: None for c in m.columns} | {
        "report_no": "R1", "item_code": "K", "item_name": "钾", "patient_id": "P1",
        "result_value": orjson.Fragment(b"4.10"), "result_unit": "mmol/L",
        "report_time": "2024-03-01T10:00:00"})
    [conv] = m.convert_row_json(payload, SRC)
    assert b'"value":4.10,' in orjson.dumps(conv.resources[0])
    check_valid(conv.resources)
    # a bad reference-range number is skipped with a warning, not fatal
    conv = m.convert_row(row | {"ref_low": "3.9-"}, SRC)
    assert "low" not in conv.resources[0]["referenceRange"][0]
    assert [(f.rule, f.location) for f in conv.findings] == [("tabular.value-skipped", "ref_low")]


def test_lab_issued_needs_a_time():
    row = example_row("lab-result") | {"report_time": "2024-03-01"}
    with pytest.raises(MappingError) as e:
        load_mapping("lab-result").convert_row(row, SRC)
    assert e.value.location == "report_time"


def test_prescription_row():
    conv = load_mapping("prescription").convert_row(example_row("prescription"), SRC)
    [mr] = conv.resources
    assert mr["resourceType"] == "MedicationRequest"
    assert mr["id"] == stable_id("MedicationRequest", "H0001", "RX", "CF20240301000456", "1")
    assert mr["status"] == "active" and mr["intent"] == "order"
    assert mr["groupIdentifier"] == {"system": "urn:oid:1.2.156.112604.1.1.13",
                                     "value": "CF20240301000456"}
    dose = mr["dosageInstruction"][0]
    assert dose["timing"]["code"]["coding"][0]["code"] == "TID"
    assert dose["doseAndRate"][0]["doseQuantity"] == {
        "value": 0.5, "unit": "g", "system": "http://unitsofmeasure.org", "code": "g"}
    assert mr["dispenseRequest"]["expectedSupplyDuration"]["code"] == "d"
    # an unknown frequency code keeps the text and loses only the coding (with a warning)
    conv = load_mapping("prescription").convert_row(
        example_row("prescription") | {"frequency": "每晚一次"}, SRC)
    timing = conv.resources[0]["dosageInstruction"][0]["timing"]
    assert timing == {"code": {"text": "每晚一次"}}
    assert conv.findings[0].location == "frequency"
    # a comparator where a plain number is expected is refused
    with pytest.raises(MappingError) as e:
        load_mapping("prescription").convert_row(example_row("prescription") | {"dose": "<1"}, SRC)
    assert e.value.location == "dose"


def test_views_agree_on_patient_and_encounter_ids():
    visit = by_type(load_mapping("outpatient-visit").convert_row(example_row("outpatient-visit"), SRC))
    obs = load_mapping("lab-result").convert_row(example_row("lab-result"), SRC).resources[0]
    rx = load_mapping("prescription").convert_row(example_row("prescription"), SRC).resources[0]
    for r in (obs, rx):
        assert r["subject"]["reference"] == f"Patient/{visit['Patient']['id']}"
        assert r["encounter"]["reference"] == f"Encounter/{visit['Encounter']['id']}"
    other = SourceInfo(institution="H0002", oid="1.2.156.112604.1.2")
    assert load_mapping("lab-result").convert_row(example_row("lab-result"), other) \
        .resources[0]["id"] != obs["id"]


# -- CSV -------------------------------------------------------------------------------------------

def test_csv_bad_rows_listed_good_rows_kept():
    lines = (FIXTURES / "outpatient-visit.csv").read_text(encoding="utf-8").splitlines()
    bad1 = lines[1].replace("2024-03-01 08:30:00", "2024-13-01 08:30:00")
    bad2 = lines[2].replace("MZ202403010002", "")
    payload = "\n".join([lines[0], bad1, bad2, *lines[3:]]).encode()
    with pytest.raises(CsvRowsError) as e:
        converter("csv:outpatient-visit")(payload, SRC)
    err = e.value
    assert isinstance(err, MappingError) and err.code == "AE"
    assert [(n, x.location) for n, x in err.errors] == [(2, "visit_time"), (3, "visit_no")]
    assert "line 2" in err.reason and "line 3" in err.reason
    assert err.location == "line 2, column visit_time"
    assert len(err.conversions) == len(lines) - 3
    assert err.to_dict()["rows"][1]["line"] == 3
    # each row on its own: the good ones convert, the bad ones fail one by one
    rows = load_mapping("outpatient-visit").split_csv(payload)
    assert [n for n, _ in rows] == [2, 3, 4, 5]
    conv = converter("row:outpatient-visit")
    assert conv(rows[2][1], SRC)[0].unit_id == "outpatient-visit:MZ202403010003"
    with pytest.raises(MappingError):
        conv(rows[0][1], SRC)


def test_csv_header_and_encoding():
    conv = converter("csv:prescription")
    text = (FIXTURES / "prescription.csv").read_text(encoding="utf-8")
    # GB18030 (GBK) exports, BOM, CRLF
    assert len(conv(text.encode("gb18030"), SRC)) == 3
    assert len(conv(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode(), SRC)) == 3
    with pytest.raises(MappingError) as e:
        conv(text.replace("rx_no,", "rx_number,", 1).encode(), SRC)
    assert e.value.code == "AR" and "rx_no" in e.value.reason
    with pytest.raises(MappingError) as e:
        conv(b"", SRC)
    assert e.value.code == "AR"
    with pytest.raises(MappingError):
        conv(text.splitlines()[0].encode(), SRC)  # header only: nothing to convert


def test_csv_shapes_that_lost_values_unsaid():
    """A GB18030 file with GB18030's own BOM was refused (its first column name kept U+FEFF);
    a column named twice kept the last value unsaid; a line with fewer values than the header
    (cut by a newline outside quotes) was taken with its last columns empty."""
    conv = converter("csv:prescription")
    text = (FIXTURES / "prescription.csv").read_text(encoding="utf-8")
    assert len(conv(b"\x84\x31\x95\x33" + text.encode("gb18030"), SRC)) == 3
    header, *rows = text.splitlines()
    with pytest.raises(MappingError) as e:
        conv("\n".join([header + ",RX_NO", *(r + "," for r in rows)]).encode(), SRC)
    assert e.value.code == "AR" and "rx_no" in e.value.reason
    cut = rows[0].rsplit(",", 2)[0]
    with pytest.raises(CsvRowsError) as e:
        conv("\n".join([header, cut, *rows[1:]]).encode(), SRC)
    assert [(n, x.rule) for n, x in e.value.errors] == [(2, "tabular.csv.width")]
    assert "fewer values" in e.value.errors[0][1].reason


def test_csv_quoted_fields_and_blank_lines():
    m = load_mapping("prescription")
    text = (FIXTURES / "prescription.csv").read_text(encoding="utf-8").splitlines()
    row = text[1].replace("阿莫西林胶囊", '"阿莫西林, 胶囊 ""0.25g"""')
    convs = m.convert_csv(f"{text[0]}\n\n{row}\n\n".encode(), SRC)
    assert convs[0].resources[0]["medicationCodeableConcept"]["text"] == '阿莫西林, 胶囊 "0.25g"'


# -- load-time checks ------------------------------------------------------------------------------

def _mutated(tmp_path, mutate) -> Path:
    d = yaml.safe_load((SHIPPED / "outpatient-visit.yaml").read_text(encoding="utf-8"))
    mutate(d)
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(d, allow_unicode=True), encoding="utf-8")
    return path


def _rule(d, resource, i):
    return d["resources"][resource]["rules"][i]


def _set(d, resource, i, **kw):
    rule = _rule(d, resource, i)
    rule.clear()
    rule.update(kw)


@pytest.mark.parametrize("mutate,words", [
    (lambda d: _rule(d, "patient", 2).update(column="patient_no"),
     ["resources.patient.rules[2]", "unknown column 'patient_no'"]),
    (lambda d: _rule(d, "patient", 2).update(path="name[0].txt"),
     ["resources.patient.rules[2]", "bad path", "no element 'txt'"]),
    (lambda d: _rule(d, "patient", 2).update(path="name.text"),
     ["resources.patient.rules[2]", "repeats"]),
    (lambda d: _rule(d, "encounter", 3).update(path="subject[0]"),
     ["resources.encounter.rules[3]", "does not repeat"]),
    (lambda d: _rule(d, "patient", 4).update(transform="gender_map"),
     ["resources.patient.rules[4]", "unknown transform 'gender_map'"]),
    (lambda d: _rule(d, "patient", 4).update(transform={"map": "sexes"}),
     ["resources.patient.rules[4]", "unknown value map 'sexes'"]),
    (lambda d: d["value_maps"]["gender"].update({"1": "M"}),
     ["resources.patient.rules[4]", "'M'", "not codes of gender"]),
    (lambda d: _rule(d, "patient", 7).update(transform={"date": {"format": "DD/MM/YYYY"}}),
     ["resources.patient.rules[7]", "unknown date format"]),
    (lambda d: _rule(d, "patient", 7).update(transform="integer"),
     ["resources.patient.rules[7]", "birthDate", "a string"]),
    (lambda d: _rule(d, "encounter", 3).update(ref="person"),
     ["resources.encounter.rules[3]", "unknown resource 'person'"]),
    (lambda d: _rule(d, "encounter", 3).update(path="period"),
     ["resources.encounter.rules[3]", "ref: cannot fill period"]),
    (lambda d: _rule(d, "patient", 0)["object"]["system"].update(template="urn:oid:{oid}.{dept}"),
     ["resources.patient.rules[0]", "unknown column 'dept'"]),
    (lambda d: _rule(d, "patient", 0)["object"].update(sistem="x"),
     ["resources.patient.rules[0]", "no element 'sistem'"]),
    (lambda d: _rule(d, "patient", 2).update(value="x"),
     ["resources.patient.rules[2]", "exactly one of"]),
    (lambda d: _rule(d, "patient", 2).update(colum="x"),
     ["resources.patient.rules[2]", "unknown keys ['colum']"]),
    (lambda d: d["resources"]["patient"].update(type="Patinet"),
     ["resources.patient.type", "unknown resource type 'Patinet'"]),
    (lambda d: d["resources"]["patient"]["id"].update(columns=["nope"]),
     ["resources.patient.id.columns", "unknown column 'nope'"]),
    (lambda d: _rule(d, "patient", 3).update(value="formal"),
     ["resources.patient.rules[3]", "'formal' is not one of"]),
    (lambda d: d["columns"]["visit_no"].pop("required"),
     ["unit", "key columns must be required: visit_no"]),
    (lambda d: d["resources"]["condition"].update(emit=False),
     ["resources.condition.rules", "emit: false"]),
    (lambda d: d["columns"]["phone"].pop("example"),
     ["columns", "example value for phone"]),
    (lambda d: d["columns"].update(birth_date={"example": "1949-13-31"}),
     ["example", "does not convert", "birth_date"]),
    (lambda d: _set(d, "patient", 7, path="birthDate", value="31.12.1949"),
     ["example row makes an invalid Patient", "Patient.birthDate"]),
    (lambda d: _rule(d, "patient", 7)["transform"]["date"].update(not_after=["visit_tme"]),
     ["resources.patient.rules[7]", "unknown column 'visit_tme'"]),
    (lambda d: _rule(d, "patient", 8)["object"]["value"]["transform"]["string"].update(
        fillers="keep"), ["resources.patient.rules[8]", "fillers: skip"]),
])
def test_bad_mapping_files_refused(tmp_path, mutate, words):
    path = _mutated(tmp_path, mutate)
    with pytest.raises(MappingFileError) as e:
        load_file(path, validate)
    msg = str(e.value)
    assert msg.startswith(str(path)), msg
    for w in words:
        assert w in msg, (w, msg)


def test_the_self_test_validates_with_what_the_caller_passes(tmp_path):
    # the mappers import none of the hub's validation: the caller passes it in, as the connectors'
    # kinds do; a caller that passes none gets the example row converted but not validated
    from connectors.kinds import converter as connector_converter

    path = _mutated(tmp_path, lambda d: _set(d, "patient", 7, path="birthDate", value="31.12.1949"))
    with pytest.raises(MappingFileError, match="example row makes an invalid Patient"):
        connector_converter(f"row:{path}")
    assert load_file(path).name == "outpatient-visit"
    seen = []
    load_file(SHIPPED / "outpatient-visit.yaml", lambda *args: seen.append(args[0]))
    assert seen and "Patient" in seen


def test_bad_yaml_and_mapping_by_path(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("name: [unclosed", encoding="utf-8")
    with pytest.raises(MappingFileError, match="not valid YAML"):
        load_mapping(str(path))
    good = _mutated(tmp_path, lambda d: d.update(name="my-visits"))
    conv = converter(f"row:{good}")(json.dumps(example_row("outpatient-visit")).encode(), SRC)
    assert conv[0].kind == "row:my-visits"
    with pytest.raises(MappingError) as e:
        converter("row:no-such-view")
    assert e.value.code == "AR"


def test_decimal_values_exact():
    from fhir_mapping.tabular.values import decimal_value

    assert decimal_value("5.6") == 5.6
    assert decimal_value(Decimal("12")) == 12
    assert bytes(orjson.dumps(decimal_value("1.50"))) == b"1.50"
    assert bytes(orjson.dumps(decimal_value("0.000001230"))) == b"0.000001230"
    # written with an exponent: as written, as FHIR's decimal allows (5.6e2 is two digits)
    assert bytes(orjson.dumps(decimal_value("1E+3"))) == b"1E+3"
    assert bytes(orjson.dumps(decimal_value("5.6e2"))) == b"5.6e2"
    assert bytes(orjson.dumps(decimal_value("+1.50e-3"))) == b"1.50e-3"
    obs = load_mapping("lab-result").convert_row(
        example_row("lab-result") | {"result_value": "5.6e2"}, SRC).resources[0]
    assert b'"valueQuantity":{"value":5.6e2,' in orjson.dumps(obs)
    check_valid([obs])
    assert bytes(orjson.dumps(decimal_value("-0.0"))) == b"0.0"


def test_hub_accepts_and_replay_changes_nothing(tmp_path, request):
    from hub.core.ingest import Context, Hub
    from hub.core.resource import parse_json

    from tests.conftest import make_settings

    hub = Hub(make_settings("sqlite", tmp_path, request).open_store())
    try:
        items = []
        for name in shipped_mappings():
            for c in converter(f"csv:{name}")((FIXTURES / f"{name}.csv").read_bytes(), SRC):
                items += [orjson.dumps(r) for r in c.resources]

        def ingest():
            results = list(hub.ingest(((raw, parse_json(raw)) for raw in items), Context()))
            assert all(not isinstance(r, Exception) for r in results), results
            return [(r.rtype, r.rid, r.version) for r in results]

        first = ingest()
        assert {v for _, _, v in first} == {1}
        assert ingest() == first  # the same rows again: no new versions
    finally:
        hub.store.close()


@pytest.mark.parametrize("filler", ["0", "-", "无"])
def test_a_result_whose_patient_is_a_filler_with_no_visit_is_refused(filler):
    """A positive HIV result of patient "0" with no visit number was stored with no subject:
    reachable from no patient's record. Refused (a dead letter to replay after a fix)."""
    row = example_row("lab-result") | {"patient_id": filler, "visit_no": None}
    with pytest.raises(MappingError) as e:
        load_mapping("lab-result").convert_row(row, SRC)
    assert e.value.location == "patient_id"


def test_full_width_keys_are_the_same_key_and_other_scripts_digits_no_number():
    """Ｐ１００ keyed another Patient than P100 (one person split in two), a full-width resident
    ID number failed its check; ١٢٣ (Arabic-Indic digits) was stored as the number 123."""
    m = load_mapping("outpatient-visit")
    base = example_row("outpatient-visit")
    ascii_, wide = (by_type(m.convert_row(base | {"patient_id": v}, SRC))["Patient"]["id"]
                    for v in ("P100", "Ｐ１００"))
    assert ascii_ == wide
    lab = load_mapping("lab-result")
    obs = by_type(lab.convert_row(example_row("lab-result") | {"result_value": "١٢٣"}, SRC))
    assert "valueQuantity" not in obs["Observation"]


def test_an_older_row_never_overwrites_what_a_newer_one_wrote(hub):
    """A re-sent older export of a visit (updated_at 09:00 after 12:00) set the Encounter back
    and brought the old diagnosis back: the rows carried no source order."""
    from hub.core.ingest import Context, Op

    m = load_mapping("outpatient-visit")
    base = example_row("outpatient-visit")

    def write(updated: str, diag: str) -> None:
        conv = m.convert_row(base | {"updated_at": updated, "diag_code": diag}, SRC)
        ops = [Op("PUT", r["resourceType"], r["id"], r, url=f"{r['resourceType']}/{r['id']}")
               for r in conv.resources]
        hub.execute(ops, Context(source={"feed": "db"}), atomic=True)

    write("2024-03-01 12:00:00", "J20.900")
    write("2024-03-01 09:00:00", "J06.900")
    cond = by_type(m.convert_row(base, SRC))["Condition"]
    stored = orjson.loads(hub.store.latest_many("Condition", [cond["id"]])[cond["id"]][1]
                          .partition(b"\n")[2])
    assert stored["code"]["coding"][0]["code"] == "J20.900"


def test_a_diagnosis_given_by_name_only_makes_its_condition():
    """A visit whose HIS recorded the diagnosis in words only (no ICD code) made no Condition:
    the diagnosis was lost. It is a Condition named in text, with no coding made up for it."""
    m = load_mapping("outpatient-visit")
    conv = m.convert_row(example_row("outpatient-visit") | {"diag_code": None}, SRC)
    res = by_type(conv)
    cond, enc = res["Condition"], res["Encounter"]
    assert cond["code"] == {"text": "急性上呼吸道感染"}
    assert enc["diagnosis"] == [{"condition": {"reference": f"Condition/{cond['id']}"}, "rank": 1}]
    assert [(f.severity, f.rule, f.location) for f in conv.findings] == [
        ("information", "tabular.uncoded", "diag_code")]
    assert conv.deletes == []
    check_valid(conv.resources)


def test_a_doctor_given_by_name_only_is_kept_by_name():
    """A visit whose doctor the HIS names without a staff number lost its doctor. The name is
    kept as the participant's display; no Practitioner is keyed on a name (two 李四 are two)."""
    m = load_mapping("outpatient-visit")
    conv = m.convert_row(example_row("outpatient-visit") | {"doctor_code": ""}, SRC)
    res = by_type(conv)
    assert "Practitioner" not in res
    [part] = res["Encounter"]["participant"]
    assert part["individual"] == {"display": "李四"}
    assert part["type"][0]["coding"][0]["code"] == "ATND"
    check_valid(conv.resources)
    rx = load_mapping("prescription").convert_row(
        example_row("prescription") | {"doctor_code": None}, SRC)
    assert by_type(rx)["MedicationRequest"]["requester"] == {"display": "李四"}


def _write(hub, conv) -> list:
    """``conv`` written as a feed writes it: its Bundle entries, parsed as the hub parses them."""
    from hub.api.bundles import parse_entry
    from hub.core.ingest import Context

    ops = [parse_entry(i, e, "") for i, e in enumerate(conv.entries())]
    results = hub.execute(ops, Context(source={"feed": "db"}), atomic=True)
    assert not any(isinstance(r, Exception) for r in results), results
    return results


def _said(results) -> list[str]:
    return [i.diagnostics for r in results for i in r.issues]


def _stored(hub, rtype: str, rid: str) -> dict:
    return orjson.loads(hub.store.latest_many(rtype, [rid])[rid][1].partition(b"\n")[2])


def test_a_column_cleared_in_the_view_is_cleared_in_the_hub(hub, tmp_path):
    """A withdrawn diagnosis stayed current (the row made no Condition to replace the old one),
    and a phone, address and birth date cleared in a patient view stayed on the Patient (the hub
    keeps what a feed's Patient does not mention). A view's empty cell is said, not unsaid, of
    what the row owns; a column the export lacks still says nothing; a visit row's empty phone
    says nothing of the Patient it shares with the patient's other visits and feeds."""
    from hub.core.errors import FhirError

    m = load_mapping("outpatient-visit")
    base = example_row("outpatient-visit")
    first = by_type(m.convert_row(base, SRC))
    pid, cid = first["Patient"]["id"], first["Condition"]["id"]
    _write(hub, m.convert_row(base, SRC))
    phone = [{"system": "phone", "value": "13800138000"}]
    cleared = base | {"phone": None, "address": "", "birth_date": None, "diag_code": None,
                      "diag_name": None, "updated_at": "2024-03-01 11:00:00"}
    _write(hub, m.convert_row(cleared, SRC))
    assert _stored(hub, "Patient", pid)["telecom"] == phone  # shared: not the visit's to clear
    with pytest.raises(FhirError) as e:
        hub.read("Condition", cid)
    assert e.value.status == 410
    encounter = _stored(hub, "Encounter", first["Encounter"]["id"])
    assert "diagnosis" not in encounter and "cleared" not in orjson.dumps(encounter).decode()

    def patient_view(d):  # one row per patient, keyed by the record number: it owns the Patient
        d.update(name="patients", unit=["patient_id"])
        d["resources"] = {"patient": d["resources"]["patient"]}
    pm = load_mapping(str(_mutated(tmp_path, patient_view)))
    # a later export without the phone column at all: the phone is not said, it stays
    _write(hub, pm.convert_row({k: v for k, v in base.items() if k != "phone"}
                               | {"updated_at": "2024-03-02 10:00:00"}, SRC))
    assert _stored(hub, "Patient", pid)["telecom"] == phone
    _write(hub, pm.convert_row(cleared | {"updated_at": "2024-03-02 11:00:00"}, SRC))
    patient = _stored(hub, "Patient", pid)
    assert not {"telecom", "address", "birthDate"} & set(patient)
    assert patient["name"] == [{"text": "张三", "use": "official"}]
    assert len(patient["identifier"]) == 2  # one view's cells retract no identifier
    assert "cleared" not in orjson.dumps(patient).decode()  # the mark is never stored


def test_a_bad_value_skipped_in_a_view_keeps_the_stored_one(hub, tmp_path):
    """A patient view's birth date rule with ``on_error: skip`` left a bad date (1985-13-45) out
    and then marked birthDate cleared, so the hub deleted the good stored birth date. A value
    left out as bad says nothing of the element; only empty cells clear it."""
    m = load_mapping("outpatient-visit")
    base = example_row("outpatient-visit")
    pid = by_type(m.convert_row(base, SRC))["Patient"]["id"]

    def patient_view(d):
        d.update(name="patients", unit=["patient_id"])
        d["resources"] = {"patient": d["resources"]["patient"]}
        for rule in d["resources"]["patient"]["rules"]:
            if rule.get("path") == "birthDate":
                rule["on_error"] = "skip"
    pm = load_mapping(str(_mutated(tmp_path, patient_view)))
    _write(hub, pm.convert_row(base, SRC))
    bad = pm.convert_row(base | {"birth_date": "1985-13-45", "updated_at": "2024-03-02 10:00:00"},
                         SRC)
    assert [f.rule for f in bad.findings] == ["tabular.value-skipped"]
    _write(hub, bad)
    assert _stored(hub, "Patient", pid)["birthDate"] == "1949-12-31"
    # an empty cell still clears it
    _write(hub, pm.convert_row(base | {"birth_date": " ", "updated_at": "2024-03-02 11:00:00"}, SRC))
    assert "birthDate" not in _stored(hub, "Patient", pid)


def test_an_older_rows_withdrawn_diagnosis_deletes_nothing_newer(hub):
    """A late older row (10:00, diagnosis cells empty) after a newer one (11:00, with its
    diagnosis): the Patient and Encounter were kept as newer, but the delete carried no source
    order and went through, leaving the Encounter's diagnosis pointing at a deleted Condition.
    A delete obeys the source order as a write does."""
    from hub.core.errors import FhirError

    m = load_mapping("outpatient-visit")
    row = example_row("outpatient-visit") | {"updated_at": "2024-03-01 11:00:00"}
    res = by_type(m.convert_row(row, SRC))
    cid, eid = res["Condition"]["id"], res["Encounter"]["id"]
    _write(hub, m.convert_row(row, SRC))
    older = m.convert_row(row | {"diag_code": None, "diag_name": None,
                                 "updated_at": "2024-03-01 10:00:00"}, SRC)
    assert older.deletes == [f"Condition/{cid}"]
    said = _said(_write(hub, older))
    assert hub.read("Condition", cid)  # not 410
    assert _stored(hub, "Condition", cid)["code"]["coding"][0]["code"] == "J06.900"
    assert _stored(hub, "Encounter", eid)["diagnosis"][0]["condition"] == {
        "reference": f"Condition/{cid}"}
    assert any(f"Condition/{cid} not deleted" in s for s in said), said
    # withdrawn by a newer row, it is deleted
    _write(hub, m.convert_row(row | {"diag_code": None, "diag_name": None,
                                     "updated_at": "2024-03-01 12:00:00"}, SRC))
    with pytest.raises(FhirError) as e:
        hub.read("Condition", cid)
    assert e.value.status == 410


def test_a_tombstone_obeys_the_order_of_the_rows_around_it(hub):
    """A tombstone read after its row was inserted again deleted the newer row; a row re-sent
    older than the deletion wrote its resources again. The deletion's time (``@deleted_at``,
    the deletion log's) orders the delete, and the hub keeps it with the deletion."""
    from hub.core.errors import FhirError

    m = load_mapping("outpatient-visit")
    row = example_row("outpatient-visit") | {"updated_at": "2024-03-01 11:00:00"}
    eid = by_type(m.convert_row(row, SRC))["Encounter"]["id"]

    def tombstone(at: str | None):
        return m.convert_row({"visit_no": row["visit_no"], "patient_id": row["patient_id"],
                              "@deleted": True, "@deleted_at": at}, SRC)

    def gone() -> bool:
        try:
            hub.read("Encounter", eid)
        except FhirError as e:
            assert e.status == 410
            return True
        return False

    _write(hub, m.convert_row(row, SRC))  # inserted again at 11:00 after a deletion at 10:30
    said = _said(_write(hub, tombstone("2024-03-01 10:30:00")))
    assert any(f"Encounter/{eid} not deleted" in s for s in said), said
    assert not gone() and _stored(hub, "Encounter", eid)["status"] == "finished"
    _write(hub, tombstone("2024-03-01 12:00:00"))  # deleted after it
    assert gone()
    said = _said(_write(hub, m.convert_row(row, SRC)))  # the 11:00 row re-sent: stays deleted
    assert gone() and any("stays deleted" in s for s in said), said
    _write(hub, m.convert_row(row | {"updated_at": "2024-03-01 13:00:00"}, SRC))  # inserted again
    assert not gone()
    # a tombstone without a time: a finding, and its delete is not ordered
    conv = tombstone(None)
    assert [f.rule for f in conv.findings] == ["tabular.row-deleted", "tabular.source-order"]
    assert [e["request"] for e in conv.entries()] == [
        {"method": "DELETE", "url": ref} for ref in conv.deletes]


def test_a_deleted_row_deletes_what_it_wrote_and_only_that():
    """A tombstone (the key, the other columns the row's own resources are keyed by, and
    ``@deleted``) deletes the resources keyed by the row alone; the Patient, shared with the
    patient's other visits, stays."""
    m = load_mapping("outpatient-visit")
    res = by_type(m.convert_row(example_row("outpatient-visit"), SRC))
    [conv] = converter("row:outpatient-visit")(
        json.dumps({"VISIT_NO": "MZ202403010001", "PATIENT_ID": "0012345678", "@deleted": True,
                    "@deleted_at": "2024-03-02 09:00:00"}).encode(), SRC)
    assert conv.resources == [] and conv.unit_id == "outpatient-visit:MZ202403010001"
    assert sorted(conv.deletes) == sorted(
        [f"Encounter/{res['Encounter']['id']}", f"Condition/{res['Condition']['id']}"])
    assert [f.rule for f in conv.findings] == ["tabular.row-deleted"]
    [lab] = converter("row:lab-result")(
        json.dumps({"report_no": "R1", "item_code": "GLU", "@deleted": True}).encode(), SRC)
    assert lab.deletes == [f"Observation/{stable_id('Observation', 'H0001', 'LAB', 'R1', 'GLU')}"]
    with pytest.raises(MappingError) as e:
        m.convert_row({"@deleted": True}, SRC)
    assert e.value.location == "visit_no"
    # the visit's Encounter is keyed by its patient too: without the record number the tombstone
    # would name another Encounter than the row wrote
    with pytest.raises(MappingError) as e:
        m.convert_row({"visit_no": "MZ202403010001", "@deleted": True}, SRC)
    assert e.value.location == "patient_id" and "deletion log must carry it" in e.value.reason


@pytest.mark.parametrize("name,renamed,named", [
    # a lab view whose result column was renamed: the Observation's next version had no value,
    # still final, and no source order
    ("lab-result", {"result_value": "result"}, ["result_value"]),
    ("lab-result", {"updated_at": "upd"}, ["updated_at"]),
    # a visit view whose diagnosis columns were renamed stopped every diagnosis without a word
    ("outpatient-visit", {"diag_code": "icd_code", "diag_name": "icd_name"},
     ["diag_code", "diag_name"]),
    ("outpatient-visit", {"dept_name": "ks_name"}, ["dept_name"]),
    ("prescription", {"dose": "dosage"}, ["dose"]),
])
def test_a_column_the_row_lacks_refuses_the_row_rather_than_erase_what_it_owns(
        name, renamed, named):
    m = load_mapping(name)
    row = {renamed.get(c, c): v for c, v in example_row(name).items()}
    with pytest.raises(MappingError) as e:
        m.convert_row(row, SRC)
    assert (e.value.rule, e.value.code, e.value.location) == ("tabular.columns", "AE", named[0])
    assert f"no column {', '.join(named)}:" in e.value.reason
    # the same columns there and empty: what the HIS cleared is cleared
    assert m.convert_row(example_row(name) | dict.fromkeys(named), SRC).resources
    # a CSV export with that header is refused whole, before any row
    header = ",".join(row)
    values = ",".join(f'"{v}"' for v in row.values())
    with pytest.raises(MappingError) as e:
        m.convert_csv(f"{header}\n{values}\n".encode(), SRC)
    assert (e.value.rule, e.value.code) == ("tabular.csv.header", "AR")
    assert f"no column {', '.join(named)}:" in e.value.reason


def test_a_column_only_the_shared_patient_reads_may_be_missing():
    """A visit view without the patient's phone or address says nothing of them: the Patient is
    shared, and the hub keeps what a feed's Patient leaves unsaid."""
    row = {c: v for c, v in example_row("outpatient-visit").items()
           if c not in ("phone", "address", "id_card_no", "sex_code", "birth_date")}
    conv = load_mapping("outpatient-visit").convert_row(row, SRC)
    assert {r["resourceType"] for r in conv.resources} == {"Patient", "Encounter", "Condition"}


@pytest.mark.parametrize("birth,visit,updated,kept,said", [
    ("19800101", "2024-03-01 08:30:00", "2024-03-01 09:00:00", "1980-01-01", []),
    ("20240301", "2024-03-01 08:30:00", "2024-03-01 09:00:00", "2024-03-01", []),  # born that day
    # in the future: after the visit and after the row was written
    ("20990101", "2024-03-01 08:30:00", "2024-03-01 09:00:00", None, ["visit_time"]),
    ("20250101", "2024-03-01 08:30:00", "2024-03-01 09:00:00", None, ["visit_time"]),
    ("20240302", "2024-03-01 23:30:00+08:00", None, None, ["visit_time"]),
    # a visit booked ahead: the birth not after it, but after the row was written (the future)
    ("20240303", "2024-03-05 08:30:00", "2024-03-01 09:00:00", None, ["updated_at"]),
])
def test_a_birth_after_the_visit_or_in_the_future_is_left_out_with_a_finding(
        birth, visit, updated, kept, said):
    row = example_row("outpatient-visit") | {"birth_date": birth, "visit_time": visit,
                                             "updated_at": updated}
    conv = load_mapping("outpatient-visit").convert_row(row, SRC)
    patient = by_type(conv)["Patient"]
    assert patient.get("birthDate") == kept
    assert [(f.severity, f.rule, f.location) for f in conv.findings] == [
        ("warning", "tabular.date.after", "birth_date")] * len(said)
    for other, f in zip(said, conv.findings):
        assert f"later than {other}" in f.message and birth not in f.message
    assert "birthDate" not in orjson.dumps(patient.get("meta", {})).decode()  # never said cleared


@pytest.mark.parametrize("phone,kept", [
    ("13800138000", [{"system": "phone", "value": "13800138000"}]),
    ("010-65432100", [{"system": "phone", "value": "010-65432100"}]),
    ("-", None), ("无", None), ("不详", None), ("/", None),
    # read past punctuation and brackets, as identifiers are: a phone "无。" was kept as a number
    ("无。", None), ("（不详）", None), ("N/A", None), ("无/不详", None)])
def test_a_filler_phone_number_is_left_out_with_a_finding(phone, kept):
    conv = load_mapping("outpatient-visit").convert_row(
        example_row("outpatient-visit") | {"phone": phone}, SRC)
    assert by_type(conv)["Patient"].get("telecom") == kept
    assert [(f.rule, f.location) for f in conv.findings] == (
        [] if kept else [("tabular.value.filler", "phone")])
