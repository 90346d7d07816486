"""Index values of a resource for each of its search parameters.

``extract(resource)`` returns ``{parameter code: [value, …]}`` for the parameters that have values
(absent means ``:missing``), each value shaped for the index by the parameter's type (the shapes and
the plans are described in ``plan.py``). A type's walks and composites run as one generated function
(``codegen.py``); the parameters only fhirpathpy can evaluate run after it.

``RULES`` versions what is extracted: an index (SQLite or Elasticsearch) records the version it was
written under and is ``stale`` under an older one until rebuilt.
"""

from __future__ import annotations

from projections.search.codegen import compiled
from projections.search.plan import (
    CONVERTERS,
    UCUM,
    CompileError,
    DateRange,
    Plan,
    Quantity,
    Ref,
    Str,
    Token,
    ValueRange,
    _Fallback,
    _guess_type,
    compile_path,
    compile_stats,
    holds_ranges,
    normalize,
    normalize_reference,
    plan_for,
    range_params,
    reference_type,
    ucum_canonical,
)

# the version of the extraction rules, recorded by each index; raise it when what is extracted
# changes, so that an index written under the last one is stale until rebuilt. 1: a quantity's
# stated unit, and Ranges of number and quantity parameters (indexes written before carry none);
# 2: a UCUM quantity in its canonical unit (ucum.py), not only with metric prefixes folded
RULES = 2
OLDER_RULES = ("a UCUM quantity may not be found in a unit of another form, 5.4 mmol/L by "
               "umol/L, 37 Cel by [degF], nor one written before the stated unit and Ranges "
               "were kept by its stated unit, nor a Range by its number or quantity parameter")

__all__ = [
    "CONVERTERS", "UCUM", "CompileError", "DateRange", "Plan", "Quantity", "Ref", "Str", "Token",
    "ValueRange", "compile_path", "compile_stats", "extract", "holds_ranges", "normalize", "normalize_reference", "plan_for",
    "range_params", "reference_type", "ucum_canonical", "OLDER_RULES", "RULES",
]


def _fallback(f: _Fallback, resource: dict, out: dict) -> None:
    vals: list = []
    for v in f.evaluate(resource):
        conv = CONVERTERS.get((f.type, _guess_type(v)))
        if conv:
            conv(v, resource, vals)
    if vals:
        out[f.code] = vals


def extract(resource: dict, strict: bool = False) -> dict[str, list]:
    """{parameter code: index values} of a resource; parameters without values are left out.

    With ``strict`` a failure in one parameter raises; otherwise that parameter is left out (a stored
    resource was validated, so a failure is a bug here, not a reason to stop indexing).
    """
    rtype = resource["resourceType"]
    out: dict[str, list] = {}
    failed: list[str] = []
    compiled(rtype)(resource, out, failed, strict)  # walks and composites, as one function
    for f in plan_for(rtype).fallbacks:
        try:
            _fallback(f, resource, out)
        except Exception:
            if strict:
                raise
            failed.append(f.code)
    for code in failed:
        out.pop(code, None)
    result = {}
    for code, vals in out.items():
        if vals:
            result[code] = vals if len(vals) == 1 else list(dict.fromkeys(vals))
    return result
