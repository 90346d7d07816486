"""The root of every error the hub raises on purpose, and the FHIR errors under it.

``HubError.error_code`` names the kind of failure for logs, exit statuses and callers that do not
want to know each class: ``usage`` (a command line mistake), ``invalid`` (input that breaks a rule),
``not-found``, ``conflict`` (a concurrent change; retry), ``unavailable`` (a store, broker or peer
cannot be reached now; retry), ``unsupported`` (valid but not handled here), ``config`` (a wrong
configuration or rule file), ``mapping`` (a payload that cannot be converted to FHIR), ``refused``
(an answer decided while handling a message) and ``too-large``. Subclasses keep their historical
bases too (``ValueError``, ``LookupError``), so ``except ValueError`` keeps catching them. The
attribute is ``error_code``, not ``code``: ``code`` already means the HL7 acknowledgment code on
mapping errors (AE / AR) and the FHIR issue type on terminology errors, and both go out on the wire.

Every failure the API reports is a ``FhirError``: an OperationOutcome with an HTTP status. This
module imports nothing of the hub (the mappers, which import nothing else of it, share the root).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import orjson

ERROR_CODES = frozenset({"error", "usage", "invalid", "not-found", "conflict", "unavailable",
                         "unsupported", "config", "mapping", "refused", "too-large"})


class HubError(Exception):
    """Root of the hub's errors; ``error_code`` is one of ``ERROR_CODES``."""

    error_code: str = "error"


@dataclass(frozen=True, slots=True)
class Issue:
    code: str  # FHIR issue-type: invalid, structure, required, value, not-found, conflict, ...
    diagnostics: str
    severity: str = "error"
    expression: str | None = None  # FHIRPath of the problem inside the resource

    def to_json(self) -> dict:
        out: dict[str, Any] = {"severity": self.severity, "code": self.code,
                               "diagnostics": self.diagnostics}
        if self.expression:
            out["expression"] = [self.expression]
        return out


def relocate(issues: list[Issue], rtype: str, where: str) -> list[Issue]:
    """Issues found on a resource (expressions from ``rtype``) as issues of the place it sits
    in, e.g. ``Bundle.entry[2].resource``; unchanged without a ``where``."""
    if not where:
        return issues
    return [replace(i, expression=where + i.expression[len(rtype):])
            if i.expression and i.expression.startswith(rtype) else i for i in issues]


# the error root's code of a FHIR failure, by HTTP status (anything else 4xx: invalid)
_ERROR_CODE_OF_STATUS = {404: "not-found", 410: "not-found", 409: "conflict", 412: "conflict",
                         413: "too-large", 422: "invalid", 501: "unsupported"}


class FhirError(HubError):
    """An interaction failed; ``status`` is the HTTP status, ``issues`` say what and where.
    ``error_code`` (the root's stable code) follows the status; 5xx other than 501 is unavailable."""

    error_code = "invalid"

    def __init__(self, status: int, code: str, diagnostics: str, expression: str | None = None,
                 issues: list[Issue] | None = None):
        super().__init__(diagnostics)
        self.status = status
        self.issues = issues or [Issue(code, diagnostics, expression=expression)]
        self.error_code = _ERROR_CODE_OF_STATUS.get(
            status, "unavailable" if status >= 500 else type(self).error_code)

    def outcome(self) -> dict:
        return operation_outcome(self.issues)


def operation_outcome(issues: list[Issue]) -> dict:
    return {"resourceType": "OperationOutcome", "issue": [i.to_json() for i in issues]}


def outcome_bytes(issues: list[Issue]) -> bytes:
    return orjson.dumps(operation_outcome(issues))


def information(diagnostics: str) -> list[Issue]:
    return [Issue("informational", diagnostics, severity="information")]


def bad_request(diagnostics: str, expression: str | None = None) -> FhirError:
    return FhirError(400, "invalid", diagnostics, expression)


def unauthenticated(diagnostics: str) -> FhirError:
    """401: the caller is not (validly) authenticated."""
    return FhirError(401, "login", diagnostics)


LOGIN_REQUIRED = ("A bearer token is required (Authorization: Bearer …; see "
                  "/fhir/.well-known/smart-configuration)")


def forbidden(diagnostics: str) -> FhirError:
    """403: authenticated, but not allowed this."""
    return FhirError(403, "forbidden", diagnostics)


def not_found(diagnostics: str) -> FhirError:
    return FhirError(404, "not-found", diagnostics)


def gone(diagnostics: str) -> FhirError:
    return FhirError(410, "deleted", diagnostics)


def conflict(diagnostics: str) -> FhirError:
    return FhirError(409, "conflict", diagnostics)


def precondition_failed(diagnostics: str) -> FhirError:
    return FhirError(412, "conflict", diagnostics)
