"""``hub auth client add|list|revoke`` and ``hub auth rotate-key`` through ``hub.cli.main``, on a
real registry file in a temporary data directory."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from hub.auth.clients import open_registry
from hub.auth.keys import public_jwk
from hub.auth.signer import Signer
from hub.cli import main
from hub.core import httpclient

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def data(tmp_path):
    return tmp_path / "data"


@pytest.fixture
def keys(tmp_path):
    pub = tmp_path / "lab.pem"
    pub.write_bytes(RSA_KEY.public_key().public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo))
    jwks = tmp_path / "steward.jwks"
    jwks.write_text(json.dumps({"keys": [public_jwk(EC_KEY.public_key())]}))
    private = tmp_path / "private.pem"
    private.write_bytes(RSA_KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
    return {"pem": pub, "jwks": jwks, "private": private}


def hub(data, *args) -> int:
    return main(["auth", *args, "--data-dir", str(data)])


def test_add_list_revoke(data, keys, capsys):
    assert hub(data, "client", "add", "--name", "Lab feed", "--public-key", str(keys["pem"]),
               "--institution", "H1", "--role", "connector", "--scope", "system/*.rs system/Observation.cud") == 0
    lab = capsys.readouterr().out.strip()
    assert hub(data, "client", "add", "--name", "Steward tool", "--public-key", str(keys["jwks"]),
               "--role", "steward", "--role", "auditor", "--scope", "system/Patient.read", "--json") == 0
    steward = json.loads(capsys.readouterr().out)
    assert steward["roles"] == ["steward", "auditor"] and steward["institution"] == ""
    assert steward["status"] == "active" and steward["jwks"]["keys"][0]["kty"] == "EC"
    assert "d" not in steward["jwks"]["keys"][0]

    registry = open_registry(data)
    client = registry.get(lab)
    assert client.name == "Lab feed" and client.institution == "H1" and client.roles == ("connector",)
    assert client.scopes == "system/*.rs system/Observation.cud"
    assert client.jwks["keys"][0]["kty"] == "RSA" and client.jwks["keys"][0]["kid"]

    assert hub(data, "client", "list") == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["CLIENT_ID", "NAME", "INSTITUTION", "ROLES", "STATUS", "SCOPES"]
    assert lab in table[1] and "Lab feed" in table[1] and "active" in table[1]
    assert steward["client_id"] in table[2] and "steward,auditor" in table[2]

    assert hub(data, "client", "revoke", lab) == 0
    assert f"revoked {lab}" in capsys.readouterr().out
    assert hub(data, "client", "list", "--json") == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["client_id"], r["status"]) for r in rows] == [(lab, "revoked"), (steward["client_id"], "active")]
    assert rows[0]["revoked"] and rows[1]["revoked"] is None
    assert registry.get(lab).status == "revoked"


@pytest.mark.parametrize("args, words", [
    (["--public-key", "{private}"], "private key"),
    (["--public-key", "{missing}"], "cannot read"),
    (["--scope", "system/Patient.sr"], "cruds"),
    (["--scope", "system/Nothing.rs"], "not a FHIR resource type"),
    # granted nothing at the token endpoint, which answers resource scopes only
    (["--scope", ""], "at least one scope"),
    (["--scope", "garbage"], "'garbage' is not context/Type.perms"),
    (["--scope", "sytem/*.rs"], "'sytem/*.rs' is not context/Type.perms"),
    (["--scope", "system/*.rs openid"], "'openid' is not context/Type.perms"),
])
def test_add_mistakes_are_one_line_and_status_2(data, keys, tmp_path, capsys, args, words):
    base = {"--name": "x", "--public-key": str(keys["pem"]), "--scope": "system/*.rs"}
    base[args[0]] = args[1].format(private=keys["private"], missing=tmp_path / "nope.pem")
    argv = [a for kv in base.items() for a in kv]
    assert hub(data, "client", "add", *argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("hub auth: ") and words in err and len(err.strip().splitlines()) == 1
    assert open_registry(data).list() == []


def test_unknown_role_is_refused_by_the_parser(data, keys, capsys):
    with pytest.raises(SystemExit) as e:
        hub(data, "client", "add", "--name", "x", "--public-key", str(keys["pem"]), "--scope", "system/*.rs",
            "--role", "superuser")
    assert e.value.code == 2 and "superuser" in capsys.readouterr().err


def test_revoke_unknown_client(data, capsys):
    data.mkdir()  # a hub's data directory, without that client
    assert hub(data, "client", "revoke", "nobody") == 2
    assert "No client 'nobody'" in capsys.readouterr().err


def test_rotate_key(data, capsys):
    old = Signer(data).kid
    assert hub(data, "rotate-key") == 0
    new = Signer(data).kid
    assert new != old and new in capsys.readouterr().out
    assert [k["kid"] for k in Signer(data).jwks()["keys"]] == [new, old]


def test_client_ids_never_start_with_a_dash():
    # the command line takes a client id as an argument: "-…" would be read as an option
    from hub.auth.clients import new_client_id

    assert not any(new_client_id().startswith("-") for _ in range(5000))


@pytest.mark.parametrize("make, words", [
    (lambda: ed25519.Ed25519PrivateKey.generate(), "not an EC or RSA key (Ed25519PrivateKey)"),
    (lambda: rsa.generate_private_key(public_exponent=65537, key_size=1024), "1024 bits"),
    (lambda: ec.generate_private_key(ec.SECP256K1()), "curve secp256k1"),
    (lambda: b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n", "not a PEM private key"),
    (lambda: EC_KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.BestAvailableEncryption(b"secret")), "encrypted"),
], ids=["ed25519", "rsa-1024", "secp256k1", "garbage", "encrypted"])
def test_token_with_an_unusable_key_is_one_line_and_status_2(data, tmp_path, capsys, make, words):
    """Refused before any request (nothing listens at --url): it was a traceback."""
    from tests.conftest import free_port

    key = make()
    path = tmp_path / "client.pem"
    path.write_bytes(key if isinstance(key, bytes) else key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    assert hub(data, "token", "--client-id", "c", "--key", str(path),
               "--url", f"http://127.0.0.1:{free_port()}/fhir") == 2
    err = capsys.readouterr().err
    assert err.startswith("hub auth: ") and words in err and str(path) in err, err
    assert len(err.strip().splitlines()) == 1


def test_token_says_which_url_it_asks_by_default(data, keys, tmp_path, monkeypatch, capsys):
    """hub serve records nowhere where it listens: the help said "HUB_BASE_URL, or where hub
    serve listens", yet a server started with --port 18100 was never found (8080 was asked)."""
    from tests.conftest import free_port

    with pytest.raises(SystemExit) as e:
        main(["auth", "token", "--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "HUB_BASE_URL, else http://HUB_HOST:HUB_PORT/fhir" in text, text
    assert "http://127.0.0.1:8080/fhir when none is set" in text
    assert "a hub serve started with --host or --port needs --url" in text
    assert "where hub serve listens" not in text
    # what it asks: HUB_HOST and HUB_PORT, whatever port a server was started with
    for name in ("HUB_BASE_URL", "HUB_HOST", "HUB_TLS_CERT"):
        monkeypatch.delenv(name, raising=False)
    port = free_port()
    monkeypatch.setenv("HUB_PORT", str(port))
    assert hub(data, "token", "--client-id", "c", "--key", str(keys["private"])) == 2
    assert f"cannot reach the hub at http://127.0.0.1:{port}/fhir" in capsys.readouterr().err
    # the demo client's hint names the URL its token command asks, so it can be changed
    assert hub(data, "demo-client") == 0
    out = capsys.readouterr().out
    assert f"--url http://127.0.0.1:{port}/fhir)" in out, out


def test_a_hub_on_ipv6_names_itself_with_brackets(tmp_path, request, monkeypatch, capsys):
    """``hub serve --host ::1`` said http://::1:PORT/fhir (metadata, the token endpoint, the
    tokens' audience), so a token asked at http://[::1]:PORT was refused, and ``hub auth token``
    with HUB_HOST=::1 failed on that URL (Invalid port)."""
    import socket

    import httpx

    from hub.auth.backend_client import new_key, private_pem, public_jwks
    from tests.conftest import LiveServer, make_settings

    try:
        socket.socket(socket.AF_INET6).bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    with LiveServer(make_settings("sqlite", tmp_path, request), host="::1") as live:
        origin = f"http://[::1]:{live.port}"
        assert live.base == origin + "/fhir"
        with httpx.Client(timeout=30, verify=httpclient.verify()) as c:
            assert c.get(live.base + "/metadata").json()["implementation"]["url"] == live.base
            smart = c.get(live.base + "/.well-known/smart-configuration").json()
            assert smart["token_endpoint"] == origin + "/auth/token"
            assert c.get(live.base + "/Patient", auth=live.auth).status_code == 200
        key = new_key()
        client = open_registry(live.settings.data_dir).add(
            "cli", public_jwks(key), roles=("steward",), scopes="system/Patient.rs")
        pem = tmp_path / "client.pem"
        pem.write_bytes(private_pem(key))
        monkeypatch.setenv("HUB_HOST", "::1")
        monkeypatch.setenv("HUB_PORT", str(live.port))
        monkeypatch.delenv("HUB_BASE_URL", raising=False)
        assert main(["auth", "token", "--client-id", client.client_id, "--key", str(pem),
                     "--scope", "system/Patient.rs"]) == 0
        token = capsys.readouterr().out.strip()
        r = httpx.get(live.base + "/Patient", headers={"authorization": f"Bearer {token}"}, timeout=30, verify=httpclient.verify())
        assert r.status_code == 200, r.text


def _on_a_terminal(argv: list[str], answers: list[tuple[str, str]]) -> tuple[int, str]:
    """Run ``hub ARGV`` with a pseudo-terminal as its terminal, typing each answer once its
    prompt shows; (exit status, everything the terminal showed)."""
    import os
    import pty
    import select
    import signal
    import sys
    import time

    pid, fd = pty.fork()
    if pid == 0:  # the child: the terminal is its stdin, stdout, stderr and /dev/tty
        os.execv(sys.executable, [sys.executable, "-m", "hub.cli", *argv])
    shown, deadline = b"", time.monotonic() + 20
    pending = list(answers)
    while time.monotonic() < deadline:
        if pending and pending[0][0].encode() in shown:
            os.write(fd, pending.pop(0)[1].encode() + b"\n")
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the child ended: the terminal is closed
                break
            if not chunk:
                break
            shown += chunk
    else:  # it never ended (waiting for an answer it did not ask for)
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), shown.decode("utf-8", "replace")


def test_user_add_on_a_terminal_asks_for_the_password_without_echo(data):
    """It read the password from standard input without a word, echoing it on the terminal."""
    from hub.auth.clients import REGISTRY_FILE
    from hub.auth.users import UserRegistry

    secret = "correct horse battery staple"
    argv = ["auth", "user", "add", "zhang", "--role", "steward", "--data-dir", str(data)]
    code, shown = _on_a_terminal(argv, [("password for zhang: ", secret),
                                        ("the same again: ", secret)])
    assert code == 0, shown
    assert "password for zhang: " in shown and secret not in shown, shown
    assert UserRegistry(data / REGISTRY_FILE).check("zhang", secret) is not None
    # two different answers add nobody
    code, shown = _on_a_terminal([*argv[:3], "li", *argv[4:]],
                                 [("password for li: ", secret), ("the same again: ", "other")])
    assert code == 2 and "the two passwords typed differ" in shown, shown
    assert [u.name for u in UserRegistry(data / REGISTRY_FILE).list()] == ["zhang"]


def test_user_add_reads_a_piped_password_as_before(data, monkeypatch):
    import io

    from hub.auth.clients import REGISTRY_FILE
    from hub.auth.users import UserRegistry

    monkeypatch.setattr("sys.stdin", io.StringIO("a long password\n"))
    assert hub(data, "user", "add", "wang", "--role", "auditor") == 0
    assert UserRegistry(data / REGISTRY_FILE).check("wang", "a long password") is not None
