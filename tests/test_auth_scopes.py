"""SMART scopes: parsing (v2 and the v1 forms), what is malformed, which scopes permit an access,
and what a client asking for some scopes is granted within those it is allowed."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hub.auth.scopes import Scope, format_scopes, narrow, parse_scopes, permits
from hub.core.errors import FhirError

LAB = "category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory"


def one(text: str) -> Scope:
    [scope] = parse_scopes(text)
    return scope


def test_v2_resource_scopes():
    s = one("system/Patient.rs")
    assert (s.context, s.rtype, s.perms, s.query, s.text) == ("system", "Patient", frozenset("rs"), (),
                                                              "system/Patient.rs")
    assert one("patient/*.cruds").perms == frozenset("cruds")
    assert one("user/Observation.cud").perms == frozenset("cud")
    assert one("system/Encounter.s").perms == {"s"}


def test_a_query_narrows_a_scope():
    s = one(f"patient/Observation.rs?{LAB}")
    assert s.rtype == "Observation" and s.perms == frozenset("rs")
    assert s.query == (("category", "http://terminology.hl7.org/CodeSystem/observation-category|laboratory"),)
    assert one("system/Observation.rs?b=2&a=1").query == (("a", "1"), ("b", "2"))  # order-free
    assert one("system/Observation.rs?code=http%3A%2F%2Floinc.org%7C1234-5").query == (
        ("code", "http://loinc.org|1234-5"),)


@pytest.mark.parametrize("v1, letters", [("read", "rs"), ("write", "cud"), ("*", "cruds")])
def test_v1_forms_read_as_v2(v1, letters):
    s = one(f"user/Patient.{v1}")
    assert s.perms == frozenset(letters) and s.text == f"user/Patient.{v1}"


def test_other_scopes_are_kept_and_grant_nothing():
    scopes = parse_scopes("openid fhirUser launch/patient offline_access launch")
    assert [s.text for s in scopes] == ["openid", "fhirUser", "launch/patient", "offline_access", "launch"]
    assert not any(s.is_resource for s in scopes)
    assert permits(scopes, "r", "Patient") == []


def test_spaces_and_duplicates():
    assert format_scopes(parse_scopes("  system/Patient.rs   system/Patient.rs openid ")) == \
        "system/Patient.rs openid"
    assert parse_scopes("") == []


@pytest.mark.parametrize("text", [
    "system/Patient.sr",  # not in cruds order
    "system/Patient.rr",
    "system/Patient.x",
    "system/Patient.",
    "system/Patient",
    "system/.rs",
    "system/patient.rs",  # not a resource type
    "system/NoSuchType.rs",
    "user/Patient.readwrite",
    "patient/*.rs?",
    "patient/*.rs?category",
    "patient/*.rs?=x",
    "system/Patient.rs\tsystem/Observation.rs",
    'open"id',
    "système/Patient.rs",
])
def test_malformed_scopes_are_bad_requests(text):
    with pytest.raises(FhirError) as e:
        parse_scopes(text)
    assert e.value.status == 400 and e.value.issues[0].code == "invalid"


def test_permits():
    scopes = parse_scopes(f"system/Patient.rs system/*.s user/Observation.cu system/Observation.r?{LAB} openid")
    assert [s.text for s in permits(scopes, "r", "Patient")] == ["system/Patient.rs"]
    assert [s.text for s in permits(scopes, "s", "Encounter")] == ["system/*.s"]
    assert [s.text for s in permits(scopes, "s", "Patient")] == ["system/Patient.rs", "system/*.s"]
    assert [s.text for s in permits(scopes, "r", "Observation")] == [f"system/Observation.r?{LAB}"]
    assert permits(scopes, "d", "Patient") == []
    assert permits(scopes, "c", "Encounter") == []
    with pytest.raises(ValueError):
        permits(scopes, "rs", "Patient")


def granted(requested: str, allowed: str) -> str:
    return format_scopes(narrow(parse_scopes(requested), parse_scopes(allowed)))


def test_narrow_keeps_what_is_covered():
    assert granted("system/Patient.rs", "system/*.rs") == "system/Patient.rs"
    assert granted("system/Patient.read", "system/*.cruds") == "system/Patient.read"  # as asked
    assert granted("system/*.rs", "system/*.cruds") == "system/*.rs"


def test_narrow_grants_the_intersection_of_letters():
    assert granted("system/Patient.cruds", "system/*.rs") == "system/Patient.rs"
    assert granted("system/Patient.write", "system/Patient.cu") == "system/Patient.cu"
    # letters allowed by different scopes add up
    assert granted("system/Patient.rs", "system/Patient.r system/*.s") == "system/Patient.rs"


def test_narrow_drops_what_is_not_covered():
    assert granted("system/*.rs", "system/Patient.rs") == ""  # a wildcard is wider than one type
    assert granted("user/Patient.rs", "system/*.rs") == ""  # another context
    assert granted("system/Patient.cud", "system/*.rs") == ""  # no letter in common
    assert granted("system/Patient.rs openid", "system/*.rs") == "system/Patient.rs"
    assert granted("openid system/Patient.rs", "openid system/*.rs") == "openid system/Patient.rs"


def test_narrow_and_queries():
    assert granted(f"system/Observation.rs?{LAB}", "system/Observation.rs") == f"system/Observation.rs?{LAB}"
    assert granted(f"system/Observation.rs?{LAB}", f"system/*.rs?{LAB}") == f"system/Observation.rs?{LAB}"
    assert granted("system/Observation.rs", f"system/Observation.rs?{LAB}") == ""  # wider than allowed
    assert granted("system/Observation.rs?category=vital-signs", f"system/Observation.rs?{LAB}") == ""
    assert granted(f"system/Observation.cruds?{LAB}", "system/*.rs") == f"system/Observation.rs?{LAB}"


def check_parse(text: str) -> None:
    """A bad request, or scopes that read back the same from their formatted string."""
    try:
        scopes = parse_scopes(text)
    except FhirError as e:
        assert e.status == 400
    else:
        assert all(isinstance(s, Scope) for s in scopes)
        assert parse_scopes(format_scopes(scopes)) == scopes


@given(st.text())
def test_parse_scopes_raises_nothing_but_fhir_errors(text):
    check_parse(text)


PIECES = ["system/", "user/", "patient/", "launch/", "Patient", "Observation", "*", ".", "rs", "cruds", "sr",
          "read", "write", "?", "=", "&", "|", "%", "%zz", " ", "\t", "\\", '"', "é"]


@given(st.lists(st.one_of(st.sampled_from(PIECES), st.text(max_size=2)), max_size=12).map("".join))
def test_scope_like_text_raises_nothing_but_fhir_errors(text):
    check_parse(text)


@given(st.lists(st.sampled_from(["system/Patient.rs", "system/*.cruds", "user/Observation.cu", "system/*.s",
                                 "system/Observation.read", f"system/Observation.rs?{LAB}", "openid",
                                 "patient/*.write", "system/Patient.d"]), max_size=5),
       st.lists(st.sampled_from(["system/Patient.r", "system/*.rs", "user/*.cruds", "openid",
                                 f"system/*.rs?{LAB}", "patient/Patient.cud"]), max_size=4))
def test_what_is_granted_is_allowed_and_asked_for(requested, allowed):
    asked, allow = parse_scopes(" ".join(requested)), parse_scopes(" ".join(allowed))
    for g in narrow(asked, allow):
        if g.is_resource:
            for letter in g.perms:
                assert any(a.covers(Scope(g.context, g.rtype, frozenset(letter), g.query, "")) for a in allow)
            assert any(a.context == g.context and a.rtype == g.rtype and g.perms <= a.perms for a in asked)
        else:
            assert g in asked and g.text in allowed
