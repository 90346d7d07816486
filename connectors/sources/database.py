"""Database poller: new rows of a HIS table, view or query, read incrementally by a watermark.

Configuration (a ``sources`` entry of a connector file)::

    - type: database
      name: visits
      url: "postgresql+psycopg://his_reader@10.0.0.5/his"   # any SQLAlchemy URL (sqlite:///…, mssql+…)
      table: v_mz_jzxx          # a table or view …
      schema: his               # … optionally in a schema
      # query: "SELECT … FROM …" # … or a query (used as a sub-select; no ORDER BY/LIMIT inside)
      watermark: updated_at     # set anew on every new and changed row
      key: [visit_no]           # unique with the watermark: breaks ties between equal watermarks
      lookback_s: 300           # a date-time watermark (or text such as 20240301090000):
                                #   each read starts this much before it
      mapping: outpatient-visit # envelopes are kind "row:<mapping>" (or give kind: directly)
      batch_size: 500           # rows per read and per spool transaction
      poll_interval_s: 5        # pause when caught up
      backoff_initial_s: 0.5    # first pause after the database failed; doubles …
      backoff_max_s: 60         # … up to this
      start: "2024-01-01"       # optional: the first run skips rows with a smaller watermark
      checkpoint_key: db:visits # optional: default "database:<name>"
      connect_args: {}          # optional: passed to the DBAPI connect (timeouts, TLS)
      deleted_rows: false       # true: each row read names a row deleted from the view (below)
      deleted_at: deleted_at    # with deleted_rows: the log's column of the deletion's time

Reading: ``SELECT * FROM <source> WHERE wm IS NOT NULL AND wm >= :low ORDER BY wm, key… LIMIT
batch_size + n``, less the n rows already read as they are. ``:low`` is the last watermark read
less ``lookback_s`` (a date-time watermark, or one the database gives as text in a form of
``text_watermark.FORMS``: ISO, or a HIS's own such as ``20240301090000``, the window written in
that form so the text compares in time order; the last watermark itself for a sequence, and for
text in more than one form but ISO, its status and log saying so): each read looks back over the
window, and the rows read within it are remembered with the position, each by its key, watermark
and a fingerprint of its content (a hash of the row). So a row committed later with a watermark
within the window (a long transaction that took its time early, a clock set back, a smaller key at
the same second) is read, a row changed again within the same second is read again, and a row read
as it is is not sent twice. The position is the (watermark, key) pair of the last row read, and
only moves on. Past ``MAX_SEEN`` rows within the window (a bulk load), the tuple comparison ``(wm,
key…) > (:wm, :key…)`` (written out as OR/AND so every engine runs it) takes over until the
watermark moves on. Each batch is handed to ``Intake.accept`` together with that position, and the
spool stores both in one transaction: a crash never loses a row or reads one twice, and a row that
does not convert is a dead letter while the poller moves on. Values keep their database types in
the checkpoint (JSON with a type tag), so the comparison is made with the column's own type
(timestamps, numerics, text).

Columns: a ``row:`` mapping names the columns every row must have (``row_columns``: those the
resources of the row's own are written from); a view or query without one of them is not read
(a renamed column would rewrite every resource without what it held): at start the source
refuses to start (``CannotStart``, naming the columns), later it reads nothing, its status saying
why, until the view has them again.

Each row becomes an ``Envelope(kind="row:<mapping>")`` whose payload is the row as a JSON object:
dates and times in ISO 8601 (naive ones stay naive; the mapping adds the local offset), decimals
as JSON numbers written exactly as the database gave them (``1.50`` stays ``1.50``), binary as
base64. Rows with a NULL watermark or key are not read.

Deleted rows: a watermark sees new and changed rows, never a row deleted from the view. A HIS
that logs deletions (a trigger writing the deleted row's key and the time into a log table) is
polled by a second source over that log with ``deleted_rows: true`` and the view's mapping: each
row read (the mapping's ``unit`` key columns, its watermark and key) is sent as a tombstone
(``"@deleted": true``), and the mapper deletes what that row wrote (``fhir_mapping.tabular``). A
view without such a log cannot show a deletion to the poller: what its deleted rows wrote stays.
``deleted_at`` names the log's column of when the row was deleted (sent as ``"@deleted_at"``): the
deletes carry it as their source order, as a row's writes carry its last change, so a tombstone
read after the row was inserted again (with a newer change time) leaves it, and a row re-sent
older than the deletion does not bring it back. Without it (a log keeping a sequence only) the
deletes carry no order and win over any row, older or newer: the source warns when it starts,
and each tombstone of a mapping with ``source_order`` has a ``tabular.source-order`` finding.

Limit: a watermark is only as good as its column. A row that commits later than ``lookback_s``
after a row with a larger value was read (a transaction open longer than the window that took
its timestamp early, a clock set back further) is not seen, nor a row changed without a new
value when it was read more than the window ago; use a column the HIS sets at commit, or a
sequence/rowversion (a sequence has no window: a value smaller than one read is not seen).
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import hashlib
import logging
import threading
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import orjson
import sqlalchemy as sa

from connectors.base import CannotStart, Envelope, Intake
from connectors.sources import text_watermark
from fhir_mapping.tabular.model import DELETED, DELETED_AT
from hub.core.errors import HubError

if TYPE_CHECKING:
    from fhir_mapping.tabular import TabularMapping

log = logging.getLogger("connectors.database")

# at most this many rows are remembered of those read within the look-back window
MAX_SEEN = 5000
# a text watermark whose values came in more than one form (or in none of text_watermark.FORMS)
MIXED = "mixed"


class ViewColumnsError(HubError):
    """The view (or query) lacks columns its mapping writes resources of the row's own from."""

    error_code = "config"

