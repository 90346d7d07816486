"""Which unit codes may be claimed as UCUM (``http://unitsofmeasure.org``).

A sender's unit is kept as written (``Quantity.unit``); its ``system`` and ``code`` say UCUM only
when the sender named UCUM or the code is one of R4's common UCUM units
(``tables/ucum_common.json``, derived by ``scripts/derive_ucum_common.py``): ``10^9/L``,
``iu/ml`` or ``mg/24h`` look like units but are no UCUM, and a client converting them as UCUM
would go wrong.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

SYSTEM = "http://unitsofmeasure.org"


@lru_cache(maxsize=1)
def _common() -> frozenset[str]:
    path = Path(__file__).parent / "tables" / "ucum_common.json"
    return frozenset(json.loads(path.read_text(encoding="utf-8"))["codes"])


def is_common(code: str | None) -> bool:
    return bool(code) and code in _common()
