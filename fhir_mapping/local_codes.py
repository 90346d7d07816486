"""How an HL7 v2 sender's coding-system names travel when no FHIR URI is known for them.

- A table-0396 name without a FHIR URI (``JC10``) and a name outside the table (``ZZZ``,
  ``LOCAL``) keep the name: ``Coding.system`` is ``NAMED_SYSTEM`` + the name (percent-encoded), a
  system the hub states the same way for every sender. Never "no system": a coding without one is
  taken as the institution's own local code of its kind (``connectors.terminology``
  ``local_systems``), and another standard's code would be mapped as a local lab test.
- ``L`` (local general code) leaves the system out: the institution's local system of the kind.
- ``99zzz`` (a named local system) leaves the system out too, the name kept in the extension
  ``LOCAL_NAME``, so that two local systems of one CWE (``99CHEM`` and ``L``) never become one: a
  normaliser gives it the system configured for that exact name, else ``named_local_system``.
Pure; shared by the v2 mapper and the normalisers (``terminology.normalise``).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

NAMED_SYSTEM = "https://fhir-region-hub.example/CodeSystem/v2-coding-system/"
LOCAL_NAME = "https://fhir-region-hub.example/StructureDefinition/v2-local-coding-system"
_NAMED_LOCAL = re.compile(r"99[A-Za-z0-9]+")


def is_general_local(name: str) -> bool:
    return name.upper() == "L"


def is_named_local(name: str) -> bool:
    """``99zzz``: a local coding system with a name of the sender's (HL7 table 0396)."""
    return _NAMED_LOCAL.fullmatch(name) is not None


def named_system(name: str) -> str:
    return NAMED_SYSTEM + quote(name, safe="")


def local_name(coding: dict) -> str | None:
    """The ``99zzz`` name a system-less coding was sent under, if any."""
    ext = coding.get("extension")
    if type(ext) is not list:
        return None
    for e in ext:
        if type(e) is dict and e.get("url") == LOCAL_NAME and isinstance(e.get("valueString"), str):
            return e["valueString"]
    return None


def named_local_system(base: str, name: str) -> str:
    """The system of a named local coding system no configuration names: below the kind's local
    system (``urn:oid:<oid>.7``), one arc per UTF-8 byte of the name (``99CHEM`` ->
    ``….7.57.57.67.72.69.77``): deterministic, distinct per name, and still the institution's."""
    if not base.startswith("urn:oid:"):
        return base.rstrip("/") + "/" + quote(name, safe="")
    return base + "." + ".".join(str(b) for b in name.encode("utf-8"))


def with_local_name(coding: dict[str, Any], name: str) -> dict[str, Any]:
    return {"extension": [{"url": LOCAL_NAME, "valueString": name}], **coding}
