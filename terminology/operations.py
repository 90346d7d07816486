"""The R4 terminology operations over the read model: pure functions of the service and the
parameters, answering a ``Parameters`` or ``ValueSet`` dict, raising ``TerminologyError`` (400)
or ``TerminologyNotFound`` (404).

=========================  ====================================================================
``CodeSystem/$lookup``     code + system (+ version) or coding -> name, version, display,
                           designations, properties (parent, child, inactive, definition, the
                           concept's own); ``property`` picks some; ``displayLanguage``
``CodeSystem/$validate-    url (or system) + code / coding / codeableConcept -> result, display,
code``                     message; a wrong ``display`` is invalid; inactive codes are valid with
                           a message; ``abstract=false`` refuses abstract codes
``CodeSystem/$subsumes``   codeA, codeB (or codingA, codingB) in system -> outcome equivalent,
                           subsumes, subsumed-by or not-subsumed
``ValueSet/$expand``       url (+ valueSetVersion) or valueSet -> the ValueSet with its expansion;
                           ``filter`` (text in code, display or a designation), ``count``,
                           ``offset``, ``activeOnly``, ``displayLanguage``,
                           ``includeDesignations``, ``includeDefinition`` (the compose too),
                           ``system-version``, ``force-system-version``; drawing on a code
                           system the hub holds part of (content fragment) marks it unclosed
``ValueSet/$validate-      url or valueSet + code and system / coding / codeableConcept ->
code``                     result, display, message; abstract codes only with ``abstract=true``;
                           ``activeOnly``, ``system-version``, ``force-system-version``; valid
                           iff $expand with them would list the code, at the coding's version
                           (``systemVersion``; it stands where nothing else names one)
``ConceptMap/$translate``  code + system / coding / codeableConcept, url / conceptMap / the maps
                           of ``source`` and ``target``, ``targetsystem``, ``reverse`` ->
                           result, message, match (equivalence, concept, source)
=========================  ====================================================================

Instance forms take the resource (``CodeSystem/{id}/$lookup``): ``instance`` is its model entry.
Code systems are found by any of their URIs (``urn:oid:…`` and the canonical URL are one);
``url|version`` works wherever a canonical is taken. ``date`` is accepted and not used.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from terminology import rows as R
from terminology import valueset as V
from terminology.params import Params, param, parameters, part
from terminology.service import (
    CodeSystemRef,
    Concept,
    ResourceRef,
    TerminologyError,
    TerminologyNotFound,
    TerminologyService,
    split_canonical,
)

MAX_FILTER = 200  # characters of an $expand text filter
MAX_UNPAGED = 10_000  # largest expansion answered without count
MAX_COUNT = 10_000
MAX_CHILDREN = 1000  # child properties listed by $lookup
UNCLOSED = "http://hl7.org/fhir/StructureDefinition/valueset-unclosed"

SPECS: dict[str, dict[str, str]] = {
    "lookup": {"code": "code", "system": "uri", "version": "string", "coding": "Coding",
               "date": "dateTime", "displayLanguage": "code", "property": "code*"},
    "validate-code-cs": {"url": "uri", "system": "uri", "code": "code", "version": "string",
                         "display": "string", "coding": "Coding",
                         "codeableConcept": "CodeableConcept", "date": "dateTime",
                         "abstract": "boolean", "displayLanguage": "code"},
    "subsumes": {"codeA": "code", "codeB": "code", "system": "uri", "version": "string",
                 "codingA": "Coding", "codingB": "Coding"},
    "expand": {"url": "uri", "valueSet": "resource:ValueSet", "valueSetVersion": "string",
               "filter": "string", "date": "dateTime", "offset": "integer", "count": "integer",
               "includeDesignations": "boolean", "includeDefinition": "boolean",
               "activeOnly": "boolean", "excludeNested": "boolean", "excludeNotForUI": "boolean",
               "excludePostCoordinated": "boolean", "displayLanguage": "code",
               "system-version": "uri*", "force-system-version": "uri*",
               "check-system-version": "uri*"},
    "validate-code-vs": {"url": "uri", "valueSet": "resource:ValueSet",
                         "valueSetVersion": "string", "code": "code", "system": "uri",
                         "systemVersion": "string", "display": "string", "coding": "Coding",
                         "codeableConcept": "CodeableConcept", "date": "dateTime",
                         "abstract": "boolean", "activeOnly": "boolean",
                         "displayLanguage": "code", "system-version": "uri*",
                         "force-system-version": "uri*"},
    "translate": {"url": "uri", "conceptMap": "resource:ConceptMap",
                  "conceptMapVersion": "string", "code": "code", "system": "uri",
                  "version": "string", "source": "uri", "coding": "Coding",
                  "codeableConcept": "CodeableConcept", "target": "uri", "targetsystem": "uri",
                  "reverse": "boolean"},
}


def _codings(p: Params, code: str = "code", system: str | None = "system",
             version: str = "version", coding: str = "coding",
             cc: str | None = "codeableConcept") -> list[dict]:
    """The codings to work on: code (+ system, version), or coding, or a CodeableConcept's."""
    given = [n for n in (code, coding, cc) if n and n in p]
    if len(given) > 1:
        raise TerminologyError(f"Give one of {', '.join(given)}, not several")
    if code in p:
        out = {"code": p.text(code)}
        if system and p.text(system):
            out["system"] = p.text(system)
        if p.text(version):
            out["version"] = p.text(version)
        return [out]
    if coding in p:
        return [p.one(coding)]
    if cc and cc in p:
        return [c for c in p.one(cc).get("coding", []) if isinstance(c, dict)]
    what = f"{code} (with {system})" if system else code
    raise TerminologyError(f"Give {what} or {coding}" + (f" or {cc}" if cc else ""))


