"""The terminology service: code systems, value sets and concept maps, their FHIR operations, and
the normalisation of local codes to standard ones."""
