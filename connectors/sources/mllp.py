"""HL7 v2 over MLLP: a TCP listener for several concurrent senders.

Framing is ``<VT> message <FS><CR>``. Each message is handed to the intake (converted and spooled
durably) before its ACK is written, so an AA means the message survives a crash of this process.
Answers (original-mode acknowledgement, built from the message's MSH with the ``hl7`` library):

* ``AA``: converted and spooled;
* ``AE``: well-formed but its content cannot be mapped (dead-lettered, ERR says why and where);
* ``AR``: rejected: no MSH, undecodable, unsupported type, a framing error, too large, or the
  connector cannot store it right now (nothing stored: the sender should resend).

A message that values MSH-15 or MSH-16 asks for enhanced mode (HL7 v2.5 2.9.3): the accept ACK
(``CA`` kept, ``CR`` refused, ``CE`` not stored) as MSH-15 asks, then on the same connection the
application ACK (``AA``/``AE``, or ``AR`` for a refusal whose accept ACK the sender declined) as
MSH-16 asks (``acknowledgments``). The hub knows no return address of a sender, so it never
opens a connection of its own to answer.

Framing errors never stop the listener: bytes before ``<VT>`` are skipped, a block that never ends
(a new ``<VT>`` before ``<FS>``) is answered AR, a message over ``max_message_bytes`` is answered AR
and the connection closed, and a connection idle for ``idle_timeout_s`` is closed. What such a
block held (up to the limit) is kept as a dead letter of stage ``receive``, to read and replay.

With ``tls: {cert, key, client_ca}`` the listener speaks MLLP inside TLS (connectors.tls); with
``client_ca`` a sender must present a certificate that CA signed. A sender that fails the
handshake (plaintext, no or a wrong certificate) is dropped before any message is read; the
listener goes on serving the others.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import queue
import re
import socket
import ssl
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

import hl7

from connectors.base import Accepted, CannotStart, Envelope, Intake
from connectors.tls import server_context
from hub.core.errors import HubError

log = logging.getLogger("connectors.mllp")

VT, FS, CR = b"\x0b", b"\x1c", b"\x0d"

# HL7 table 0357 (message error condition codes)
ERR_CODES = {
    "segment": ("100", "Segment sequence error"),
    "required": ("101", "Required field missing"),
    "datatype": ("102", "Data type error"),
    "table": ("103", "Table value not found"),
    "type": ("200", "Unsupported message type"),
    "event": ("201", "Unsupported event code"),
    "processing": ("202", "Unsupported processing id"),
    "version": ("203", "Unsupported version id"),
    "key": ("204", "Unknown key identifier"),
    "duplicate": ("205", "Duplicate key identifier"),
    "application": ("207", "Application internal error"),
}


def frame(message: bytes) -> bytes:
    return VT + message + FS + CR


class FramingError(HubError):
    error_code = "invalid"

    def __init__(self, reason: str, fragment: bytes = b"", fatal: bool = False,
                 cut: bool = False):
        super().__init__(reason)
        # cut: the fragment is known to be part of a message (over the limit, or the connection
        # closed inside it): kept to read, never replayed as the message
        self.reason, self.fragment, self.fatal, self.cut = reason, fragment, fatal, cut


# -- ACK / NAK -----------------------------------------------------------------------------------

_CHARSETS = {"UNICODE UTF-8": "utf-8", "UTF-8": "utf-8", "GB 18030-2000": "gb18030",
             "GB18030": "gb18030", "GB 2312": "gb2312", "ASCII": "ascii",
             "8859/1": "latin-1", "ISO IR100": "latin-1"}


def _msh_text(payload: bytes) -> tuple[str | None, str]:
    """(the MSH segment as text, the encoding to answer in); (None, "ascii") without an MSH."""
    start = payload.find(b"MSH")
    if start < 0:
        return None, "ascii"
    # the MSH ends at the first segment terminator, \r or \n (senders mix them)
    end = min((i for i in (payload.find(b"\r", start), payload.find(b"\n", start)) if i >= 0),
              default=len(payload))
    raw = payload[start:end]
    if len(raw) < 8:
        return None, "ascii"
    ascii_view = raw.decode("latin-1")
    sep = ascii_view[3]
    fields = ascii_view.split(sep)
    charset = fields[17].split(ascii_view[5:6] or "~")[0].split(ascii_view[4:5] or "^")[0] \
        .strip().upper() if len(fields) > 17 else ""
    wanted = _CHARSETS.get(charset)
    for enc in ([wanted] if wanted else []) + ["utf-8", "gb18030"]:
        try:
            return raw.decode(enc), enc if enc != "ascii" else "ascii"
        except (UnicodeDecodeError, LookupError):
            continue
    return ascii_view, "latin-1"


def _escape(text: str, enc: str = "^~\\&", sep: str = "|") -> str:
    chars = (enc + "^~\\&")[:4]
    comp, rep, esc, sub = chars[0], chars[1], chars[2], chars[3]
    out = text.replace(esc, f"{esc}E{esc}")
    for ch, code in ((sep, "F"), (comp, "S"), (sub, "T"), (rep, "R")):
        out = out.replace(ch, f"{esc}{code}{esc}")
    return " ".join(out.split())  # no segment breaks inside a field


_LOC = re.compile(r"^([A-Z][A-Z0-9]{2})(?:\[(\d+)\])?-(\d+)(?:\[(\d+)\])?(?:\.(\d+))?(?:\.(\d+))?")


def _err_location(location: str | None) -> str:
    """"PID-3[2].1" -> "PID^1^3^2^1" (ERR-2, an ERL)."""
    m = _LOC.match(location or "")
    if not m:
        # a whole segment (a missing PID): the segment and its sequence, no field
        whole = re.fullmatch(r"([A-Z][A-Z0-9]{2})(?:\[(\d+)\])?", location or "")
        return f"{whole.group(1)}^{whole.group(2) or '1'}" if whole else ""
    seg, segrep, fld, fldrep, comp, sub = m.groups()
    return "^".join([seg, segrep or "1", fld, fldrep or "1", comp or "", sub or ""]).rstrip("^")


def _err_code(error: dict) -> tuple[str, str]:
    rule = (error.get("rule") or "").lower()
    reason = (error.get("reason") or "").lower()
    if rule.endswith("msh9.unsupported") and (error.get("location") or "").endswith(".2"):
        return ERR_CODES["event"]  # a type the hub maps, an event of it that it does not (A29)
    for key in ("event", "type", "version", "processing", "required", "datatype", "table",
                "duplicate", "segment"):
        if key in rule:
            return ERR_CODES[key]
    if rule.endswith(".missing"):
        # a required segment missing (v2.pid.missing: a message without PID) is a segment
        # sequence error, a required field missing a 101 (both were 207, "internal error")
        location = error.get("location") or ""
        return ERR_CODES["segment" if location and "-" not in location else "required"]
    if "unsupported" in reason and ("trigger" in reason or "event" in reason):
        return ERR_CODES["event"]
    if "unsupported" in reason or "message type" in reason:
        return ERR_CODES["type"]
    if "missing" in reason or "required" in reason:
        return ERR_CODES["required"]
    return ERR_CODES["application"]


def build_ack(payload: bytes, code: str = "AA", error: dict | None = None,
              control_id: str | None = None, enhanced: bool = False) -> bytes:
    """An ACK for ``payload`` (AA, AE or AR; CA, CE or CR at the accept level of enhanced mode),
    with an ERR segment for an error. ``enhanced``: MSH-15 and MSH-16 of the ACK are ``NE``, so
    the sender answers no acknowledgment with one of its own."""
    msh, out_enc = _msh_text(payload)
    ack = None
    if msh is not None:
        try:
            msg = hl7.parse(msh)
            ack = msg.create_ack(code, message_id=control_id or _ack_id(msg, code))
        except Exception:  # noqa: BLE001 - an odd header (MSH-9 without components, ...)
            ack = None
        if ack is None:  # keep what can be kept of the header, in a form hl7 can answer
            f = msh.split(msh[3]) if len(msh) > 4 else []
            f += [""] * (13 - len(f))
            safe = [_escape(x.split("^")[0]) for x in f]
            typ = (f[8] + "^^").split("^")
            # MSH-3 to MSH-6, MSH-7 and MSH-8 left empty, MSH-9 to MSH-12
            header = (f"MSH|^~\\&|{safe[2]}|{safe[3]}|{safe[4]}|{safe[5]}|||"
                      f"{_escape(typ[0]) or 'ACK'}^{_escape(typ[1]) or 'ACK'}|{safe[9]}|"
                      f"{safe[10]}|{safe[11]}")
            msg = hl7.parse(header)
            ack = msg.create_ack(code, message_id=control_id or _ack_id(msg, code))
    else:
        out_enc = "ascii"
        if error is None and code != "AA":
            error = {"reason": "no MSH segment: not an HL7 v2 message", "code": "AR",
                     "rule": "segment"}
        msg = hl7.parse("MSH|^~\\&|||||||ACK^ACK||P|2.5")
        ack = msg.create_ack(code, message_id=control_id or "ACK")
    sep = str(ack.segment("MSH")(1))
    encs = str(ack.segment("MSH")(2)) or "^~\\&"
    text = str(ack)
    if error is not None:
        reason = _escape(str(error.get("reason", "")), encs, sep)
        text = text.rstrip("\r") + f"{sep}{reason[:80]}"  # MSA-3: text message (80 chars)
        num, name = _err_code(error)
        severity = "E"
        err = sep.join(["ERR", "", _err_location(error.get("location")),
                        f"{num}^{name}^HL70357", severity, _escape(error.get("rule") or "", encs, sep),
                        "", "", reason])
        text += "\r" + err
    fixed: dict[int, str] = {15: "NE", 16: "NE"} if enhanced else {}
    if msh is not None and out_enc != "ascii":
        # the ACK is written in the inbound MSH-18's character set, and an empty MSH-18 says
        # ASCII (v2.5 2.14.9.18): a receiver read its 中文 text as bytes of nothing
        inbound = msh.split(msh[3]) if len(msh) > 4 else []
        if len(inbound) > 17 and inbound[17]:
            fixed[18] = inbound[17]
    if fixed:
        text = _with_msh(text, sep, fixed)
    return text.encode(out_enc if out_enc != "latin-1" else "latin-1", "replace")


def _with_msh(ack: str, sep: str, values: dict[int, str]) -> str:
    """The ACK with MSH-n set to ``values[n]``."""
    first, _, rest = ack.partition("\r")
    fields = first.split(sep)
    fields += [""] * (max(values) - len(fields))
    for n, value in values.items():
        fields[n - 1] = value  # fields[0] is "MSH", fields[1] MSH-2
    return sep.join(fields) + ("\r" + rest if rest else "")


def _ack_id(msg, code: str = "AA") -> str:
    """MSH-10 of the ACK (20 characters at most, as v2.5's ST): ``ACK`` and the inbound id, or
    of a long one a digest (cut, two ids alike in their first 17 characters answered alike).
    An accept ACK (CA, CE, CR) starts ``ACC``: it and the application ACK after it have ids of
    their own."""
    prefix = "ACC" if code.startswith("C") else "ACK"
    inbound = str(msg.segment("MSH")(10))
    if len(inbound) <= 17:
        return prefix + inbound
    return prefix + hashlib.sha1(inbound.encode()).hexdigest()[:17]


# HL7 table 0155: when MSH-15 (accept) or MSH-16 (application) asks for an acknowledgment
_ON_SUCCESS, _ON_ERROR = {"AL", "SU"}, {"AL", "ER"}
_CONDITIONS = {"AL", "NE", "ER", "SU"}


def ack_conditions(payload: bytes) -> tuple[str, str] | None:
    """(MSH-15, MSH-16) of an enhanced-mode message; None in original mode (both empty, or no
    MSH). Beside a valued one, an empty or unknown value counts as ``AL``: the sender is
    answered rather than left waiting for what it may expect."""
    msh, _ = _msh_text(payload)
    if msh is None:
        return None
    fields = msh.split(msh[3])
    comp = msh[4:5] or "^"
    accept, application = ((fields[n].split(comp)[0].strip().upper() if len(fields) > n else "")
                           for n in (14, 15))
    if not accept and not application:
        return None
    return (accept if accept in _CONDITIONS else "AL",
            application if application in _CONDITIONS else "AL")


def acknowledgments(payload: bytes, code: str, error: dict | None = None,
                    stored: bool = True, enhanced: bool = True) -> list[bytes]:
    """What to answer ``payload`` on its connection, in order, given the hub's verdict ``code``:
    ``AA`` converted and spooled, ``AE`` kept as a dead letter (its content cannot be mapped),
    ``AR`` refused (its header, its bytes or its framing); ``stored`` False: the spool could not
    store it (the sender should resend).

    Original mode: the one ACK of ``code``. Enhanced mode: the accept ACK, ``CA`` for a message
    kept (AA or AE: nothing to resend), ``CR`` for a refusal, ``CE`` for one not stored, if MSH-15
    asks for it; then for a message kept the application ACK (AA, AE) if MSH-16 asks for it. A
    refusal has no application ACK, except an ``AR`` when the sender declined its accept ACK
    (MSH-15 NE or SU) and asked for application errors (MSH-16 AL or ER): it waits for one.
    ``enhanced`` False (a listener set to ``acknowledgment: original``): original mode whatever
    MSH-15/16 say, for senders whose templates fill them but that await the one ACK."""
    conditions = ack_conditions(payload) if enhanced else None
    if conditions is None:
        return [build_ack(payload, code, error)]
    accept, application = conditions
    if code == "AR" or not stored:
        if accept in _ON_ERROR:
            return [build_ack(payload, "CR" if stored else "CE", error, enhanced=True)]
        if application in _ON_ERROR:
            return [build_ack(payload, "AR", error, enhanced=True)]
        return []
    out = []
    if accept in _ON_SUCCESS:
        out.append(build_ack(payload, "CA", enhanced=True))
    if application in (_ON_SUCCESS if code == "AA" else _ON_ERROR):
        out.append(build_ack(payload, code, error, enhanced=True))
    return out


def control_id(payload: bytes) -> str | None:
    msh, _ = _msh_text(payload)
    if msh is None or len(msh) < 8:
        return None
    fields = msh.split(msh[3])
    return fields[9] if len(fields) > 9 else None


def _bind_reason(e: OSError) -> str:
    """Why a bind failed, in the system's words ("Address already in use", "Name or service not
    known"), without asyncio's wrapping of the address."""
    if isinstance(e, socket.gaierror) or not e.errno:
        return e.strerror or str(e)
    return os.strerror(e.errno)


# -- the listener --------------------------------------------------------------------------------


class MLLPSource:
    def __init__(self, name: str = "mllp", host: str = "127.0.0.1", port: int = 2575,
                 kind: str = "hl7v2", max_message_bytes: int = 1 << 20,
                 idle_timeout_s: float = 300.0, max_connections: int = 256, group_commit: int = 64,
                 tls: dict | None = None, acknowledgment: str = "as-asked", **_: Any):
        self.name, self.host, self.port, self.kind = name, host, int(port), kind
        if acknowledgment not in ("as-asked", "original"):
            raise ValueError(f"MLLP source {name}: acknowledgment must be as-asked (MSH-15/16 "
                             f"decide, HL7 v2.5 2.9.3) or original, not {acknowledgment!r}")
        self.enhanced = acknowledgment == "as-asked"
        # TLS (mutual with client_ca); a bad file fails here, at start, not at the first sender
        self.ssl = server_context(tls, f"MLLP source {name}") if tls is not None else None
        self.max_message_bytes = int(max_message_bytes)
        self.idle_timeout = float(idle_timeout_s)
        self.max_connections = int(max_connections)
        self.ready = threading.Event()
        self._served = False  # has it ever listened (a bind failure before is fatal)
        self.group_commit = int(group_commit)
        self._queue: queue.Queue = queue.Queue()
        self.connections = 0
        self._busy: set = set()
        self.stats = {"messages": 0, "acks": 0, "naks": 0, "framing_errors": 0, "connections": 0,
                      "tls_failures": 0}

    @classmethod
    def from_config(cls, name: str, cfg: dict) -> MLLPSource:
        return cls(name=name, **{k: v for k, v in cfg.items() if k not in ("name", "type")})

    def run(self, intake: Intake, stop: threading.Event) -> None:
        asyncio.run(self._main(intake, stop))

    async def _main(self, intake: Intake, stop: threading.Event) -> None:
        tasks: set[asyncio.Task] = set()

        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None  # the connection's own task
            tasks.add(task)
            try:
                if self.ssl is not None and not await self._handshake(writer):
                    return
                await self._serve(intake, reader, writer, stop)
            finally:
                tasks.discard(task)

        committer = threading.Thread(target=self._committer, args=(intake,),
                                     name=f"mllp-{self.name}-commit", daemon=True)
        committer.start()
        try:
            # TLS is started on each connection (``_handshake``), where a failed handshake
            # can be logged and counted: inside the server asyncio drops it without a word
            server = await asyncio.start_server(
                on_connect, self.host, self.port, limit=self.max_message_bytes + 65536)
        except OSError as e:
            self._queue.put(None)
            if self._served:  # it listened before: a restart's failure may pass, retried
                raise
            # never listened: a port in use or a host that does not resolve is a mistake of
            # the configuration, not retried for ever
            raise CannotStart(f"MLLP source {self.name}: cannot listen on "
                              f"{self.host}:{self.port}: {_bind_reason(e)}") from None
        except BaseException:
            self._queue.put(None)
            raise
        self._served = True
        self.port = server.sockets[0].getsockname()[1]
        log.info("MLLP source %s listening on %s:%s%s", self.name, self.host, self.port,
                 " (TLS)" if self.ssl else "")
        self.ready.set()
        try:
            while not stop.is_set():
                await asyncio.sleep(0.1)
        finally:
            self.ready.clear()
            server.close()
            for _ in range(100):  # let messages in flight be answered (at most 10 s)
                if not self._busy:
                    break
                await asyncio.sleep(0.1)
            for t in list(tasks):
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._queue.put(None)
            committer.join(10)
            self.ready.clear()

    async def _handshake(self, writer: asyncio.StreamWriter) -> bool:
        """TLS on a new connection; False, logged and counted, when it fails (no client
        certificate, one of another CA, a plain-text sender on the TLS port)."""
        peer = writer.get_extra_info("peername")
        assert self.ssl is not None  # called for a TLS source only
        try:
            await writer.start_tls(self.ssl, ssl_handshake_timeout=min(self.idle_timeout, 30.0))
            return True
        except (ssl.SSLError, OSError, TimeoutError, EOFError) as e:
            self.stats["tls_failures"] += 1
            log.warning("MLLP %s: TLS handshake with %s failed: %s", self.name,
                        peer[0] if peer else "?", getattr(e, "reason", None) or type(e).__name__)
            writer.transport.abort()
            return False

    async def _serve(self, intake: Intake, reader, writer, stop) -> None:
        peer = writer.get_extra_info("peername")
        peer_s = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.stats["connections"] += 1
        self.connections += 1
        buf = bytearray()
        junk = 0
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        # one deadline per awaited message: bytes outside a message (each a framing error, read
        # again) do not extend it, or a byte of noise every few seconds held the connection
        deadline = loop.time() + self.idle_timeout
        try:
            if self.connections > self.max_connections:
                log.warning("MLLP %s: too many connections, closing %s", self.name, peer_s)
                return
            while not stop.is_set():
                try:
                    payload = await self._read_frame(reader, buf, deadline)
                except FramingError as err:
                    self.stats["framing_errors"] += 1
                    junk += 1
                    # a peer that sends nothing but noise is closed
                    e = err if junk <= 100 else FramingError("too many framing errors; closing", fatal=True)
                    log.warning("MLLP %s: framing error from %s: %s", self.name, peer_s, e.reason)
                    error = {"reason": e.reason, "code": "AR", "rule": "mllp.framing",
                             **({"cut": True} if e.cut else {})}
                    if e.fragment.strip(b"\r\n"):
                        # what a sender meant as a message is kept to read and replay, as a
                        # message the mapper refuses is; noise outside any block is not
                        await asyncio.to_thread(self._keep, intake, e.fragment, peer_s, error)
                    if e.fragment or e.fatal:
                        self.stats["naks"] += 1
                        for nak in self._answers(e.fragment, "AR", error):
                            writer.write(frame(nak))
                        await writer.drain()
                    if e.fatal:
                        return
                    continue
                if payload is None:
                    return  # closed or idle
                self.stats["messages"] += 1
                self._busy.add(task)  # not cancelled at stop until its answer is written
                try:
                    fut: Future = Future()
                    self._queue.put((payload, peer_s, fut))
                    for answer in await asyncio.wrap_future(fut):  # none: MSH-15/16 NE
                        writer.write(frame(answer))
                    await asyncio.wait_for(writer.drain(), 30)
                finally:
                    self._busy.discard(task)
                deadline = loop.time() + self.idle_timeout
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.TimeoutError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            self.connections -= 1
            try:
                writer.close()
            except Exception:  # noqa: BLE001
                pass

    def _keep(self, intake: Intake, fragment: bytes, peer: str, error: dict) -> None:
        try:
            intake.keep(Envelope(fragment, self.kind, self.name,
                                 {"peer": peer, "unit_id": control_id(fragment)}), error)
        except Exception as e:  # noqa: BLE001 - the spool is unusable: the sender has its AR
            log.error("MLLP %s: cannot keep a refused block from %s: %s", self.name, peer, e)

    def _committer(self, intake: Intake) -> None:
        """Group commit: messages that arrived on any connection while the previous spool
        transaction ran are converted and spooled in one transaction (one fsync)."""
        while True:
            item = self._queue.get()
            if item is None:
                return
            items = [item]
            while len(items) < self.group_commit:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                items.append(nxt)
            envs = [Envelope(p, self.kind, self.name, {"peer": peer, "unit_id": control_id(p)})
                    for p, peer, _ in items]
            answers: Sequence[Accepted | None]
            try:
                answers = intake.accept(envs)
            except Exception as e:  # noqa: BLE001 - the spool is unusable (disk full, ...)
                log.error("MLLP %s: cannot store %d messages: %s", self.name, len(items), e)
                answers = [None] * len(items)
            for (payload, _, fut), answer in zip(items, answers):
                reply = self._reply(payload, answer)
                if fut.set_running_or_notify_cancel():  # False: its connection is gone
                    fut.set_result(reply)

    def _reply(self, payload: bytes, answer) -> list[bytes]:
        if answer is None:  # not stored: the sender should resend
            self.stats["naks"] += 1
            return self._answers(payload, "AR", {
                "reason": "the connector cannot store the message now; resend later",
                "code": "AR", "rule": "application"}, stored=False)
        if answer.ok:
            self.stats["acks"] += 1
            return self._answers(payload, "AA")
        self.stats["naks"] += 1
        err = answer.error or {}
        code = err["code"] if err.get("code") in ("AE", "AR") else "AE"
        # one line per refusal, as the folder source writes one per failed file: the operator
        # sees which message, why, and where it is kept (no content: it holds personal data)
        log.warning("MLLP %s: message %s answered %s (%s): dead letter %s", self.name,
                    (control_id(payload) or "?")[:40], code, err.get("rule") or "?",
                    answer.deadletter_id)
        return self._answers(payload, code, err)

    def _answers(self, payload: bytes, code: str, error: dict | None = None,
                 stored: bool = True) -> list[bytes]:
        try:
            return acknowledgments(payload, code, error, stored, self.enhanced)
        except Exception:  # noqa: BLE001 - the answer must go out whatever the header holds
            log.exception("building an ACK")
            return [build_ack(b"", code, error)]

    async def _read_frame(self, reader: asyncio.StreamReader, buf: bytearray,
                          deadline: float) -> bytes | None:
        """The next message, None at end of stream or idle timeout; FramingError for bad blocks.
        The idle timeout runs from when the message is awaited (``deadline``, the loop's time),
        not from the last byte: a sender trickling a CR every few seconds held its connection
        (and a slot of ``max_connections``) for ever."""
        while True:
            start = buf.find(VT)
            if start != 0 and self._unframed(buf, start):
                ended = await self._fill(reader, buf, deadline)
                if ended is not None:
                    self._unframed(buf, -1, ended)  # raises
                continue
            if start < 0:
                junk = len(bytes(buf).strip(b"\r\n\x1c"))
                buf.clear()
                if junk:
                    raise FramingError(f"{junk} bytes outside an MLLP block skipped")
                if await self._fill(reader, buf, deadline) is not None:
                    return None
                continue
            if start > 0:
                junk = len(bytes(buf[:start]).strip(b"\r\n\x1c"))
                del buf[:start]
                if junk:
                    raise FramingError(f"{junk} bytes before the start block skipped")
            end = buf.find(FS, 1)
            again = buf.find(VT, 1)
            if again >= 0 and (end < 0 or again < end):
                fragment = bytes(buf[1:again])
                del buf[:again]
                raise FramingError("a message without its end block (FS CR)", fragment)
            if end - 1 > self.max_message_bytes or (end < 0 and len(buf) > self.max_message_bytes):
                # the limit holds however the bytes arrived (a message and its end block in one
                # read was let through at any size below the read that crossed it)
                # what arrived up to the limit is kept (the sender's AR says it is refused)
                fragment = bytes(buf[1:1 + self.max_message_bytes])
                buf.clear()
                raise FramingError(f"message larger than {self.max_message_bytes} bytes",
                                   fragment, fatal=True, cut=True)
            if end >= 0:
                payload = bytes(buf[1:end])
                del buf[:end + 1]
                if buf[:1] == CR:
                    del buf[:1]
                return payload
            ended = await self._fill(reader, buf, deadline)
            if ended is not None:
                if len(buf) > 1:
                    fragment = bytes(buf[1:])
                    buf.clear()
                    # the sender that stalled is told so, not that it closed (it did not)
                    why = ("connection closed inside a message" if ended == "closed" else
                           f"connection idle too long inside a message (idle_timeout_s "
                           f"{self.idle_timeout:g} s)")
                    raise FramingError(f"{why} (truncated)", fragment, fatal=True, cut=True)
                return None

    def _unframed(self, buf: bytearray, start: int, ended: str | None = None) -> bool:
        """A message sent without its start block (an engine not set to wrap in MLLP) at the head
        of ``buf``, ahead of ``start`` (where a start block is; -1: none): a FramingError with
        it once its end is there (FS, the next start block, or the connection ``ended``), so it
        is answered and kept as a message without its end block is; True while the rest of it is
        to come; False when the bytes there are no message (noise, skipped by the caller)."""
        head = bytes(buf if start < 0 else buf[:start])
        lead = len(head) - len(head.lstrip(b"\r\n\x1c"))
        text = head[lead:]
        begun = text.startswith(b"MSH")
        if not text or not (begun or (start < 0 and b"MSH".startswith(text))):
            return False
        end = text.find(FS)
        if ended is not None or (end < 0 and start < 0):
            if ended is None and len(text) <= self.max_message_bytes:
                return True
            buf.clear()
            if not begun:  # "MS" and the connection gone: noise after all
                raise FramingError(f"{len(text)} bytes outside an MLLP block skipped")
            if ended is None:
                raise FramingError(f"message larger than {self.max_message_bytes} bytes (no start "
                                   "block)", text[:self.max_message_bytes], fatal=True, cut=True)
            why = ("connection closed" if ended == "closed" else
                   f"connection idle too long (idle_timeout_s {self.idle_timeout:g} s)")
            raise FramingError(f"a message without its start block (VT): {why} before its end "
                               "block (FS CR)", text, fatal=True, cut=True)
        if 0 <= end:
            del buf[:lead + end + 1]
            if buf[:1] == CR:
                del buf[:1]
            raise FramingError("a message without its start block (VT)", text[:end])
        del buf[:start]
        raise FramingError("a message without its start block (VT) nor its end block (FS CR)",
                           text)

    async def _fill(self, reader: asyncio.StreamReader, buf: bytearray,
                    deadline: float) -> str | None:
        """Read more into ``buf``: None, or why nothing came ("idle": the deadline passed,
        "closed": the peer closed)."""
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            return "idle"
        try:
            chunk = await asyncio.wait_for(reader.read(65536), left)
        except asyncio.TimeoutError:
            return "idle"
        if not chunk:
            return "closed"
        buf += chunk
        return None
