"""The data tables of the synthetic region (``hub/synth/data/*.json``), loaded once and shared read-only."""

from __future__ import annotations

import json
from functools import cache
from importlib.resources import files


@cache
def table(name: str) -> dict:
    """The parsed contents of ``data/<name>.json`` (``names``, ``divisions``, ``places``, ``clinical``).

    The same object is returned on every call: treat it as read-only."""
    return json.loads(files(__package__).joinpath("data", f"{name}.json").read_text(encoding="utf-8"))
