"""HL7 v3 interaction messages from the synthetic region, deterministic, for tests and benchmarks.

Each Patient record of ``Region(seed, people)`` becomes its institution's patient registration
(``PRPA_IN201311UV02``, H02); each visit its registration (``PRPA_IN400001UV``: outpatient
registration or inpatient admission, by the patient type code) and, for a finished one, its
discharge (``PRPA_IN400003UV``), H07; an outpatient visit its appointment before it
(``PRPA_IN410001UV``); each visit's drug orders one placerGroup of orders and its laboratory
results one laboratory request form with an item per test (``POOR_IN200901UV``, H08 and H09) and
the laboratory's report of the form (``POLB_IN224000UV01``); each institution first registers its
order item type dictionary (``PRVS_IN000001UV01``, H05). Names are Chinese; identifiers are
the institution's local patient id (the record number), the resident ID number, the visit number
and the order numbers.

    for interaction, payload, source in iter_messages(Region(seed=7, people=100)): ...
"""

from __future__ import annotations

from collections.abc import Iterator
from xml.sax.saxutils import quoteattr

from fhir_mapping.base import SourceInfo

from .region import Region

_RESIDENT = "urn:oid:2.16.156.10011.1.3"
_TYPE = {"AMB": "1", "EMER": "2", "IMP": "3"}
_SEX = {"male": "1", "female": "2"}
_HEAD = ('<?xml version="1.0" encoding="UTF-8"?>\n<{i} xmlns="urn:hl7-org:v3" '
         'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" ITSVersion="XML_1.0">'
         '<id root="2.16.156.10011.2.5.1.1" extension={mid}/><creationTime value="{when}"/>'
         '<interactionId root="2.16.156.10011.2.5.1.2" extension="{i}"/><processingCode code="P"/>'
         '<processingModeCode/><acceptAckCode code="AL"/>'
         '<receiver typeCode="RCV"><device classCode="DEV" determinerCode="INSTANCE"><id>'
         '<item root="2.16.156.10011.2.5.1.3" extension="PLATFORM"/></id></device></receiver>'
         '<sender typeCode="SND"><device classCode="DEV" determinerCode="INSTANCE"><id>'
         '<item root="2.16.156.10011.2.5.1.3" extension={inst}/></id></device></sender>')


def ts(fhir_datetime: str | None) -> str:
    """FHIR date/dateTime -> HL7 TS (2024-03-15T08:30:00+08:00 -> 20240315083000+0800)."""
    if not fhir_datetime:
        return ""
    main, plus, zone = fhir_datetime.partition("+")
    digits = "".join(ch for ch in main if ch.isdigit())
    return digits + ("+" + zone.replace(":", "") if plus else "")


def _a(value: str) -> str:
    return quoteattr(value)


def _patient(p: dict, local: str, inst: str, mid: str) -> bytes:
    resident = next((i["value"] for i in p.get("identifier", []) if i.get("system") == _RESIDENT),
                    "")
    name = (p.get("name") or [{}])[0].get("text", "")
    sex = _SEX.get(p.get("gender", ""), "0")
    person = (f'<id><item root="2.16.156.10011.1.3" extension={_a(resident)}/></id>'
              if resident else "")
    person += (f'<name xsi:type="LIST_EN"><item><part value={_a(name)}/></item></name>'
               f'<administrativeGenderCode code="{sex}" codeSystem="2.16.156.10011.2.3.3.4"/>')
    if p.get("birthDate"):
        person += f'<birthTime value="{ts(p["birthDate"])}"/>'
    body = ('<controlActProcess classCode="CACT" moodCode="EVN"><subject typeCode="SUBJ">'
            '<registrationRequest classCode="REG" moodCode="RQO"><statusCode code="active"/>'
            '<subject1 typeCode="SBJ"><patient classCode="PAT">'
            f'<id><item root="2.16.156.10011.2.5.1.4" extension={_a(local)}/></id>'
            f'<statusCode code="active"/><patientPerson>{person}</patientPerson>'
            '<providerOrganization classCode="ORG" determinerCode="INSTANCE"><id>'
            f'<item root="2.16.156.10011.1.5" extension={_a(inst)}/></id></providerOrganization>'
            '</patient></subject1></registrationRequest></subject></controlActProcess>')
    when = ts((p.get("meta") or {}).get("lastUpdated")) or "20240101000000"
    head = _HEAD.format(i="PRPA_IN201311UV02", mid=_a(mid), when=when[:14], inst=_a(inst))
    return (head + body + "</PRPA_IN201311UV02>").encode("utf-8")


