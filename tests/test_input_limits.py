"""Limits on what a request may hold, against ``hub serve`` over real sockets.

* HUB_MAX_STRING: no string in FHIR JSON input (a value, or a key) longer than the limit (1 MiB by
  default), except the values of keys named "data" (base64 of Attachment.data, Binary.data): 413
  with an OperationOutcome naming the element; the server keeps answering.
* HUB_MAX_HEADER: the request line and headers at most that many bytes (64 KiB): beyond, 431 (400
  from uvicorn while the head is incomplete) and the connection closed; the server keeps answering.
* HUB_HEADER_TIMEOUT: a head sent a byte at a time is cut off (hub.api.headtimeout).
"""

from __future__ import annotations

import base64
import socket
import time
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hub.core import httpclient, jsontext
from hub.core.errors import FhirError
from hub.core.resource import parse_json
from tests.conftest import FHIR_JSON, LiveServer, make_settings

MiB = 1 << 20


HEAD_TIMEOUT = 2.0


@pytest.fixture(scope="module")
def live(request, tmp_path_factory):
    settings = make_settings("sqlite", tmp_path_factory.mktemp("limits"), request)
    settings.header_timeout = HEAD_TIMEOUT
    with LiveServer(settings) as server:
        yield server


@pytest.fixture
def client(live):
    with httpx.Client(base_url=live.base, timeout=60, auth=live.auth,
                      headers={"accept": "application/fhir+json"}, verify=httpclient.verify()) as c:
        yield c


def still_serving(client) -> None:
    assert client.get("metadata").status_code == 200
    r = client.post("Patient", json={"resourceType": "Patient", "name": [{"family": "Ok"}]},
                    headers=FHIR_JSON)
    assert r.status_code == 201, r.text


def refused(r: httpx.Response, expression: str) -> None:
    assert r.status_code == 413, r.text[:500]
    issue = r.json()["issue"][0]
    assert issue["code"] == "too-costly"
    assert issue["expression"] == [expression]
    assert "HUB_MAX_STRING" in issue["diagnostics"]


def test_a_2_mib_name_is_refused_naming_its_element(client):
    big = "x" * (2 * MiB)
    r = client.post("Patient", json={"resourceType": "Patient", "name": [{"family": "A"},
                                                                         {"text": big}]},
                    headers=FHIR_JSON)
    refused(r, "Patient.name[1].text")
    r = client.put("Patient/big", json={"resourceType": "Patient", "id": "big",
                                        "name": [{"text": big}]}, headers=FHIR_JSON)
    refused(r, "Patient.name[0].text")
    assert client.get("Patient/big").status_code == 404  # nothing stored
    still_serving(client)


def test_multibyte_strings_are_counted_in_characters(client):
    # 400 000 CJK characters: 1.2 MB of UTF-8, fewer characters than the limit
    r = client.post("Patient", json={"resourceType": "Patient",
                                     "name": [{"text": "张" * 400_000}]}, headers=FHIR_JSON)
    assert r.status_code == 201, r.text[:300]


def test_inside_a_bundle_the_entry_is_named(client):
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Patient", "name": [{"family": "B"}]},
         "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Observation", "status": "final",
                      "code": {"text": "y" * (MiB + 1)}},
         "request": {"method": "POST", "url": "Observation"}}]}
    r = client.post("", json=bundle, headers=FHIR_JSON)
    refused(r, "Bundle.entry[1].resource.code.text")
    still_serving(client)


def test_a_long_key_is_refused(client):
    r = client.post("Patient", content=b'{"resourceType":"Patient","' + b"k" * (MiB + 5) + b'":1}',
                    headers=FHIR_JSON)
    refused(r, "Patient")
    still_serving(client)


