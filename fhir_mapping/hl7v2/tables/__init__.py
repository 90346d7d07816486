"""Mapping tables of the HL7 v2 mapper, as data (``*.json`` beside this file), loaded once.

Edit the JSON, not the code: message type -> builder, v2 tables -> FHIR codes, identifier type
codes and assigning authorities -> systems, OBX value types, the DFT payer split.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any


@lru_cache(maxsize=None)
def table(name: str) -> Any:
    return json.loads(resources.files(__name__).joinpath(f"{name}.json").read_text("utf-8"))
