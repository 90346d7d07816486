"""Rewrite the golden files from the current mappers: ``python -m tests.golden.regen [family ...]``.

Run it after a deliberate mapping change and review ``git diff tests/golden`` as the change's effect
on real output; ``tests/test_golden.py`` fails until the files agree with the mappers again."""

from __future__ import annotations

import sys

from tests.golden.cases import CASES, all_cases, golden_path, render


def main(argv: list[str]) -> int:
    unknown = [f for f in argv if f not in CASES]
    if unknown:
        print(f"unknown family {', '.join(unknown)}; known: {', '.join(CASES)}", file=sys.stderr)
        return 2
    changed = 0
    for family, fixture in all_cases():
        if argv and family not in argv:
            continue
        path = golden_path(family, fixture)
        text = render(family, fixture)
        old = path.read_text(encoding="utf-8") if path.is_file() else None
        if old != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            changed += 1
        print(f"{'unchanged' if old == text else 'written  '} {path.relative_to(path.parents[3])}")
    print(f"{changed} file(s) rewritten")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
