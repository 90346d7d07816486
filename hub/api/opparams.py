"""The Parameters body of an operation invoked by POST: name -> value, each name once."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import Request

from hub.api import fhirxml
from hub.api.responses import check_content_type
from hub.core import resource as res
from hub.core.conditional import parse_query
from hub.core.errors import FhirError, bad_request

MAX_OP_BODY = 64 * 1024


async def read_parameters(request: Request, keys: Sequence[str], what: str = "An operation's",
                          max_body: int = MAX_OP_BODY) -> dict[str, Any]:
    """name -> value of a Parameters body, in JSON or XML: the first of ``keys`` (``value[x]``
    names) a parameter has, a Reference as its reference string. 413 over ``max_body``."""
    check_content_type(request)
    length = request.headers.get("content-length")
    too_large = FhirError(413, "too-costly", f"{what} body is at most {max_body} bytes")
    if length is not None and (length.isascii() and length.isdigit()) and int(length) > max_body:
        raise too_large
    raw = await request.body()
    if len(raw) > max_body:
        raise too_large
    if not raw.strip():
        raise bad_request("The request body is empty; send a Parameters resource")
    raw = fhirxml.json_body(request, raw)
    d = res.parse_json(raw, max_string=request.app.state.settings.max_string)
    res.check_type(d, "Parameters")
    res.validate("Parameters", raw, d)
    out: dict[str, Any] = {}
    for i, p in enumerate(parameter_list(d)):
        name = p["name"]
        value = None
        for key in keys:
            if key in p:
                value = p[key]
                break
        if isinstance(value, dict):
            value = value.get("reference")
        if value is None:
            raise bad_request(f"Parameter {name!r} has no value ({', '.join(keys)})",
                              f"Parameters.parameter[{i}]")
        if name in out:
            raise bad_request(f"Parameter {name!r} is given more than once",
                              f"Parameters.parameter[{i}]")
        out[name] = value
    return out


def parameter_list(d: dict[str, Any]) -> list[dict[str, Any]]:
    """``Parameters.parameter`` of a posted Parameters resource: objects each with a name;
    400 naming the first that is none (a string, a number, an object in place of the array)."""
    given = d.get("parameter")
    if given is None:
        return []
    if not isinstance(given, list):
        raise bad_request("Parameters.parameter must be an array", "Parameters.parameter")
    for i, p in enumerate(given):
        if not isinstance(p, dict) or not isinstance(p.get("name"), str):
            raise bad_request("Each parameter must be an object with a name",
                              f"Parameters.parameter[{i}]")
    return given


async def form_params(request: Request) -> list[tuple[str, str]]:
    """A POST ``_search``'s parameters: the URL's and the form body's."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip()
    body = await request.body()
    # an empty body needs no type (its parameters are in the URL, as HAPI takes them)
    if ctype != "application/x-www-form-urlencoded" and (body.strip() or ctype):
        raise FhirError(415, "not-supported",
                        "POST _search takes application/x-www-form-urlencoded parameters")
    raw = body.decode("utf-8", "replace")
    return list(request.query_params.multi_items()) + (parse_query(raw) if raw else [])
