"""A hash chain over the hub's AuditEvents: modifying, deleting or reordering one in the audit log
shows.

**Sealing.** Before an AuditEvent is written, ``AuditChain.seal`` gives it one extension
(``CHAIN_URL``) with four sub-extensions: ``chain`` (the chain id), ``sequence`` (1, 2, … per
chain), ``previous`` (the hash of the chain's previous event, hex; ``ZERO`` for the first) and
``hash``::

    hash = SHA-256( previous "\\n" chain "\\n" sequence "\\n" canonical )

where ``canonical`` is the AuditEvent without this extension and without ``id`` and ``meta`` (the
writer assigns those after sealing), written by orjson with sorted keys. The chain id and sequence
are hashed too, so every part of the extension but the hash itself is covered. One SHA-256 per
event; nothing is read from the log.

**One chain per writer.** Each ``AuditWriter`` (one per process, and ``hub serve --workers N`` runs
N processes) starts a chain of its own (``AuditChain.new()``, a fresh uuid): two processes never
extend one chain, so no chain forks, and a restart needs no read of the log. Verification accepts
any number of chains, each of which must be contiguous from sequence 1. ``AuditChain.resume``
continues a named chain from its last stored event instead, for a single writer that wants one
chain across restarts.

**Verification.** ``verify(log)`` reads every AuditEvent in the audit log
(``hub.access.auditlog``, whose tables refuse UPDATE and DELETE by trigger; an intruder with the
database's keys can drop a trigger) in commit order (``pos``), page by page, keeping per chain only
its last sequence and hash and the gaps still open: memory grows with the number of chains and of
problems, not of events. It reports, each with the resource id, chain, sequence and position:

- ``modified``: the recomputed hash differs from the sealed one (a changed byte of the content, or
  of the chain extension);
- ``missing``: a sequence number never seen (a deleted event; a gap that a later, out-of-order event
  fills is reported as ``reordered`` instead), or a ``previous`` that is not the hash of the event
  before (one was removed, or replaced by another sealed elsewhere);
- ``reordered``: an event whose sequence is lower than one committed before it;
- ``duplicate``: a sequence number seen twice in a chain (a copied event);
- ``unchained``: an AuditEvent without the chain extension (written around the writer);
- ``malformed``: a chain extension or body that cannot be read;
- ``truncated`` / ``rewritten``: with anchors (below), a chain that ends before an anchored head,
  or whose event at an anchored sequence has another hash (the chain was rebuilt since).

One event moved far ahead makes every event it jumped over read as ``reordered``: which of them
moved cannot be told from the order alone, only that the order is not the sealed one.

**What is not detected.** The hash covers the AuditEvent as the writer built it, not its ``id``
and ``meta``, nor the log's own columns (the search values in ``audit_index``): those can be
changed unnoticed, as long as the body's position in the log is kept. Deleting the newest events of
a chain (the tail), or a whole chain, leaves no trace in the log itself: nothing after them refers
to them. Anchors close that gap: ``hub audit anchor`` appends the verified heads of all chains
(``chain -> (sequence, hash)``) as one JSON line to a file kept outside the log (another machine, a
WORM bucket, a printed report); ``verify(log, anchors)`` then requires each anchored event to be
present with its hash. What was written after the last anchor can still be cut off unnoticed. An
intruder who can also run the writer's code can rebuild a whole consistent chain; only an anchor
taken before rules that out for what it covers.
"""

from __future__ import annotations

import hashlib
import threading
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from hub.core import jsontext
from hub.core import resource as res
from hub.core.errors import FhirError

CHAIN_URL = "https://fhir-region-hub.example/StructureDefinition/audit-chain"
ZERO = "0" * 64


def canonical(d: dict) -> bytes:
    """The sealed content of an AuditEvent: without ``id``, ``meta`` and the chain extension, with
    sorted keys."""
    out = {k: v for k, v in d.items() if k not in ("id", "meta", "extension")}
    ext = [e for e in d.get("extension") or () if not (isinstance(e, dict) and e.get("url") == CHAIN_URL)]
    if ext:
        out["extension"] = ext
    return orjson.dumps(out, option=orjson.OPT_SORT_KEYS)


def chain_hash(previous: str, chain_id: str, seq: int, body: bytes) -> str:
    h = hashlib.sha256(f"{previous}\n{chain_id}\n{seq}\n".encode("ascii"))
    h.update(body)
    return h.hexdigest()


