"""Configuration from the environment (and the command line, which overrides it).
A limit under the least the hub works within is refused at start (HUB_MAX_BODY 4096, HUB_MAX_STRING
1024, HUB_MAX_HEADER 4096, HUB_MAX_LARGE, HUB_MAX_COUNT, HUB_WORKERS, HUB_QUARANTINE_QUOTA 1,
HUB_EXPORT_KEEP 60).

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
HUB_LARGE_BODY / HUB_MAX_LARGE / HUB_LARGE_WAIT  a body over HUB_LARGE_BODY bytes (or of
                  unknown length) is read only while fewer than HUB_MAX_LARGE such requests are
                  in flight per process; others wait up to HUB_LARGE_WAIT s, then 503: what
                  requests hold in memory at once is bounded                     1048576; 2; 10
                  a head over it is answered 431 (400 by uvicorn while it is still incomplete:
                  h11_max_incomplete_event_size), and the connection closed
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
from dataclasses import dataclass, field
from pathlib import Path

from hub.core.fhirtime import ZONE
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


@dataclass
class Settings:
    data_dir: Path = field(default_factory=lambda: Path(os.environ.get("HUB_DATA_DIR", "./var")))
    database_url: str | None = field(default_factory=lambda: os.environ.get("HUB_DATABASE_URL") or None)
    host: str = field(default_factory=lambda: os.environ.get("HUB_HOST", "127.0.0.1"))
    port: int = field(default_factory=lambda: _int("HUB_PORT", "8080", "a port number (1-65535)", 1, 65535))
    base_url: str | None = field(default_factory=lambda: os.environ.get("HUB_BASE_URL") or None)
    # each limit has a floor the hub works within (HUB_MAX_BODY=0 answered every write 413)
    max_body: int = field(default_factory=lambda: _int(
        "HUB_MAX_BODY", str(64 << 20), BYTES, floor=4096,
        why="4 KiB: a smaller body cannot carry a Patient"))
    max_string: int = field(default_factory=lambda: _int(
        "HUB_MAX_STRING", str(1 << 20), "a whole number of characters", floor=1024,
        why="1 KiB: URLs and narratives are longer"))
    max_header: int = field(default_factory=lambda: _int(
        "HUB_MAX_HEADER", str(64 << 10), BYTES, floor=4096,
        why="4 KiB: a request's head with a bearer token"))
    large_body: int = field(default_factory=lambda: _int("HUB_LARGE_BODY", str(1 << 20), BYTES))
    max_large: int = field(default_factory=lambda: _int(
        "HUB_MAX_LARGE", "2", "a whole number of requests", floor=1,
        why="with none, no large body is ever read"))
    large_wait: float = field(default_factory=lambda: _float("HUB_LARGE_WAIT", "10", SECONDS))
    keep_alive: int = field(default_factory=lambda: _int("HUB_KEEP_ALIVE", "5", "a whole number of seconds"))
    header_timeout: float = field(
        default_factory=lambda: _float("HUB_HEADER_TIMEOUT", "30", SECONDS, empty="0"))
    tls_cert: str | None = field(default_factory=lambda: os.environ.get("HUB_TLS_CERT") or None)
    tls_key: str | None = field(default_factory=lambda: os.environ.get("HUB_TLS_KEY") or None)
    tls_client_ca: str | None = field(default_factory=lambda: os.environ.get("HUB_TLS_CLIENT_CA") or None)
    max_count: int = field(default_factory=lambda: _int(
        "HUB_MAX_COUNT", "1000", "a whole number of resources", floor=1,
        why="a page of none answers no search"))
    # FHIR Bulk Data $export (hub.exports): how many run at once, how long their files are
    # kept, and where a type's output file is split
    export_max_running: int = field(default_factory=lambda: _int(
        "HUB_EXPORT_MAX_RUNNING", "2", "a whole number of exports", 1))
    export_keep: float = field(default_factory=lambda: _float(
        "HUB_EXPORT_KEEP", "86400", SECONDS, floor=60,
        why="files removed at once could not be fetched"))
    export_file_resources: int = field(default_factory=lambda: _int(
        "HUB_EXPORT_FILE_RESOURCES", "100000", "a whole number of resources", 1))
    export_file_bytes: int = field(default_factory=lambda: _int(
        "HUB_EXPORT_FILE_BYTES", str(256 << 20), BYTES, 1))
    # a PostgreSQL store's pool: at most this many connections (hub.core.store.PG_POOL), one
    # kept while idle; a `hub serve` API process has one store (two with --followers threads),
    # its follower process one
    pg_pool: int = field(default_factory=lambda: _int(
        "HUB_PG_POOL", "10", "a whole number of connections", floor=2,
        why="a request waits behind every other one's read"))
    # API processes of `hub serve` behind its one port (default: one per core)
    workers: int = field(default_factory=_workers)
    default_count: int = 50
    # the master patient index links new and updated Patients as they arrive (hub.api.match)
    mpi_automatch: bool = field(
        default_factory=lambda: _flag("HUB_MPI_AUTOMATCH", "1"))
    # who follows the event log into the read models: this process's threads ("threads"), or
    # another process ("none": `hub projections follow`, which `hub serve` starts by default);
    # a request that must see its own write brings the model up to date itself either way
    follow: str = field(default_factory=lambda: os.environ.get("HUB_FOLLOW", "threads"))
    # lenient intake (hub.core.repair): the platform's zone for times sent without one, and who
    # gets repairs instead of a 422: callers with the connector role, and the institutions listed
    # in HUB_INTAKE_REPAIR ("*": everyone), except those in HUB_INTAKE_STRICT
    timezone: str = field(default_factory=lambda: os.environ.get("HUB_TIMEZONE", "+08:00"))
    intake_repair: tuple[str, ...] = field(default_factory=lambda: tuple(
        p.strip() for p in os.environ.get("HUB_INTAKE_REPAIR", "").split(",") if p.strip()))
    intake_strict: tuple[str, ...] = field(default_factory=lambda: tuple(
        p.strip() for p in os.environ.get("HUB_INTAKE_STRICT", "").split(",") if p.strip()))
    # profiles every resource of a type must conform to (hub.api.profiles): "Type=url,…"
    required_profiles: tuple[str, ...] = field(default_factory=lambda: tuple(
        p.strip() for p in os.environ.get("HUB_REQUIRED_PROFILES", "").split(",") if p.strip()))
    # each read, search and history of patient data is recorded (hub.access.audit)
    audit: bool = field(default_factory=lambda: _flag("HUB_AUDIT", "1"))
    # callers present bearer tokens; the policy of hub.access.policy decides (hub.api.caller)
    auth: bool = field(default_factory=lambda: _flag("HUB_AUTH", "1"))
    trusted_proxies: tuple[str, ...] = field(default_factory=lambda: tuple(
        p.strip() for p in os.environ.get("HUB_TRUSTED_PROXIES", "").split(",") if p.strip()))
    rate_limit: float = field(
        default_factory=lambda: _float("HUB_RATE_LIMIT", "0", "a number of requests per second",
                                       empty="0"))
    quarantine_quota: int = field(
        default_factory=lambda: _int("HUB_QUARANTINE_QUOTA", "10000", "a whole number of entries",
                                     floor=1, why="with none nothing is quarantined"))
    auth_issuer: str | None = field(
        default_factory=lambda: os.environ.get("HUB_AUTH_ISSUER") or None)
    auth_jwks_url: str | None = field(
        default_factory=lambda: os.environ.get("HUB_AUTH_JWKS_URL") or None)
    auth_roles_claim: str = field(
        default_factory=lambda: os.environ.get("HUB_AUTH_ROLES_CLAIM", "roles"))
    auth_institution_claim: str = field(
        default_factory=lambda: os.environ.get("HUB_AUTH_INSTITUTION_CLAIM", "institution"))
    console_oidc_issuer: str | None = field(
        default_factory=lambda: os.environ.get("HUB_CONSOLE_OIDC_ISSUER") or None)
    console_oidc_client_id: str = field(
        default_factory=lambda: os.environ.get("HUB_CONSOLE_OIDC_CLIENT_ID", "hub-console"))
    console_oidc_client_secret: str | None = field(
        default_factory=lambda: os.environ.get("HUB_CONSOLE_OIDC_CLIENT_SECRET") or None)

    # the search backend: the SQLite index in the data directory ("sqlite"), or Elasticsearch
    # at HUB_ES_URL ("elasticsearch"; the SQLite index is still kept: $everything reads it)
    search: str = field(default_factory=lambda: os.environ.get("HUB_SEARCH", "sqlite"))
    es_url: str = field(default_factory=lambda: os.environ.get("HUB_ES_URL",
                                                               "http://127.0.0.1:9200"))
    # index names start with it: several hubs (or test runs) can share one cluster
    es_prefix: str = field(default_factory=lambda: os.environ.get("HUB_ES_PREFIX", "hub"))
    # the analyzer of _text and _content (a cluster with a Chinese one: smartcn, ik_max_word);
    # the text is indexed with each CJK character spaced, so "standard" finds them in a row
    es_analyzer: str = field(default_factory=lambda: os.environ.get("HUB_ES_ANALYZER", "standard"))

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
        sqlite_sync()  # the store reads it as it connects: a bad one is said here, at start
        if self.follow not in FOLLOW:
            raise ValueError(f"HUB_FOLLOW={self.follow!r} is not threads or none")
        if self.base_url is not None:
            _check_base_url(self.base_url)
        _check_proxies(self.trusted_proxies)
        _check_profiles(self.required_profiles)

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
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - a port that is no number raises here
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname \
            or any(c.isspace() for c in url):
        raise ValueError(f"HUB_BASE_URL={url!r} is not an absolute http(s) URL (such as "
                         "https://hub.example/fhir)")


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