def _visit(interaction: str, e: dict, local: str, name: str, inst: str, mid: str) -> bytes:
    number = next((i["value"] for i in e.get("identifier", [])), e["id"])
    period = e.get("period") or {}
    times = f'<low value="{ts(period.get("start"))}"/>' if period.get("start") else ""
    if interaction == "PRPA_IN400003UV" and period.get("end"):
        times += f'<high value="{ts(period["end"])}"/>'
    kind = _TYPE.get(e["class"]["code"], "9")
    body = ('<controlActProcess classCode="STC" moodCode="EVN"><subject typeCode="SUBJ">'
            '<encounterEvent classCode="ENC" moodCode="EVN"><id>'
            f'<item root="2.16.156.10011.2.5.1.9" extension={_a(number)}/></id>'
            f'<code code="{kind}" codeSystem="2.16.156.10011.2.3.1.271"/><statusCode/>'
            f'<effectiveTime>{times}</effectiveTime>'
            '<subject typeCode="SBJ"><patient classCode="PAT">'
            f'<id><item root="2.16.156.10011.2.5.1.4" extension={_a(local)}/></id>'
            f'<patientPerson><name xsi:type="DSET_EN"><item><part value={_a(name)}/></item></name>'
            '</patientPerson></patient></subject>'
            '<location typeCode="LOC"><serviceDeliveryLocation classCode="SDLOC">'
            '<serviceProviderOrganization classCode="ORG" determinerCode="INSTANCE"><id>'
            f'<item root="2.16.156.10011.1.5" extension={_a(inst)}/></id>'
            '</serviceProviderOrganization></serviceDeliveryLocation></location>'
            '</encounterEvent></subject></controlActProcess>')
    when = ts(period.get("end") if interaction == "PRPA_IN400003UV" else period.get("start"))
    head = _HEAD.format(i=interaction, mid=_a(mid), when=(when or "20240101000000")[:14],
                        inst=_a(inst))
    return (head + body + f"</{interaction}>").encode("utf-8")


def _encounter_part(number: str, local: str, name: str) -> str:
    return ('<componentOf1 contextConductionInd="false"><encounter classCode="ENC" moodCode="EVN">'
            f'<id><item root="2.16.156.10011.2.5.1.9" extension={_a(number)}/></id>'
            '<subject typeCode="SBJ"><patient classCode="PAT">'
            f'<id><item root="2.16.156.10011.2.5.1.4" extension={_a(local)}/></id>'
            f'<patientPerson><name xsi:type="DSET_EN"><item><part value={_a(name)}/></item></name>'
            '</patientPerson></patient></subject></encounter></componentOf1>')


def _author(when: str) -> str:
    return (f'<author typeCode="AUT"><time value="{when}"/><assignedEntity classCode="ASSIGNED">'
            '<id><item root="2.16.156.10011.1.4" extension="D0001"/></id></assignedEntity></author>')


def _orders(meds: list[dict], number: str, local: str, name: str, inst: str, mid: str) -> bytes:
    """The visit's drug orders as one placerGroup (H08)."""
    items = ""
    for m in meds:
        drug = m.get("medicationCodeableConcept") or {}
        coding = (drug.get("coding") or [{}])[0]
        dosage = (m.get("dosageInstruction") or [{}])[0]
        dose = ((dosage.get("doseAndRate") or [{}])[0].get("doseQuantity") or {})
        status = {"completed": "completed", "stopped": "aborted"}.get(m.get("status", ""), "active")
        items += ('<component2><substanceAdministrationRequest classCode="SBADM" moodCode="RQO">'
                  f'<id root="2.16.156.10011.1.28" extension={_a(m["id"])}/>'
                  f'<text value={_a(dosage.get("text", ""))}/><statusCode code="{status}"/>'
                  f'<effectiveTime xsi:type="QSC_TS" validTimeLow="{ts(m.get("authoredOn"))}"/>'
                  + (f'<routeCode code="1" codeSystem="2.16.156.10011.2.3.1.158"><displayName '
                     f'value={_a(dosage["route"]["text"])}/></routeCode>' if dosage.get("route") else "")
                  + (f'<doseQuantity value="{dose["value"]}" unit={_a(dose.get("unit", ""))}/>'
                     if dose.get("value") is not None else "")
                  + '<consumable2 typeCode="CSM"><manufacturedProduct1 classCode="MANU">'
                  '<manufacturedProduct classCode="MMAT" determinerCode="KIND">'
                  f'<code code={_a(coding.get("code", ""))} codeSystem="2.16.156.10011.2.5.1.14"/>'
                  f'<name xsi:type="BAG_EN"><item><part value={_a(drug.get("text", ""))}/></item>'
                  '</name></manufacturedProduct></manufacturedProduct1></consumable2>'
                  '</substanceAdministrationRequest></component2>')
    when = ts(meds[0].get("authoredOn")) or "20240101000000"
    body = ('<controlActProcess classCode="CACT" moodCode="EVN"><subject typeCode="SUBJ">'
            '<placerGroup classCode="GROUPER" moodCode="RQO">' + _author(when[:14]) + items
            + _encounter_part(number, local, name) + "</placerGroup></subject></controlActProcess>")
    head = _HEAD.format(i="POOR_IN200901UV", mid=_a(mid), when=when[:14], inst=_a(inst))
    return (head + body + "</POOR_IN200901UV>").encode("utf-8")


