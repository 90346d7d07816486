"""FHIR search: the R4 search-parameter table (params) and index values of a resource (extract)."""
