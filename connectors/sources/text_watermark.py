"""Text watermarks holding date-times: the forms a look-back window can be written back in.

Many HIS views keep times as text (``20240301090000``) rather than a timestamp. Text compares
character by character, so a window start is only right in the very form of the column's values:
each form below is of fixed width and zero-padded, so its values compare in time order and a
value a few minutes earlier, written in the same form, compares lower. A form not listed here
(``2024/3/1 9:05``, an offset that varies) gets no window from this module.
"""

from __future__ import annotations

import datetime as dt
import re

# form name -> (the values it matches, the strftime/strptime spelling of its whole seconds)
FORMS: dict[str, tuple[re.Pattern[str], str]] = {
    "YYYYMMDDHHMMSS": (re.compile(r"\d{14}"), "%Y%m%d%H%M%S"),
    "YYYYMMDDHHMM": (re.compile(r"\d{12}"), "%Y%m%d%H%M"),
    "YYYYMMDD": (re.compile(r"\d{8}"), "%Y%m%d"),
    "YYYY-MM-DD HH:MM:SS": (re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d{1,6})?"),
                            "%Y-%m-%d %H:%M:%S"),
    "YYYY-MM-DDTHH:MM:SS": (re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?"),
                            "%Y-%m-%dT%H:%M:%S"),
    "YYYY/MM/DD HH:MM:SS": (re.compile(r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d(\.\d{1,6})?"),
                            "%Y/%m/%d %H:%M:%S"),
    "YYYY-MM-DD": (re.compile(r"\d{4}-\d\d-\d\d"), "%Y-%m-%d"),
}


def _parse(s: str) -> tuple[str, dt.datetime] | None:
    for name, (pattern, fmt) in FORMS.items():
        if pattern.fullmatch(s):
            try:  # the whole seconds only: a window start a fraction early reads no less
                return name, dt.datetime.strptime(s[:19], fmt)
            except ValueError:
                return None  # digits that are no date (a text sequence): no form
    return None


def form_of(s: str) -> str | None:
    """The name of the date-time form ``s`` is written in; None for any other text."""
    got = _parse(s)
    return got[0] if got else None


def earlier(s: str, delta: dt.timedelta) -> str | None:
    """``s`` less ``delta``, written in the form of ``s`` (rounded down to what the form
    shows, so never later than the exact time); None when ``s`` is in no form of ``FORMS``."""
    got = _parse(s)
    if got is None:
        return None
    name, t = got
    try:
        low = t - delta
    except OverflowError:
        return None
    # %Y writes a year before 1000 in fewer digits: no longer the form's width
    return low.strftime(FORMS[name][1]) if low.year >= 1000 else None
