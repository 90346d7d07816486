"""Property-based tests of the parse-and-map path: whatever the bytes, the mapper returns a
Conversion whose resources validate, or raises MappingError; never anything else.

The strict ``_convert`` is used (no last-line catch-all), so a mapper bug shows up here as the
exception it really is.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fhir_mapping.base import MappingError, SourceInfo
from fhir_mapping.hl7v2 import _convert
from tests.test_hl7v2_support import FIXTURES, SAMPLES, assert_valid

SRC = SourceInfo(institution="H1", oid="2.16.156.10011.99.1.1")
SEEDS = [p.read_bytes() for p in sorted(FIXTURES.glob("*.hl7"))]
if SAMPLES.is_dir():
    SEEDS += [SAMPLES.joinpath(n).read_bytes() for n in (
        "ADT-A01-01.hl7", "ORU-R01-01.hl7", "LAB-ORU-1.hl7", "SIU-S12-01.hl7", "MDM-T02-01.hl7",
        "DFT-P03-01.hl7", "VXU-V04-01.hl7", "RDE-O11-01.hl7", "ADT-A40-01.hl7", "OML-O21-01.hl7")]
EXAMPLES = int(os.environ.get("HL7V2_EXAMPLES", "150"))  # raise for a longer hunt
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))


def check(payload: bytes) -> None:
    try:
        conv = _convert(payload, SRC)
    except MappingError as e:
        assert e.code in ("AR", "AE") and e.reason and e.rule
        return
    assert_valid(conv)
    assert _convert(payload, SRC).resources == conv.resources  # deterministic


@SETTINGS
@given(st.binary(max_size=400))
def test_arbitrary_bytes(data):
    check(data)


@SETTINGS
@given(st.binary(max_size=300))
def test_arbitrary_bytes_after_an_msh(data):
    check(b"MSH|^~\\&|A|B|C|D|20240101||ADT^A01|X|P|2.5\r" + data)


_SEPS = b"|^~&\\\r\n"
_GARBAGE = st.one_of(
    st.binary(max_size=12),
    st.text(max_size=12).map(lambda s: s.encode("utf-8")),
    st.sampled_from([b"|", b"^", b"~", b"&", b"\\", b"\\X41\\", b"\\T\\", b"\\", b"\r", b"\n", b"\r\n",
                     b"\xef\xbb\xbf", b"\x00", b"MSH|", b"PID|1||", b"OBX|1|NM|", b"99999999999999999999",
                     b"20241399", b"-0.", b"1e400", "张三".encode("gb18030"), "张三".encode("utf-8")]),
)


@st.composite
def mutated(draw):
    msg = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["truncate", "delete-sep", "dup-sep", "insert", "replace", "encode"]))
        if not msg:
            break
        i = draw(st.integers(0, len(msg) - 1))
        if op == "truncate":
            del msg[i:]
        elif op in ("delete-sep", "dup-sep"):
            positions = [k for k, b in enumerate(msg) if b in _SEPS]
            if positions:
                k = positions[draw(st.integers(0, len(positions) - 1))]
                if op == "delete-sep":
                    del msg[k]
                else:
                    msg[k:k] = msg[k:k + 1]
        elif op == "insert":
            msg[i:i] = draw(_GARBAGE)
        elif op == "replace":
            j = min(len(msg), i + draw(st.integers(1, 20)))
            msg[i:j] = draw(_GARBAGE)
        elif op == "encode":  # the same text in another encoding than MSH-18 says
            try:
                msg = bytearray(bytes(msg).decode("utf-8", "replace").encode(
                    draw(st.sampled_from(["gb18030", "utf-16", "latin-1"])), "replace"))
            except (UnicodeError, LookupError):
                pass
    return bytes(msg)


@SETTINGS
@given(mutated())
def test_mutated_valid_messages(payload):
    check(payload)


@settings(max_examples=max(60, EXAMPLES // 2), deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(SEEDS), st.integers(0, 40), st.integers(1, 30), st.text(max_size=30))
def test_field_garbage(seed, seg_pick, field_pick, garbage):
    """Replace one field of one segment by arbitrary text (separators included)."""
    text = seed.decode("gb18030" if b"GB" in seed[:200] else "utf-8", "replace").lstrip("\ufeff")
    segs = text.replace("\r\n", "\r").replace("\n", "\r").split("\r")
    k = seg_pick % len(segs)
    fields = segs[k].split("|")
    if len(fields) > 1:
        fields[min(field_pick, len(fields) - 1) or 1] = garbage
        segs[k] = "|".join(fields)
    check("\r".join(segs).encode("utf-8"))
