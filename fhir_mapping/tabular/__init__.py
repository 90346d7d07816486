"""Tabular HIS feeds: rows of a database view or a CSV export -> FHIR, by declarative mapping files.

``load_mapping("outpatient-visit")`` loads a shipped file from ``mappings/``; any other argument
containing a path separator or ending in ``.yaml``/``.yml``/``.json`` is read as a file path. The
result (cached per file, modification time and validator) is a :class:`TabularMapping`; the file
format is described in :mod:`fhir_mapping.tabular.mapping` (the engine); :mod:`.loader` checks
files and :mod:`.values` holds the named transforms. The caller passes the hub's resource
validation in (``validate``, see :data:`~fhir_mapping.tabular.mapping.Validate`) for the self-test
of the file's example row; ``connectors.kinds`` does.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from fhir_mapping.base import MappingError
from fhir_mapping.tabular.mapping import (
    SHIPPED,
    CsvRowsError,
    MappingFileError,
    TabularMapping,
    Validate,
    load_file,
)

__all__ = ["load_mapping", "shipped_mappings", "TabularMapping", "MappingFileError",
           "CsvRowsError", "load_file", "Validate"]

# (file, modification time, validator): a file loaded without the hub's validation is not handed
# to a caller that passes it
_cache: dict[tuple[str, float, Validate | None], TabularMapping] = {}
_lock = threading.Lock()


def shipped_mappings() -> list[str]:
    return sorted(p.stem for p in SHIPPED.glob("*.yaml"))


def mapping_path(arg: str) -> Path:
    if os.sep in arg or "/" in arg or arg.endswith((".yaml", ".yml", ".json")):
        return Path(arg)
    path = SHIPPED / f"{arg}.yaml"
    if not path.exists():
        raise MappingError(f"no tabular mapping named {arg!r} (shipped: "
                           f"{', '.join(shipped_mappings())})", code="AR", rule="kind")
    return path


def load_mapping(arg: str, validate: Validate | None = None) -> TabularMapping:
    """The checked mapping named ``arg``; ``MappingFileError`` (a ValueError) for a bad file. Its
    row of column examples is validated with ``validate`` (the hub's) when given."""
    if not arg:
        raise MappingError("row:/csv: kinds need a mapping name", code="AR", rule="kind")
    path = mapping_path(arg)
    try:
        key = (str(path.resolve()), path.stat().st_mtime, validate)
    except OSError as e:
        raise MappingFileError(f"{path}: cannot read: {e}") from None
    with _lock:
        found = _cache.get(key)
    if found is None:
        found = load_file(path, validate)
        if path.parent == SHIPPED and found.name != arg:
            raise MappingFileError(f"{path}: name {found.name!r} differs from the file name")
        with _lock:
            _cache[key] = found
    return found