def _designations(concept: Concept | None, entry: V.Entry | None = None) -> list[dict]:
    """The designations of a code: a value set's own (``entry``) first, then the code
    system's."""
    out = list(entry.designations) if entry is not None else []
    if concept is not None:
        out += [d for d in R.as_list(concept.details().get("designation"))
                if isinstance(d, dict) and R.text(d.get("value")) and d not in out]
    return out


def _in_language(designations: list[dict], language: str) -> str | None:
    """The designation for ``language``: its own tag, else a shorter one it falls back to
    (``zh`` for ``zh-TW``, RFC 4647 lookup), else one more specific (``zh-CN`` for ``zh``)."""
    tags = [(d["value"], d["language"].casefold()) for d in designations
            if isinstance(d.get("language"), str) and R.text(d.get("value"))]
    want = language.casefold()
    while True:
        for value, tag in tags:
            if tag == want:
                return value
        if "-" not in want:
            break
        want = want.rpartition("-")[0]
    wider = language.casefold() + "-"
    return next((value for value, tag in tags if tag.startswith(wider)), None)


def _display(svc: TerminologyService, concept: Concept | None, language: str | None,
             entry: V.Entry | None = None) -> str | None:
    """The display of a code (in ``language`` when a designation has it); ``entry``: as a
    value set gives it (its own display and designations come first)."""
    if language:
        found = _in_language(_designations(concept, entry), language)
        if found:
            return found
    return (entry.display if entry is not None else None) or (
        concept.display if concept is not None else None)


def _cs_for(svc: TerminologyService, instance: CodeSystemRef | None, system: str | None,
            version: str | None) -> CodeSystemRef:
    if instance is not None:
        if system and svc.canonical_system(system) != svc.canonical_system(instance.url or ""):
            raise TerminologyError(f"{system} is not the system of CodeSystem/{instance.rid} "
                                   f"({instance.url})")
        if version and version != instance.version:
            raise TerminologyError(f"CodeSystem/{instance.rid} is version {instance.version}, "
                                   f"not {version}")
        return instance
    if not system:
        raise TerminologyError("Which code system? Give system (or url)")
    return svc.require_system(system, version)