@dataclass(frozen=True, slots=True)
class Seal:
    chain: str
    seq: int
    previous: str
    hash: str


def seal_of(d: dict) -> Seal | None:
    """The chain extension of a stored AuditEvent; None without one. A ``ValueError`` when it is
    there but not readable."""
    found = [e for e in d.get("extension") or () if isinstance(e, dict) and e.get("url") == CHAIN_URL]
    if not found:
        return None
    if len(found) > 1:
        raise ValueError("more than one chain extension")
    parts = {p.get("url"): p for p in found[0].get("extension") or () if isinstance(p, dict)}
    try:
        chain = parts["chain"]["valueString"]
        seq = parts["sequence"]["valueInteger"]
        previous = parts["previous"]["valueString"]
        digest = parts["hash"]["valueString"]
    except (KeyError, TypeError):
        raise ValueError("the chain extension lacks chain, sequence, previous or hash") from None
    if not (isinstance(chain, str) and type(seq) is int and isinstance(previous, str)
            and isinstance(digest, str)):
        raise ValueError("the chain extension has values of the wrong type")
    return Seal(chain, seq, previous, digest)


class AuditChain:
    """One hash chain: seals AuditEvents in the order they will be committed.

    ``seal`` advances the chain; a writer that learns its commit did not happen puts the chain back
    with ``restore(state)`` (``state()`` taken before sealing), so no sequence number is skipped.
    """

    def __init__(self, chain_id: str, seq: int = 0, head: str = ZERO):
        self.chain_id = chain_id
        self.seq = seq
        self.head = head
        self._lock = threading.Lock()

    @classmethod
    def new(cls) -> AuditChain:
        return cls(str(uuid.uuid4()))

    @classmethod
    def resume(cls, log: Any, chain_id: str) -> AuditChain:
        """Continue ``chain_id`` after its last event in the audit log ``log`` (a new chain if it
        has none); only one writer may resume a given chain."""
        body = log.last_of_chain(chain_id)
        if body is not None:
            try:
                s = seal_of(orjson.loads(body))
            except (ValueError, orjson.JSONDecodeError):
                s = None
            if s is not None and s.chain == chain_id:
                return cls(chain_id, s.seq, s.hash)
        return cls(chain_id)

    def state(self) -> tuple[int, str]:
        with self._lock:
            return self.seq, self.head

    def restore(self, state: tuple[int, str]) -> None:
        with self._lock:
            self.seq, self.head = state

    def written(self, before: tuple[int, str], results: list) -> None:
        """After a commit of sealed events returned its ``results``: when none was written (all
        are errors, e.g. the access policy refused the writer), the chain goes back to
        ``before``. A commit that wrote only some would leave gaps; ``seal`` refuses beforehand
        what the ingest refuses of a plain create, and a policy refuses all of a batch or none."""
        if results and all(isinstance(r, FhirError) for r in results):
            self.restore(before)

    def failed(self, before: tuple[int, str], error: BaseException) -> AuditChain:
        """The chain to go on with after a commit of sealed events raised ``error``. A
        ``FhirError`` is raised before anything is written: this chain, put back to ``before``.
        Anything else (a lost connection) may have come after the commit: whether the events are
        stored is unknown, so a new chain starts and both stay contiguous either way."""
        if isinstance(error, FhirError):
            self.restore(before)
            return self
        return AuditChain.new()

    def seal(self, d: dict) -> dict:
        """A copy of AuditEvent ``d`` with the chain extension (any earlier one replaced), the chain
        advanced past it. Content the hub would refuse to store (forbidden characters, values JSON
        cannot hold) is refused here first, with the chain left as it was: a sealed event that is
        then not written would read as a deleted one."""
        return sealed(d, self.advance(prepared(d)))

    def advance(self, body: bytes) -> Seal:
        """The chain moved past an event whose canonical form (``prepared``) is ``body``."""
        with self._lock:
            seq, previous = self.seq + 1, self.head
            digest = chain_hash(previous, self.chain_id, seq, body)
            self.seq, self.head = seq, digest
        return Seal(self.chain_id, seq, previous, digest)


def prepared(d: dict) -> bytes:
    """The canonical form of AuditEvent ``d`` that its seal hashes; a ``FhirError`` for content
    the hub would refuse to store. Needs no chain, so a writer computes it before taking its
    turn."""
    try:
        body = canonical(d)
    except (TypeError, orjson.JSONEncodeError) as e:
        raise FhirError(400, "value", f"The AuditEvent cannot be written as JSON: {e}",
                        "AuditEvent") from None
    # the id, meta and extensions left out of ``body`` are the writer's own
    jsontext.refuse_bad_text(d, "AuditEvent", body)
    return body


