"""Derive the terminology content the hub ships: terminology/data/*.json (FHIR R4 resources) and its README.

Inputs, read at derivation time only (nothing reads ../shared at run time):

- scripts/terminology_sources/national.yaml, divisions.csv: national code systems typed from the
  standards (GB/T 2261.1 sex, GB/T 2261.2 marital status, GB 3304 ethnicity, WS 364 CV02.01.101
  identity document types, GB/T 2260 divisions). Each becomes a CodeSystem (project URL, the OID as
  identifier), an all-codes ValueSet and a NamingSystem listing OID and URL.
- scripts/terminology_sources/icd10_structure.csv: the WHO ICD-10 2019 chapters and blocks.
- ../shared/samples/**/*.xml: the codes the sample documents use in WS 364 and other national tables
  (OIDs under 2.16.156.10011.2.3.1/.2/.3), as partial CodeSystems; see fhir.yaml `samples`.
- ../shared/fhir-r4/valuesets.json: the FHIR CodeSystems and ValueSets the mappings need: the
  systems named in the mappers' source (fhir_mapping/, hub/synth/), those of the required bindings of
  the resource types they produce (fhir_mapping/tables/element_types.json), and fhir.yaml `value_sets`.
- ../shared/fhir-r4/v2-tables.json: the HL7 v2 tables of fhir.yaml `v2_tables`.
- HL7 Terminology (THO), the npm package ``hl7.terminology.r4`` (CC0; fetched once with
  ``npm pack`` into .cache/npm): the code systems the above name but the R4 definitions do not
  carry (the v3 ones: MaritalStatus, NullFlavor, ObservationInterpretation, RoleCode, ...), so that
  the value sets shipped can be expanded.

Official resources are copied as they are, minus their narrative (``text``) and the translations
of concept comments the R4B models refuse (see ``strip``). Output is one file per
resource, ``<ResourceType>-<id>.json``, sorted and stable: running the script again gives no diff.
Run from the project root:

    .venv/bin/python scripts/derive_terminology.py [--out DIR]
"""

from __future__ import annotations

import argparse
import collections
import csv
import json
import re
import sys
from pathlib import Path

import yaml
from lxml import etree

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
SOURCES = ROOT / "scripts" / "terminology_sources"
OUT = ROOT / "terminology" / "data"

BASE = "https://fhir-region-hub.example"
PUBLISHER = "fhir-region-hub"
DATE = "2026-11-22"  # when the national lists were typed; fixed so that output is deterministic
RFC3986 = "urn:ietf:rfc:3986"
PARENT_PROPERTY = {"code": "parent", "uri": "http://hl7.org/fhir/concept-properties#parent",
                   "description": "The concept this one is part of / a kind of", "type": "code"}
OWN_FILE = re.compile(r"^(CodeSystem|ValueSet|NamingSystem)-[A-Za-z0-9.\-]+\.json$")
SYSTEM_URL = re.compile(r"https?://(?:terminology\.hl7\.org/CodeSystem|hl7\.org/fhir)/[A-Za-z0-9.\-]+"
                        r"(?:/[A-Za-z0-9.\-]+)?")
HL7 = "urn:hl7-org:v3"
THO = ("hl7.terminology.r4", "7.0.1")
THO_SYSTEM = "http://terminology.hl7.org/CodeSystem/"


def natural(code: str) -> tuple:
    """Sort key: '2' before '10', letters after digits, stable for any string."""
    return tuple((0, int(p), p) if p.isdigit() else (1, 0, p) for p in re.findall(r"\d+|\D+", code))


# ---------------------------------------------------------------------------------------------------
# Project-owned CodeSystems (national lists, sample-derived tables, ICD-10 structure)


