"""`pip install` of the project alone gives a working `hub`: every module of the packages imports
only the standard library, the project's own packages and what `dependencies` brings (with
their own requirements), never what only the test or bench extras install."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("hub", "fhir_mapping", "projections", "connectors", "terminology")


def _name(req: str) -> str:
    return re.split(r"[\s\[<>=!~;]", req, maxsplit=1)[0].lower().replace("_", "-")


def _closure(reqs: list[str]) -> set[str]:
    """The distributions ``reqs`` install, with their requirements (markers for extras skipped
    unless the requirement named that extra)."""
    seen: set[str] = set()
    todo = [(r, set(re.findall(r"\[([^\]]+)\]", r)[0].split(",")) if "[" in r else set()) for r in reqs]
    while todo:
        req, extras = todo.pop()
        name = _name(req)
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        for sub in dist.requires or ():
            marker = sub.split(";", 1)[1] if ";" in sub else ""
            wanted = re.findall(r'extra\s*==\s*"([^"]+)"', marker)
            if wanted and not set(wanted) & extras:
                continue
            sub_extras = set(re.findall(r"\[([^\]]+)\]", sub.split(";")[0])[0].split(",")) \
                if "[" in sub.split(";")[0] else set()
            todo.append((sub.split(";")[0], sub_extras))
    return seen


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


def test_runtime_imports_come_from_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    allowed = _closure(project["dependencies"])
    providers = metadata.packages_distributions()
    missing: dict[str, set[str]] = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            for mod in _imports(path):
                if mod in sys.stdlib_module_names or mod in PACKAGES:
                    continue
                dists = {d.lower().replace("_", "-") for d in providers.get(mod, ())}
                if not dists & allowed:
                    missing.setdefault(mod, set()).add(str(path.relative_to(ROOT)))
    assert not missing, f"imported at run time but not in `dependencies`: {missing}"


def test_hub_version():
    out = subprocess.run([sys.executable, "-m", "hub.cli", "--version"], capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == f"hub {metadata.version('fhir-region-hub')}"


def test_every_data_file_of_the_packages_is_shipped():
    """A file the packages read at run time (templates, tables, stylesheets) is in a wheel only
    if ``package-data`` names its kind: an editable install would not notice one left out."""
    import fnmatch

    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = tool["package-data"]["*"]
    tracked = subprocess.run(["git", "ls-files", *PACKAGES], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.split()
    left_out = [f for f in tracked if not f.endswith(".py")
                and not any(fnmatch.fnmatch(Path(f).name, p) for p in patterns)
                and not f.endswith(("README.md", ".gitignore"))]
    assert not left_out, f"not in package-data: {left_out}"