def sealed(d: dict, seal: Seal) -> dict:
    """A copy of ``d`` carrying ``seal`` as its chain extension (any earlier one replaced)."""
    ext = [e for e in d.get("extension") or () if not (isinstance(e, dict) and e.get("url") == CHAIN_URL)]
    ext.append({"url": CHAIN_URL, "extension": [
        {"url": "chain", "valueString": seal.chain},
        {"url": "sequence", "valueInteger": seal.seq},
        {"url": "previous", "valueString": seal.previous},
        {"url": "hash", "valueString": seal.hash},
    ]})
    return {**d, "extension": ext}


# -- verification ------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Problem:
    kind: str  # modified missing reordered duplicate unchained malformed truncated rewritten
    rid: str | None
    chain: str | None
    seq: int | None
    pos: int | None
    detail: str


@dataclass
class Report:
    events: int = 0  # AuditEvents read
    chains: int = 0
    problems: list[Problem] = field(default_factory=list)
    heads: dict[str, tuple[int, str]] = field(default_factory=dict)  # chain -> (last seq, its hash)

    @property
    def ok(self) -> bool:
        return not self.problems

    def kinds(self) -> list[str]:
        return [p.kind for p in self.problems]

    def as_dict(self) -> dict:
        return {"ok": self.ok, "events": self.events, "chains": self.chains,
                "problems": [asdict(p) for p in self.problems],
                "heads": {c: {"seq": s, "hash": h} for c, (s, h) in self.heads.items()}}


@dataclass(slots=True)
class _Gap:
    """Sequence numbers lo..hi not seen (yet): the hash before lo and the ``previous`` of the event
    after hi, to check whatever comes later to fill it."""

    lo: int
    hi: int
    before_hash: str
    after_prev: str
    after_rid: str
    after_pos: int


@dataclass(slots=True)
class _ChainState:
    seq: int = 0
    head: str = ZERO
    gaps: list[_Gap] = field(default_factory=list)


def verify(log: Any, anchors: Iterable[dict] | None = None, page: int = 1000) -> Report:
    """Check every AuditEvent in the audit log ``log`` (see the module docstring for what is found). ``anchors``:
    heads written earlier by ``anchor_line`` (parsed JSON lines), each required to be present."""
    report = Report()
    chains: dict[str, _ChainState] = {}
    anchored: dict[tuple[str, int], str] = {}
    for line in anchors or ():
        for chain, head in (line.get("chains") or {}).items():
            anchored[(chain, int(head["seq"]))] = head["hash"]

    def problem(kind: str, rid: str | None, seal: Seal | None, pos: int | None, detail: str,
                seq: int | None = None) -> None:
        report.problems.append(Problem(kind, rid, seal.chain if seal else None,
                                       seq if seq is not None else (seal.seq if seal else None),
                                       pos, detail))

    for row in log.rows(page=page):
        report.events += 1
        rid, pos = row.id, row.pos
        try:
            d = res.parse_json(row.body, "stored AuditEvent")
            if not isinstance(d, dict):
                raise ValueError("the stored body is no JSON object")
            seal = seal_of(d)
        except (FhirError, ValueError) as e:
            problem("malformed", rid, None, pos, str(e)[:200])
            continue
        if seal is None:
            problem("unchained", rid, None, pos, "no chain extension")
            continue
        try:
            recomputed = chain_hash(seal.previous, seal.chain, seal.seq, canonical(d))
        except (TypeError, orjson.JSONEncodeError, UnicodeEncodeError) as e:
            problem("malformed", rid, seal, pos, str(e)[:200])
            continue
        if recomputed != seal.hash:
            problem("modified", rid, seal, pos, "the content does not match its sealed hash")
        want = anchored.get((seal.chain, seal.seq))
        if want is not None and want != seal.hash:
            problem("rewritten", rid, seal, pos, "differs from the anchored event at this sequence")
        st = chains.setdefault(seal.chain, _ChainState())
        if seal.seq == st.seq + 1:
            if seal.previous != st.head:
                problem("missing", rid, seal, pos, "previous hash is not the hash of the event "
                        "before: an event was removed or replaced")
            st.seq, st.head = seal.seq, seal.hash
        elif seal.seq > st.seq:
            st.gaps.append(_Gap(st.seq + 1, seal.seq - 1, st.head, seal.previous, rid, pos))
            st.seq, st.head = seal.seq, seal.hash
        else:
            _fill(st, seal, rid, pos, problem)

    for chain, st in chains.items():
        report.heads[chain] = (st.seq, st.head)
        for g in st.gaps:
            which = f"sequence {g.lo}" if g.lo == g.hi else f"sequences {g.lo}-{g.hi}"
            report.problems.append(Problem("missing", g.after_rid, chain, g.lo, g.after_pos,
                                           f"{which} not found before this event"))
    for chain, seq in anchored:
        found = chains.get(chain)
        last = found.seq if found else 0
        if seq > last:
            report.problems.append(Problem(
                "truncated", None, chain, seq, None,
                f"anchored up to sequence {seq}, the log ends at {last}" if last else
                f"anchored up to sequence {seq}, no event of this chain is in the log"))
    report.chains = len(chains)
    report.problems.sort(key=lambda p: (p.pos is None, p.pos or 0))
    return report