# -- CodeSystem ---------------------------------------------------------------------------------


def _property_value(prop: dict) -> tuple[str, Any] | None:
    for key, value in prop.items():
        if key.startswith("value"):
            return key[5:], value
    return None


def lookup(svc: TerminologyService, p: Params, instance: CodeSystemRef | None = None) -> dict:
    coding = _codings(p, cc=None)[0]
    if not R.text(coding.get("code")):
        raise TerminologyError("The code to look up is missing")
    cs = _cs_for(svc, instance, coding.get("system"), coding.get("version") or p.text("version"))
    concept = svc.concept(cs, coding["code"])
    if concept is None:
        raise TerminologyNotFound(f"Code {coding['code']!r} is not in code system {cs.url}"
                                  + (f" version {cs.version}" if cs.version else ""))
    head = svc.header(cs.stream)
    details = concept.details()
    wanted = set(p.all("property"))

    def want(name: str) -> bool:
        return not wanted or name in wanted

    out = [param("name", "String", R.text(head.get("name")) or R.text(head.get("title"))
                 or cs.url),
           param("version", "String", cs.version),
           param("display", "String", _display(svc, concept, p.text("displayLanguage"))
                 or concept.code)]
    if want("abstract"):
        out.append(param("abstract", "Boolean", concept.abstract))
    if want("designation"):
        for d in R.as_list(details.get("designation")):
            if isinstance(d, dict) and R.text(d.get("value")):
                out.append(part("designation", param("language", "Code", d.get("language")),
                                param("use", "Coding", d.get("use")),
                                param("value", "String", d["value"])))
    props = []
    if want("definition") and R.text(details.get("definition")):
        props.append(("definition", "String", details["definition"]))
    if want("inactive"):
        props.append(("inactive", "Boolean", not concept.active))
    if want("parent"):
        props += [("parent", "Code", c) for c in svc.parents(cs, concept.code)]
    if want("child"):
        props += [("child", "Code", c) for c in svc.children(cs, concept.code)[:MAX_CHILDREN]]
    for prop in R.as_list(details.get("property")):
        name = prop.get("code")
        if name in ("parent", "child", "inactive") or not want(name):
            continue  # parent and child come from the hierarchy above
        kv = _property_value(prop)
        if kv:
            props.append((name, *kv))
    for name, kind, value in props:
        out.append(part("property", param("code", "Code", name), param("value", kind, value)))
    return parameters(*out)


def _check_display(svc: TerminologyService, concept: Concept | None, display: str | None,
                   language: str | None, entry: V.Entry | None = None) -> str | None:
    """A message if ``display`` is not a display of the concept (any designation counts, and
    with ``entry`` the value set's own display and designations)."""
    if not display:
        return None
    norm = " ".join(display.split()).casefold()
    names = [entry.display if entry is not None else None,
             concept.display if concept is not None else None,
             *(d.get("value") for d in _designations(concept, entry))]
    if any(isinstance(n, str) and " ".join(n.split()).casefold() == norm for n in names):
        return None
    code = concept.code if concept is not None else entry.code if entry is not None else ""
    return (f"The display {display[:200]!r} is not a display of code {code!r}; it should "
            f"be {_display(svc, concept, language, entry)!r}")


