"""Access tokens: SMART on FHIR scopes, the registry of backend clients, the hub's own signing key,
the SMART Backend Services token grant and the verification of bearer tokens (the hub's own and
those of configured external identity providers).

Below the API and the command line, above the core: it imports nothing of the hub but ``hub.core``.
"""