def own_code_system(cid: str, *, oid: str | None, name: str, title: str, description: str,
                    content: str, concepts: list[dict], version: str | None = None,
                    publisher: str | None = None, hierarchy: str | None = None,
                    properties: list[dict] = (), language: str = "zh-CN") -> list[dict]:
    """A CodeSystem, its all-codes ValueSet and its NamingSystem."""
    url = f"{BASE}/CodeSystem/{cid}"
    vs_url = f"{BASE}/ValueSet/{cid}"
    cs: dict = {"resourceType": "CodeSystem", "id": cid, "language": language, "url": url}
    if oid:
        cs["identifier"] = [{"system": RFC3986, "value": f"urn:oid:{oid}"}]
    if version:
        cs["version"] = version
    cs.update({"name": name, "title": title, "status": "active", "experimental": False, "date": DATE,
               "publisher": publisher or PUBLISHER, "description": description, "caseSensitive": True,
               "valueSet": vs_url})
    if hierarchy:
        cs["hierarchyMeaning"] = hierarchy
    cs["content"] = content
    cs["count"] = len(concepts)
    if properties:
        cs["property"] = list(properties)
    cs["concept"] = concepts
    vs = {"resourceType": "ValueSet", "id": cid, "language": language, "url": vs_url}
    if version:
        vs["version"] = version
    vs.update({"name": f"{name}_All", "title": f"{title} (all codes)", "status": "active",
               "experimental": False, "date": DATE, "publisher": PUBLISHER,
               "description": f"Every code of {url}.", "immutable": True,
               "compose": {"include": [{"system": url}]}})
    unique = []
    if oid:
        unique.append({"type": "oid", "value": oid, "preferred": False})
    unique.append({"type": "uri", "value": url, "preferred": True})
    ns = {"resourceType": "NamingSystem", "id": cid, "name": name, "status": "active",
          "kind": "codesystem", "date": DATE, "publisher": PUBLISHER, "responsible": publisher or PUBLISHER,
          "description": f"Identifiers of {title}: " + (f"OID {oid} and " if oid else "") + f"URL {url}.",
          "uniqueId": unique}
    return [cs, vs, ns]


def concept(code: str, display: str, props: dict[str, str] | None = None) -> dict:
    c = {"code": code, "display": display}
    if props:
        c["property"] = [{"code": k, "valueCode": v} for k, v in props.items() if v]
        if not c["property"]:
            del c["property"]
    return c


def national() -> list[dict]:
    spec = yaml.safe_load((SOURCES / "national.yaml").read_text("utf-8"))
    out: list[dict] = []
    for cs in spec["code_systems"]:
        props: list[dict] = []
        hierarchy = None
        if cs.get("divisions"):
            rows = list(csv.DictReader((SOURCES / cs["divisions"]).open(encoding="utf-8")))
            codes = {r["code"] for r in rows}
            for r in rows:
                if r["parent"] and r["parent"] not in codes:
                    raise SystemExit(f"divisions.csv: {r['code']} has unknown parent {r['parent']}")
            concepts = [concept(r["code"], r["name"], {"parent": r["parent"], "level": r["level"]})
                        for r in sorted(rows, key=lambda r: r["code"])]
            props = [PARENT_PROPERTY, {"code": "level", "description":
                                       "province | prefecture | county (county-level unit)", "type": "code"}]
            hierarchy = "part-of"
        else:
            concepts = []
            for row in cs["concepts"]:
                code, display, *parent = row
                concepts.append(concept(str(code), display, {"parent": parent[0]} if parent else None))
            if cs.get("hierarchy"):
                props, hierarchy = [PARENT_PROPERTY], "is-a"
        seen = [c["code"] for c in concepts]
        if len(seen) != len(set(seen)):
            raise SystemExit(f"{cs['id']}: duplicate codes")
        out += own_code_system(cs["id"], oid=cs.get("oid"), name=cs["name"], title=cs["title"],
                               description=" ".join(cs["description"].split()), content=cs["content"],
                               concepts=concepts, version=cs.get("version"), publisher=cs.get("publisher"),
                               hierarchy=hierarchy, properties=props)
    return out


