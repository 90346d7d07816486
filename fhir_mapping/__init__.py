"""The mappers: pure translators from what hospitals send (HL7 v2, CDA, HL7 v3, database views) to
FHIR R4 resources and findings. They import nothing of the hub but its error root."""