def test_base64_data_may_be_longer(client):
    blob = base64.b64encode(b"\x89PNG" + b"\0" * (2 * MiB)).decode()
    assert len(blob) > 2 * MiB
    r = client.post("Binary", json={"resourceType": "Binary", "contentType": "image/png",
                                    "data": blob}, headers=FHIR_JSON)
    assert r.status_code == 201, r.text[:300]
    r = client.post("Patient", json={"resourceType": "Patient", "photo": [
        {"contentType": "image/png", "data": blob}]}, headers=FHIR_JSON)
    assert r.status_code == 201, r.text[:300]
    # the exemption is the value of "data" only: a long title beside it is refused
    r = client.post("Patient", json={"resourceType": "Patient", "photo": [
        {"contentType": "image/png", "data": "AAAA", "title": "t" * (MiB + 1)}]},
                    headers=FHIR_JSON)
    refused(r, "Patient.photo[0].title")


@settings(max_examples=15, deadline=None)
@given(path=st.lists(st.sampled_from(["extension", "valueString", "note", "text", "x"]),
                     min_size=1, max_size=6),
       extra=st.integers(min_value=1, max_value=4096))
def test_hostile_long_strings_anywhere_are_refused_and_the_server_answers(live, path, extra):
    """A string just over the limit at an arbitrary depth: 413 (or 400 when the rest of the body
    is not FHIR; never a crash, never stored), and the server keeps answering."""
    node: Any = "z" * (MiB + extra)
    for key in reversed(path):
        node = {key: [node]} if key == "extension" else {key: node}
    body = {"resourceType": "Patient", **node}
    with httpx.Client(base_url=live.base, timeout=60, auth=live.auth, verify=httpclient.verify()) as c:
        r = c.post("Patient", json=body, headers=FHIR_JSON)
        assert r.status_code == 413, r.text[:300]
        assert r.json()["issue"][0]["expression"][0].startswith("Patient.")
        assert c.get("metadata").status_code == 200


# -- the walk itself -----------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(["a", "data", "text", "b"]), children, max_size=4),
    max_leaves=30)


def reference(node: Any, limit: int) -> bool:
    """Is there a string over ``limit`` outside the values of "data" keys (recursive, plain)?"""
    if isinstance(node, str):
        return len(node) > limit
    if isinstance(node, list):
        return any(reference(v, limit) for v in node)
    if isinstance(node, dict):
        return any(len(k) > limit or (k != "data" and reference(v, limit)) for k, v in node.items())
    return False


@settings(max_examples=300, deadline=None)
@given(d=json_values, limit=st.integers(min_value=0, max_value=12))
def test_long_string_agrees_with_a_plain_recursive_walk(d, limit):
    found = jsontext.long_string(d, limit, "$")
    assert (found is not None) == reference(d, limit)
    if found is not None:
        assert found[1] > limit and found[0].startswith("$")


def test_deep_nesting_does_not_exhaust_the_stack():
    node: Any = "q" * 20
    for _ in range(50_000):
        node = [node]
    assert jsontext.long_string(node, 10, "$") == ("$" + "[0]" * 50_000, 20)


def test_parse_json_checks_only_bodies_longer_than_the_limit():
    assert parse_json(b'{"a":"' + b"x" * 100 + b'"}', max_string=100)  # 100: at the limit
    with pytest.raises(FhirError) as e:
        parse_json(b'{"resourceType":"Patient","a":["' + b"x" * 101 + b'"]}', max_string=100)
    assert e.value.status == 413 and e.value.issues[0].expression == "Patient.a[0]"
    assert parse_json(b'{"a":"' + b"x" * 101 + b'"}')  # no limit: the CLI, stored records


# -- headers ---------------------------------------------------------------------------------------


def raw_request(port: int, head: bytes, pause_after: int | None = None) -> bytes:
    """Send ``head`` (with ``pause_after``: that many bytes, a pause, the rest) and read the
    answer until the server closes the connection."""
    import time

    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        if pause_after is None:
            s.sendall(head)
        else:
            s.sendall(head[:pause_after])
            time.sleep(0.3)  # the server has read an incomplete head by now
            try:
                s.sendall(head[pause_after:])
            except OSError:
                pass  # refused already
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except ConnectionResetError:
            pass
        return out


def head(*headers: bytes) -> bytes:
    return (b"GET /fhir/metadata HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n"
            + b"".join(headers) + b"\r\n")