_TYPES: dict[str, Callable[[Any], Any]] = {
    "int": int, "float": float, "str": str, "bool": bool,
    "decimal": decimal.Decimal, "datetime": dt.datetime.fromisoformat,
    "date": dt.date.fromisoformat, "time": dt.time.fromisoformat, "uuid": uuid.UUID}


def encode_value(v: Any) -> dict[str, Any]:
    """A watermark or key value with its type, for the checkpoint."""
    if isinstance(v, bool):
        return {"t": "bool", "v": v}
    if isinstance(v, int):
        return {"t": "int", "v": str(v)}
    if isinstance(v, float):
        return {"t": "float", "v": repr(v)}
    if isinstance(v, decimal.Decimal):
        return {"t": "decimal", "v": str(v)}
    if isinstance(v, dt.datetime):
        return {"t": "datetime", "v": v.isoformat()}
    if isinstance(v, dt.date):
        return {"t": "date", "v": v.isoformat()}
    if isinstance(v, dt.time):
        return {"t": "time", "v": v.isoformat()}
    if isinstance(v, uuid.UUID):
        return {"t": "uuid", "v": str(v)}
    if isinstance(v, (bytes, memoryview)):
        raise TypeError("binary watermark or key columns are not supported")
    return {"t": "str", "v": str(v)}


def decode_value(d: dict[str, Any]) -> Any:
    t = d["t"]
    if t == "bool":
        return bool(d["v"])
    return _TYPES[t](d["v"])


def _json_default(v: Any) -> Any:
    if isinstance(v, decimal.Decimal):
        return orjson.Fragment(str(v).encode()) if v.is_finite() else str(v)
    if isinstance(v, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(v)).decode()
    if isinstance(v, dt.timedelta):
        return v.total_seconds()
    # a type of the database's own (inet, uuid, a range, an enum): its text, as the database
    # writes it; raising here stopped the source for good on a row of it
    return str(v)


def row_json(row: dict[str, Any]) -> bytes:
    """The row as a JSON object, values serialised faithfully."""
    return orjson.dumps(row, default=_json_default,
                        option=orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_SUBCLASS)


def _bind(name: str, v: Any) -> sa.BindParameter:
    """A parameter typed by its Python value (engines that cast parameters, such as SQLAlchemy's
    psycopg dialect, then compare with the column's own type; ints as BIGINT, so large keys fit)."""
    if isinstance(v, bool):
        type_: Any = sa.Boolean()
    elif isinstance(v, int):
        type_ = sa.BigInteger()
    elif isinstance(v, decimal.Decimal):
        type_ = sa.Numeric()
    elif isinstance(v, float):
        type_ = sa.Float()
    elif isinstance(v, dt.datetime):
        type_ = sa.DateTime(timezone=v.tzinfo is not None)
    elif isinstance(v, dt.date):
        type_ = sa.Date()
    elif isinstance(v, dt.time):
        type_ = sa.Time()
    else:
        type_ = None
    return sa.bindparam(name, v, type_=type_)