def icd10_structure() -> list[dict]:
    rows = list(csv.DictReader((SOURCES / "icd10_structure.csv").open(encoding="utf-8")))
    by_code = {r["code"]: r for r in rows}
    if len(by_code) != len(rows):
        raise SystemExit("icd10_structure.csv: duplicate codes")
    chapters = [r for r in rows if not r["parent"]]
    ranges: dict[str, tuple[str, str]] = {}
    for r in rows:
        if r["parent"]:
            if r["parent"] not in by_code:
                raise SystemExit(f"icd10_structure.csv: {r['code']} has unknown parent {r['parent']}")
            start, end = r["code"].split("-")
            ranges[r["code"]] = (start, end)

    def chapter_of(code: str) -> str:
        while by_code[code]["parent"]:
            code = by_code[code]["parent"]
        return code

    for ch in chapters:
        own = [ranges[r["code"]] for r in rows if r["parent"] and chapter_of(r["code"]) == ch["code"]]
        ranges[ch["code"]] = (min(s for s, _ in own), max(e for _, e in own))
    concepts = []
    for r in rows:  # chapters in order, each followed by its blocks, as the classification lists them
        c = {"code": r["code"], "display": r["title"], "property": []}
        if r["parent"]:
            c["property"].append({"code": "parent", "valueCode": r["parent"]})
        c["property"] += [{"code": "kind", "valueCode": "block" if r["parent"] else "chapter"},
                          {"code": "start", "valueString": ranges[r["code"]][0]},
                          {"code": "end", "valueString": ranges[r["code"]][1]}]
        concepts.append(c)
    props = [PARENT_PROPERTY,
             {"code": "kind", "description": "chapter | block", "type": "code"},
             {"code": "start", "description": "first three-character category of the range", "type": "string"},
             {"code": "end", "description": "last three-character category of the range", "type": "string"}]
    return own_code_system(
        "icd-10-structure", oid=None, name="ICD10Structure", language="en",
        title="ICD-10 chapters and blocks (WHO ICD-10, 2019 edition)",
        description=("The 22 chapters (coded by their Roman numerals) and the blocks of three-character "
                     "categories (coded by their range, e.g. A00-A09) of the WHO ICD-10 2019 tabular list, "
                     "with the ranges as properties. Blocks that group other blocks (C00-C97, M00-M25, "
                     "V01-X59, ...) are their parents. Not the categories themselves; the code format and "
                     "block lookup are in terminology/icd10.py."),
        content="complete", concepts=concepts, version="2019", publisher="World Health Organization",
        hierarchy="grouped-by", properties=props)


# ---------------------------------------------------------------------------------------------------
# Tables learned from the sample documents


def _norm_name(name: str | None) -> str | None:
    if name is None:
        return None
    """A table name without spaces, parenthesised parts (standard numbers, editions) or a final 表."""
    n = re.sub(r"\s+", "", name).replace("（", "(").replace("）", ")")
    n = re.sub(r"\([^()]*\)", "", n)
    return n[:-1] if n.endswith("表") else n


