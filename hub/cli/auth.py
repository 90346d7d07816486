"""``hub auth client add|list|revoke`` and ``hub auth rotate-key``: the clients allowed to ask the
token endpoint for access tokens, and the hub's signing key.

``client add --name N --public-key FILE --role R… --scope "system/*.rs …" [--institution I]``
registers a client with its public key (a PEM public key, or a JWK Set as .jwks or .json) and
prints its new client_id (``--json``: the whole record). ``client list`` prints a table (``--json``:
one JSON object per line), ``client revoke CLIENT_ID`` refuses its next token request
and the tokens it holds from their next request on.
``rotate-key`` signs with a new key from now on; the previous ones (up to five) stay published
for the tokens they signed. The registry is ``auth.sqlite`` in the data directory, whichever store holds the events.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from hub.auth.roles import ROLES  # the rest of hub.auth (cryptography) is imported when run
from hub.core.commandline import UsageError, existing_data_dir
from hub.core.errors import FhirError

__all__ = ["add_parsers", "cmd_auth"]


def add_parsers(sub: Any, common: Any) -> None:
    p = sub.add_parser("auth", parents=[common],
                       help="access control: the clients allowed to get tokens, the signing key")
    asub = p.add_subparsers(dest="auth_action", required=True)
    c = asub.add_parser("client", parents=[common], help="register, list and revoke clients")
    csub = c.add_subparsers(dest="client_action", required=True)
    a = csub.add_parser("add", parents=[common], help="register a client; prints its client_id")
    a.add_argument("--name", required=True, help="what the client is (shown in lists and audits)")
    a.add_argument("--public-key", required=True, type=Path, metavar="FILE",
                   help="its public key: a PEM file, or a JWK Set (.jwks or .json)")
    a.add_argument("--institution", default="", help="the institution it speaks for")
    a.add_argument("--oid", default="",
                   help="that institution's root OID: its local code systems are "
                        "urn:oid:<OID>.…, the terminology its connector may write")
    a.add_argument("--role", action="append", choices=ROLES, default=[],
                   help="a hub role (repeat for several)")
    a.add_argument("--scope", required=True,
                   help='the SMART scopes it may be granted, e.g. "system/*.rs system/Observation.cu"')
    a.add_argument("--json", action="store_true", help="print the registered client as JSON")
    ls = csub.add_parser("list", parents=[common], help="the registered clients")
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    r = csub.add_parser("revoke", parents=[common], help="refuse the client's token requests and the tokens it holds, at once")
    r.add_argument("client_id")
    u = asub.add_parser("user", parents=[common],
                        help="people who log in to the console: add, list, disable")
    usub = u.add_subparsers(dest="user_action", required=True)
    ua = usub.add_parser("add", parents=[common],
                         help="a person with a password (asked without echo on a terminal, "
                              "else the first line of standard input)")
    ua.add_argument("name")
    ua.add_argument("--role", action="append", choices=ROLES, required=True,
                    help="a hub role (repeat for several)")
    ua.add_argument("--display", default="", help="the name shown (default: NAME)")
    ua.add_argument("--institution", default="",
                    help="the institution the person works for (consents naming institutions "
                         "are judged by it)")
    usub.add_parser("list", parents=[common], help="the console's users")
    disable = "refuse the user's logins and end their live console sessions at once"
    ud = usub.add_parser("disable", parents=[common], help=disable, description=disable)
    ud.add_argument("name")
    asub.add_parser("rotate-key", parents=[common],
                    help="sign access tokens with a new key (the previous one stays published)")
    d = asub.add_parser("demo-client", parents=[common],
                        help="a demo administrator client for this machine (its key in the data "
                             "directory; made once), and how to get a token")
    d.add_argument("--json", action="store_true", help="print client_id and key file as JSON")
    t = asub.add_parser("token", parents=[common],
                        help="get an access token from a running hub (SMART Backend Services)")
    t.add_argument("--client-id", required=True)
    t.add_argument("--key", required=True, type=Path, metavar="PEM", help="the client's private key")
    t.add_argument("--scope", default="system/*.rs", help='default "system/*.rs"')
    # hub serve records nowhere where it listens: the default is read from the environment only
    t.add_argument("--url", help="the hub's FHIR base URL (default: HUB_BASE_URL, else "
                                 "http://HUB_HOST:HUB_PORT/fhir, https with HUB_TLS_CERT; "
                                 "http://127.0.0.1:8080/fhir when none is set); a hub serve "
                                 "started with --host or --port needs --url")
    # named as hub serve's --tls-* options and a connector sink's tls: {ca, cert, key}
    t.add_argument("--tls-ca", type=Path, metavar="PEM",
                   help="the CA that signed the hub's certificate (default: the system's CAs)")
    t.add_argument("--tls-cert", type=Path, metavar="PEM",
                   help="a client certificate, for a hub that requires one (mutual TLS)")
    t.add_argument("--tls-key", type=Path, metavar="PEM",
                   help="the client certificate's key (unless --tls-cert's file holds it)")


def cmd_auth(args: Any, settings: Any) -> int:
    from hub.auth.clients import open_registry
    from hub.auth.signer import Signer

    if args.auth_action == "user":
        return _user(args, settings)
    if args.auth_action == "rotate-key":
        existing_data_dir(settings)  # a mistyped --data-dir: the hub's own key never rotated
        kid = Signer(settings.data_dir).rotate()
        print(f"signing with the new key {kid}; the previous ones (up to five) verify until their tokens expire")
        return 0
    if args.auth_action == "demo-client":
        return _demo_client(args, settings)
    if args.auth_action == "token":
        return _token(args, settings)
    if args.client_action in ("list", "revoke"):
        existing_data_dir(settings)  # what reads or changes what is there
    registry = open_registry(settings.data_dir)
    try:
        return _CLIENT_ACTIONS[args.client_action](args, registry)
    except FhirError as e:  # a bad key file, an unknown role or scope, an unknown client
        raise UsageError(str(e)) from None


def _add(args: Any, registry: Any) -> int:
    try:
        data = args.public_key.read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read --public-key {args.public_key}: {e.strerror or e}") from None
    from hub.auth.keys import jwks_from_bytes

    client = registry.add(args.name, jwks_from_bytes(data, args.public_key.name),
                          institution=args.institution, roles=args.role, scopes=args.scope,
                          oid=args.oid)
    print(orjson.dumps(client.to_json()).decode() if args.json else client.client_id)
    return 0


def _list(args: Any, registry: Any) -> int:
    clients = registry.list()
    if args.json:
        for c in clients:
            print(orjson.dumps(c.to_json()).decode())
        return 0
    rows = [("CLIENT_ID", "NAME", "INSTITUTION", "ROLES", "STATUS", "SCOPES")]
    rows += [(c.client_id, c.name, c.institution or "-", ",".join(c.roles) or "-", c.status, c.scopes)
             for c in clients]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)) + "  " + r[-1])
    return 0


def _revoke(args: Any, registry: Any) -> int:
    client = registry.revoke(args.client_id)
    print(f"revoked {client.client_id} ({client.name}) at {client.revoked}")
    return 0


_CLIENT_ACTIONS = {"add": _add, "list": _list, "revoke": _revoke}


DEMO_FILE = "demo-client.json"


def _demo_client(args: Any, settings: Any) -> int:
    """The demo region's administrator client: registered once, its private key kept beside the
    hub's own key (the data directory is the operator's)."""
    from hub.auth.backend_client import new_key, private_pem, public_jwks
    from hub.auth.clients import open_registry

    folder = Path(settings.data_dir) / "auth"
    record = folder / DEMO_FILE
    known = orjson.loads(record.read_bytes()) if record.exists() else None
    registry = open_registry(settings.data_dir)
    client = registry.get(known["client_id"]) if known else None
    if client is None or not client.active:
        key = new_key()
        client = registry.add("demo administrator", public_jwks(key), roles=("admin",),
                              scopes="system/*.cruds")
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        pem = folder / "demo-client.pem"
        pem.write_bytes(private_pem(key))
        pem.chmod(0o600)
        known = {"client_id": client.client_id, "key": str(pem)}
        record.write_bytes(orjson.dumps(known))
    assert known is not None  # read or just made
    if args.json:
        print(orjson.dumps(known).decode())
        return 0
    print(f"demo client {known['client_id']} (role admin, scopes system/*.cruds)\n"
          f"  token:  TOKEN=$(.venv/bin/hub auth token --client-id {known['client_id']} "
          f"--key {known['key']} --scope 'system/*.cruds' --url {settings.fhir_base})\n"
          f"          (--url from HUB_BASE_URL, HUB_HOST, HUB_PORT; a hub serve started with "
          f"--host or --port: its own)\n"
          f'  use it: curl -H "Authorization: Bearer $TOKEN" '
          f"{settings.fhir_base}/Patient?_count=5")
    print(_demo_user(settings, folder))
    return 0


def _demo_user(settings: Any, folder: Path) -> str:
    """The demo region's console user ``demo`` (admin, steward, auditor): made once, its
    password kept in the data directory; how to log in."""
    import secrets

    from hub.auth.clients import REGISTRY_FILE
    from hub.auth.users import UserRegistry

    users = UserRegistry(Path(settings.data_dir) / REGISTRY_FILE)
    secret = folder / "demo-user.password"
    if not secret.exists() or not any(u.name == "demo" for u in users.list()):
        password = secrets.token_urlsafe(12)
        if any(u.name == "demo" for u in users.list()):
            return f"console: {settings.fhir_base.removesuffix('/fhir')}/console (user demo)"
        users.add("demo", password, ("admin", "steward", "auditor"), display="演示管理员")
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        secret.write_text(password + "\n")
        secret.chmod(0o600)
    password = secret.read_text().strip()
    return (f"console: {settings.fhir_base.removesuffix('/fhir')}/console  user demo  "
            f"password {password}  (kept in {secret})")


def _token(args: Any, settings: Any) -> int:
    import httpx

    from hub.auth.backend_client import UnusableKey, fetch_token, load_private_key

    base = (args.url or settings.fhir_base).rstrip("/")
    try:
        key = load_private_key(args.key.read_bytes(), f"the private key {args.key}")
    except OSError as e:
        raise UsageError(f"cannot read the private key {args.key}: {e.strerror or e}") from None
    except UnusableKey as e:
        raise UsageError(str(e)) from None
    verify = _tls(args)
    try:
        answer = fetch_token(base.removesuffix("/fhir") + "/auth/token", args.client_id, key,
                             args.scope, verify=verify)
    except httpx.HTTPStatusError as e:
        raise UsageError(f"the token endpoint refused: {e.response.text[:300]}") from None
    except httpx.HTTPError as e:
        raise UsageError(f"cannot reach the hub at {base}: {e}{_no_client_cert(base, args, e)}") \
            from None
    print(answer["access_token"])
    return 0


def _no_client_cert(base: str, args: Any, error: Exception) -> str:
    """A hint for an https hub reached without a client certificate: one requiring them (mutual
    TLS) ends the handshake, which httpx reports as "Server disconnected without sending a
    response", a reset or an SSL alert, naming no certificate (a refused connection, a name that
    does not resolve or a server certificate that does not verify get none)."""
    import httpx

    if base.lower().startswith("https:") and not args.tls_cert and (
            isinstance(error, httpx.RemoteProtocolError | httpx.ReadError)
            or "alert" in str(error).lower()):
        return " (the hub may require a client certificate: --tls-cert/--tls-key)"
    return ""


def _tls(args: Any) -> Any:
    """httpx's ``verify`` for ``--tls-ca/--tls-cert/--tls-key``: True (the defaults) without them."""
    tls = {"ca": args.tls_ca, "cert": args.tls_cert, "key": args.tls_key}
    if not any(tls.values()):
        return True
    if args.tls_key and not args.tls_cert:
        raise UsageError("--tls-key without --tls-cert")
    for name, path in tls.items():
        if path and not path.is_file():
            raise UsageError(f"--tls-{name} {path} is not a readable file")
    import ssl

    from connectors.tls import TlsConfigError, client_context

    try:  # the options given (the others are None)
        return client_context({k: str(v) for k, v in tls.items() if v}, "hub auth token")
    except (OSError, ssl.SSLError, TlsConfigError) as e:
        given = " ".join(f"--tls-{k} {v}" for k, v in tls.items() if v)
        raise UsageError(f"the TLS files do not load ({given}): "
                         f"{getattr(e, 'reason', None) or e}") from None


def _new_password(name: str) -> str:
    """A new user's password: asked without echo, twice, on a terminal; else the first line of
    standard input (a pipe, a script)."""
    import sys

    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    import getpass

    password = getpass.getpass(f"password for {name}: ", stream=sys.stderr)
    if getpass.getpass("the same again: ", stream=sys.stderr) != password:
        raise UsageError("the two passwords typed differ: nothing was added")
    return password


def _user(args: Any, settings: Any) -> int:
    from hub.auth.clients import REGISTRY_FILE
    from hub.auth.users import UserRegistry

    if args.user_action in ("list", "disable"):
        existing_data_dir(settings)  # what reads or changes what is there
    users = UserRegistry(settings.data_dir / REGISTRY_FILE)
    if args.user_action == "add":
        users.add(args.name, _new_password(args.name), args.role, args.display,
                  args.institution)
        print(args.name)
    elif args.user_action == "list":
        for u in users.list():
            print(f"{u.name:24} {u.display:16} {','.join(u.roles):24} {u.institution or '-':12} "
                  f"{u.status}")
    else:
        users.disable(args.name)
    return 0