def _after(cols: Sequence[Any], vals: Sequence[Any]) -> Any:
    """(c1, c2, …) > (v1, v2, …) written out lexicographically."""
    ors = []
    for i in range(len(cols)):
        eqs = [cols[j] == _bind(f"p{j}_{i}", vals[j]) for j in range(i)]
        ors.append(sa.and_(*eqs, cols[i] > _bind(f"p{i}_{i}", vals[i])))
    return sa.or_(*ors)


def _normalise_url(url: str) -> str:
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):  # psycopg 3 is the driver this project installs
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


class DatabaseSource:
    """Implements ``connectors.base.Source`` for any SQLAlchemy-reachable database."""

    def __init__(self, name: str, url: str, *, watermark: str, key: str | list[str],
                 table: str | None = None, schema: str | None = None, query: str | None = None,
                 mapping: str | None = None, kind: str | None = None, batch_size: int = 500,
                 poll_interval_s: float = 5.0, backoff_initial_s: float = 0.5,
                 backoff_max_s: float = 60.0, start: Any = None,
                 checkpoint_key: str | None = None, connect_args: dict | None = None,
                 engine_options: dict | None = None, deleted_rows: bool = False,
                 deleted_at: str | None = None, lookback_s: float = 300.0):
        if (table is None) == (query is None):
            raise ValueError(f"database source {name}: give either table or query")
        if kind is None:
            if not mapping:
                raise ValueError(f"database source {name}: give mapping (or kind)")
            kind = f"row:{mapping}"
        if kind.startswith(("row:", "csv:")):  # a missing or broken mapping file: refuse to start
            from connectors.kinds import converter
            from fhir_mapping.base import MappingError

            try:
                converter(kind)
            except (MappingError, ValueError) as e:
                raise ValueError(f"database source {name}: {e}") from None
        # the columns each row must have (empty or not): a view without one would rewrite the
        # resources of its rows without what it holds (fhir_mapping.tabular: ``row_columns``)
        self.columns: tuple[str, ...] = ()
        self.mapping: TabularMapping | None = None
        if kind.startswith("row:") and not deleted_rows:
            from fhir_mapping.tabular import load_mapping

            self.mapping = load_mapping(kind.split(":", 1)[1])
            self.columns = self.mapping.row_columns
        keys = [key] if isinstance(key, str) else list(key or [])
        if not keys or not watermark:
            raise ValueError(f"database source {name}: watermark and key are required")
        self.name, self.kind = name, kind
        self.url = _normalise_url(url)
        self.table, self.schema, self.query = table, schema, query
        self.watermark, self.keys = watermark, keys
        self.batch_size = max(1, int(batch_size))
        self.poll_interval = float(poll_interval_s)
        self.backoff_initial, self.backoff_max = float(backoff_initial_s), float(backoff_max_s)
        self.start = start
        self.checkpoint_key = checkpoint_key or f"database:{name}"
        self.connect_args = dict(connect_args or {})
        self.engine_options = dict(engine_options or {})
        self.deleted_rows = bool(deleted_rows)
        if deleted_at and not self.deleted_rows:
            raise ValueError(f"database source {name}: deleted_at is the deletion log's time: "
                             "give it with deleted_rows: true")
        self.deleted_at = deleted_at or None
        if self.deleted_rows and not self.deleted_at:
            log.warning("database source %s: deleted_rows without deleted_at: its deletes carry "
                        "no time, and one read after its row was inserted again deletes it",
                        name)
        if float(lookback_s) < 0:
            raise ValueError(f"database source {name}: lookback_s cannot be negative")
        self.lookback = dt.timedelta(seconds=float(lookback_s))
        self.engine: sa.Engine | None = None
        self.position: tuple[Any, list[Any]] | None = None
        # the rows read within the look-back window of the position: key -> (watermark, content
        # fingerprint); None past MAX_SEEN (the (watermark, key) comparison alone)
        self.seen: dict[tuple[Any, ...], tuple[Any, str | None]] | None = {}
        # the lowest watermark ``seen`` covers (None: every row read since the start)
        self.floor: Any = None
        # the form of the text watermark's values read (text_watermark.FORMS; "other": none of
        # them; MIXED: more than one); None until a text value was read
        self.text_form: str | None = None
        self._resumed = False
        self._read_once = False
        self.caught_up = threading.Event()  # set whenever a read returned fewer rows than a batch
        # set once the first read checked the view's columns (or met a database it retries):
        # the daemon says it started after it, as after its listeners are bound
        self.checked = threading.Event()
        self.stats: dict[str, Any] = {"polls": 0, "rows": 0, "batches": 0, "errors": 0,
                                      "last_error": None, "connected": False, "watermark": None}

    @classmethod
    def from_config(cls, name: str, cfg: dict) -> DatabaseSource:
        opts = {k: v for k, v in cfg.items() if k not in ("name", "type")}
        if "poll_interval" in opts:
            opts["poll_interval_s"] = opts.pop("poll_interval")
        try:
            return cls(name=name, **opts)
        except TypeError as e:
            raise ValueError(f"database source {name}: {e}") from None

    # -- position --------------------------------------------------------------------------------

    @staticmethod
    def encode_position(wm: Any, keys: Sequence[Any],
                        seen: dict[tuple[Any, ...], tuple[Any, str | None]] | None = None,
                        floor: Any = None, text_form: str | None = None) -> str:
        out: dict[str, Any] = {"w": encode_value(wm), "k": [encode_value(k) for k in keys]}
        if text_form is not None:
            out["tf"] = text_form
        if seen is not None:
            out["f"] = [[encode_value(w), [encode_value(k) for k in ks], fp]
                        for ks, (w, fp) in sorted(seen.items(), key=repr)]
            if floor is not None:
                out["lo"] = encode_value(floor)
        return orjson.dumps(out).decode()

    @staticmethod
    def decode_position(text: str) -> tuple[Any, list[Any]]:
        d = orjson.loads(text)
        return decode_value(d["w"]), [decode_value(k) for k in d["k"]]

    @staticmethod
    def decode_seen(text: str) -> tuple[dict[tuple[Any, ...], tuple[Any, str | None]] | None,
                                        Any]:
        """The rows read within the look-back window (key -> (watermark, fingerprint)) and the
        lowest watermark they cover (None: every row read). None for the rows: past
        ``MAX_SEEN``, the (watermark, key) comparison alone. A checkpoint that kept the keys
        read at the position's watermark only covers that watermark, their content unknown."""
        d = orjson.loads(text)
        if "f" in d:
            return ({tuple(decode_value(k) for k in ks): (decode_value(w), fp)
                     for w, ks, fp in d["f"]},
                    decode_value(d["lo"]) if "lo" in d else None)
        if "s" in d:
            wm = decode_value(d["w"])
            return {tuple(decode_value(k) for k in ks): (wm, None) for ks in d["s"]}, wm
        return None, None

    def bound(self, wm: Any) -> Any:
        """The lowest watermark read again after ``wm``: ``wm`` less the look-back, for a
        date-time watermark (text too: ISO as SQLite returns it, or a HIS's own text form such
        as ``20240301090000``, written in the same form); ``wm`` itself for any other (a
        sequence has no time to look back by). A text column whose values came in more than
        one form gets a window for ISO text only, as before text forms were known: a window
        written in one form could sort among another's values anywhere."""
        if not self.lookback or isinstance(wm, (bool, int, float, decimal.Decimal)):
            return wm
        if isinstance(wm, dt.date):
            return wm - self.lookback
        if isinstance(wm, str):
            if self.text_form != MIXED:
                low = text_watermark.earlier(wm, self.lookback)
                if low is not None:
                    return low
            if wm[4:5] != "-":  # 20240301 parses as ISO too, but its ISO window sorts below it
                return wm
            try:
                t = dt.datetime.fromisoformat(wm)
            except ValueError:
                return wm
            # the same spelling, so the text compares as the column's values do
            sep = "T" if len(wm) > 10 and wm[10] == "T" else " "
            return (t - self.lookback).isoformat(sep=sep) if len(wm) > 10 else \
                (t - self.lookback).date().isoformat()
        return wm

    def _lowest(self) -> Any:
        """The lowest watermark the next read starts at, when ``seen`` is kept."""
        assert self.position is not None
        low = self.bound(self.position[0])
        if self.floor is not None and low < self.floor:
            return self.floor
        return low

    @staticmethod
    def fingerprint(row: dict[str, Any]) -> str:
        """The row's content, hashed: a row read again unchanged is not sent again."""
        return hashlib.blake2b(row_json(row), digest_size=12).hexdigest()

    # -- reading ---------------------------------------------------------------------------------

    def _engine(self) -> sa.Engine:
        if self.engine is None:
            args = dict(self.connect_args)
            if self.url.startswith("postgresql") and "connect_timeout" not in args:
                args["connect_timeout"] = 10
            self.engine = sa.create_engine(self.url, pool_pre_ping=True, connect_args=args,
                                           **self.engine_options)
        return self.engine

    def select(self) -> sa.Select:
        if self.table is not None:
            src: Any = sa.table(self.table, schema=self.schema)
        else:
            src = sa.text(f"({self.query}) AS hub_src")
        wm: sa.ColumnClause[Any] = sa.column(self.watermark)
        keys: list[sa.ColumnClause[Any]] = [sa.column(k) for k in self.keys]
        q = sa.select(sa.text("*")).select_from(src).where(wm.is_not(None),
                                                            *[k.is_not(None) for k in keys])
        if self.position is not None and self.seen is not None:
            # the look-back window read again, less the rows already read as they are: a row
            # committed later with a watermark already passed, or changed again within the same
            # one, was skipped for good
            q = q.where(wm >= _bind("w", self._lowest()))
            return q.order_by(wm, *keys).limit(self.batch_size + len(self.seen))
        if self.position is not None:
            w, kv = self.position
            q = q.where(_after([wm, *keys], [w, *kv]))
        elif self.start is not None:
            q = q.where(wm >= _bind("start", self._start_value()))
        return q.order_by(wm, *keys).limit(self.batch_size)

    def _start_value(self) -> Any:
        """``start`` as configured; an ISO date or date-time string becomes a date/datetime except
        on SQLite, whose date columns are text compared as text."""
        v = self.start
        if isinstance(v, str) and self._engine().dialect.name != "sqlite":
            try:
                return dt.date.fromisoformat(v) if len(v) == 10 else dt.datetime.fromisoformat(v)
            except ValueError:
                return v
        if isinstance(v, dt.date) and self._engine().dialect.name == "sqlite":
            return v.isoformat(sep=" ") if isinstance(v, dt.datetime) else v.isoformat()
        return v

    def read_batch(self) -> list[dict[str, Any]]:
        with self._engine().connect() as conn:
            result = conn.execute(self.select())
            names = {str(k).lower() for k in result.keys()}
            rows = [dict(r._mapping) for r in result]
        self.stats["connected"] = True
        self.stats["polls"] += 1
        lacking = [c for c in self.columns if c not in names]
        if lacking:
            assert self.mapping is not None
            where = f"table {self.table}" if self.query is None else "query"
            raise ViewColumnsError(f"database source {self.name}: its {where} has "
                                   f"{self.mapping.lacking(lacking)}")
        if self.position is not None and self.seen is not None:  # less those read already
            seen = self.seen
            rows = [r for r in rows if not self._read_before(r, seen)][:self.batch_size]
        return rows

    def _read_before(self, row: dict[str, Any],
                     seen: dict[tuple[Any, ...], tuple[Any, str | None]]) -> bool:
        got = seen.get(tuple(self._get(row, k) for k in self.keys))
        if got is None or got[0] != self._get(row, self.watermark):
            return False
        return got[1] is None or got[1] == self.fingerprint(row)

    def envelopes(self, rows: list[dict[str, Any]]) -> list[Envelope]:
        out = []
        for r in rows:
            keyvals = [self._get(r, k) for k in self.keys]
            meta = {"unit_id": f"{self.name}:" + "/".join(str(k) for k in keyvals),
                    "watermark": encode_value(self._get(r, self.watermark))["v"]}
            # a deletion log's row is a tombstone of the view's row it names, at its time
            body = r
            if self.deleted_rows:
                body = {**r, DELETED: True}
                if self.deleted_at:
                    body[DELETED_AT] = self._get(r, self.deleted_at)
            out.append(Envelope(row_json(body), self.kind, self.name, meta))
        return out

    @staticmethod
    def _get(row: dict[str, Any], col: str) -> Any:
        if col in row:
            return row[col]
        for k, v in row.items():  # engines that fold case (Oracle upper, PostgreSQL lower)
            if k.lower() == col.lower():
                return v
        raise KeyError(f"column {col!r} is not in the rows read")

    def poll_once(self, intake: Intake) -> int:
        """Read one batch and hand it to ``intake`` with the position it reaches; rows read.
        The first call resumes from the checkpoint ``intake`` holds."""
        if not self._resumed:
            saved = intake.checkpoint(self.checkpoint_key)
            if saved:
                self.position = self.decode_position(saved)
                self.seen, self.floor = self.decode_seen(saved)
                self.text_form = orjson.loads(saved).get("tf")
                if self.text_form == MIXED:
                    self.stats["watermark_form"] = MIXED
            self._resumed = True
        rows = self.read_batch()
        self._read_once = True
        self.checked.set()
        if not rows:
            return 0
        self._note_text_form(rows)
        last = rows[-1]
        position = (self._get(last, self.watermark), [self._get(last, k) for k in self.keys])
        # a row read again within the window (committed late, changed again) leaves the
        # position where it was: it only ever moves on
        if self.position is not None and (self.position[0], *self.position[1]) > (
                position[0], *position[1]):
            position = self.position
        floor = self.floor
        seen_kept: dict[tuple[Any, ...], tuple[Any, str | None]] | None
        if self.seen is None and self.position is not None and self.position[0] == position[0]:
            seen_kept = None  # the tuple comparison until the watermark moves on
        else:
            if self.seen is None and self.position is not None:
                # back from the tuple comparison: what was read before this watermark is known
                # by that comparison only, so the window starts here
                floor = position[0]
            low = self.bound(position[0])
            if floor is not None and low < floor:
                low = floor
            elif floor is not None:
                floor = None  # the window has moved past it
            seen = {k: v for k, v in (self.seen or {}).items() if v[0] >= low}
            for r in rows:
                w = self._get(r, self.watermark)
                if w >= low:
                    seen[tuple(self._get(r, k) for k in self.keys)] = (w, self.fingerprint(r))
            seen_kept = seen
            if len(seen) > MAX_SEEN:  # very many rows in the window (a bulk load): the
                seen_kept = None      # (watermark, key) comparison from here, as before
                log.warning("database source %s: over %d rows within the look-back window; "
                            "rows committed later with a watermark already read may be missed",
                            self.name, MAX_SEEN)
        envs = self.envelopes(rows)
        intake.accept(envs, (self.checkpoint_key,
                             self.encode_position(*position, seen_kept, floor,
                                                  self.text_form)))
        self.position = position
        self.seen = seen_kept
        self.floor = floor if seen_kept is not None else None
        self.stats["watermark"] = encode_value(position[0])["v"]
        self.stats["rows"] += len(rows)
        self.stats["batches"] += 1
        return len(rows)

    def _note_text_form(self, rows: list[dict[str, Any]]) -> None:
        """Follow the form of a text watermark's values; more than one turns the window of
        the text forms off for good (status and log say so)."""
        if self.text_form == MIXED:
            return
        for r in rows:
            w = self._get(r, self.watermark)
            if not isinstance(w, str):
                return  # a timestamp, a sequence: no text to read a form from
            form = text_watermark.form_of(w) or "other"
            if self.text_form is None:
                self.text_form = form
            elif form != self.text_form:
                log.warning("database source %s: the watermark %s holds text in more than one "
                            "form (%s, %s): it gets no look-back window but in ISO text, and a "
                            "row committed late with an earlier time may be missed", self.name,
                            self.watermark, self.text_form, form)
                self.stats["watermark_form"] = f"{MIXED}: {self.text_form}, {form}"
                self.text_form = MIXED
                return
        if self.text_form != "other":
            self.stats["watermark_form"] = self.text_form

    def run(self, intake: Intake, stop: threading.Event) -> None:
        backoff = self.backoff_initial
        log.info("database source %s polling every %.1fs", self.name, self.poll_interval)
        while not stop.is_set():
            try:
                n = self.poll_once(intake)
            except ViewColumnsError as e:
                if not self._read_once:  # at start: the view is not the mapping's; say so
                    raise CannotStart(str(e)) from None
                self._failed(e)  # renamed while polling: nothing read until it is put right
                stop.wait(backoff)
                backoff = min(backoff * 2, self.backoff_max)
                continue
            except Exception as e:  # noqa: BLE001 - database down, spool busy: retry, never die
                self.checked.set()  # started, retrying: its status says why
                self._failed(e)
                stop.wait(backoff)
                backoff = min(backoff * 2, self.backoff_max)
                continue
            backoff = self.backoff_initial
            if n < self.batch_size:
                self.caught_up.set()
                stop.wait(self.poll_interval)
            else:
                self.caught_up.clear()
        if self.engine is not None:
            self.engine.dispose()

    def _failed(self, e: Exception) -> None:
        self.stats["errors"] += 1
        self.stats["connected"] = False
        # the class and first line only: driver messages may quote SQL parameters (row keys)
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        self.stats["last_error"] = f"{type(e).__name__}: {first[:200]}"
        log.warning("database source %s: %s; retrying", self.name, self.stats["last_error"])
        if self.engine is not None:
            self.engine.dispose()  # drop pooled connections to a restarted server

    def status(self) -> dict[str, Any]:
        return dict(self.stats)