def sample_tables(spec: dict, samples: Path, typed: dict[str, dict[str, str]]
                  ) -> tuple[list[dict], list[str]]:
    """Partial CodeSystems of the national tables the sample documents use, and what was left out.

    ``typed``: the codes of the national lists typed from the standards, by OID; the samples' uses of
    those are only compared with them (and differences noted)."""
    pattern = re.compile(spec["oid_pattern"])
    skip, names, known = spec.get("skip", {}), spec.get("names", {}), spec.get("known", {})
    # oid -> list of (file, name, code, display)
    uses: dict[str, list[tuple]] = collections.defaultdict(list)
    notes: list[str] = []
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)
    for f in sorted(samples.rglob("*.xml")):
        rel = f.relative_to(samples).as_posix()
        try:
            tree = etree.parse(str(f), parser)
        except etree.XMLSyntaxError:
            notes.append(f"`{rel}`: not well-formed XML, not read")
            continue
        for el in tree.iter():
            if not isinstance(el.tag, str):
                continue
            oid = el.get("codeSystem")
            if not oid or not pattern.match(oid) or (oid in skip and oid not in typed):
                continue
            display = el.get("displayName")
            if display is None:  # HL7 v3 interaction messages: <displayName value="..."/>
                d = el.find(f"{{{HL7}}}displayName")
                display = d.get("value") if d is not None else None
            code = el.get("code")
            uses[oid].append((rel, el.get("codeSystemName"), code and code.strip(),
                              display and " ".join(display.split())))
    for oid in sorted(typed, key=natural):
        for f, _, code, display in uses.pop(oid, ()):
            if code not in typed[oid]:
                notes.append(f"{oid}: `{f}` uses code {code!r}, which the standard's list does not have")
            elif display and display != typed[oid][code]:
                notes.append(f"{oid}: `{f}` writes code {code} as {display}, the standard as {typed[oid][code]}")
    out = []
    for oid in sorted(set(uses) | set(known), key=natural):
        rows = uses.get(oid, [])
        files_by_name: dict[str, set] = collections.defaultdict(set)
        for f, n, _, _ in rows:
            if n and n.strip():
                files_by_name[_norm_name(n)].add(f)
        raw_names: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        for f, n, _, _ in rows:
            if n and n.strip():
                raw_names[_norm_name(n)][" ".join(n.split())] += 1
        if oid in names:
            chosen = _norm_name(names[oid])
            title_name = names[oid]
        else:
            ranked = sorted(files_by_name.items(), key=lambda kv: (-len(kv[1]), kv[0]))
            if len(ranked) > 1 and len(ranked[0][1]) == len(ranked[1][1]):
                notes.append(f"{oid}: the samples give it several names ("
                             + ", ".join(sorted(raw_names)) + "); not learned")
                continue
            chosen = ranked[0][0] if ranked else None
            title_name = raw_names[chosen].most_common(1)[0][0] if chosen else oid
        for n in sorted(set(files_by_name) - {chosen}):
            notes.append(f"{oid}: uses under the name {n} dropped (table {chosen})")
        displays: dict[str, dict[str, set]] = collections.defaultdict(lambda: collections.defaultdict(set))
        for f, n, code, display in rows:
            if _norm_name(n) not in (None, chosen) or not code or not display:
                continue
            if re.match(r"^DE\d\d\.", code):  # a WS 363 data-element code, not a value
                notes.append(f"{oid}: data-element code {code} in `{f}` ignored")
                continue
            displays[code][display].add(f)
        learned: dict[str, tuple[str, set]] = {}
        for code, ds in displays.items():
            ranked = sorted(ds.items(), key=lambda kv: (-len(kv[1]), kv[0]))
            if len(ranked) > 1:
                if len(ranked[0][1]) == len(ranked[1][1]):
                    notes.append(f"{oid}: code {code} has conflicting displays "
                                 + ", ".join(d for d, _ in ranked) + "; not learned")
                    continue
                notes.append(f"{oid}: code {code}: display {ranked[0][0]} kept, "
                             + ", ".join(d for d, _ in ranked[1:]) + " dropped")
            learned[code] = ranked[0]
        by_display: dict[str, list[str]] = collections.defaultdict(list)
        for code, (display, _) in learned.items():
            by_display[display].append(code)
        for display, codes in by_display.items():
            if len(codes) > 1:
                ranked = sorted(codes, key=lambda c: (-len(learned[c][1]), natural(c)))
                tie = len(learned[ranked[0]][1]) == len(learned[ranked[1]][1])
                for c in (ranked if tie else ranked[1:]):
                    del learned[c]
                notes.append(f"{oid}: display {display} under codes {', '.join(sorted(codes, key=natural))}; "
                             + ("none learned" if tie else f"{ranked[0]} kept"))
        concepts = {code: display for code, (display, _) in learned.items()}
        for code, display in known.get(oid, ()):
            if concepts.get(str(code), display) != display:
                raise SystemExit(f"{oid}: known code {code} {display} but the samples say {concepts[str(code)]}")
            concepts[str(code)] = display
        if not concepts:
            notes.append(f"{oid} ({title_name}): no code with a display learned; not shipped")
            continue
        files = sorted({f for code, (_, fs) in learned.items() for f in fs})
        cid = "cn-" + oid.removeprefix("2.16.156.10011.")
        extra = " Codes added from the standard: " + ", ".join(str(c) for c, _ in known[oid]) + "." \
            if oid in known else ""
        out += own_code_system(
            cid, oid=oid, name="CN_" + oid.removeprefix("2.16.156.10011.").replace(".", "_"),
            title=f"{title_name} (partial)",
            description=(f"The codes of national table {oid} ({title_name}) that the sample documents use, "
                         f"with their displays: a partial list, not the standard's. Seen in "
                         + (", ".join(f"`{f}`" for f in files) or "no sample") + "." + extra),
            content="fragment",
            concepts=[concept(c, concepts[c]) for c in sorted(concepts, key=natural)])
    return out, notes