def _fill(st: _ChainState, seal: Seal, rid: str, pos: int, problem: Any) -> None:
    """An event whose sequence is not above the chain's last: it fills a gap (it came late, so it
    is reordered), or it repeats a sequence already seen."""
    for i, g in enumerate(st.gaps):
        if not g.lo <= seal.seq <= g.hi:
            continue
        problem("reordered", rid, seal, pos, f"committed after sequence {st.seq}")
        if seal.seq == g.lo and seal.previous != g.before_hash:
            problem("missing", rid, seal, pos, "previous hash is not the hash of the event before")
        if seal.seq == g.hi and seal.hash != g.after_prev:
            problem("missing", rid, seal, pos, "its hash is not the previous hash of the event after")
        parts = []
        if g.lo < seal.seq:
            parts.append(_Gap(g.lo, seal.seq - 1, g.before_hash, seal.previous, rid, pos))
        if seal.seq < g.hi:
            parts.append(_Gap(seal.seq + 1, g.hi, seal.hash, g.after_prev, g.after_rid, g.after_pos))
        st.gaps[i:i + 1] = parts
        return
    problem("duplicate", rid, seal, pos, f"sequence {seal.seq} was seen before in this chain")


def anchor_line(report: Report, at: str) -> dict:
    """The heads of a verified log, as one anchor record (JSON-able)."""
    return {"at": at, "events": report.events,
            "chains": {c: {"seq": s, "hash": h} for c, (s, h) in sorted(report.heads.items())}}


# -- reading -------------------------------------------------------------------------------------------

def audit_events(log: Any, since_us: int | None = None, page: int = 1000) -> Iterator[bytes]:
    """The JSON of every AuditEvent in the audit log in commit order; with ``since_us`` only those
    recorded at or after it (microseconds since the epoch)."""
    for row in log.rows(page=page, since_us=since_us):
        yield row.body


EMERGENCY = frozenset({"ETREAT", "BTG"})  # break-the-glass purposes of use: accesses to review


def emergency_accesses(log: Any, since_us: int | None = None,
                       limit: int | None = None, before_pos: int | None = None) -> list[dict]:
    """The break-the-glass accesses in the audit, oldest first: recorded, who (and the system of
    that identifier), purpose, outcome, what, its position in the log; each found by the log's
    purpose index (the newest ``limit`` of them with a limit, of those before ``before_pos``
    with one)."""
    out = []
    found = log.with_values("purpose", sorted(EMERGENCY), since_us, limit or 1 << 62, before_pos)
    for row in reversed(found):
        d = orjson.loads(row.body)
        purposes = {c.get("code") for p in d.get("purposeOfEvent") or ()
                    for c in p.get("coding") or ()}
        if not purposes & EMERGENCY:
            continue
        agent = (d.get("agent") or [{}])[0]
        ident = (agent.get("who") or {}).get("identifier") or {}
        out.append({
            "id": d.get("id"), "pos": row.pos, "recorded": d.get("recorded"),
            "who": ident.get("value"),
            # whose subject: the hub's users' system, an external provider's issuer
            "system": ident.get("system"),
            "purpose": sorted(purposes & EMERGENCY)[0], "outcome": d.get("outcome"),
            "access": [s.get("code") for s in d.get("subtype") or ()],
            "what": [e["what"]["reference"] for e in d.get("entity") or ()
                     if (e.get("what") or {}).get("reference")],
        })
    return out
