"""Regional FHIR hub core: event store, ingest, REST API, command line."""