def test_oversized_headers_are_refused_and_the_server_keeps_running(live, client):
    big = b"x-junk: " + b"a" * (100 << 10) + b"\r\n"
    # arriving whole: the hub answers 431
    answer = raw_request(live.port, head(big))
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    assert b"HUB_MAX_HEADER" in answer
    many = b"".join(b"x-h%d: %s\r\n" % (i, b"b" * 100) for i in range(1000))  # 100 KiB in many
    assert raw_request(live.port, head(many)).startswith(b"HTTP/1.1 431")
    # arriving in parts, the first already over the cap: uvicorn stops buffering it, 400
    answer = raw_request(live.port, head(big), pause_after=80 << 10)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    r = httpx.get(live.base + "/metadata", headers={"x-junk": "c" * (100 << 10)}, timeout=30, verify=httpclient.verify())
    assert r.status_code == 431
    still_serving(client)


def test_headers_under_the_cap_are_served(live):
    """32 KiB of headers: over h11's own default (16 KiB), under HUB_MAX_HEADER (64 KiB)."""
    big = b"x-big: " + b"d" * (32 << 10) + b"\r\n"
    answer = raw_request(live.port, head(big), pause_after=20 << 10)  # incomplete over 16 KiB
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    r = httpx.get(live.base + "/metadata", headers={"x-big": "d" * (32 << 10)}, timeout=30, verify=httpclient.verify())
    assert r.status_code == 200


def test_a_head_sent_slowly_is_cut_off(live, client):
    import time

    with socket.create_connection(("127.0.0.1", live.port), timeout=30) as s:
        s.sendall(b"GET /fhir/metadata HTTP/1.1\r\nhost: 127.0.0.1\r\n")
        start = time.monotonic()
        closed = None
        while time.monotonic() - start < 5 * HEAD_TIMEOUT:
            try:
                s.sendall(b"x")  # a byte every 0.2 s: the keep-alive timer alone never fires
                s.settimeout(0.2)
                if s.recv(1024) == b"":
                    closed = time.monotonic() - start
                    break
            except TimeoutError:
                continue
            except OSError:
                closed = time.monotonic() - start
                break
        assert closed is not None, "the slow head was never cut off"
        assert HEAD_TIMEOUT - 0.5 < closed < HEAD_TIMEOUT + 2
    still_serving(client)


def test_kept_alive_connections_still_serve_prompt_requests(live):
    import time

    with httpx.Client(timeout=30, verify=httpclient.verify()) as c:  # one connection, requests within the deadline
        for _ in range(3):
            assert c.get(live.base + "/metadata").status_code == 200
            time.sleep(HEAD_TIMEOUT / 4)


@pytest.fixture(scope="module")
def one_large(request, tmp_path_factory):
    settings = make_settings("sqlite", tmp_path_factory.mktemp("large"), request)
    settings.large_body, settings.max_large, settings.large_wait = 4096, 1, 0.5
    with LiveServer(settings) as server:
        yield server


def test_large_bodies_are_read_one_at_a_time_and_small_ones_go_on(one_large):
    """With one large request allowed in flight: while a slow sender holds it, another large
    request is answered 503 with Retry-After, a small one is served; then large ones go on."""
    import threading

    big = {"resourceType": "Patient", "name": [{"text": "x" * 8000}]}
    started = threading.Event()

    def slow_body():
        raw = orjson.dumps(big)
        yield raw[:100]
        started.set()
        time.sleep(2.0)
        yield raw[100:]

    results = {}

    def slow():
        with httpx.Client(base_url=one_large.base, timeout=30, auth=one_large.auth, verify=httpclient.verify()) as c:
            results["slow"] = c.post("/Patient", content=slow_body(), headers=FHIR_JSON)

    t = threading.Thread(target=slow)
    t.start()
    try:
        assert started.wait(10)
        time.sleep(0.2)
        with httpx.Client(base_url=one_large.base, timeout=30, auth=one_large.auth, verify=httpclient.verify()) as c:
            r = c.post("/Patient", json=big, headers=FHIR_JSON)
            assert r.status_code == 503, r.text
            assert r.headers["retry-after"] and r.json()["issue"][0]["code"] == "transient"
            small = c.post("/Patient", json={"resourceType": "Patient", "gender": "other"},
                           headers=FHIR_JSON)
            assert small.status_code == 201, small.text
    finally:
        t.join(30)
    assert results["slow"].status_code == 201, results["slow"].text
    with httpx.Client(base_url=one_large.base, timeout=30, auth=one_large.auth, verify=httpclient.verify()) as c:
        assert c.post("/Patient", json=big, headers=FHIR_JSON).status_code == 201


