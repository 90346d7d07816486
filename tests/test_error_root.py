"""Every error class of the hub's packages derives from the one root, ``hub.core.errors.HubError``,
with a stable ``error_code``; the historical bases stay (``except ValueError`` still catches)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

from hub.core.errors import ERROR_CODES, HubError

PACKAGES = ("hub", "fhir_mapping", "projections", "connectors", "terminology")
# leave a row out, stop a cancelled export: never reach a caller
CONTROL_FLOW = {"fhir_mapping.tabular.mapping._Skip", "hub.exports._Cancelled"}


def _exception_classes():
    for name in PACKAGES:
        pkg = importlib.import_module(name)
        for info in pkgutil.walk_packages(pkg.__path__, name + "."):
            mod = importlib.import_module(info.name)
            for cls in vars(mod).values():
                if inspect.isclass(cls) and issubclass(cls, BaseException) and cls.__module__ == mod.__name__:
                    yield f"{cls.__module__}.{cls.__qualname__}", cls


def test_every_error_class_has_the_root_and_a_known_code():
    found = dict(_exception_classes())
    assert len(found) > 20
    outside = sorted(n for n, c in found.items() if not issubclass(c, HubError) and n not in CONTROL_FLOW)
    assert not outside, outside
    unknown = {n: c.error_code for n, c in found.items() if issubclass(c, HubError)
               and c.error_code not in ERROR_CODES}
    assert not unknown, unknown


def test_one_usage_error_and_one_query_error():
    from connectors import cli as connector_cli
    from hub import cli
    from hub.core.commandline import UsageError
    from projections import quality, unmapped

    assert cli.UsageError is UsageError and UsageError.error_code == "usage"
    assert connector_cli._usage("x").__class__ is UsageError
    assert quality.QueryError is unmapped.QueryError
    assert issubclass(quality.QueryError, ValueError)


def test_fhir_errors_take_their_code_from_the_status():
    from hub.api.limits import BodyTooLarge
    from hub.core.errors import FhirError, bad_request, not_found

    assert bad_request("x").error_code == "invalid"
    assert not_found("x").error_code == "not-found"
    assert FhirError(409, "conflict", "x").error_code == "conflict"
    assert FhirError(503, "transient", "x").error_code == "unavailable"
    assert BodyTooLarge(10).error_code == "too-large"


def test_mapping_errors_keep_their_hl7_code():
    from fhir_mapping.base import MappingError

    e = MappingError("bad", code="AR")
    assert isinstance(e, HubError) and e.code == "AR" and e.error_code == "mapping"
