"""A large batch or collection Bundle read entry by entry (``ijson``), not parsed whole.

A 210 MB bulk dump parsed whole took ``hub ingest`` to 1.7 GB. A batch's entries are independent
and a collection's are resources of their own, so a few hundred at a time give the same answers;
a transaction is atomic and is still read whole, as is every file under ``STREAM_FROM`` bytes.

Each entry is written back as JSON text, its decimals as they were sent ("1.50" stays "1.50"),
for the caller to parse as it parses any input. What the stream parser would change without a
word is left to the whole-file path, which refuses it: a lone surrogate escape (``\\ud800``)
anywhere in the file sends the file there; a key repeated in an entry rejects that entry.
"""

from __future__ import annotations

import decimal
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

BOM = b"\xef\xbb\xbf"
STREAM_FROM = 1 << 20  # bytes on disk (compressed, for .gz)
PART_ENTRIES = 500
PART_BYTES = 4 << 20  # a part ends at whichever of the two comes first

# a surrogate escape: yajl writes a lone one as "?" (orjson refuses it, as FHIR does); a valid
# pair (an escaped emoji) matches too and merely costs the file its streaming
_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")


@dataclass
class BundlePart:
    """Consecutive entries of a streamed Bundle of ``type`` "batch" or "collection", the first
    at index ``first``: each as its JSON text and None, or as b"" and why it cannot be taken."""

    type: str
    first: int
    entries: list[tuple[bytes, str | None]] = field(default_factory=list)

    def bundle(self, entries: list[bytes] | None = None) -> bytes:
        """A Bundle of this type holding ``entries`` (JSON texts; default: this part's)."""
        texts = entries if entries is not None else [text for text, _ in self.entries]
        return (b'{"resourceType":"Bundle","type":"' + self.type.encode() + b'","entry":['
                + b",".join(texts) + b"]}")


def open_json(f: Path):
    """The file (gunzipped if .gz) past a byte order mark."""
    if f.name.lower().endswith(".gz"):
        import gzip

        fh: Any = gzip.open(f, "rb")
    else:
        fh = f.open("rb")
    if fh.peek(3)[:3] == BOM:
        fh.read(3)
    return fh


def streamed_type(f: Path) -> str | None:
    """"batch" or "collection" when the file is at least STREAM_FROM bytes and holds a Bundle of
    that type, safe to stream; else None (read whole). Never raises on what the file holds: the
    whole-file reading says what is wrong with it."""
    import ijson

    try:
        if f.stat().st_size < STREAM_FROM:
            return None
        top: dict[str, object] = {}
        with open_json(f) as fh:
            events = ijson.parse(fh)
            if next(events, None) != ("", "start_map", None):
                return None
            for prefix, event, value in events:
                if prefix == "" and (event == "end_map" or event == "map_key" and value == "entry"):
                    break
                if prefix in ("resourceType", "type") and event == "string":
                    top[prefix] = value
                    if len(top) == 2:
                        break
        if top.get("resourceType") != "Bundle":
            return None  # resourceType comes first in any FHIR JSON writer's output
        if "type" not in top:
            # written after the entries: one more pass, in C, that keeps nothing but the type
            with open_json(f) as fh:
                top["type"] = next(ijson.items(fh, "type"), None)
        if top["type"] not in ("batch", "collection"):
            return None
        with open_json(f) as fh:
            tail = b""
            while chunk := fh.read(1 << 20):
                if _SURROGATE.search(tail + chunk[:5]) or b"\\u" in chunk and _SURROGATE.search(chunk):
                    return None
                tail = chunk[-5:]
        return str(top["type"])
    except (ijson.JSONError, OSError, EOFError, ValueError, zlib.error):
        return None


def _number(o: object) -> object:
    """A decimal as it was sent: its digits and scale (1.50, 0.00000010), exponent form only
    where the scale is above the units (1E+5)."""
    if isinstance(o, decimal.Decimal):
        exponent = o.as_tuple().exponent
        return orjson.Fragment(format(o, "f") if isinstance(exponent, int) and exponent < 0
                               else str(o))
    raise TypeError(f"{type(o).__name__} is no JSON value")


def stream_parts(f: Path, name: str, btype: str) -> Iterator[tuple[str, BundlePart | None,
                                                                   str | None]]:
    """(name, part, None) for each part of the file's entries; at the end, (where, None, why) if
    the file could not be read or parsed to its end (where: the first entry not read), or if it
    had no entries."""
    import ijson

    repeats = [0]

    class Object(dict):
        """An object that remembers a key given twice (the parser keeps the last value)."""

        repeated: str | None = None

        def __setitem__(self, key: str, value: object) -> None:
            if key in self and self.repeated is None:
                self.repeated = key
                repeats[0] += 1
            super().__setitem__(key, value)

    part = BundlePart(btype, 0)
    size = n = found = 0
    try:
        with open_json(f) as fh:
            for entry in ijson.items(fh, "entry.item", map_type=Object):
                problem = None
                if repeats[0] > found:  # this entry or one the parser built ahead of it
                    keys = _repeated(entry)
                    found += len(keys)
                    if keys:
                        problem = (f"The entry is not valid JSON: the key {keys[0]!r} is given "
                                   "twice in one object (not kept: read it in the file)")
                try:
                    text = orjson.dumps(entry, default=_number)
                except (orjson.JSONEncodeError, TypeError) as e:
                    problem = f"The entry cannot be read: {e} (not kept: read it in the file)"
                if problem is not None:
                    text = b""  # what the parser made of it is not what was sent: no replay
                part.entries.append((text, problem))
                size += len(text)
                n += 1
                if len(part.entries) >= PART_ENTRIES or size >= PART_BYTES:
                    yield name, part, None
                    part, size = BundlePart(btype, n), 0
    except (ijson.JSONError, OSError, EOFError, zlib.error) as e:
        if part.entries:
            yield name, part, None
        why = (f"The file is not valid JSON after {n} entries of the {btype} Bundle: "
               f"{_first_line(e)}" if isinstance(e, ijson.JSONError)
               else f"Cannot read the file after {n} entries of the {btype} Bundle: {e}")
        yield f"{name}#entry[{n}]", None, why + (" (the entries before were read)" if n else "")
        return
    if part.entries:
        yield name, part, None
    if not n:
        yield name, None, f"The {btype} Bundle has no entries (or Bundle.entry is no array)"


def _repeated(node: object) -> list[str]:
    """The keys given twice in the objects of ``node``."""
    out: list[str] = []
    stack = [node]
    while stack:
        x = stack.pop()
        if isinstance(x, dict):
            key = getattr(x, "repeated", None)
            if key is not None:
                out.append(key)
            stack.extend(x.values())
        elif isinstance(x, list):
            stack.extend(x)
    return out


def _first_line(e: Exception) -> str:
    """yajl's message is its reason, then the text around the place, over several lines."""
    what = e.args[0] if e.args else str(e)
    if isinstance(what, bytes):
        what = what.decode("utf-8", "replace")
    return str(what).strip().splitlines()[0] if str(what).strip() else type(e).__name__