def _lab_request(obs: list[dict], number: str, local: str, name: str, inst: str,
                 mid: str) -> bytes:
    """The visit's laboratory tests as one request form with a specimen (H09)."""
    when = ts(obs[0].get("effectiveDateTime")) or "20240101000000"
    items = ""
    for o in obs:
        coding = (o["code"].get("coding") or [{}])[0]
        items += ('<component2><observationRequest classCode="OBS" moodCode="RQO">'
                  f'<id><item root="2.16.156.10011.1.28" extension={_a(o["id"])}/></id>'
                  f'<code code={_a(coding.get("code", ""))} codeSystem="2.16.840.1.113883.6.1">'
                  f'<displayName value={_a(o["code"].get("text", ""))}/></code><statusCode/>'
                  '</observationRequest></component2>')
    body = ('<controlActProcess classCode="ACTN" moodCode="EVN"><subject typeCode="SUBJ">'
            '<observationRequest classCode="OBS" moodCode="RQO">'
            f'<id><item root="2.16.156.10011.1.24" extension={_a("SQ-" + number)}/></id><code/>'
            f'<statusCode code="active"/><priorityCode code="R"/>'
            '<specimen><specimen classCode="SPEC">'
            f'<id root="2.16.156.10011.1.14" extension={_a("BC-" + number)}/>'
            '<code code="BLD"><displayName value="静脉血"/></code></specimen></specimen>'
            + _author(when[:14]) + items + _encounter_part(number, local, name)
            + "</observationRequest></subject></controlActProcess>")
    head = _HEAD.format(i="POOR_IN200901UV", mid=_a(mid), when=when[:14], inst=_a(inst))
    return (head + body + "</POOR_IN200901UV>").encode("utf-8")


def _lab_status(number: str, local: str, name: str, inst: str, mid: str, when: str) -> bytes:
    """The laboratory's report of the visit's request form (H10 status)."""
    body = ('<controlActProcess classCode="CACT" moodCode="EVN"><subject typeCode="SUBJ">'
            '<observationReport classCode="GROUPER" moodCode="EVN">'
            f'<id><item root="2.16.156.10011.1.24" extension={_a("SQ-" + number)}/></id>'
            f'<time value="{when}"/><performer code="PRF" displayName="检验科"/>'
            '<statusCode code="R" value="已报告"/>'
            '<recordTarget typeCode="RCT"><patient classCode="PAT">'
            f'<id><item root="2.16.156.10011.2.5.1.4" extension={_a(local)}/></id>'
            f'<name value={_a(name)}/></patient></recordTarget>'
            '</observationReport></subject></controlActProcess>')
    head = _HEAD.format(i="POLB_IN224000UV01", mid=_a(mid), when=when, inst=_a(inst))
    return (head + body + "</POLB_IN224000UV01>").encode("utf-8")


def _appointment(e: dict, number: str, local: str, name: str, inst: str, mid: str) -> bytes:
    """The outpatient visit, booked beforehand (H11 appointment)."""
    start = ts((e.get("period") or {}).get("start")) or "20240101080000"
    body = ('<controlActProcess classCode="CACT" moodCode="EVN"><subject typeCode="SUBJ">'
            '<encounterAppointment classCode="ENC" moodCode="APT">'
            f'<id><item root="2.16.156.10011.2.5.1.11" extension={_a("YY-" + number)}/></id>'
            f'<statusCode code="active"/><effectiveTime><low value="{start[:14]}"/>'
            '<width unit="分" value="15"/></effectiveTime>'
            '<subject typeCode="SBJ"><patient classCode="PAT">'
            f'<id><item root="2.16.156.10011.2.5.1.4" extension={_a(local)}/></id>'
            f'<patientPerson><name xsi:type="BAG_EN"><item><part value={_a(name)}/></item></name>'
            '</patientPerson></patient></subject></encounterAppointment></subject>'
            '</controlActProcess>')
    head = _HEAD.format(i="PRPA_IN410001UV", mid=_a(mid), when=start[:14], inst=_a(inst))
    return (head + body + "</PRPA_IN410001UV>").encode("utf-8")


