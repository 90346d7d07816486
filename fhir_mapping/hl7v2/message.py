"""Uniform, 1-based access to a parsed message: segment, field, repetition, component, subcomponent.

python-hl7 only nests a container where the text holds a separator (``Field(['1'])`` but
``Field([Repetition([Component([...])])])``); ``Seg.field`` normalises one field on first use to
``list[rep]`` of ``list[component]`` of ``list[subcomponent str]``, unescaped. Fields that are
never read are never normalised.
"""

from __future__ import annotations

import re
from typing import Any

Rep = list[list[str]]  # components, each a list of subcomponents
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# formatting escapes in text: highlighting (\H\ \N\) marks no character (python-hl7 writes
# "_"), and a line break is a line feed, as a TX field's repetitions are joined
_APP_MAP = {"H": "", "N": "", ".br": "\n", ".sp": "\n", ".ce": "\n"}


class Seg:
    __slots__ = ("name", "_raw", "_cache", "_msg", "index", "ordinal")

    def __init__(self, name: str, msg: "Msg", index: int):
        self._raw: Any = None  # parsed by python-hl7 on first field access
        self.name = name
        self._cache: dict[int, list[Rep]] = {}
        self._msg = msg
        self.index = index  # position in the message, 0 = MSH
        self.ordinal = 1  # 1 for the first segment of its name, 2 for the second...

    def nulled(self, n: int) -> bool:
        """Is field ``n`` HL7's explicit null, ``""`` (delete the value in the receiver)?"""
        raw = self._raw
        if raw is None:
            raw = self._raw = self._msg.parsed.segment(self.index)
        if not 0 < n < len(raw):
            return False
        f = raw[n]
        while isinstance(f, list) and len(f) == 1:  # one repetition, one component: its text
            f = f[0]
        return f == '""'

    def field(self, n: int) -> list[Rep]:
        """Repetitions of field ``n`` (MSH-n counts MSH-1 as the field separator, like the standard)."""
        got = self._cache.get(n)
        if got is None:
            got = self._cache[n] = self._normalise(n)
        return got

    def _normalise(self, n: int) -> list[Rep]:
        raw = self._raw
        if raw is None:
            raw = self._raw = self._msg.parsed.segment(self.index)
        if n >= len(raw) or n < 1:
            return []
        f = raw[n]
        if self.name == "MSH" and n <= 2:
            return [[[f if isinstance(f, str) else "".join(x for x in f if isinstance(x, str))]]]
        esc = self._msg._esc

        def un(x: str) -> str:
            # "" is HL7's explicit null (v2.5 2.5.3: delete the value in the receiver): no value,
            # never the text "" (the hub replaces a resource with what the message holds, so the
            # element goes)
            if x == '""':
                return ""
            return self._msg.unescape(x) if esc in x else x
        reps: list[Rep] = []
        items = f if not (len(f) == 1 and isinstance(f[0], str)) else [f[0]]
        for r in items:
            if isinstance(r, str):
                reps.append([[un(r)]])
                continue
            comps: Rep = []
            for c in r:
                if isinstance(c, str):
                    comps.append([un(c)])
                else:
                    comps.append([un(x) for x in c])
            reps.append(comps)
        # drop trailing empty repetitions; a field of one empty rep is empty
        while reps and not any(any(c) for c in reps[-1]):
            reps.pop()
        return reps

    def rep(self, n: int, r: int = 1) -> Rep:
        reps = self.field(n)
        return reps[r - 1] if 0 < r <= len(reps) else []

    def get(self, n: int, c: int = 1, s: int = 1, r: int = 1) -> str:
        """The value at field n, component c, subcomponent s of repetition r ('' when absent)."""
        rep = self.rep(n, r)
        if c > len(rep):
            return ""
        comp = rep[c - 1]
        return comp[s - 1].strip() if s <= len(comp) else ""

    def text(self, n: int, r: int = 1) -> str:
        """The whole repetition as text (components joined with ^), for free-text fields."""
        rep = self.rep(n, r)
        return "^".join("&".join(c) for c in rep).rstrip("^").strip()

    def has(self, n: int) -> bool:
        return bool(self.field(n))

    def loc(self, n: int, r: int | None = None, c: int | None = None) -> str:
        out = f"{self.name}-{n}" if self.ordinal == 1 else f"{self.name}[{self.ordinal}]-{n}"
        if r is not None and r > 1:
            out += f"[{r}]"
        if c is not None:
            out += f".{c}"
        return out


class Msg:
    """A parsed message: its segments in order, by name."""

    __slots__ = ("segments", "_esc", "_message", "codec", "parsed", "findings")

    def __init__(self, parsed: Any):
        self.parsed = parsed
        self._message = parsed.holder  # an empty hl7.Message with the message's separators, for unescape
        self.codec = parsed.codec
        self.findings = parsed.findings  # from decoding (charset mismatch), carried into the conversion
        self._esc = parsed.holder.esc
        sep = parsed.holder.separators[1]
        self.segments = [Seg(t.split(sep, 1)[0].strip(), self, i) for i, t in enumerate(parsed.texts)]
        seen: dict[str, int] = {}
        for s in self.segments:
            s.ordinal = seen[s.name] = seen.get(s.name, 0) + 1

    def unescape(self, s: str) -> str:
        if self._esc in s:
            try:
                # hex bytes (\XE5BCA0\) are bytes of the message's character set, not one
                # Latin-1 character each (张 came out as "å¼ "); the rest as python-hl7 reads it
                parts = re.split(re.escape(self._esc) + r"X([0-9A-Fa-f]+)" + re.escape(self._esc), s)
                s = "".join(self._hex(p) if i % 2 else self._message.unescape(p, _APP_MAP)
                            for i, p in enumerate(parts))
            except Exception:  # noqa: BLE001 - a broken escape sequence: keep the text as sent
                return s
            if _CONTROL.search(s):  # \X00\ and friends: no control characters in FHIR strings
                s = _CONTROL.sub("", s)
        return s

    def _hex(self, digits: str) -> str:
        data = bytes.fromhex(digits if len(digits) % 2 == 0 else digits[:-1])
        try:
            return data.decode(self.codec)
        except (UnicodeDecodeError, LookupError):
            return data.decode("latin-1")

    def first(self, name: str) -> Seg | None:
        for s in self.segments:
            if s.name == name:
                return s
        return None

    def all(self, name: str) -> list[Seg]:
        return [s for s in self.segments if s.name == name]

    @property
    def msh(self) -> Seg:
        return self.segments[0]

    def groups(self, head: str, members: tuple[str, ...], stop: tuple[str, ...] = ()) -> list[list[Seg]]:
        """Split the segments into groups starting at each ``head`` and holding the following
        segments named in ``members`` (until the next head or a segment in ``stop``)."""
        out: list[list[Seg]] = []
        cur: list[Seg] | None = None
        for s in self.segments:
            if s.name == head:
                cur = [s]
                out.append(cur)
            elif cur is not None:
                if s.name in stop:
                    cur = None
                elif s.name in members:
                    cur.append(s)
        return out