def validate_code_cs(svc: TerminologyService, p: Params,
                     instance: CodeSystemRef | None = None) -> dict:
    url = p.text("url") or p.text("system")
    named, system = p.text("url"), p.text("system")
    if named and system and svc.canonical_system(named) != svc.canonical_system(system):
        # an OID and the canonical URL of one code system are one system
        raise TerminologyError("url and system name different code systems")
    codings = _codings(p, system=None)
    messages: list[str] = []
    refused: tuple[str, str | None] | None = None  # the first wrong display: (message, display)
    lang = p.text("displayLanguage")
    for coding in codings:
        if not R.text(coding.get("code")):
            raise TerminologyError("The code to validate is missing")
        system = coding.get("system") or url
        if url and coding.get("system") and \
                svc.canonical_system(coding["system"]) != svc.canonical_system(url):
            if len(codings) > 1:
                continue  # another coding of the CodeableConcept
            raise TerminologyError(f"The coding's system {coding['system']} is not {url}")
        try:
            cs = _cs_for(svc, instance, system, coding.get("version") or p.text("version"))
        except TerminologyNotFound as e:
            if len(codings) > 1:  # a local coding beside a standard one: the next may hold
                messages.append(str(e))
                continue
            raise
        concept = svc.concept(cs, coding["code"])
        if concept is None:
            messages.append(f"Unknown code {coding['code']!r} in code system {cs.url}"
                            + (f" version {cs.version}" if cs.version else "")
                            + (f" (the hub holds only part of it: content={cs.content})"
                               if cs.content in ("fragment", "example", "not-present") else ""))
            continue
        display = _display(svc, concept, lang)
        if concept.abstract and p.flag("abstract", None) is False:
            messages.append(f"Code {concept.code!r} is abstract (not for use in records)")
            continue
        wrong = _check_display(svc, concept, coding.get("display") or p.text("display"), lang)
        if wrong:  # false, unless another coding of the CodeableConcept is valid
            refused = refused or (wrong, display)
            continue
        note = None if concept.active else f"Code {concept.code!r} is inactive"
        return parameters(param("result", "Boolean", True), param("message", "String", note),
                          param("display", "String", display))
    if refused:
        return parameters(param("result", "Boolean", False), param("message", "String", refused[0]),
                          param("display", "String", refused[1]))
    return parameters(param("result", "Boolean", False),
                      param("message", "String", "; ".join(messages) or
                            f"No coding of {url} to validate"))


def subsumes(svc: TerminologyService, p: Params, instance: CodeSystemRef | None = None) -> dict:
    a = _codings(p, "codeA", "system", "version", "codingA", None)[0]
    b = _codings(p, "codeB", "system", "version", "codingB", None)[0]
    systems = {svc.canonical_system(x["system"]) for x in (a, b) if R.text(x.get("system"))}
    if len(systems) > 1:
        raise TerminologyError("codingA and codingB are of different code systems")
    cs = _cs_for(svc, instance, next(iter(systems), None) or p.text("system"),
                 a.get("version") or b.get("version") or p.text("version"))
    found = []
    for name, x in (("A", a), ("B", b)):
        if not R.text(x.get("code")):
            raise TerminologyError(f"code{name} is missing")
        c = svc.concept(cs, x["code"])
        if c is None:
            raise TerminologyError(f"code{name} {x['code']!r} is not in code system {cs.url}")
        found.append(c.code)
    ca, cb = found
    if ca == cb:
        outcome = "equivalent"
    elif svc.is_a(cs, cb, ca):
        outcome = "subsumes"
    elif svc.is_a(cs, ca, cb):
        outcome = "subsumed-by"
    else:
        outcome = "not-subsumed"
    return parameters(param("outcome", "Code", outcome))


# -- ValueSet ------------------------------------------------------------------------------------


def _same_instance(p: Params, instance: ResourceRef, what: str) -> None:
    """An instance-level operation given a ``url`` naming another resource: which is meant
    cannot be told (it was answered for the instance, the url ignored)."""
    asked = p.text("url")
    if asked:
        url, version = split_canonical(asked)
        if url != instance.url or (version and version != instance.version):
            raise TerminologyError(f"url {asked[:200]!r} names another {what} than "
                                   f"{what}/{instance.rid}")


def _plan(svc: TerminologyService, p: Params, instance: ResourceRef | None) -> V.Plan:
    if instance is not None:
        _same_instance(p, instance, "ValueSet")
        return V.plan_of(svc, instance)
    if "valueSet" in p:
        if "url" in p:
            raise TerminologyError("Give url or valueSet, not both")
        return V.compile_plan(p.one("valueSet"))
    canonical = p.text("url")
    if not canonical:
        raise TerminologyError("Which value set? Give url (or a valueSet in a POSTed Parameters)")
    url, version = split_canonical(canonical)
    return V.stored_plan(svc, url, version or p.text("valueSetVersion"))


