"""Imports point down the page: pyproject.toml's import-linter contracts hold, so `make test` fails on an upward
import or an import cycle, not only `make lint`."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = str(Path(sys.executable).with_name("lint-imports"))


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [LINT_IMPORTS, "--no-cache", "--no-logo"], cwd=root, capture_output=True, text=True, timeout=120
    )


def test_imports_point_down_the_layers_and_never_in_a_circle() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_an_upward_import_breaks_the_layers(tmp_path: Path) -> None:
    """The contracts can fail: a copy of the service with intake importing a route (the import issue 13 found)."""
    shutil.copytree(ROOT / "service", tmp_path / "service", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    with (tmp_path / "service" / "intake" / "csv_jobs.py").open("a") as module:
        module.write("\nfrom service.http.routes.notifications import to_status  # noqa: E402\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "service.intake is not allowed to import service.http" in result.stdout
