"""The hub's core: events, the event store and its recorders, ingest (plan and commit), resource
validation, conditional interactions, errors, FHIR time, configuration and the command-line
helpers every command shares. It imports nothing above it: the API, the master patient index, the
command line, the synthetic generator, the read models and the mappers build on it, never the other
way (``lint-imports`` checks it)."""
