"""Blocking: the keys under which a Patient's candidates are looked up.

A Patient is compared only with Patients sharing at least one key (``keys``): its resident ID number,
the birth-date-and-sequence digits of that number (a mistyped region code or check character still
meets), its health card and other institution-independent identifiers, each phone, the pinyin of the
name with the birth year (homophones and swapped days meet), birth date + surname, birth date +
given name (a surname mistyped or in another script), birth date + district (a newborn registered
without a name of its own), birth date + postal code (both names changed), the address lines when
they hold a house number, and postal code +
how either part of a name sounds (Latin script: a name and a birth date both mistyped), birth
date or locality + how either part of a Latin name sounds (surname and given name swapped), a
Latin address's house number with each of its two longest words (a street and a locality in either
order), its postal code with its longest word (another or no house number) and with its house
number (the street's name mistyped), and, with a Latin address, the birth date with the locality
(names, lines and postal code all changed or mistyped), the house number with how either part of
the name sounds (street, locality and postal code all mistyped), and how a whole Latin name sounds
alone (no birth date, the address mistyped). No key holds the sex: not every source sends it. Keys are stored as 64-bit
hashes. A block larger than its cap (``data/blocking.json``) is not dropped silently: the first
``cap`` members are compared, an alert is counted per key kind and logged (the kind and size only,
never the value: no personal data in logs).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import Counter
from functools import lru_cache
from typing import Any

from hub.mpi.compare import id_status, latin_parts, sounds
from hub.mpi.normalise import DATA

log = logging.getLogger("hub.mpi.blocking")
KINDS = ("id", "idseq", "hc", "oid", "ph", "py", "bdf", "bdg", "bdt", "ad", "pcf", "bds", "cts",
         "aw", "pcw", "bdp", "bdc", "pcn", "nm", "hn")


@lru_cache(maxsize=1)
def caps() -> dict[str, int]:
    return json.loads((DATA / "blocking.json").read_text(encoding="utf-8"))["caps"]


@lru_cache(maxsize=1)
def passes() -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    """{pass: (key kinds, fields those keys are made of)} for training."""
    raw = json.loads((DATA / "blocking.json").read_text(encoding="utf-8"))["passes"]
    return {name: (tuple(p["keys"]), tuple(p["excluded"])) for name, p in raw.items()}


def key_hash(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big", signed=True)


def keys(f: dict[str, Any]) -> list[tuple[str, str]]:
    """(kind, key) pairs of a Patient's features, without repeats."""
    out: list[tuple[str, str]] = []
    idno = f.get("id")
    if idno and id_status(f) in ("valid", "invalid"):  # someone else's number blocks nothing
        out.append(("id", idno))
        out.append(("idseq", idno[6:17]))
    if f.get("hc"):
        out.append(("hc", f["hc"]))
    for o in f.get("oid") or ():
        out.append(("oid", o))
    for p in f.get("ph") or ():
        out.append(("ph", p))
    bd = f.get("bd")
    if f.get("py") and bd:
        out.append(("py", f"{f['py']}|{bd[:4]}"))
    if bd and f.get("pyf"):
        out.append(("bdf", f"{bd}|{f['pyf']}"))
    if bd and f.get("py") and f.get("pyf") and len(f["py"]) > len(f["pyf"]):
        out.append(("bdg", f"{bd}|{f['py'][len(f['pyf']):]}"))
    if bd and f.get("dist"):
        out.append(("bdt", f"{bd}|{f['dist']}"))
    if bd and f.get("pc"):  # both names changed (a marriage, a nickname, a clerk's slip)
        out.append(("bdp", f"{bd}|{f['pc']}"))
    addr = f.get("addr")
    if addr and len(addr) >= 6 and any(c.isdigit() for c in addr):
        out.append(("ad", addr))
    parts = latin_parts(f)
    if f.get("pc") and parts:
        for part in parts:  # one kind for either part: surname and given name swapped still meet
            if part:
                out.append(("pcf", f"{f['pc']}|{sounds(part)[0]}"))
    if parts:
        # either part of a Latin name, whichever place it was written in: surname and given name
        # swapped, or one of them mistyped, still meet (with the birth date, or the locality)
        for part in parts:
            if len(part) > 1:
                if bd:
                    out.append(("bds", f"{bd}|{sounds(part)[0]}"))
                if f.get("city"):
                    out.append(("cts", f"{f['city']}|{sounds(part)[0]}"))
        if all(len(p) > 1 for p in parts):
            # how the whole name sounds, in either order, alone: a record whose birth date is
            # missing and whose address and postal code are both mistyped still meets
            out.append(("nm", "|".join(sorted(sounds(p)[0] for p in parts))))
    words = f.get("aw")
    if words:
        # the house number with each of the two longest words: a street and a locality written
        # in either order, or one of them mistyped, still meet
        nums = [w for w in words.split() if w.isdigit()]
        longest = sorted({w for w in words.split() if w.isalpha() and len(w) >= 4},
                         key=lambda w: (-len(w), w))[:2]
        for w in longest:
            out.append(("aw", f"{nums[0] if nums else ''}|{w}"))
        if longest and f.get("pc"):  # another house number, or none: the street in its postal area
            out.append(("pcw", f"{f['pc']}|{longest[0]}"))
        if nums and f.get("pc"):  # the street's name mistyped or written otherwise: the house
            out.append(("pcn", f"{f['pc']}|{nums[0]}"))  # number in its postal area
        if nums and parts:  # the house number with how either part of the name sounds: the
            for part in parts:  # street, locality and postal code all mistyped
                if len(part) > 1:
                    out.append(("hn", f"{nums[0]}|{sounds(part)[0]}"))
        if bd and f.get("city"):
            # a Latin-script address's locality is a suburb or town (the lines hold no district):
            # with the birth date, it meets a record whose names, lines and postal code all changed
            out.append(("bdc", f"{bd}|{f['city']}"))
    return list(dict.fromkeys(out))


def hashed(f: dict[str, Any]) -> list[tuple[str, int]]:
    """(kind, 64-bit hash of kind:key) of a Patient's keys."""
    return [(kind, key_hash(f"{kind}:{key}")) for kind, key in keys(f)]


class BlockAlerts:
    """Blocks found over their cap, counted per key kind (thread-safe)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def over_cap(self, kind: str, cap: int) -> None:
        with self._lock:
            self.counts[kind] += 1
            n = self.counts[kind]
        if n & (n - 1) == 0:  # 1st, 2nd, 4th, 8th ... time: the log stays readable
            log.warning("blocking: a %r block has more than %d members; only %d compared "
                        "(%d such blocks so far)", kind, cap, cap, n)


ALERTS = BlockAlerts()  # of this process; the candidate index reports into it
