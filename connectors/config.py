"""A connector's configuration: one YAML file.

```yaml
name: h0001-adt                       # the connector (feed) name
institution: {code: H0001, oid: 1.2.156.112604.1.1, name: 市第一人民医院}  # code, oid required
state_dir: ./state/h0001-adt          # spool, checkpoints, dead letters (relative to this file)
durable: true                         # fsync every spool commit (default)
status: {host: 127.0.0.1, port: 8181} # health/status HTTP endpoint (port 0: any free port)
  # admin_token_file: admin.token     # optional: dead letters listed, shown and replayed over it
  #                                   # by whoever sends this token (the hub's console)
retry: {initial_s: 0.5, max_s: 30}    # backoff while the hub or broker is unreachable
sources:
  - {type: mllp, name: adt, host: 0.0.0.0, port: 2575, kind: hl7v2,
     max_message_bytes: 1048576, idle_timeout_s: 300,
     acknowledgment: as-asked,          # or original: one ACK whatever MSH-15/16 say
     tls: {cert: tls/mllp.pem, key: tls/mllp.key, client_ca: tls/senders-ca.pem}}  # optional
  - {type: folder, name: drop, path: ./inbox, kind: hl7v2, pattern: "*.hl7", settle_ms: 500}
    # (the folder must exist: `hub connector run` refuses a missing one)
  - {type: database, name: visits, ...}  # connectors.sources.database.DatabaseSource.from_config
  - {type: kafka, name: feed, bootstrap_servers: "127.0.0.1:9092", topic: his.adt,
     group_id: h0001-connector, kind: hl7v2}
sink:                                 # the hub's FHIR API ...
  {type: http, url: "http://127.0.0.1:8080/fhir", batch_size: 50, timeout_s: 30, headers: {}}
  # a hub behind TLS, with a client certificate (mutual TLS; connectors.tls):
  # {type: http, url: "https://hub.example:8443/fhir",
  #  tls: {ca: tls/hub-ca.pem, cert: tls/h0001.pem, key: tls/h0001.key}}
  # ... or a Kafka topic read by `hub ingest-worker`
  # {type: kafka, bootstrap_servers: "127.0.0.1:9092", topic: hub.ingest}
terminology:                          # optional: local codes -> standard (connectors.terminology)
  {concept_maps: [maps/h0001-lab.json], from_hub: true, refresh_seconds: 300}
```

A key no section takes (``durabel``, ``retry: {inital_s: …}``) is refused, naming the keys it takes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from fhir_mapping.base import SourceInfo
from hub.core.errors import HubError
from hub.core.ingest import CLIENT_FEEDS


class ConfigError(HubError, ValueError):
    error_code = "config"


@dataclass
class ConnectorConfig:
    name: str
    source_info: SourceInfo
    state_dir: Path
    sources: list[dict[str, Any]]
    sink: dict[str, Any]
    durable: bool = True
    status: dict[str, Any] = field(default_factory=dict)
    retry_initial_s: float = 0.5
    retry_max_s: float = 30.0
    path: Path | None = None
    terminology: dict[str, Any] | None = None  # connectors.terminology.parse_config

    @property
    def spool_path(self) -> Path:
        return self.state_dir / "spool.sqlite"

    @classmethod
    def load(cls, path: str | Path) -> ConnectorConfig:
        path = Path(path)
        try:
            d = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
        return cls.from_dict(d, base=path.parent, path=path)

    @classmethod
    def from_dict(cls, d: Any, base: Path | None = None, path: Path | None = None) -> ConnectorConfig:
        where = str(path or "config")
        if not isinstance(d, dict):
            raise ConfigError(f"{where}: a mapping is expected at the top")
        # a misspelt key was silently ignored: `durabel: false` left fsync on, `naem:` no name
        check_keys(d, _TOP, where)
        name = d.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where}: 'name' is required")
        if name in CLIENT_FEEDS:  # the feed's name: a client's would store its messages as whole records
            raise ConfigError(f"{where}: 'name' {name!r} is reserved (the hub names its own clients' "
                              f"writes {', '.join(sorted(CLIENT_FEEDS))}); name the connector after its feed")
        inst = d.get("institution")
        if inst is None:
            raise ConfigError(f"{where}: 'institution' is required (code, oid, name)")
        if not isinstance(inst, dict):
            raise ConfigError(f"{where}: 'institution' must be a mapping (code, oid, name)")
        check_keys(inst, ("code", "oid", "name", "record_number_types"), f"{where}: institution")
        same = inst.get("record_number_types") or []
        if not isinstance(same, list) or not all(isinstance(t, str) and t.strip() for t in same):
            raise ConfigError(f"{where}: institution.record_number_types must be a list of HL7 v2 "
                              "identifier types (CX-5, such as PI) the institution issues from its "
                              "record-number register")
        for key in ("code", "oid"):  # every record the feed writes is stamped with them
            if inst.get(key) is None or isinstance(inst[key], (bool, dict, list)) \
                    or not str(inst[key]).strip():
                raise ConfigError(f"{where}: institution.{key} is required")
        info = SourceInfo(institution=str(inst["code"]).strip(), oid=str(inst["oid"]).strip(),
                          name=str(inst.get("name", "")), feed=name, record_number_types=tuple(same))
        base = base or Path.cwd()
        state = Path(d.get("state_dir") or f"state/{name}")
        if not state.is_absolute():
            state = (base / state).resolve()
        sources = d.get("sources") or []
        if not isinstance(sources, list) or not sources:
            raise ConfigError(f"{where}: 'sources' must be a non-empty list")
        names = set()
        for i, s in enumerate(sources):
            if not isinstance(s, dict) or s.get("type") not in ("mllp", "folder", "database", "kafka"):
                raise ConfigError(f"{where}: sources[{i}].type must be mllp, folder, database or kafka")
            s.setdefault("name", f"{s['type']}{i}")
            if s["name"] in names:
                raise ConfigError(f"{where}: two sources are named {s['name']!r}")
            names.add(s["name"])
            for key in ("path", "done_dir", "failed_dir"):
                if key in s and not Path(s[key]).is_absolute():
                    s[key] = str((base / s[key]).resolve())
                if s["type"] == "folder" and key in s and Path(s[key]).exists() \
                        and not Path(s[key]).is_dir():
                    # a file where a folder is meant: the source failed and restarted for ever
                    raise ConfigError(f"{where}: sources[{i}].{key} {s[key]} is a file, not a "
                                      "folder")
            # a mapping file named by path, and a SQLite database file, also relative to this file
            for key in ("mapping", "kind"):
                value = s.get(key)
                if isinstance(value, str):
                    prefix, arg = ("", value) if key == "mapping" else value.partition(":")[::2]
                    if arg.endswith((".yaml", ".yml", ".json")) and not Path(arg).is_absolute():
                        arg = str((base / arg).resolve())
                        s[key] = f"{prefix}:{arg}" if prefix else arg
            _resolve_tls(s, base, f"{where}: sources {s['name']!r}")
            url = s.get("url")
            if isinstance(url, str) and url.startswith("sqlite:///") and not url.startswith(
                    "sqlite:////") and url != "sqlite:///:memory:":
                s["url"] = "sqlite:///" + str((base / url[len("sqlite:///"):]).resolve())
        sink = d.get("sink")
        if not isinstance(sink, dict) or sink.get("type") not in ("http", "kafka"):
            raise ConfigError(f"{where}: 'sink.type' must be http or kafka")
        if sink["type"] == "http" and sink.get("url") is not None:
            parts = urlsplit(str(sink["url"]))
            if parts.scheme not in ("http", "https") or not parts.netloc:
                # 'not a url' was taken, and every delivery retried for ever
                raise ConfigError(f"{where}: sink.url {str(sink.get('url'))[:100]!r} is not an "
                                  "http(s) URL")
        _resolve_tls(sink, base, f"{where}: sink")
        if sink.get("tls") is not None and sink["type"] == "http":
            # ignored for http://: the client assertion, the tokens and the records in cleartext
            for key in ("url", "token_url"):
                url = sink.get(key)
                if url is not None and urlsplit(str(url)).scheme.lower() != "https":
                    raise ConfigError(f"{where}: sink: tls is given but {key} "
                                      f"{str(url)[:100]} is not https: make it https://, or "
                                      "leave tls out")
        key_file = sink.get("private_key")
        if isinstance(key_file, str) and key_file and not Path(key_file).is_absolute():
            # like the TLS files: relative to this file, not to where the daemon was started
            sink["private_key"] = str((base / key_file).resolve())
        status = d.get("status") or {}
        if not isinstance(status, dict):
            raise ConfigError(f"{where}: 'status' must be a mapping (host, port, admin_token_file)")
        check_keys(status, ("host", "port", "admin_token_file"), f"{where}: status")
        token_file = status.get("admin_token_file")
        if token_file is not None:
            if not Path(str(token_file)).is_absolute():
                status["admin_token_file"] = str((base / str(token_file)).resolve())
        retry = d.get("retry") or {}
        if not isinstance(retry, dict):
            raise ConfigError(f"{where}: 'retry' must be a mapping (initial_s, max_s)")
        check_keys(retry, ("initial_s", "max_s"), f"{where}: retry")
        durable = d.get("durable", True)
        if not isinstance(durable, bool):  # bool("no") is True
            raise ConfigError(f"{where}: durable must be true or false, not {durable!r}")
        for i, s in enumerate(sources):
            _numbers(s, f"{where}: sources[{i}]")
        _numbers(sink, f"{where}: sink")
        _numbers(status, f"{where}: status")
        _numbers(retry, f"{where}: retry")
        # -- terminology: the section is checked by connectors.terminology --
        from connectors.terminology import TerminologyConfigError, parse_config

        try:
            terminology = parse_config(d.get("terminology"), base, where)
        except TerminologyConfigError as e:
            raise ConfigError(str(e)) from None
        # -- end terminology --
        return cls(name=name, source_info=info, state_dir=state, sources=sources, sink=sink,
                   durable=durable, status=status,
                   retry_initial_s=float(retry.get("initial_s", 0.5)),
                   retry_max_s=float(retry.get("max_s", 30.0)), path=path,
                   terminology=terminology)


_TOP = ("name", "institution", "state_dir", "durable", "status", "retry", "sources", "sink",
        "terminology")


def check_keys(section: dict, known: Any, where: str) -> None:
    """Refuse the keys of ``section`` that are not ``known``, naming them and the known ones."""
    unknown = sorted(str(k) for k in set(section) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} (known: "
                          f"{', '.join(sorted(known))})")


def _resolve_tls(section: dict, base: Path, where: str) -> None:
    """The files of a ``tls:`` mapping, relative to the configuration file."""
    tls = section.get("tls")
    if tls is None:
        return
    if not isinstance(tls, dict):
        raise ConfigError(f"{where}: 'tls' must be a mapping (cert, key, client_ca or ca)")
    # `tls: {}` served plain MLLP, `client_ca:` left empty TLS without client certificates:
    # an empty setting is a mistake, never read as the key left out
    if not tls:
        raise ConfigError(f"{where}: tls is empty: name its PEM files, or leave tls out")
    for key, value in tls.items():
        if value is None or (isinstance(value, str) and not value.strip()):
            raise ConfigError(f"{where}: tls.{key} is empty: name its PEM file, or leave "
                              f"tls.{key} out")
        if isinstance(value, str) and value and not Path(value).is_absolute():
            tls[key] = str((base / value).resolve())


MIN_TOKEN = 16  # characters of the dead letters' admin token (they hold patients' messages)


def admin_token(token_file: str | Path) -> str:
    """The token in ``status.admin_token_file``; an empty or short one is refused (an empty file
    let a bare "Bearer " read and replay every dead letter)."""
    try:
        token = Path(token_file).read_text().strip()
    except OSError as e:
        raise ConfigError(f"status.admin_token_file {token_file}: {e.strerror or e}") from None
    if len(token) < MIN_TOKEN:
        raise ConfigError(f"status.admin_token_file {token_file} holds no token of at least "
                          f"{MIN_TOKEN} characters")
    return token


_POSITIVE = ("_s", "_ms", "_bytes", "batch_size", "max_connections", "group_commit")


def _numbers(section: dict, where: str) -> None:
    """Times, sizes and counts are positive numbers, a port a number from 0 (any free port): a
    word there ended the daemon with a traceback, and 0 or -1 made it close every connection
    unanswered or take messages of any size."""
    for key, value in section.items():
        if key == "port" or key.endswith(_POSITIVE):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{where}.{key} must be a number, not {value!r}")
            if value < 0 or (value == 0 and key != "port") or (key == "port" and value > 65535):
                raise ConfigError(f"{where}.{key} is out of range: {value!r}")