def _options(p: Params, system_version: tuple = ()) -> V.Options:
    """The expansion options; ``system_version`` (a coding's version) comes after the
    parameters, so ``system-version`` and ``force-system-version`` win over it."""
    versions = []
    for name, forced in (("system-version", False), ("force-system-version", True),
                         ("check-system-version", False)):
        for canonical in p.all(name) if name in p.spec else ():
            system, version = split_canonical(canonical)
            if not version:
                raise TerminologyError(f"{name} is written system|version")
            if name != "check-system-version":
                versions.append((system, version, forced))
    return V.Options(active_only=bool(p.flag("activeOnly")),
                     system_versions=(*versions, *system_version))


def _matches(e: V.Entry, words: list[str], more: Sequence[dict] = ()) -> bool:
    text = " ".join([e.code, e.display or "", *(d["value"] for d in e.designations),
                     *(d["value"] for d in more)]).casefold()
    return all(w in text for w in words)


def _filtered(svc: TerminologyService, entries: list[V.Entry], words: list[str]) -> list[V.Entry]:
    """The entries whose code, display or any designation (the value set's, the code
    system's: the display another ``displayLanguage`` shows) holds every word."""
    hit = [_matches(e, words) for e in entries]
    missed: dict[tuple[str, str | None], list[str]] = {}
    for e, found in zip(entries, hit):
        if not found:
            missed.setdefault((e.system, e.version), []).append(e.code)
    more: dict[tuple[str, str | None], dict[str, list[dict]]] = {}
    for (system, version), codes in missed.items():
        cs = svc.code_system(system, version)
        if cs is not None:
            more[(system, version)] = svc.designations(cs, codes)
    return [e for e, found in zip(entries, hit)
            if found or _matches(e, words, more.get((e.system, e.version), {}).get(e.code, []))]


