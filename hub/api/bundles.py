"""Transaction and batch Bundles (FHIR R4 http.html#transaction).

A transaction is all or nothing: every entry is validated and every GET tried, then DELETEs, POSTs
and PUTs are planned and committed in one store transaction (``urn:uuid:`` and conditional
references rewritten), and GETs answer afterwards. A batch runs each entry on its own; its writes still share one commit.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode

import orjson

from fhir_mapping import source_order
from hub.api import intake, operations, patching
from hub.api.responses import (
    ID_RE,
    client_holds,
    create_only,
    etag,
    parse_if_match,
    view_etag,
    view_tag_matches,
)
from hub.core import jsontext
from hub.core import resource as res
from hub.core.conditional import parse_if_none_exist, parse_query
from hub.core.errors import FhirError, Issue, bad_request
from hub.core.ingest import Context, IfMatch, Op, Result
from hub.documents import StoredDocuments
from hub.repository import VIEW_TYPES, Repository

WRITE_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2}  # R4: PUT or PATCH, in entry order
# (path, query, check) -> status, body; ``check``: only whether it would fail (see _try_gets)
GetHandler = Callable[[str, str, bool], tuple[int, bytes | dict | None]]
# (type, JSON text, resource, where) -> the resource to store and the warnings to answer
# (what lenient intake repaired, what the profiles warn of)
Validate = Callable[[str, bytes, dict, str], tuple[dict, list[Issue]]]


def status_line(code: int) -> str:
    try:
        return f"{code} {HTTPStatus(code).phrase}"
    except ValueError:
        return str(code)


def split_url(url: str, base: str) -> tuple[str, str]:
    """Entry request URL -> (path relative to the base, query), as a server reads a request:
    the path percent-decoded (``Patient/p%30`` is ``Patient/p0``), no ``#fragment`` (never sent
    by an HTTP client)."""
    url = url.partition("#")[0]
    if url.startswith(base + "/"):
        url = url[len(base) + 1:]
    elif "://" in url.partition("?")[0]:  # a query may hold URLs (identifier=http://…|1)
        # an absolute URL on another server is that server's resource, never one written here
        # (http://other.example/fhir/Patient/x was written as the local Patient/x)
        raise bad_request(f"request.url {url[:200]!r} is not on this server ({base}): give it "
                          "relative to the base, or absolute on it")
    path, _, query = url.lstrip("/").partition("?")
    return unquote(path), query


def parse_entry(i: int, entry: object, base: str,
                validate: Validate | None = None) -> Op | tuple[str, str, dict]:
    """A Bundle entry as a write ``Op``, or (path, query, what else it asks) for a GET."""
    where = f"Bundle.entry[{i}]"
    if not isinstance(entry, dict):
        raise bad_request("A Bundle entry must be a JSON object", where)
    request = entry.get("request")
    if not isinstance(request, dict):
        raise bad_request("Each entry of a transaction or batch needs request", f"{where}.request")
    method, url = request.get("method"), request.get("url")
    if not isinstance(url, str) or not url:
        raise bad_request("entry.request.url is required", f"{where}.request.url")
    path, query = split_url(url, base)
    if method in ("GET", "HEAD"):
        _check_get(path, url, where)
        # HEAD answers without the resource; ifNoneMatch / ifModifiedSince as on a read
        return path, query, {"head": method == "HEAD",
                             "ifNoneMatch": request.get("ifNoneMatch"),
                             "ifModifiedSince": request.get("ifModifiedSince")}
    if method not in WRITE_ORDER:
        raise bad_request(f"Unknown request method {method!r}", f"{where}.request.method")
    parts = path.split("/")
    rtype = parts[0]
    if rtype not in res.RESOURCE_TYPES:
        raise bad_request(f"Unknown resource type in {url!r}", f"{where}.request.url")
    if rtype in VIEW_TYPES:  # as a direct write of it is (hub.api.identity)
        raise FhirError(405, "not-supported", f"{where}: {method} {url[:200]!r}: {rtype} is the "
                        "master patient index's view, rebuilt from identity events; use "
                        "$link, $unlink, $merge, $unmerge or $not-duplicate",
                        f"{where}.request.url")
    op = Op(method, rtype, url=url, full_url=entry.get("fullUrl"), where=where)
    op.if_match = _if_match(request.get("ifMatch"), where)
    if method == "PUT" and request.get("ifNoneMatch") is not None:
        op.create_only = create_only(str(request["ifNoneMatch"]), f"{where}.request.ifNoneMatch")
    if method == "DELETE":  # a feed's delete: its source order, as a write has on its resource
        op.order = source_order.from_extensions(request.get("extension"))
    if len(parts) == 2 and method != "POST":
        if not ID_RE.match(parts[1]):  # ``DELETE Patient/`` deleted nothing and answered 204
            raise bad_request(f"{parts[1]!r} in {url[:200]!r} is not a valid FHIR id",
                              f"{where}.request.url")
        op.rid = parts[1]
    elif len(parts) != 1 or (method != "POST" and not query):
        raise bad_request(f"Cannot {method} {url!r}", f"{where}.request.url")
    elif method != "POST":
        op.query = parse_query(query, f"{where}.request.url")
    if method == "POST" and request.get("ifNoneExist") is not None:
        inx = request["ifNoneExist"]
        if not isinstance(inx, str):
            raise bad_request("ifNoneExist is a string of search criteria",
                              f"{where}.request.ifNoneExist")
        op.if_none_exist = parse_if_none_exist(inx, f"{where}.request.ifNoneExist")
    operations.refuse_write(op)  # what the server defines itself
    if method == "PATCH":
        apply, document = patching.from_entry(entry.get("resource"), where)
        op.patch = patching.step(rtype, apply, document, validate, where)
    if method in ("POST", "PUT"):
        d = entry.get("resource")
        if d is None:
            raise bad_request(f"A {method} entry needs a resource", f"{where}.resource")
        res.check_type(d, rtype, f"{where}.resource")
        if op.rid is not None and d.get("id") != op.rid:
            raise bad_request(
                f"The resource id {d.get('id')!r} differs from the request URL {url!r}",
                f"{where}.resource.id",
            )
        raw = jsontext.dumps(d, f"{where}.resource")
        if validate is None:
            res.validate(rtype, raw, d, f"{where}.resource")
        else:
            d, op.warnings = validate(rtype, raw, d, f"{where}.resource")
        op.d = d
    return op


def _check_get(path: str, url: str, where: str) -> None:
    """Refuse a GET that cannot work before anything is written: read, vread, a search (of a
    type, the system or a compartment: ``Patient/{id}/Observation``, ``Patient/{id}/*``) or a
    history (``_history``, ``Type/_history``, ``Type/id/_history``), as over HTTP."""
    parts = path.split("/")
    if path in ("", "_history"):
        return
    if parts[0] not in res.RESOURCE_TYPES:
        raise FhirError(404, "not-found", f"Cannot GET {url!r}: unknown resource type",
                        f"{where}.request.url")
    if not (len(parts) <= 2 or (len(parts) == 4 and parts[2] == "_history") or (
            len(parts) == 3 and (parts[2] in ("_history", "*") or parts[2] in res.RESOURCE_TYPES))):
        raise bad_request(f"GET {url!r} is not supported inside a Bundle", f"{where}.request.url")


def _if_match(value: object, where: str) -> IfMatch:
    if value is None:
        return None
    return parse_if_match(str(value), f"{where}.request.ifMatch")


# A fullUrl the envelope's validation may stand in for: a scheme and printable ASCII (urn:uuid:…,
# http://…). The model's uri is any string (pattern \S*, searched), so every such one is valid.
_PLAIN_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[!-~]+")
_ANY_URL = "urn:x"


def validate_envelope(bundle: dict, entries: list) -> None:
    """The Bundle itself, minus the entries' resources (each is validated on its own).

    The model checks each entry on its own (no rule of Bundle looks across entries), so entries
    alike but for a plain fullUrl are checked once: a transaction's hundreds of entries are a
    handful of shapes (``POST Observation``, …). A failure (a 422, or a 400 for a control
    character) is checked again entry by entry, so that its error names the entry where it is."""
    # bdl-7: a fullUrl names one entry (or versions of one resource); two entries of one
    # fullUrl made two resources, and a reference to it went to the last
    seen: dict[str, int] = {}
    for i, e in enumerate(entries):
        url = e.get("fullUrl") if isinstance(e, dict) else None
        if not isinstance(url, str):
            continue
        resource = e.get("resource")
        meta = resource.get("meta") if isinstance(resource, dict) else None
        # a meta of another shape is the resource's validation's to refuse, not a crash here
        version = meta.get("versionId") if isinstance(meta, dict) else None
        key = f"{url}|{version}" if version else url
        if key in seen and bundle.get("type") != "history":
            raise FhirError(400, "invalid", f"Bundle.entry[{i}] has the fullUrl of "
                            f"Bundle.entry[{seen[key]}] ({url[:100]!r}): a fullUrl names one "
                            "entry (bdl-7)", expression=f"Bundle.entry[{i}].fullUrl")
        seen.setdefault(key, i)
    # the entries without their resources; emptied ones are fine here (parse_entry says what
    # is missing)
    parts = [{k: v for k, v in e.items() if k != "resource"} if isinstance(e, dict) else e
             for e in entries]
    try:
        shapes: dict[bytes, object] = {}
        for shape in map(_shape, parts):
            shapes.setdefault(orjson.dumps(shape), shape)
        _validate_envelope(bundle, list(shapes.values()))
        return
    except (orjson.JSONEncodeError, FhirError):
        pass  # what orjson will not write, or a failure whose location is among the shapes
    _validate_envelope(bundle, parts)


def _shape(part: object) -> object:
    """An entry (without its resource) with a plain fullUrl stood in for by one valid value."""
    if isinstance(part, dict) and isinstance(part.get("fullUrl"), str) \
            and _PLAIN_URL.fullmatch(part["fullUrl"]):
        return {**part, "fullUrl": _ANY_URL}
    return part


def _validate_envelope(bundle: dict, entries: list) -> None:
    envelope = dict(bundle)
    envelope["entry"] = entries
    res.validate("Bundle", jsontext.dumps(envelope, "Bundle"), envelope, check_json=False)


def process(bundle: dict, repo: Repository, ctx: Context, base: str, representation: bool | str,
            get: GetHandler, raw: bytes | None = None, validate: Validate | None = None,
            written: set[int] | None = None) -> dict:
    """``representation``: each write's entry holds the resource (True), only the response
    (False), or an OperationOutcome in it (``"outcome"``: Prefer: return=OperationOutcome);
    ``raw``: the JSON text of ``bundle`` as received, when there is one; ``validate``: the
    caller's checks of what it writes (lenient intake, profiles), plain validation without;
    ``written``: given, the indexes of the entries that stored a new version (or a deletion)
    are added to it (the answer does not tell them from writes that left things as they were)."""
    btype = bundle.get("type")
    if btype not in ("transaction", "batch"):
        raise bad_request(
            f"POST to the base accepts transaction or batch Bundles, not {btype!r}", "Bundle.type"
        )
    if btype == "transaction" and raw is not None:
        # one bad string fails a transaction whole: found in the text before any entry is
        # validated (a batch refuses only the entry, when that entry is validated)
        jsontext.refuse_bad_text(bundle, "Bundle", raw)
    entries = bundle.get("entry")
    if entries == []:  # FHIR JSON has no empty arrays: refused here as in any resource
        raise FhirError(422, "structure", "entry is an empty array, which FHIR JSON forbids "
                        "(leave it out: a Bundle with no entries)", "Bundle.entry")
    entries = entries or []
    if not isinstance(entries, list):
        raise bad_request("Bundle.entry must be an array", "Bundle.entry")
    validate_envelope(bundle, entries)
    atomic = btype == "transaction"
    parsed: list[Op | tuple[str, str, dict] | FhirError] = []
    for i, entry in enumerate(entries):
        try:
            parsed.append(parse_entry(i, entry, base, validate))
        except FhirError as e:
            if atomic:
                raise
            parsed.append(e)

    writes = sorted(
        (i for i, p in enumerate(parsed) if isinstance(p, Op)),
        key=lambda i: WRITE_ORDER[parsed[i].method],  # type: ignore[union-attr]
    )
    out: list[dict | None] = [None] * len(parsed)
    ops: list[Op] = [parsed[i] for i in writes]  # type: ignore[misc]
    # a connector's mapped documents are held to what the document intake holds its own to
    # (never written over another patient's records; what a new version withdrew retired):
    # one check, the intake's; the retirements are written with them, answered by no entry
    # (``hub ingest`` hands in the bare core: its store is read the same way)
    stored = repo if isinstance(repo, Repository) else Repository(repo)
    retirements = StoredDocuments(stored).settle_writes(ops, ctx.actor)
    if atomic:
        _try_gets(parsed, ops, get)
    results = repo.execute(ops + retirements, ctx, atomic=True) if atomic \
        else repo.execute_batch(ops + retirements, ctx)
    placed = _placed_entries(ops, results) if atomic else {}
    for i, result in zip(writes, results):
        op = parsed[i]
        assert isinstance(op, Op)
        if written is not None and isinstance(result, Result) and result.written:
            written.add(i)
        if isinstance(result, Result) and op.method != "DELETE":
            intake.finish(repo, ctx, result, op.warnings)
            repo.complete(result, ctx)
        out[i] = _write_entry(result, base, representation)
    for i, p in enumerate(parsed):
        if isinstance(p, FhirError):
            out[i] = _error_entry(p)
        elif isinstance(p, tuple):
            try:
                status, body = get(p[0], _query_placed(p[1], placed), False)
                out[i] = _get_entry(status, body, p[2])
            except FhirError as e:
                # tried before the writes (``_try_gets``); what fails only now (a read of what
                # the transaction wrote, a resource deleted meanwhile) says why at its entry
                out[i] = _error_entry(e)
    answer: dict[str, Any] = {"resourceType": "Bundle", "type": f"{btype}-response"}
    if out:  # no empty array: a Bundle with no entries answers with none
        answer["entry"] = out
    return answer


def _get_entry(status: int, body: Any, asked: dict) -> dict:
    """The response entry of a GET or HEAD: a read's ETag and Last-Modified, 304 without the
    resource when ``ifNoneMatch`` or ``ifModifiedSince`` says the client holds it, no resource
    for a HEAD."""
    response: dict[str, Any] = {"status": status_line(status)}
    meta = None
    if isinstance(body, bytes):
        try:
            meta = (orjson.loads(body) or {}).get("meta") or {}
        except orjson.JSONDecodeError:
            meta = None
    elif isinstance(body, dict) and body.get("resourceType") != "Bundle":  # a subset of one read
        meta = body.get("meta") or {}
    version = meta.get("versionId") if meta else None
    if isinstance(version, str) and version.isdigit():
        # a golden Person changes with its Patients, not only with its own versions
        view = isinstance(body, dict) and body.get("resourceType") == "Person"
        tag = view_etag(body) if view else etag(int(version))
        response["etag"] = tag
        if meta and meta.get("lastUpdated"):
            response["lastModified"] = meta["lastUpdated"]
        inm, ims = asked.get("ifNoneMatch"), asked.get("ifModifiedSince")
        if (view and inm and view_tag_matches(str(inm), tag)) or (
                not (view and inm)
                and client_holds(str(inm) if inm else None, str(ims) if ims else None,
                                 int(version), meta.get("lastUpdated") if meta else None,
                                 since_instant=True)):
            response["status"] = status_line(304)
            return {"response": response}
    answer: dict[str, Any] = {"response": response}
    if body is not None and not asked.get("head"):
        answer["resource"] = orjson.Fragment(body) if isinstance(body, bytes) else body
    return answer


def _try_gets(parsed: list, ops: list[Op], get: GetHandler) -> None:
    """A transaction is all or nothing (R4), and its GETs answer after its writes, which cannot
    be taken back then: so each GET is checked before anything is written (planned or looked
    up, not run nor audited), and one that would fail (a malformed search, an unknown or
    forbidden resource) refuses the whole transaction. A read of a resource the transaction
    itself writes is left to after the writes."""
    written = {f"{op.rtype}/{op.rid}" for op in ops if op.rid is not None}
    placeholders = {op.full_url for op in ops if _is_placeholder(op.full_url)}
    for i, p in enumerate(parsed):
        if not isinstance(p, tuple):
            continue
        path = p[0]
        if "/".join(path.split("/")[:2]) in written:
            continue
        if placeholders and any(v in placeholders for _, v in parse_qsl(p[1])):
            continue  # a search naming an entry (subject=urn:uuid:…) runs once it is written
        try:
            get(p[0], p[1], True)
        except FhirError as e:
            where = f"Bundle.entry[{i}]"
            raise FhirError(e.status, e.issues[0].code if e.issues else "processing",
                            f"{where} (GET {path}): {e.issues[0].diagnostics if e.issues else e}",
                            where) from None


def _is_placeholder(url: str | None) -> bool:
    return isinstance(url, str) and url.startswith(("urn:uuid:", "urn:oid:"))


def _placed_entries(ops: list[Op], results: list) -> dict[str, str]:
    """Each entry's placeholder fullUrl -> the resource it was written as (``Type/id``)."""
    return {op.full_url: f"{r.rtype}/{r.rid}" for op, r in zip(ops, results)
            if op.full_url is not None and _is_placeholder(op.full_url)
            and isinstance(r, Result) and r.rid is not None}


def _query_placed(query: str, placed: dict[str, str]) -> str:
    """A GET entry's search with each value that is an entry's placeholder (R4 http.html#trules:
    every link to an entry is its resource) replaced by what that entry was written as."""
    if not placed or not query:
        return query
    pairs = parse_qsl(query, keep_blank_values=True)
    if not any(v in placed for _, v in pairs):
        return query
    return urlencode([(k, placed.get(v, v)) for k, v in pairs])


def _write_entry(result: Result | FhirError, base: str, representation: bool | str) -> dict:
    if isinstance(result, FhirError):
        return _error_entry(result)
    response: dict = {"status": status_line(result.status)}
    entry: dict = {}
    if result.rid is not None and result.version is not None:
        entry["fullUrl"] = f"{base}/{result.rtype}/{result.rid}"
        response["location"] = f"{result.rtype}/{result.rid}/_history/{result.version}"
        response["etag"] = etag(result.version)
        response["lastModified"] = result.last_updated
    elif result.place is not None:  # a hidden record a key found: where it is, no version
        entry["fullUrl"] = f"{base}/{result.place}"
        response["location"] = result.place
    if result.issues or representation == "outcome":  # Prefer: return=OperationOutcome
        issues = result.issues or [Issue("informational", "succeeded", "information")]
        response["outcome"] = {"resourceType": "OperationOutcome",
                               "issue": [i.to_json() for i in issues]}
    if representation is True and result.body:
        entry["resource"] = orjson.Fragment(result.body)
    entry["response"] = response
    return entry


def _error_entry(e: FhirError) -> dict:
    return {"response": {"status": status_line(e.status), "outcome": e.outcome()}}