def test_a_body_in_a_content_coding_is_a_415(client):
    """A gzip body failed as "not valid UTF-8", and a plain body labelled br was stored as if
    decoded: the hub reads bodies as they are sent."""
    import gzip

    import orjson

    body = orjson.dumps({"resourceType": "Patient", "name": [{"family": "Li"}]})
    for coding, content in ((b"gzip", gzip.compress(body)), (b"br", body)):
        r = client.post("/Patient", content=content, headers={
            "content-type": "application/fhir+json", "content-encoding": coding.decode()})
        assert r.status_code == 415 and r.json()["issue"][0]["code"] == "not-supported", r.text
    r = client.post("/Patient", content=body, headers={
        "content-type": "application/fhir+json", "content-encoding": "identity"})
    assert r.status_code == 201, r.text
    still_serving(client)


BODY_TIMEOUT = 2.0


@pytest.fixture(scope="module")
def timed_large(request, tmp_path_factory):
    """One large body at a time, and a body must arrive within BODY_TIMEOUT seconds."""
    settings = make_settings("sqlite", tmp_path_factory.mktemp("timed"), request)
    settings.large_body, settings.max_large, settings.large_wait = 4096, 1, 0.5
    settings.body_timeout = BODY_TIMEOUT
    with LiveServer(settings) as server:
        yield server


def _open_body(server: LiveServer, token: str, path: str = "/fhir/Patient",
               length: int = 50000) -> socket.socket:
    """A request whose head is sent whole and whose body (``length`` bytes declared) is not."""
    s = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    s.sendall(f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {token}\r\n"
              f"content-type: application/fhir+json\r\ncontent-length: {length}\r\n\r\n"
              "{".encode())
    return s


def _answer_of(s: socket.socket, within: float, trickle: bool = False) -> tuple[bytes, float]:
    """What the server answered on ``s`` (a byte of body sent every 0.25 s when ``trickle``) and
    after how many seconds; b"" when nothing came ``within`` seconds."""
    start, got = time.monotonic(), b""
    while time.monotonic() - start < within:
        try:
            if trickle:
                s.sendall(b" ")
            s.settimeout(0.25)
            chunk = s.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            break
        if not chunk:
            break
        got += chunk
        if b"\r\n\r\n" in got and b"}" in got.partition(b"\r\n\r\n")[2]:
            break
    return got, time.monotonic() - start


def _large_patient() -> dict:
    return {"resourceType": "Patient", "name": [{"text": "x" * 35000}]}


def test_a_trickled_body_is_cut_off_with_a_408_and_frees_its_slot(timed_large):
    """A body sent a byte at a time held its large-body slot for as long as the sender liked,
    and every other large request was answered 503 meanwhile: past HUB_BODY_TIMEOUT it is a 408
    with an OperationOutcome, the connection closed, and large requests go on."""
    s = _open_body(timed_large, timed_large.auth.token())
    try:
        got, after = _answer_of(s, 4 * BODY_TIMEOUT, trickle=True)
    finally:
        s.close()
    assert got.startswith(b"HTTP/1.1 408"), got[:300]
    assert BODY_TIMEOUT - 0.5 < after < BODY_TIMEOUT + 2
    head, _, body = got.partition(b"\r\n\r\n")
    assert b"connection: close" in head.lower()
    outcome = orjson.loads(body)
    assert outcome["resourceType"] == "OperationOutcome"
    assert "HUB_BODY_TIMEOUT" in outcome["issue"][0]["diagnostics"]
    with httpx.Client(base_url=timed_large.base, timeout=30, auth=timed_large.auth,
                      verify=httpclient.verify()) as c:
        r = c.post("/Patient", json=_large_patient(), headers=FHIR_JSON)
        assert r.status_code == 201, r.text[:300]


