"""Configuration from the environment (and the command line, which overrides it).
A limit under the least the hub works within is refused at start (HUB_MAX_BODY 4096, HUB_MAX_STRING
1024, HUB_MAX_HEADER 4096, HUB_MAX_LARGE, HUB_MAX_COUNT, HUB_WORKERS, HUB_QUARANTINE_QUOTA 1,
HUB_EXPORT_KEEP 60), and so is a URL the hub cannot use (HUB_ES_URL without a port, an identity
provider's over plain http away from loopback). A HUB_* variable that is no field here is warned
of by the commands (``unknown_variables``), not refused: other tools may set their own.

HUB_DATA_DIR      data directory of the embedded default (SQLite files)        ./var
HUB_DATABASE_URL  postgresql://… to keep the event store in PostgreSQL instead  (unset)
HUB_PG_POOL       most connections of a PostgreSQL store's pool (one kept idle)   10
HUB_HOST/HUB_PORT where `hub serve` listens                                     127.0.0.1:8080
HUB_BASE_URL      public base URL used in links and Location headers            http://HOST:PORT/fhir
HUB_MAX_BODY      largest accepted request body, bytes                          67108864 (64 MiB)
HUB_MAX_STRING    longest string (value or key) in FHIR JSON input, characters  1048576 (1 MiB)
                  except the values of keys named "data" (base64 of Attachment.data, Binary.data:
                  only HUB_MAX_BODY bounds those); a longer one is answered 413 naming its element
HUB_MAX_HEADER    largest request line plus headers, bytes                      65536 (64 KiB)
                  a head over it is answered 431 (400 by uvicorn while it is still incomplete:
                  h11_max_incomplete_event_size), and the connection closed
HUB_LARGE_BODY / HUB_MAX_LARGE / HUB_LARGE_WAIT  a body over HUB_LARGE_BODY bytes (or of
                  unknown length) is read only while fewer than HUB_MAX_LARGE such requests are
                  in flight per process; others wait up to HUB_LARGE_WAIT s, then 503: what
                  requests hold in memory at once is bounded                     1048576; 2; 10
HUB_BODY_TIMEOUT  seconds a request body may take to arrive once the hub reads it   60 (0: none)
                  (a large one from when it has its turn); then 408 and the connection closed
HUB_KEEP_ALIVE    seconds an idle keep-alive connection is kept open             5
HUB_HEADER_TIMEOUT seconds a client has to send a request's line and headers     30 (0: none)
                  (from its connection or the previous response; then the connection is closed:
                  hub.api.headtimeout). Behind a reverse proxy, the proxy's own applies first
                  (nginx: client_header_timeout)
HUB_TLS_CERT/HUB_TLS_KEY  PEM files of the server certificate (chain) and its key:  (unset: plain HTTP)
                  `hub serve` speaks HTTPS, and the default base URL is https://HOST:PORT/fhir
HUB_TLS_CLIENT_CA PEM file of the CA(s) whose client certificates are accepted:     (unset)
                  mutual TLS, a client without such a certificate is refused at the handshake
                  (bearer tokens are still required on top)
HUB_MAX_COUNT     largest page size a client may ask for                        1000
HUB_EXPORT_MAX_RUNNING bulk exports ($export) running at once (beyond: 429)    2
HUB_EXPORT_KEEP   seconds a finished export's files are kept                  86400 (24 h)
HUB_EXPORT_FILE_RESOURCES / HUB_EXPORT_FILE_BYTES  an export's NDJSON file of a type is split
                  past this many resources or bytes                             100000; 268435456
HUB_MPI_AUTOMATCH `hub serve` matches new and updated Patients as they arrive     1 (0: off)
HUB_AUDIT         every access to patient data writes an AuditEvent             1 (0: off)
HUB_TRUSTED_PROXIES addresses or networks whose X-Forwarded-For is believed     (none)
HUB_RATE_LIMIT    requests per second per caller (bursts of twice that)         0 (no limit)
HUB_QUARANTINE_QUOTA open quarantine entries kept per institution               10000
HUB_AUTH          access control: bearer tokens, SMART scopes and roles         1 (0: off, loopback only)
HUB_AUTH_ISSUER   an external OpenID Connect provider's issuer (its tokens are accepted) (unset)
HUB_AUTH_JWKS_URL that provider's key set                      (unset: its discovery document's)
HUB_AUTH_ROLES_CLAIM / HUB_AUTH_INSTITUTION_CLAIM  where its tokens carry the hub's roles and the
                  institution                                                   roles / institution
HUB_CONSOLE_OIDC_ISSUER  an OpenID Connect provider the console's people log in with  (unset: local
                  (authorization code with PKCE; hub.console.oidc)               users only)
HUB_CONSOLE_OIDC_CLIENT_ID / HUB_CONSOLE_OIDC_CLIENT_SECRET  the console's registration there
                  (a public client needs no secret)                             hub-console / (unset)
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from hub.core.fhirtime import ZONE
from hub.core.redact import redact_url
from hub.core.sqlitesync import sqlite_sync

BYTES = "a whole number of bytes"
SECONDS = "a number of seconds"


def _int(name: str, default: str, what: str, least: int = 0, most: int | None = None,
         floor: int = 0, why: str = "") -> int:
    """HUB_<name> as a whole number from ``least`` (to ``most``); else a ValueError naming the
    variable and its value. A number from 0 under ``floor`` is refused saying the floor and
    ``why``: a limit the hub cannot work within (``HUB_MAX_BODY=0`` answered every write 413)."""
    raw = os.environ.get(name, default)
    try:
        value = int(raw.strip())
    except ValueError:
        value = -1
    if value < least or (most is not None and value > most):
        raise ValueError(f"{name}={raw!r} is not {what}")
    if value < floor:
        raise ValueError(f"{name}={raw!r} is less than {floor}, the least it takes ({why})")
    return value


def _float(name: str, default: str, what: str, empty: str | None = None, floor: float = 0,
           why: str = "") -> float:
    """HUB_<name> as a finite number from 0 (``empty`` stands for an empty value, when given);
    one under ``floor`` is refused saying the floor and ``why``."""
    raw = os.environ.get(name, default)
    try:
        value = float(raw.strip() or (empty if empty is not None else raw))
    except ValueError:
        value = -1.0
    if value < 0 or not math.isfinite(value):
        raise ValueError(f"{name}={raw!r} is not {what}")
    if value < floor:
        raise ValueError(f"{name}={raw!r} is less than {floor:g}, the least it takes ({why})")
    return value


def _workers() -> int:
    """HUB_WORKERS, unset or empty: one per core; else a whole number from 1 (0 was taken for
    the default silently)."""
    if not os.environ.get("HUB_WORKERS", "").strip():
        return os.cpu_count() or 1
    return _int("HUB_WORKERS", "", "a whole number of processes", floor=1,
                why="one API process at least")


_ON, _OFF = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _flag(name: str, default: str) -> bool:
    """HUB_<name> as on or off (1, true, yes, on; 0, false, no, off; any case); anything else is
    a ValueError naming the variable (``HUB_AUTH=flase`` was taken for on, ``HUB_AUDIT=off`` too)."""
    raw = os.environ.get(name, default)
    word = raw.strip().lower()
    if word not in _ON + _OFF:
        raise ValueError(f"{name}={raw!r} is not on or off (1, true, yes, on; 0, false, no, off)")
    return word in _ON


FOLLOW = ("threads", "none")


def setting(name: str, read: Callable[[str], Any], secret: bool = False) -> Any:
    """A field read from the environment variable ``name`` by ``read(name)`` when the settings
    are made; the name is kept with the field, so the variables the hub knows are the fields'
    (``known_variables``: a misspelt one is warned of). A ``secret`` is left out of the repr."""
    return field(default_factory=lambda: read(name), metadata={"env": name}, repr=not secret)


def _text(default: str) -> Callable[[str], str]:
    return lambda name: os.environ.get(name, default)


def _unset(name: str) -> str | None:
    """The variable's value, None when unset or empty."""
    return os.environ.get(name) or None


