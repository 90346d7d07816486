"""fhir_mapping: see README and ../shared/DESIGN.md; filled in by later issues."""
