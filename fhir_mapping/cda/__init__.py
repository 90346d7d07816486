"""CDA shared documents -> FHIR: WS/T 500 (53 EMR document types), WS/T 483 (health-record documents)
and HL7 C-CDA, as a pure mapper (DESIGN.md principle 2).

``convert(payload, source) -> Conversion``; raises ``MappingError`` with code ``AR`` when the bytes
are not well-formed, hostile (see ``fhir_mapping.xmlsafe``) or not a ``ClinicalDocument``, and
``AE`` when a well-formed document lacks what a mapping needs (document id, a patient identifier,
a document time, an author or custodian).

How one document is carried in the ``Conversion``
---------------------------------------------------
``Conversion.resources`` holds, each once and each written ``PUT Type/id``:

* the individual resources the header and the entries describe: Organization (custodian and the
  department chain), Location (bed, room), Patient, Practitioner, PractitionerRole, Encounter,
  Condition, Observation, MedicationRequest, ServiceRequest (``orders``), DiagnosticReport and
  Specimen (``reports``: 检查/检验报告), ChargeItem (``charges``: fees), Procedure,
  AllergyIntolerance, Immunization;
* the Composition (type from the document code, one section per CDA section, narratives kept);
* a Binary with the original bytes (base64, reads back byte for byte) and a DocumentReference
  whose ``content.attachment.url`` is ``Binary/<id>`` (with size and SHA-1 hash);
* last, the FHIR document itself: a ``Bundle`` of type ``document`` whose first entry is the
  Composition followed by every resource above except Binary and DocumentReference (full copies,
  ``fullUrl`` ``Type/id`` like the hub's own bundles). Readers that want "the document" GET the
  Bundle; searches work on the individual resources.

Identity and versions
---------------------
Ids are ``stable_id`` over the document's own keys: the Patient over (institution, its preferred
record-target identifier), Organizations over their own identifier, Practitioners over
(institution, identifier), entries over (document, their own ``id``) when they have one, else over
(document, position); "document" is the setId (so a new version rewrites the same resources), else
the document id; a UUID entry id keeps the institution scope (unique by construction).
No key is ever a filler value (``-``, ``无``, ``医务人员编码``, fhir_mapping/tables/fillers.yaml) nor an
identifier failing its check digit (resident ID, GB 11643): such an id is neither a key nor stored,
a finding ``cda.identifier.<reason>`` names it (without its value), and the key falls back to the
next usable identifier (patient: ``tables/header.yaml`` patient_key_roots; practitioner: the name
within the institution, else a document-scoped one; organization: its name). A document whose
patient has no usable identifier is refused (``cda.header.patient-id-missing``): name and birth
date are no key, linking people by demographics is the master patient index's job.
Composition, DocumentReference and Bundle are keyed by (institution, document code, ``setId``) (the
document id when there is no setId), the Binary by (institution, document code, document id):
WS/T 500 id roots are namespaces every hospital shares, so a document id alone is not unique. So
the same document twice yields identical resources, and a new version (same setId, higher
versionNumber, ``relatedDocument typeCode=RPLC``)
lands as a new version of the *same* Composition / DocumentReference / Bundle (the older version
stays in the event log's history, ``vread`` serves it), with ``relatesTo`` ``replaces`` pointing
to the parent document's identifier; each version's original bytes stay in their own Binary.
The versionNumber is carried in the Composition extension
``http://hl7.org/fhir/5.0/StructureDefinition/extension-Composition.version``: the hub must not let
an older version arriving late overwrite a newer one (compare it before writing).

Nothing dropped silently: a statement the tables do not map (``tables/entries.yaml``) is rendered
into its section's narrative (``Composition.section.text``) and reported as a ``Finding`` with rule
``cda.entry.unmapped`` / ``cda.entry.uncoded`` and its XPath. ``convert_traced`` also returns, for
every clinical statement of the body, what became of it (tests use it to prove no silent drops).
"""

from __future__ import annotations

from fhir_mapping.base import Conversion, MappingError, SourceInfo
from fhir_mapping.cda.mapper import convert_document, patient_of
from fhir_mapping.cda.tables import tables

__all__ = ["convert", "convert_traced", "patient_of", "tables", "FINDING_RULES", "Conversion", "MappingError", "SourceInfo"]

FINDING_RULES = {
    "cda.document.type-unknown": "templateId / document code not in tables/documents.yaml",
    "cda.entry.unmapped": "a clinical statement the tables do not map (kept in the section narrative)",
    "cda.entry.uncoded": "a clinical statement without a code (kept in the section narrative)",
    "cda.entry.procedure-uncoded": "a procedure without a code, named by its section title",
    "cda.entry.no-value": "a diagnosis entry without a diagnosis value",
    "cda.entry.absent-value": "a value that is a filler (无, -, 不详) or null: no resource made of it (kept in the narrative)",
    "cda.entry.duplicate-id": "two entries with different content share an id; the later is keyed by its position",
    "cda.entry.data-element-system": "a WS 363 data-element code outside the data-element code system",
    "cda.value.invalid-quantity": "a PQ/MO value that is not a decimal (kept as text)",
    "cda.value.invalid-integer": "an INT value that is not an integer (kept as text)",
    "cda.value.invalid-boolean": "a BL value that is neither true nor false (kept as text)",
    "cda.value.unread": "a value of a type or shape the mapper does not read (dataAbsentReason)",
    "cda.value.several": "an observation with several values: the first its value, the others components",
    "cda.time.invalid": "a TS that is not a valid HL7 timestamp",
    "cda.identifier.check-digit": "an identifier failing its check digit (resident ID: GB 11643): not a key, not stored",
    "cda.identifier.placeholder": "an identifier that is a filler (-, 无, 医务人员编码…): not a key, not stored",
    "cda.identifier.other-person": "a resident ID number a generation from birthTime (someone else's): not a key, not stored",
    "cda.identifier.resident-id-conflict":
        "two different valid resident ID numbers: those birthTime does not single out are not keys, not stored",
    "cda.identifier.upgraded": "a 15-digit resident ID number upgraded to 18 digits",
    "cda.patient.birth-date-invalid": "birthTime that is no real date, in the future or before 1880 (no birthDate)",
    "cda.patient.sex-unknown": "administrativeGenderCode not in GB/T 2261.1 nor HL7 AdministrativeGender",
    "cda.header.multiple-record-targets": "more than one recordTarget: refused (whose each entry is, is not told)",
    "cda.header.author-missing": "no usable author (custodian used)",
    "cda.body.non-xml": "nonXMLBody (content only in the Binary)",
}


def convert(payload: bytes, source: SourceInfo) -> Conversion:
    """One CDA document -> one Conversion (see the module docstring)."""
    return convert_document(payload, source)[0]


def convert_traced(payload: bytes, source: SourceInfo) -> tuple[Conversion, dict]:
    """``convert`` plus the trace: {statement element: "Type/id" | "component:Type/id" |
    "absorbed:Type/id" | "wrap" | "finding:<rule>"}."""
    return convert_document(payload, source)

