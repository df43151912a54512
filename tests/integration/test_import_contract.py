"""The import contract (``[tool.importlinter]`` in pyproject.toml) really guards the layers.

``lint-imports`` runs on a copy of the four packages: the unmodified copy passes, and the same
copy with one planted upward import (``align.core.data`` importing ``align.ppo.run``, foundations
reaching into orchestration) fails, naming ``align.core``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("align", "rm", "rollouts", "eval")
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _copy_project(dest: Path) -> tuple[Path, Path]:
    """The packages' ``.py`` files under ``dest/src`` and pyproject.toml in ``dest/cwd``."""
    src, cwd = dest / "src", dest / "cwd"
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            target = src / path.relative_to(ROOT)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    cwd.mkdir()
    shutil.copyfile(ROOT / "pyproject.toml", cwd / "pyproject.toml")
    return src, cwd


def _lint(src: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.skipif(not LINT_IMPORTS.is_file(), reason="import-linter is not installed")
def test_import_contract_passes_on_the_code_and_fails_on_a_planted_violation(tmp_path):
    src, cwd = _copy_project(tmp_path)
    clean = _lint(src, cwd)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "0 broken" in clean.stdout

    data = src / "align" / "core" / "data.py"
    data.write_text(data.read_text(encoding="utf-8") + "\nimport align.ppo.run\n", "utf-8")
    broken = _lint(src, cwd)
    assert broken.returncode != 0, broken.stdout
    assert "BROKEN" in broken.stdout
    assert "align.core.data -> align.ppo.run" in broken.stdout, broken.stdout
