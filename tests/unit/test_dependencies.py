"""Every third-party package the code imports is declared in pyproject.toml (core or an extra)."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[2]
FIRST_PARTY = {"align", "rm", "rollouts", "eval", "recipes", "bench", "tests"}
SHIPPED = ("align", "rm", "rollouts", "eval", "recipes")


def imported_top_level(path: Path) -> set[str]:
    """Top-level module names a file imports (absolute imports only, anywhere in the file)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def declared_distributions() -> dict[str, str]:
    """``{normalised distribution name: where}`` from ``[project]`` dependencies and extras."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    groups = {"dependencies": project["dependencies"], **project["optional-dependencies"]}
    out = {}
    for group, specs in groups.items():
        for spec in specs:
            out[normalise(re.split(r"[<>=!~\[; ]", spec, maxsplit=1)[0])] = group
    return out


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def undeclared(modules: set[str]) -> list[str]:
    """The third-party modules among ``modules`` whose distribution pyproject.toml lacks."""
    third_party = sorted(
        m for m in modules if m not in FIRST_PARTY and m not in sys.stdlib_module_names
    )
    to_dist, declared = packages_distributions(), declared_distributions()
    missing = []
    for module in third_party:
        dists = {normalise(d) for d in to_dist.get(module, [module])}
        if not dists & set(declared):
            missing.append(f"{module} (distribution {', '.join(sorted(dists))})")
    return missing


def test_every_imported_package_is_declared():
    modules = set()
    for package in SHIPPED:
        for file in (ROOT / package).rglob("*.py"):
            modules |= imported_top_level(file)
    assert {"torch", "yaml", "numpy"} <= modules  # the scan sees imports
    assert not undeclared(modules), "imported but not declared in pyproject.toml"


def test_the_check_flags_an_undeclared_import(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text("import json\nfrom yaml import safe_load\nimport align.core\n"
                       "import notapackage_xyz.sub\n")  # fmt: skip
    found = imported_top_level(planted)
    assert found == {"json", "yaml", "align", "notapackage_xyz"}
    assert undeclared(found) == ["notapackage_xyz (distribution notapackage-xyz)"]