def expand(svc: TerminologyService, p: Params, instance: ResourceRef | None = None) -> dict:
    text = p.text("filter")
    if text is not None and len(text) > MAX_FILTER:
        raise TerminologyError(f"filter is at most {MAX_FILTER} characters")
    offset, count = p.one("offset") or 0, p.one("count")
    if count is not None and count > MAX_COUNT:
        raise TerminologyError(f"count is at most {MAX_COUNT}")
    plan = _plan(svc, p, instance)
    opts = _options(p)
    entries = V.expand(svc, plan, opts)
    if text:
        entries = _filtered(svc, entries, text.casefold().split())
    total = len(entries)
    if count is None and total - offset > MAX_UNPAGED:
        raise TerminologyError(f"The expansion has {total} concepts: page through it with count "
                               f"(at most {MAX_COUNT}) and offset", code="too-costly")
    page = entries[offset:offset + count if count is not None else None]
    lang, designations = p.text("displayLanguage"), p.flag("includeDesignations")
    contains = []
    for e in page:
        c: dict[str, Any] = {"system": e.system}
        if e.version:
            c["version"] = e.version
        if e.abstract:
            c["abstract"] = True
        if e.inactive:
            c["inactive"] = True
        c["code"] = e.code
        display = e.display
        if lang or designations:
            cs = svc.code_system(e.system, e.version)
            concept = svc.concept(cs, e.code) if cs is not None else None
            display = _display(svc, concept, lang, e)
            if designations:
                found = _designations(concept, e)
                if found:
                    c["designation"] = found
        if display:
            c["display"] = display
        contains.append(c)
    used = [{"name": name, f"value{kind}": p.one(name)}
            for name, kind in (("filter", "String"), ("offset", "Integer"), ("count", "Integer"),
                               ("activeOnly", "Boolean"), ("displayLanguage", "Code"),
                               ("includeDesignations", "Boolean"),
                               ("includeDefinition", "Boolean")) if name in p]
    systems = {}
    for e in entries:
        if e.version and e.system not in systems:
            systems[e.system] = e.version
    used += [{"name": "version", "valueUri": f"{s}|{v}"} for s, v in systems.items()]
    # every code (or every code passing a filter) of a system the hub holds part of: codes it
    # lacks may belong too. R4 marks such an expansion unclosed; the parameter names the system
    # and its content, as tx.fhir.org does; total counts the codes held (paging goes by it)
    partial = {(s.cs.url or s.system, s.cs.version, s.cs.content): None
               for s in V.sources(svc, plan, opts) if s.partial and s.cs is not None}
    used += [{"name": content, "valueUri": f"{url}|{version}" if version else url}
             for url, version, content in partial]
    expansion: dict[str, Any] = {
        "identifier": f"urn:uuid:{uuid.uuid4()}",
        "timestamp": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "total": total, "offset": offset}
    if partial:
        expansion = {"extension": [{"url": UNCLOSED, "valueBoolean": True}], **expansion}
    if used:
        expansion["parameter"] = used
    if contains:
        expansion["contains"] = contains
    out: dict[str, Any] = {"resourceType": "ValueSet"}
    if instance is not None:
        source = instance.body
    elif "valueSet" in p:
        source = p.one("valueSet")
    else:
        ref = svc.value_set(plan.url, plan.version) if plan.url else None
        source = ref.body if ref is not None else {}
    for key in ("id", "url", "identifier", "version", "name", "title", "status", "experimental",
                "publisher", "description"):
        if key in source:
            out[key] = source[key]
    out.setdefault("status", "active")
    if p.flag("includeDefinition") and isinstance(source.get("compose"), dict):
        out["compose"] = source["compose"]  # the definition the expansion was made from
    out["expansion"] = expansion
    return out


def _single_system(plan: V.Plan) -> str | None:
    systems = {i.system for i in plan.includes if i.system}
    return next(iter(systems)) if len(systems) == 1 else None


def _other_version(system: str, code: str, version: str, name: str, taken: list[str]) -> str:
    return (f"Code {system}|{code} of version {version} is not in value set {name}, which "
            f"takes version {', '.join(taken)} of {system}")


def _not_in(svc: TerminologyService, plan: V.Plan, opts: V.Options, name: str, system: str,
            code: str, version: str | None) -> str:
    """Why ``system|code`` is not found in the value set: another version, a code the code
    system lacks (or one the hub cannot tell, holding only part of it), or outside it."""
    canonical = svc.canonical_system(system)
    drawn = [s for s in V.sources(svc, plan, opts) if s.system == canonical]
    taken = sorted({s.cs.version for s in drawn if s.cs is not None and s.cs.version})
    if version and taken and version not in taken:
        return _other_version(system, code, version, name, taken)
    held = list(dict.fromkeys(s.cs for s in drawn if s.cs is not None))
    if not held:
        fallback = svc.code_system(system, version)
        held = [fallback] if fallback is not None else []
    known = next((c for c in (svc.concept(cs, code) for cs in held) if c is not None), None)
    if held and known is None:
        partial = next((s.cs for s in drawn if s.partial and s.cs is not None), None)
        if partial is not None:  # not held is not absent: the hub cannot say it is outside
            return (f"Code {code!r} is not among the codes the hub holds of code system "
                    f"{partial.url}" + (f" version {partial.version}" if partial.version else "")
                    + f" (only part of it: content={partial.content}), so it cannot tell "
                    f"whether the code is in value set {name}")
        cs = held[0]
        if cs.content not in V.PARTIAL:  # of a partial one the hub cannot call a code unknown
            return (f"Unknown code {code!r} in code system {cs.url}"
                    + (f" version {cs.version}" if cs.version else "")
                    + f", so not in value set {name}")
    return (f"Code {system}|{code} is not in value set {name}"
            + (" (inactive codes are left out)" if known is not None and not known.active
               and (opts.active_only or plan.inactive is False) else ""))