def _dictionary(inst: str, mid: str) -> bytes:
    """The institution's order item type dictionary (H05 terminology registry)."""
    items = "".join(f'<valueSetItems><code code="{c}"><displayName value={_a(d)}/></code>'
                    '<statusCode code="1"/></valueSetItems>'
                    for c, d in (("01", "药品"), ("02", "检查"), ("03", "检验"), ("04", "手术"),
                                 ("05", "护理"), ("06", "膳食"), ("99", "其他")))
    body = ('<controlActProcess classCode="CACT" moodCode="EVN"><subject typeCode="SUBJ">'
            '<registrationRequest classCode="REG" moodCode="RQO"><statusCode/>'
            '<subject1 typeCode="SBJ"><valueSet><id extension="orderItemType"/>'
            '<desc value="医嘱项目类型"/><statusCode code="1"/><version code="1"/>'
            f'{items}</valueSet></subject1></registrationRequest></subject></controlActProcess>')
    head = _HEAD.format(i="PRVS_IN000001UV01", mid=_a(mid), when="20240101000000", inst=_a(inst))
    return (head + body + "</PRVS_IN000001UV01>").encode("utf-8")


def iter_messages(region: Region) -> Iterator[tuple[str, bytes, SourceInfo]]:
    """(interaction, message, source) in the order a platform would receive them."""
    dictionaries: set[str] = set()
    for resources, _ in region.iter_people():
        patients = {r["id"]: r for r in resources if r["resourceType"] == "Patient"}
        keys: dict[str, tuple[str, str]] = {}
        for p in patients.values():
            local = next((i["value"] for i in p.get("identifier", [])
                          if i.get("type", {}).get("coding", [{}])[0].get("code") == "MR"), p["id"])
            inst = p.get("managingOrganization", {}).get("reference", "Organization/x").split("/")[1]
            keys[p["id"]] = (local, inst)
            if inst not in dictionaries:  # each institution registers its dictionary first
                dictionaries.add(inst)
                yield ("PRVS_IN000001UV01", _dictionary(inst, f"T-{inst}"),
                       SourceInfo(institution=inst, feed="v3"))
            yield ("PRPA_IN201311UV02", _patient(p, local, inst, f"P-{p['id']}"),
                   SourceInfo(institution=inst, feed="v3"))
        for e in (r for r in resources if r["resourceType"] == "Encounter"):
            pid = e["subject"]["reference"].split("/")[1]
            local, inst = keys[pid]
            name = (patients[pid].get("name") or [{}])[0].get("text", "")
            number = next((i["value"] for i in e.get("identifier", [])), e["id"])
            if e["class"]["code"] == "AMB":
                yield ("PRPA_IN410001UV", _appointment(e, number, local, name, inst,
                                                       f"A-{e['id']}"),
                       SourceInfo(institution=inst, feed="v3"))
            yield ("PRPA_IN400001UV", _visit("PRPA_IN400001UV", e, local, name, inst,
                                             f"V-{e['id']}"), SourceInfo(institution=inst,
                                                                         feed="v3"))
            if e.get("status") == "finished":
                yield ("PRPA_IN400003UV", _visit("PRPA_IN400003UV", e, local, name, inst,
                                                 f"D-{e['id']}"), SourceInfo(institution=inst,
                                                                             feed="v3"))
            of_visit = [r for r in resources
                        if (r.get("encounter") or {}).get("reference") == f"Encounter/{e['id']}"]
            meds = [r for r in of_visit if r["resourceType"] == "MedicationRequest"]
            if meds:
                yield ("POOR_IN200901UV", _orders(meds, number, local, name, inst, f"O-{e['id']}"),
                       SourceInfo(institution=inst, feed="v3"))
            labs = [r for r in of_visit if r["resourceType"] == "Observation" and any(
                c.get("code") == "laboratory" for cc in r.get("category") or []
                for c in cc.get("coding") or [])]
            if labs:
                yield ("POOR_IN200901UV", _lab_request(labs, number, local, name, inst,
                                                       f"L-{e['id']}"),
                       SourceInfo(institution=inst, feed="v3"))
                when = (ts(labs[-1].get("effectiveDateTime")) or "20240101000000")[:14]
                yield ("POLB_IN224000UV01", _lab_status(number, local, name, inst,
                                                        f"R-{e['id']}", when),
                       SourceInfo(institution=inst, feed="v3"))