# ---------------------------------------------------------------------------------------------------
# Official FHIR R4 resources


def strip(resource: dict) -> dict:
    """The resource without its narrative, and without the translations some HL7 v2 tables attach to
    concept comments as ``extension[]._valueString`` (the R4B models refuse a primitive extension on
    an Extension's value; the comment itself stays)."""

    def walk(v):
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items() if not (k == "_valueString" and "url" in v)}
        if isinstance(v, list):
            return [walk(x) for x in v]
        return v

    return walk({k: v for k, v in resource.items() if k != "text"})


def element_code_sets(types: list[str]) -> set[frozenset]:
    """The code lists of every code element reachable from these resource types."""
    elements = json.loads((ROOT / "fhir_mapping" / "tables" / "element_types.json").read_text())
    seen, todo, sets = set(), list(types), set()
    while todo:
        t = todo.pop()
        if t in seen or t not in elements:
            continue
        seen.add(t)
        for name, spec in elements[t].items():
            if len(spec) > 2 and spec[2]:
                sets.add(frozenset(spec[2]))
            if spec[0] not in ("Extension", "Resource") and spec[0] in elements:
                todo.append(spec[0])
    return sets


def mapper_system_urls() -> set[str]:
    found = set()
    for folder in (ROOT / "fhir_mapping", ROOT / "hub" / "synth"):
        for f in sorted(folder.rglob("*")):
            if f.suffix in (".py", ".json", ".yaml") and f.is_file():
                found.update(SYSTEM_URL.findall(f.read_text("utf-8", errors="replace")))
    return found


