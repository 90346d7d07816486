"""Chinese resident identity card numbers (公民身份号码, GB 11643-1999).

An 18-character number is: 6 digits administrative division code (GB/T 2260) of the place of first
registration, 8 digits birth date ``YYYYMMDD``, 3 digits sequence (the last of them odd for men, even for
women) and one check character computed with ISO 7064 MOD 11-2 (``0``-``9`` or ``X``). The older
15-digit numbers (issued until 1999) have a 2-digit year and no check character.

Pure functions, no I/O and no clock: the mapping and the master patient index use them.
"""

from __future__ import annotations

import datetime as _dt

__all__ = ["check_digit", "is_valid", "upgrade_15_to_18", "birth_date", "sex", "is_placeholder"]

_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CHECK_CHARS = "10X98765432"
# First two digits: provinces, autonomous regions and municipalities of GB/T 2260, plus 81/82 (Hong Kong,
# Macao) and 83 (Taiwan) used by residence permits.
_PROVINCES = frozenset(
    "11 12 13 14 15 21 22 23 31 32 33 34 35 36 37 41 42 43 44 45 46 50 51 52 53 54 61 62 63 64 65 71 81 82 83".split()
)
_EARLIEST_BIRTH = _dt.date(1880, 1, 1)


def check_digit(first17: str) -> str:
    """Return the GB 11643 check character (``'0'``-``'9'`` or ``'X'``) for the first 17 digits.

    Raises ``ValueError`` unless ``first17`` is exactly 17 ASCII digits.
    """
    if len(first17) != 17 or not (first17.isascii() and first17.isdigit()):
        raise ValueError("expected 17 digits")
    return _CHECK_CHARS[sum(int(c) * w for c, w in zip(first17, _WEIGHTS)) % 11]


def _parse_date(yyyymmdd: str) -> _dt.date | None:
    try:
        return _dt.date(int(yyyymmdd[:4]), int(yyyymmdd[4:6]), int(yyyymmdd[6:8]))
    except ValueError:
        return None


def birth_date(idno: str) -> _dt.date | None:
    """Birth date encoded in an 18- or 15-digit number (15-digit ones are taken as 19xx), else ``None``.

    Only the format is looked at; the check character is not verified (use :func:`is_valid`).
    """
    if not isinstance(idno, str) or not idno.isascii():
        return None
    if len(idno) == 18 and idno[:17].isdigit():
        return _parse_date(idno[6:14])
    if len(idno) == 15 and idno.isdigit():
        return _parse_date("19" + idno[6:12])
    return None


def sex(idno: str) -> str | None:
    """``'male'`` if the sex digit (17th of 18, 15th of 15) is odd, ``'female'`` if even, ``None`` if the
    value has neither format. The check character is not verified."""
    if not isinstance(idno, str) or not idno.isascii():
        return None
    if len(idno) == 18 and idno[:17].isdigit():
        digit = idno[16]
    elif len(idno) == 15 and idno.isdigit():
        digit = idno[14]
    else:
        return None
    return "male" if int(digit) % 2 else "female"


def is_valid(idno: str, as_of: _dt.date | None = None) -> bool:
    """True for a well-formed 18-character number: 17 digits plus a check character (``X`` in either case),
    a known province code, a real birth date from 1880 on (and not after ``as_of`` when given), and a
    matching check character. 15-digit numbers are not valid here: upgrade them first."""
    if not isinstance(idno, str) or len(idno) != 18 or not idno.isascii() or not idno[:17].isdigit():
        return False
    if idno[:2] not in _PROVINCES:
        return False
    born = _parse_date(idno[6:14])
    if born is None or born < _EARLIEST_BIRTH or (as_of is not None and born > as_of):
        return False
    return idno[17].upper() == check_digit(idno[:17])


def upgrade_15_to_18(idno15: str) -> str:
    """Convert a 15-digit number to 18 digits: insert the century ``19`` before the 2-digit year and append
    the check character. Raises ``ValueError`` unless given 15 digits with a real birth date."""
    if len(idno15) != 15 or not (idno15.isascii() and idno15.isdigit()):
        raise ValueError("expected 15 digits")
    first17 = idno15[:6] + "19" + idno15[6:]
    if _parse_date(first17[6:14]) is None:
        raise ValueError("no valid birth date in the number")
    return first17 + check_digit(first17)


def is_placeholder(idno: str | None) -> bool:
    """True for values that fill the field without identifying anyone: one character repeated
    (``000000000000000000``, ``111111111111111111``), a run of consecutive digits (``123456789012345678``),
    or an ID-length value whose division code or birth date is all zeros. Empty or missing values are
    not placeholders (they are simply missing)."""
    if not idno:
        return False
    s = idno.strip().upper()
    if not s:
        return False
    if len(set(s)) == 1:
        return True
    if not s.isascii():  # "²" passes isdigit() and fails int(): no number, no filler of one
        return False
    digits = s.rstrip("X")
    if len(digits) >= 6 and digits.isdigit():
        steps = {(int(b) - int(a)) % 10 for a, b in zip(digits, digits[1:])}
        if steps in ({1}, {9}):
            return True
    if len(s) in (15, 18) and s[:17].isdigit():
        born = s[6:14] if len(s) == 18 else s[6:12]
        if s[:6] == "000000" or set(born) == {"0"}:
            return True
    return False