def validate_code_vs(svc: TerminologyService, p: Params,
                     instance: ResourceRef | None = None) -> dict:
    plan = _plan(svc, p, instance)
    codings = _codings(p, version="systemVersion")
    lang = p.text("displayLanguage")
    messages: list[str] = []
    refused: tuple[str, str | None] | None = None  # the first wrong display: (message, display)
    name = plan.url or (f"ValueSet/{instance.rid}" if instance else "the value set")
    for coding in codings:
        code = R.text(coding.get("code"))
        if not code:
            raise TerminologyError("The code to validate is missing")
        system = coding.get("system") or _single_system(plan)
        if not system:
            raise TerminologyError("Give the code's system: the value set draws on several")
        # the coding's version stands where the value set and the parameters name none; a
        # code of another version than the one the value set takes is not in it
        version = coding.get("version")
        opts = _options(p, ((system, version, False),) if version else ())
        entry = V.lookup(svc, plan, system, code, opts)
        if entry is None:
            messages.append(_not_in(svc, plan, opts, name, system, code, version))
            continue
        cs = svc.code_system(entry.system or system, entry.version)
        if version and entry.version and entry.version != version:
            messages.append(_other_version(system, code, version, name, [entry.version]))
            continue
        concept = svc.concept(cs, entry.code) if cs is not None else None
        if entry.abstract and not p.flag("abstract"):
            messages.append(f"Code {entry.code!r} is abstract: valid in this value set only with "
                            "abstract=true")
            continue
        display = _display(svc, concept, lang, entry)
        given = coding.get("display") or p.text("display")
        if concept is None and not entry.display and not entry.designations:
            wrong = None  # nothing to check it against
        else:  # the value set's own display and designations count (compose.include.concept)
            wrong = _check_display(svc, concept, given, lang, entry)
        if wrong:  # false, unless another coding of the CodeableConcept is valid
            refused = refused or (wrong, display)
            continue
        note = f"Code {entry.code!r} is inactive" if entry.inactive else None
        return parameters(param("result", "Boolean", True), param("message", "String", note),
                          param("display", "String", display))
    if refused:
        return parameters(param("result", "Boolean", False), param("message", "String", refused[0]),
                          param("display", "String", refused[1]))
    return parameters(param("result", "Boolean", False),
                      param("message", "String", "; ".join(messages) or "No coding to validate"))


# -- ConceptMap ------------------------------------------------------------------------------------


def _maps(svc: TerminologyService, p: Params, instance: ResourceRef | None
          ) -> tuple[list[ResourceRef] | None, dict | None]:
    """(stored maps to read, or None with an inline ConceptMap; the inline ConceptMap)."""
    if instance is not None:
        _same_instance(p, instance, "ConceptMap")
        return [instance], None
    if "conceptMap" in p:
        return None, p.one("conceptMap")
    canonical = p.text("url")
    if canonical:
        url, version = split_canonical(canonical)
        version = version or p.text("conceptMapVersion")
        ref = svc.concept_map(url, version)
        if ref is None:
            if version and svc.concept_map(url, None) is not None:
                raise TerminologyNotFound(f"Concept map {url} has no version {version}")
            raise TerminologyNotFound(f"Concept map {url}" + (f" version {version}" if version
                                                              else "") + " is not known")
        return [ref], None
    # every map of the scope, or every map: the latest version of each; reversed, source names
    # the value set of the code given (the maps' target) and target the maps' source
    source, target = p.text("source"), p.text("target")
    if p.flag("reverse"):
        source, target = target, source
    return svc.concept_maps(source, target), None


