"""Golden outputs: a few of the project's own fixtures per source family, mapped and compared with the
stored JSON under tests/golden/<family>/. A difference fails with a unified diff; when the change is
intended, ``python -m tests.golden.regen`` rewrites the files and the diff is reviewed in git."""

from __future__ import annotations

import pytest

from tests.golden.cases import all_cases, diff, golden_path, render


@pytest.mark.parametrize(("family", "fixture"), all_cases(), ids=[f"{f}/{n}" for f, n in all_cases()])
def test_mapping_matches_golden(family, fixture):
    path = golden_path(family, fixture)
    assert path.is_file(), f"{path} is missing: run python -m tests.golden.regen"
    expected = path.read_text(encoding="utf-8")
    actual = render(family, fixture)
    if actual != expected:
        pytest.fail(f"{family}/{fixture} maps differently from {path.name}; if intended, run "
                    f"python -m tests.golden.regen and review the diff\n{diff(expected, actual, path)}",
                    pytrace=False)
