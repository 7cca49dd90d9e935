"""docs/api.md's "Limits on what a request may hold": every test it names exists, and its numbers are the code's."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from service.http.limits import MAX_JSON_DEPTH
from service.intake.request import LOCAL_PART_MAX_OCTETS
from service.logging import MAX_LOGGED_TRACEBACK_CHARS, MAX_LOGGED_VALUE_CHARS

ROOT = Path(__file__).resolve().parents[1]


def section() -> str:
    text = (ROOT / "docs/api.md").read_text(encoding="utf-8")
    return text.split("\n## Limits on what a request may hold\n", 1)[1].split("\n## ", 1)[0]


def test_every_test_the_limits_section_names_exists() -> None:
    named = re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", section())
    assert len(named) >= 10

    for path, name in named:
        tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
        functions = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}
        assert name in functions, f"docs/api.md names {path}::{name}, which does not exist"


def test_the_limits_section_gives_the_codes_numbers() -> None:
    text = section()
    assert f"more than {MAX_JSON_DEPTH} levels deep" in text
    assert f"over {LOCAL_PART_MAX_OCTETS} octets" in text
    assert f"cut at {MAX_LOGGED_VALUE_CHARS:,} characters, a traceback at {MAX_LOGGED_TRACEBACK_CHARS:,}" in text