def tho_package() -> Path:
    """The unpacked HL7 Terminology package."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from fhir_defs import npm_package

    return npm_package(*THO)


def from_tho(urls: set[str]) -> dict[str, dict]:
    """The THO CodeSystems of these URLs (those it has)."""
    package = tho_package()
    found = {}
    for url in sorted(urls):
        if not url.startswith(THO_SYSTEM):
            continue
        f = package / f"CodeSystem-{url.removeprefix(THO_SYSTEM)}.json"
        if f.exists():
            cs = json.loads(f.read_text("utf-8"))
            if cs.get("url") == url:
                found[url] = cs
    return found


def official(spec: dict) -> tuple[list[dict], list[str], dict[str, str]]:
    sys.path.insert(0, str(ROOT / "scripts"))
    from fhir_defs import complete_code_systems

    cs_by_url: dict[str, dict] = {}
    vs_by_url: dict[str, dict] = {}
    origin: dict[str, str] = {}
    for fname in ("valuesets.json", "v2-tables.json"):
        for e in json.loads((SHARED / "fhir-r4" / fname).read_text())["entry"]:
            r = e["resource"]
            (cs_by_url if r["resourceType"] == "CodeSystem" else vs_by_url)[r["url"]] = r
            origin[f"{r['resourceType']}/{r['url']}"] = f"`../shared/fhir-r4/{fname}`"
    notes: list[str] = []
    want_cs: set[str] = set()
    want_vs: set[str] = set()
    mentioned = mapper_system_urls()
    # what the R4 definitions lack, from HL7 Terminology: systems the mappers name or the value
    # sets they bind include
    wanted_vs = set(spec["value_sets"]) | {u for u in mentioned if "/ValueSet/" in u}
    named = mentioned | {inc.get("system") for u in wanted_vs if u in vs_by_url
                         for inc in vs_by_url[u].get("compose", {}).get("include", ())} - {None}
    for url, cs in from_tho({u for u in named if u not in cs_by_url}).items():
        cs_by_url[url] = cs
        origin[f"CodeSystem/{url}"] = f"HL7 Terminology `{THO[0]}@{THO[1]}`"
    for url in sorted(mentioned):
        if url in cs_by_url:
            want_cs.add(url)
        elif "/CodeSystem/" in url and not url.endswith("-") and not url.startswith("http://hl7.org/fhir/sid"):
            notes.append(f"{url}: named by the mappers, not in the R4 definitions or HL7 Terminology here")
    by_codes = complete_code_systems()
    for codes in element_code_sets(spec["mapped_resource_types"]):
        want_cs.update(by_codes.get(codes, ()))
    for url in spec["value_sets"]:
        if url not in vs_by_url:
            raise SystemExit(f"fhir.yaml value set {url} is not in valuesets.json")
        want_vs.add(url)
    for t in spec["v2_tables"]:
        cs, vs = f"http://terminology.hl7.org/CodeSystem/v2-{t}", f"http://terminology.hl7.org/ValueSet/v2-{t}"
        if cs in cs_by_url:
            want_cs.add(cs)
        else:
            notes.append(f"HL7 v2 table {t}: no CodeSystem in v2-tables.json (ValueSet only)")
        if vs in vs_by_url:
            want_vs.add(vs)
    for url in list(want_cs):
        vs = cs_by_url[url].get("valueSet")
        if vs in vs_by_url and not origin[f"CodeSystem/{url}"].startswith("HL7 Terminology"):
            want_vs.add(vs)
    for url in sorted(want_vs):
        for inc in vs_by_url[url].get("compose", {}).get("include", ()):
            s = inc.get("system")
            if s in cs_by_url:
                want_cs.add(s)
            elif s and not s.startswith(BASE):
                notes.append(f"{url} includes {s}, which is not in the R4 definitions or HL7 Terminology here")
    out = [strip(cs_by_url[u]) for u in sorted(want_cs)] + [strip(vs_by_url[u]) for u in sorted(want_vs)]
    src = {f"{r['resourceType']}-{r['id']}.json": origin[f"{r['resourceType']}/{r['url']}"] for r in out}
    return out, sorted(set(notes)), src


# ---------------------------------------------------------------------------------------------------


def count_concepts(cs: dict) -> int:
    def walk(cs_):
        return sum(1 + walk(c.get("concept", ())) for c in cs_)
    return walk(cs.get("concept", ()))


def readme(resources: list[dict], source: dict[str, str], notes: dict[str, list[str]]) -> str:
    lines = [
        "# Terminology content shipped with the hub",
        "",
        "Generated by `scripts/derive_terminology.py` (do not edit by hand; edit the sources in",
        "`scripts/terminology_sources/` and run `.venv/bin/python scripts/derive_terminology.py`).",
        "Every file is one FHIR R4 resource; `terminology/builtin.py` yields them all.",
        "",
        f"Project code systems have URLs under `{BASE}/CodeSystem/` and, where the standards give one, their",
        "OID as `identifier` (`urn:oid:...`); each has an all-codes ValueSet (`.../ValueSet/<id>`) and a",
        "NamingSystem listing the OID (`oid`) and the URL (`uri`), so `urn:oid:<OID>` and the URL fold into one.",
        "",
        "Licences: the national lists and the ICD-10 chapter/block list are facts typed from the published",
        "standards (codes and names only, no text of the standards). The partial national tables list the",
        "codes and displays the sample documents use (facts; the samples themselves are not copied). The",
        "official FHIR R4 and HL7 v2 resources are copied unchanged except for their narrative and the",
        "translations of concept comments (`_valueString`) that the R4B models refuse (FHIR definitions:",
        "CC0; HL7 terminology content (THO): free to use under HL7's licence terms).",
        "",
        f"Files: {sum(r['resourceType'] == 'CodeSystem' for r in resources)} CodeSystems, "
        f"{sum(r['resourceType'] == 'ValueSet' for r in resources)} ValueSets, "
        f"{sum(r['resourceType'] == 'NamingSystem' for r in resources)} NamingSystems "
        "(`NamingSystem-<id>.json` beside each project CodeSystem `CodeSystem-<id>.json`; not listed below).",
        "",
        "| file | resource | source | edition | concepts |",
        "|---|---|---|---|---|",
    ]
    for r in resources:
        if r["resourceType"] == "NamingSystem":
            continue  # one per project CodeSystem, same id
        fname = f"{r['resourceType']}-{r['id']}.json"
        n = str(count_concepts(r)) if r["resourceType"] == "CodeSystem" else ""
        if r["resourceType"] == "CodeSystem" and r.get("content") not in (None, "complete"):
            n += f" ({r['content']})"
        edition = r.get("version", "")
        what = f"{r['resourceType']} `{r['url']}`"
        if r["url"].startswith(BASE):
            oid = [i["value"].removeprefix("urn:oid:") for i in r.get("identifier", ())
                   if r["resourceType"] == "CodeSystem"]
            what = f"{r['resourceType']} {r['title']}" + (f", OID `{oid[0]}`" if oid else "")
            edition = edition or ("as used by the samples" if r["id"].startswith("cn-") else "")
        lines.append(f"| `{fname}` | {what} | {source[fname]} | {edition} | {n} |")
    for title, items in notes.items():
        if items:
            lines += ["", f"## {title}", ""] + [f"- {n}" for n in items]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=OUT, help="output folder (default terminology/data)")
    ap.add_argument("--samples", type=Path, default=SHARED / "samples")
    args = ap.parse_args(argv)
    spec = yaml.safe_load((SOURCES / "fhir.yaml").read_text("utf-8"))

    resources, source = [], {}
    nat = national()
    typed = {r["identifier"][0]["value"].removeprefix("urn:oid:"): {c["code"]: c["display"] for c in r["concept"]}
             for r in nat if r["resourceType"] == "CodeSystem" and r.get("identifier")}
    for r in nat:
        source[f"{r['resourceType']}-{r['id']}.json"] = (
            "`terminology_sources/divisions.csv`" if r["id"] == "gb-t-2260"
            else "`terminology_sources/national.yaml`")
    icd = icd10_structure()
    for r in icd:
        source[f"{r['resourceType']}-{r['id']}.json"] = "`terminology_sources/icd10_structure.csv`"
    samp, sample_notes = sample_tables(spec["samples"], args.samples, typed)
    for r in samp:
        source[f"{r['resourceType']}-{r['id']}.json"] = "codes used by `../shared/samples/` documents"
    off, official_notes, off_src = official(spec)
    source.update(off_src)
    resources = nat + icd + samp + off

    order = {"CodeSystem": 0, "ValueSet": 1, "NamingSystem": 2}
    resources.sort(key=lambda r: (order[r["resourceType"]], natural(r["id"])))
    names = [f"{r['resourceType']}-{r['id']}.json" for r in resources]
    dup = [n for n, c in collections.Counter(names).items() if c > 1]
    if dup:
        raise SystemExit(f"two resources would be written to {dup}")

    args.out.mkdir(parents=True, exist_ok=True)
    for r, name in zip(resources, names):
        text = json.dumps(r, ensure_ascii=False, indent=1) + "\n"
        path = args.out / name
        if not path.exists() or path.read_text("utf-8") != text:
            path.write_text(text, "utf-8")
    for old in sorted(args.out.iterdir()):
        if OWN_FILE.match(old.name) and old.name not in names:
            old.unlink()
            print(f"removed {old.name}")
    notes = {"Left out of the partial national tables (from the samples)": sample_notes,
             "Not available in the R4 definitions or HL7 Terminology here": official_notes}
    (args.out / "README.md").write_text(readme(resources, source, notes), "utf-8")
    init = args.out / "__init__.py"
    if not init.exists():
        init.write_text('"""Terminology resources shipped with the hub (see README.md)."""\n', "utf-8")

    kinds = collections.Counter(r["resourceType"] for r in resources)
    size = sum((args.out / n).stat().st_size for n in names)
    print(f"{len(resources)} resources ({', '.join(f'{v} {k}' for k, v in sorted(kinds.items()))}) "
          f"-> {args.out} ({size // 1024} KiB)")
    for r in resources:
        if r["resourceType"] == "CodeSystem" and r["url"].startswith(BASE):
            print(f"  {r['id']:28} {count_concepts(r):4} concepts ({r['content']})")


if __name__ == "__main__":
    main()
