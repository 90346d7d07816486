"""URLs and connection strings as they may be shown: with any password masked.

A leaf: the settings, the commands and the read models (an Elasticsearch URL with ``user:pass@``)
show URLs through it, well-formed or not (a malformed database URL was echoed, password and all).
"""

from __future__ import annotations

import re

MASK = "***"

# a key=value connection string's or a URL query's password: up to the next "key=", "&" or the
# end (an unquoted one with a space runs on: libpq reads no more of it, a reader would)
_KEYED = re.compile(r"(?i)(password\s*=\s*)('(?:\\.|[^'\\])*'|.*?(?=\s+\w+\s*=|&|$))")
_SCHEME = re.compile(r"[A-Za-z][\w+.-]*:/*")


def redact_url(url: str) -> str:
    """``url`` with its password masked: the userinfo's after its first ``:`` (up to the last
    ``@``, however malformed the rest) and any ``password=`` value."""
    url = _KEYED.sub(lambda m: m.group(1) + MASK, url)
    at = url.rfind("@")
    if at > 0:
        head = url[:at]
        scheme = _SCHEME.match(head)
        colon = head.find(":", scheme.end() if scheme else 0)
        if colon >= 0:
            url = head[:colon + 1] + MASK + url[at:]
    return url


def unquoted(message: str) -> str:
    """A library's message without what it quotes of its input (libpq quotes the part of a
    connection string it could not read, a piece of the password among them)."""
    return re.sub(r'"[^"]{2,}"', '"…"', message)
