"""What a caller may do and the record of what they did: the access policy, consents, the audit
of every access to patient data. The repository (``hub.repository``) is where they attach."""