def test_a_caller_that_may_not_write_the_type_holds_no_large_slot(timed_large):
    """A read-only token's unsent body held the one large-body slot (its scopes were checked
    only once the body was read): it is refused 403 from its path and token, and an
    administrator's large create goes on meanwhile."""
    reader = timed_large.client_auth(roles=("clinician",),
                                     scope="system/Observation.rs system/Patient.rs")
    sockets = [_open_body(timed_large, reader.token(), path)
               for path in ("/fhir/Patient", "/fhir/Condition/_search")]
    try:
        time.sleep(0.3)
        with httpx.Client(base_url=timed_large.base, timeout=30, auth=timed_large.auth,
                          verify=httpclient.verify()) as c:
            r = c.post("/Patient", json=_large_patient(), headers=FHIR_JSON)
            assert r.status_code == 201, r.text[:300]
        got, _ = _answer_of(sockets[0], 2)
        assert got.startswith(b"HTTP/1.1 403"), got[:300]
    finally:
        for s in sockets:
            s.close()


def test_a_client_gone_mid_body_is_no_unhandled_error(request, tmp_path, capfd):
    """A client that closed its connection half way through its body was logged as "unhandled
    error on POST …" with a ClientDisconnect traceback ("Exception in ASGI application"): the
    client went away and nothing was accepted, which is no server failure."""
    settings = make_settings("sqlite", tmp_path, request)
    with LiveServer(settings) as server:  # started here: its stderr is this test's
        capfd.readouterr()
        for path in ("/fhir/Patient", "/fhir", "/fhir/Patient/_search"):
            s = _open_body(server, server.auth.token(), path, length=5000)
            s.sendall(b'"resourceType": "Pat')
            time.sleep(0.3)
            s.close()
        time.sleep(1.0)
        with httpx.Client(base_url=server.base, timeout=30, auth=server.auth,
                          verify=httpclient.verify()) as c:
            still_serving(c)
        err = capfd.readouterr().err
    assert "ClientDisconnect" not in err and "Traceback" not in err, err[-2000:]
    assert "unhandled error" not in err, err[-2000:]


def _raw_get(server: LiveServer, target: str) -> tuple[int, dict]:
    """GET ``target`` sent exactly as written (no client normalises its escapes)."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("GET", target, headers={**server.headers, "accept": "application/fhir+json"})
        r = conn.getresponse()
        return r.status, orjson.loads(r.read() or b"{}")
    finally:
        conn.close()


def test_an_encoded_slash_in_a_path_is_no_path_separator(live, client):
    """GET /fhir/Patient/p%2f_history answered p's history: the decoded %2f split the id. An id
    holds no '/' (FHIR's id pattern), so an encoded one in a FHIR path is a 400."""
    pid = client.post("Patient", json={"resourceType": "Patient"}, headers=FHIR_JSON).json()["id"]
    assert _raw_get(live, f"/fhir/Patient/{pid}/_history")[0] == 200
    for target in (f"/fhir/Patient/{pid}%2f_history", f"/fhir/Patient/{pid}%2F_history",
                   f"/fhir/Patient%2f{pid}"):
        status, body = _raw_get(live, target)
        assert status == 400, (target, body)
        assert body["resourceType"] == "OperationOutcome", body


def test_a_query_that_is_not_utf8_is_a_400(live):
    """name=%ff%fe was decoded with U+FFFD for each byte and searched."""
    for target in ("/fhir/Patient?name=%ff%fe", "/fhir/Patient?na%ffme=x"):
        status, body = _raw_get(live, target)
        assert status == 400, (target, body)
        assert "UTF-8" in body["issue"][0]["diagnostics"], body
    assert _raw_get(live, "/fhir/Patient?name=%E6%9D%8E")[0] == 200  # 李
