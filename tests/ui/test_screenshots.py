"""The page's docs: the README shows its committed screenshots, made by a script that still works; docs/ui.md
names real tests."""

from __future__ import annotations

import ast
import re
import struct
from pathlib import Path

import pytest

from tests.e2e.processes import ROOT
from tests.ui.browser import require_browser
from tests.ui.screenshots import ACTIVITY_PNG, DOCS, NOTIFICATION_PNG, take_screenshots


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_the_readme_shows_both_screenshots_and_the_pages_doc() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name in (ACTIVITY_PNG, NOTIFICATION_PNG):
        assert f"(docs/{name})" in readme, f"the README does not show docs/{name}"
        assert png_size(DOCS / name)[0] == 1280
    assert "(docs/ui.md)" in readme
    assert (DOCS / "ui.md").exists()


@pytest.mark.slow
async def test_the_screenshot_script_photographs_both_pages(tmp_path: Path) -> None:
    require_browser()
    taken = await take_screenshots(tmp_path, tmp_path)

    assert [path.name for path in taken] == [ACTIVITY_PNG, NOTIFICATION_PNG]
    for path in taken:
        width, height = png_size(path)
        assert (width, height >= 900) == (1280, True)
        # A blank or broken page compresses to almost nothing.
        assert path.stat().st_size > 40_000


def test_every_test_named_in_the_pages_doc_exists() -> None:
    doc = (DOCS / "ui.md").read_text(encoding="utf-8")
    named = re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", doc)
    assert len(named) >= 10

    for path, name in named:
        tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
        functions = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}
        assert name in functions, f"docs/ui.md names {path}::{name}, which does not exist"