def translate(svc: TerminologyService, p: Params, instance: ResourceRef | None = None) -> dict:
    codings = _codings(p)
    reverse = bool(p.flag("reverse"))
    maps, inline = _maps(svc, p, instance)
    targetsystem = p.text("targetsystem")
    want = svc.system_aliases(targetsystem) if targetsystem else None
    matches: list[dict] = []
    found_any = False
    for coding in codings:
        code, system = R.text(coding.get("code")), R.text(coding.get("system"))
        if not code or not system:
            raise TerminologyError("translate needs the code and its system")
        # the code as its code system writes it (a code system that is not case-sensitive
        # finds `a` as `A` in $lookup and $validate-code: so does the map)
        cs = svc.code_system(system, None)
        known = svc.concept(cs, code) if cs is not None else None
        if known is not None:
            code = known.code
        systems = svc.system_aliases(system)
        if inline is not None:
            rows = [(0, *r) for r in R.map_rows(inline)
                    if (r[4] if reverse else r[1]) == code and (r[3] if reverse else r[0]) in systems]
            sources = {0: R.text(inline.get("url"))}
            headers = {0: {"unmapped": R.unmapped(inline)}}
        else:
            assert maps is not None  # no inline ConceptMap: the stored ones
            rows = svc.map_rows([m.key for m in maps], systems, code, reverse) if maps else []
            sources = {m.key: m.url for m in maps}
            headers = {m.key: m.body for m in maps}
        matched_groups = set()
        for mid, ssys, scode, sdisp, tsys, tcode, tdisp, equivalence, _comment in rows:
            other_sys, other_code, other_disp = (ssys, scode, sdisp) if reverse else (tsys, tcode,
                                                                                      tdisp)
            matched_groups.add((mid, ssys, tsys))  # the group lists the code: no unmapped rule
            if want is not None and other_sys not in want:
                continue
            if other_code is None:  # listed with no target code: the map says there is none
                if equivalence == "unmatched":
                    matches.append(part("match", param("equivalence", "Code", "unmatched"),
                                        param("source", "Uri", sources.get(mid))))
                continue
            eq = R.REVERSED.get(equivalence, equivalence) if reverse else equivalence
            found_any = found_any or eq not in R.NO_MATCH
            concept = {"system": other_sys, "code": other_code}
            if other_disp:
                concept["display"] = other_disp
            matches.append(part("match", param("equivalence", "Code", eq),
                                param("concept", "Coding", concept),
                                param("source", "Uri", sources.get(mid))))
        if not reverse:  # group.unmapped: what the map says of codes it does not list
            for mid, head in headers.items():
                for ssys, tsys, rule in R.as_list(head.get("unmapped")):
                    if ssys not in systems or (mid, ssys, tsys) in matched_groups:
                        continue
                    if want is not None and tsys not in want:
                        continue
                    mode = rule.get("mode")
                    unmapped = ({"system": tsys, "code": code} if mode == "provided" else
                                {"system": tsys, "code": rule.get("code"),
                                 **({"display": rule["display"]} if rule.get("display") else {})}
                                if mode == "fixed" and R.text(rule.get("code")) else None)
                    if unmapped is None:
                        continue
                    found_any = True
                    matches.append(part("match", param("equivalence", "Code", "equivalent"
                                                       if mode == "provided" else "inexact"),
                                        param("concept", "Coding", unmapped),
                                        param("source", "Uri", sources.get(mid))))
    message = None
    if not found_any:
        first = codings[0]
        message = (f"No mapping {'to' if reverse else 'from'} {first.get('system')}|"
                   f"{first.get('code')}" + (f" into {targetsystem}" if targetsystem else ""))
    return parameters(param("result", "Boolean", found_any), param("message", "String", message),
                      *matches)


OPERATIONS = {
    ("CodeSystem", "lookup"): ("lookup", lookup),
    ("CodeSystem", "validate-code"): ("validate-code-cs", validate_code_cs),
    ("CodeSystem", "subsumes"): ("subsumes", subsumes),
    ("ValueSet", "expand"): ("expand", expand),
    ("ValueSet", "validate-code"): ("validate-code-vs", validate_code_vs),
    ("ConceptMap", "translate"): ("translate", translate),
}