def _items(name: str) -> tuple[str, ...]:
    """A comma list, its items stripped, empty ones left out."""
    return tuple(p.strip() for p in os.environ.get(name, "").split(",") if p.strip())


@dataclass
class Settings:
    data_dir: Path = setting("HUB_DATA_DIR", lambda n: Path(os.environ.get(n, "./var")))
    database_url: str | None = setting("HUB_DATABASE_URL", _unset, secret=True)
    host: str = setting("HUB_HOST", _text("127.0.0.1"))
    port: int = setting("HUB_PORT", lambda n: _int(n, "8080", "a port number (1-65535)", 1, 65535))
    base_url: str | None = setting("HUB_BASE_URL", _unset)
    # each limit has a floor the hub works within (HUB_MAX_BODY=0 answered every write 413)
    max_body: int = setting("HUB_MAX_BODY", lambda n: _int(
        n, str(64 << 20), BYTES, floor=4096, why="4 KiB: a smaller body cannot carry a Patient"))
    max_string: int = setting("HUB_MAX_STRING", lambda n: _int(
        n, str(1 << 20), "a whole number of characters", floor=1024,
        why="1 KiB: URLs and narratives are longer"))
    max_header: int = setting("HUB_MAX_HEADER", lambda n: _int(
        n, str(64 << 10), BYTES, floor=4096, why="4 KiB: a request's head with a bearer token"))
    large_body: int = setting("HUB_LARGE_BODY", lambda n: _int(n, str(1 << 20), BYTES))
    max_large: int = setting("HUB_MAX_LARGE", lambda n: _int(
        n, "2", "a whole number of requests", floor=1, why="with none, no large body is ever read"))
    large_wait: float = setting("HUB_LARGE_WAIT", lambda n: _float(n, "10", SECONDS))
    # a body sent a byte at a time held its large-body slot (and every large request after it
    # waited, then 503) for as long as its sender liked
    body_timeout: float = setting("HUB_BODY_TIMEOUT", lambda n: _float(n, "60", SECONDS, empty="0"))
    keep_alive: int = setting("HUB_KEEP_ALIVE", lambda n: _int(n, "5", "a whole number of seconds"))
    header_timeout: float = setting("HUB_HEADER_TIMEOUT",
                                    lambda n: _float(n, "30", SECONDS, empty="0"))
    tls_cert: str | None = setting("HUB_TLS_CERT", _unset)
    tls_key: str | None = setting("HUB_TLS_KEY", _unset)
    tls_client_ca: str | None = setting("HUB_TLS_CLIENT_CA", _unset)
    max_count: int = setting("HUB_MAX_COUNT", lambda n: _int(
        n, "1000", "a whole number of resources", floor=1, why="a page of none answers no search"))
    # FHIR Bulk Data $export (hub.exports): how many run at once, how long their files are
    # kept, and where a type's output file is split
    export_max_running: int = setting("HUB_EXPORT_MAX_RUNNING", lambda n: _int(
        n, "2", "a whole number of exports", 1))
    export_keep: float = setting("HUB_EXPORT_KEEP", lambda n: _float(
        n, "86400", SECONDS, floor=60, why="files removed at once could not be fetched"))
    export_file_resources: int = setting("HUB_EXPORT_FILE_RESOURCES", lambda n: _int(
        n, "100000", "a whole number of resources", 1))
    export_file_bytes: int = setting("HUB_EXPORT_FILE_BYTES", lambda n: _int(
        n, str(256 << 20), BYTES, 1))
    # a PostgreSQL store's pool: at most this many connections (hub.core.store.PG_POOL), one
    # kept while idle; a `hub serve` API process has one store (two with --followers threads),
    # its follower process one
    pg_pool: int = setting("HUB_PG_POOL", lambda n: _int(
        n, "10", "a whole number of connections", floor=2,
        why="a request waits behind every other one's read"))
    # API processes of `hub serve` behind its one port (default: one per core)
    workers: int = setting("HUB_WORKERS", lambda n: _workers())
    default_count: int = 50
    # the master patient index links new and updated Patients as they arrive (hub.api.match)
    mpi_automatch: bool = setting("HUB_MPI_AUTOMATCH", lambda n: _flag(n, "1"))
    # who follows the event log into the read models: this process's threads ("threads"), or
    # another process ("none": `hub projections follow`, which `hub serve` starts by default);
    # a request that must see its own write brings the model up to date itself either way
    follow: str = setting("HUB_FOLLOW", _text("threads"))
    # lenient intake (hub.core.repair): the platform's zone for times sent without one, and who
    # gets repairs instead of a 422: callers with the connector role, and the institutions listed
    # in HUB_INTAKE_REPAIR ("*": everyone), except those in HUB_INTAKE_STRICT
    timezone: str = setting("HUB_TIMEZONE", _text("+08:00"))
    intake_repair: tuple[str, ...] = setting("HUB_INTAKE_REPAIR", _items)
    intake_strict: tuple[str, ...] = setting("HUB_INTAKE_STRICT", _items)
    # profiles every resource of a type must conform to (hub.api.profiles): "Type=url,…"
    required_profiles: tuple[str, ...] = setting("HUB_REQUIRED_PROFILES", _items)
    # each read, search and history of patient data is recorded (hub.access.audit)
    audit: bool = setting("HUB_AUDIT", lambda n: _flag(n, "1"))
    # callers present bearer tokens; the policy of hub.access.policy decides (hub.api.caller)
    auth: bool = setting("HUB_AUTH", lambda n: _flag(n, "1"))
    trusted_proxies: tuple[str, ...] = setting("HUB_TRUSTED_PROXIES", _items)
    rate_limit: float = setting("HUB_RATE_LIMIT", lambda n: _float(
        n, "0", "a number of requests per second", empty="0"))
    quarantine_quota: int = setting("HUB_QUARANTINE_QUOTA", lambda n: _int(
        n, "10000", "a whole number of entries", floor=1, why="with none nothing is quarantined"))
    auth_issuer: str | None = setting("HUB_AUTH_ISSUER", _unset)
    auth_jwks_url: str | None = setting("HUB_AUTH_JWKS_URL", _unset)
    auth_roles_claim: str = setting("HUB_AUTH_ROLES_CLAIM", _text("roles"))
    auth_institution_claim: str = setting("HUB_AUTH_INSTITUTION_CLAIM", _text("institution"))
    console_oidc_issuer: str | None = setting("HUB_CONSOLE_OIDC_ISSUER", _unset)
    console_oidc_client_id: str = setting("HUB_CONSOLE_OIDC_CLIENT_ID", _text("hub-console"))
    console_oidc_client_secret: str | None = setting("HUB_CONSOLE_OIDC_CLIENT_SECRET", _unset,
                                                     secret=True)

    # the search backend: the SQLite index in the data directory ("sqlite"), or Elasticsearch
    # at HUB_ES_URL ("elasticsearch"; the SQLite index is still kept: $everything reads it)
    search: str = setting("HUB_SEARCH", _text("sqlite"))
    es_url: str = setting("HUB_ES_URL", _text("http://127.0.0.1:9200"))
    # index names start with it: several hubs (or test runs) can share one cluster
    es_prefix: str = setting("HUB_ES_PREFIX", _text("hub"))
    # the analyzer of _text and _content (a cluster with a Chinese one: smartcn, ik_max_word);
    # the text is indexed with each CJK character spaced, so "standard" finds them in a row
    es_analyzer: str = setting("HUB_ES_ANALYZER", _text("standard"))
    # read where they are used, checked here: the event store's synchronous pragma (the store
    # reads it as it connects), the full-text types (projections.search.fulltext), who decides
    # for the identity commands, the change stream's brokers
    sqlite_sync: str = setting("HUB_SQLITE_SYNC", lambda n: sqlite_sync())
    fulltext: str | None = setting("HUB_FULLTEXT", os.environ.get)
    user: str | None = setting("HUB_USER", _unset)
    kafka_bootstrap: str | None = setting("HUB_KAFKA_BOOTSTRAP", _unset)

    def __post_init__(self) -> None:
        if self.search not in ("sqlite", "elasticsearch"):
            raise ValueError(f"HUB_SEARCH must be sqlite or elasticsearch, not {self.search!r}")
        # every comparison of times is by fixed offsets (hub.core.fhirtime): a zone name would
        # silently read zone-less times as UTC
        if not ZONE.match(self.timezone.strip()):
            raise ValueError(f"HUB_TIMEZONE={self.timezone!r} is not a fixed offset: it takes one "
                             f"like +08:00, -05:30 or Z (zone names such as Asia/Shanghai are not "
                             f"supported)")
        if not -12 * 60 <= _offset_minutes(self.timezone.strip()) <= 14 * 60:
            raise ValueError(f"HUB_TIMEZONE={self.timezone!r} is not an offset FHIR takes: from "
                             "-12:00 to +14:00")
        if self.follow not in FOLLOW:
            raise ValueError(f"HUB_FOLLOW={self.follow!r} is not threads or none")
        if self.base_url is not None:
            _check_base_url(self.base_url)
        _check_proxies(self.trusted_proxies)
        _check_profiles(self.required_profiles)
        _check_es_url(self.es_url)
        for name, url in (("HUB_AUTH_ISSUER", self.auth_issuer),
                          ("HUB_AUTH_JWKS_URL", self.auth_jwks_url),
                          ("HUB_CONSOLE_OIDC_ISSUER", self.console_oidc_issuer)):
            if url is not None:
                _check_provider_url(name, url)
        if self.fulltext is not None:
            _check_fulltext(self.fulltext)

    @property
    def follows_here(self) -> bool:
        """Whether this process's threads follow the log into the read models (``follow``)."""
        return self.follow == "threads"

    @property
    def fhir_base(self) -> str:
        """The FHIR base URL: ``base_url``, else where ``hub serve`` listens (https with TLS)."""
        return self.base_url or \
            f"{'https' if self.tls_cert else 'http'}://{url_host(self.host)}:{self.port}/fhir"

    @property
    def event_store_path(self) -> Path:
        return self.data_dir / "events.sqlite"

    def open_store(self):
        from hub.core.sqlitefile import naming, refuse_empty
        from hub.core.store import ResourceStore

        if self.database_url:
            return ResourceStore.postgres(self.database_url, self.pg_pool)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        path = self.event_store_path
        if any(f != path and _has_bytes(f) for f in self.data_dir.glob("*.sqlite")):
            # beside read models (or any other database of the hub) an emptied event log is a
            # lost one: made again empty, the read models would be ahead of it
            refuse_empty(path, "the event log")
        with naming(path):
            return ResourceStore.sqlite(str(path))


