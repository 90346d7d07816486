"""The hub's roles, which a client is registered with and an access token carries (``hub_roles``):
``connector`` (a feed that writes for its institution), ``clinician`` (reads the shared record),
``steward`` (master patient index and quality decisions), ``auditor`` (reads the audit trail) and
``admin``. A module of its own, without imports, so that the command line can name them cheaply."""

ROLES = ("connector", "clinician", "steward", "auditor", "admin")
