"""FHIR errors: every failure the API reports is an OperationOutcome with an HTTP status."""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from hubbase.errors import HubError


@dataclass(frozen=True, slots=True)
class Issue:
    code: str  # FHIR issue-type: invalid, structure, required, value, not-found, conflict, ...
    diagnostics: str
    severity: str = "error"
    expression: str | None = None  # FHIRPath of the problem inside the resource

    def to_json(self) -> dict:
        out = {"severity": self.severity, "code": self.code, "diagnostics": self.diagnostics}
        if self.expression:
            out["expression"] = [self.expression]
        return out


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


def not_found(diagnostics: str) -> FhirError:
    return FhirError(404, "not-found", diagnostics)


def gone(diagnostics: str) -> FhirError:
    return FhirError(410, "deleted", diagnostics)


def conflict(diagnostics: str) -> FhirError:
    return FhirError(409, "conflict", diagnostics)


def precondition_failed(diagnostics: str) -> FhirError:
    return FhirError(412, "conflict", diagnostics)