def _has_bytes(f: Path) -> bool:
    try:
        return f.stat().st_size > 0
    except OSError:  # gone meanwhile
        return False


def _offset_minutes(zone: str) -> int:
    """A fixed offset (``ZONE``) in minutes east of UTC."""
    if zone == "Z":
        return 0
    hours, minutes = zone[1:].split(":")
    return (-1 if zone[0] == "-" else 1) * (int(hours) * 60 + int(minutes))


def _check_base_url(url: str) -> None:
    """HUB_BASE_URL is where clients reach the hub: links, Location and the tokens' audience are
    made of it, so it must be an absolute http(s) URL."""
    parts = _url_parts(url)
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"HUB_BASE_URL={redact_url(url)!r} is not an absolute http(s) URL (such "
                         "as https://hub.example/fhir)")


def _url_parts(url: str):
    """``url`` split, or None when it has a space or a port that is no number."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - a port that is no number raises here
    except ValueError:
        return None
    return None if any(c.isspace() for c in url) else parts


def _check_es_url(url: str) -> None:
    """HUB_ES_URL as the Elasticsearch client takes it: http(s), a host and a port (a bad one
    stopped `hub serve` with a traceback from the app's start, after its banner)."""
    parts = _url_parts(url)
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname \
            or parts.port is None:
        raise ValueError(f"HUB_ES_URL={redact_url(url)!r} is not an http(s) URL with a host and "
                         "port (such as http://127.0.0.1:9200)")


def _check_provider_url(name: str, url: str) -> None:
    """An OpenID Connect provider's issuer or key set is an absolute https URL (OpenID Connect
    Discovery 1.0 section 3, RFC 8414): the keys that decide who a caller is are not fetched
    in plain text, except from this machine (a provider run beside the hub, in a test)."""
    parts = _url_parts(url)
    if parts is None or not parts.hostname or parts.scheme not in ("http", "https") or (
            parts.scheme == "http" and not is_loopback(parts.hostname)):
        raise ValueError(f"{name}={redact_url(url)!r} is not an https URL (such as "
                         "https://idp.example/realms/region; http only on this machine: "
                         "localhost, 127.0.0.1, ::1)")


def _check_fulltext(raw: str) -> None:
    """HUB_FULLTEXT: ``*``, empty, or a comma list of FHIR resource types (``Foo,Bar`` indexed
    nothing, saying nothing)."""
    if raw.strip() == "*":
        return
    from fhir_mapping.fhir_types import RESOURCE_TYPES

    for item in (p.strip() for p in raw.split(",")):
        if item and item not in RESOURCE_TYPES:
            raise ValueError(f"HUB_FULLTEXT={raw!r} is not *, empty or a comma list of FHIR "
                             f"resource types ({item!r} is no FHIR resource type)")


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine only: ``localhost`` or a loopback address (127.0.0.0/8,
    ::1). A wildcard (``0.0.0.0``, ``0``, ``::0``), an interface's address or another name is
    not: what listens there is reachable from the network."""
    import ipaddress

    host = host.strip().removeprefix("[").removesuffix("]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# set by `hub serve` for the processes it starts (which end with it): no settings
HANDED_ON = ("HUB_SERVE_PARENT", "HUB_FOLLOW_PARENT")


def known_variables() -> list[str]:
    """The HUB_* variables the hub reads: its settings' (the fields of ``Settings``) and the
    ones `hub serve` hands its own processes."""
    return sorted({f.metadata["env"] for f in fields(Settings) if "env" in f.metadata}
                  | set(HANDED_ON))


def unknown_variables(environ: dict[str, str] | None = None) -> list[tuple[str, str | None]]:
    """(name, the known name it is likeliest a misspelling of, or None) for each HUB_* variable
    of the environment that the hub does not read: ignored, a misspelt HUB_TLS_CLIENT_CA served
    without mutual TLS, unsaid. Not refused: other tools may have HUB_ variables of their own."""
    import difflib

    known = known_variables()
    env = os.environ if environ is None else environ
    out = []
    for name in sorted(n for n in env if n.startswith("HUB_") and n not in known):
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
        out.append((name, close[0] if close else None))
    return out


def _check_proxies(specs: tuple[str, ...]) -> None:
    """Each of HUB_TRUSTED_PROXIES is an IP address or network (a bad one stopped `hub serve` with
    a traceback once it had said it served)."""
    import ipaddress

    for spec in specs:
        try:
            ipaddress.ip_network(spec, strict=False)
        except ValueError:
            raise ValueError(f"HUB_TRUSTED_PROXIES={','.join(specs)!r} is not a comma list of IP "
                             f"addresses or networks such as 10.0.0.5 or 10.0.0.0/24 ({spec!r} "
                             "is neither)") from None


def _check_profiles(items: tuple[str, ...]) -> None:
    """Each of HUB_REQUIRED_PROFILES is ``Type=canonical-url`` of a FHIR resource type (one
    written ``Patient:http://…`` was dropped, and with it the enforcement)."""
    from urllib.parse import urlsplit

    for item in items:
        rtype, eq, url = (p.strip() for p in item.partition("="))
        if not eq or not rtype or not url or not urlsplit(url).scheme or \
                any(c.isspace() for c in url):
            raise ValueError(f"HUB_REQUIRED_PROFILES={','.join(items)!r} is not a comma list of "
                             f"Type=canonical-url ({item!r} is not)")
        from fhir_mapping.fhir_types import RESOURCE_TYPES

        if rtype not in RESOURCE_TYPES:
            raise ValueError(f"HUB_REQUIRED_PROFILES={','.join(items)!r} is not a comma list of "
                             f"Type=canonical-url ({rtype!r} is no FHIR resource type)")


def url_host(host: str) -> str:
    """``host`` as a URL names it: an IPv6 literal in brackets (RFC 3986), ``[::1]``."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
