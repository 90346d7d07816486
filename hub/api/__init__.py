"""The FHIR REST API (FastAPI)."""
