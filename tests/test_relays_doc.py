"""docs/relays.md stays true: its copy-paste blocks set only settings the service reads, with values it accepts; its
readiness example is what /health/ready answers; its reasons are ones the service gives; its tests exist."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

import yaml

from service.config import Settings
from service.http.schemas import Readiness

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs/relays.md").read_text(encoding="utf-8")
FILE_SETTINGS = {"SMTP_CA_FILE", "SMTP_CLIENT_CERT_FILE", "SMTP_CLIENT_KEY_FILE"}


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC, re.DOTALL)


def test_every_compose_override_sets_only_settings_the_service_accepts() -> None:
    overrides = blocks("yaml")
    assert len(overrides) >= 5
    for text in overrides:
        notifier: dict[str, Any] = yaml.safe_load(text)["services"]["notifier"]
        environment: dict[str, str] = notifier["environment"]
        assert set(environment) <= set(Settings.model_fields), text
        files = {name: value for name, value in environment.items() if name in FILE_SETTINGS}
        # The files are paths inside the container, on the mount the same block declares.
        for path in files.values():
            assert any(path.startswith(volume.split(":")[1]) for volume in notifier["volumes"]), text
        values = {name: value for name, value in environment.items() if name not in FILE_SETTINGS}
        Settings(_env_file=None, **values)  # type: ignore[call-arg]


def test_every_secrets_block_holds_only_the_login_without_quotes() -> None:
    secrets = blocks("dotenv")
    assert len(secrets) >= 4
    for text in secrets:
        lines = [line for line in text.splitlines() if line and not line.startswith("#")]
        assert [line.split("=", 1)[0] for line in lines] == ["SMTP_USERNAME", "SMTP_PASSWORD"], text
        assert not any(line.split("=", 1)[1].startswith(("'", '"')) for line in lines), text


def test_the_readiness_example_is_what_the_route_answers() -> None:
    [example] = [json.loads(text) for text in blocks("json") if '"checks"' in text]
    assert Readiness.model_validate(example).model_dump() == example


def test_every_reason_in_the_table_is_one_the_service_gives() -> None:
    source = "".join(path.read_text(encoding="utf-8") for path in (ROOT / "service/delivery").glob("*.py"))
    section = DOC.split("## When the relay refuses", 1)[1].split("\n## ", 1)[0].split("|---|", 1)[1]
    reasons = [
        reason
        for cell in re.findall(r"^\| (`[^|]+`) \|", section, re.MULTILINE)
        for reason in re.findall(r"`([^`]+)`", cell)
    ]
    assert len(reasons) >= 7
    for reason in reasons:
        assert f'"{reason}"' in source, (
            f"docs/relays.md names the reason {reason!r}, which service/delivery never gives"
        )


def test_every_test_named_exists() -> None:
    named = re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", DOC)
    assert len(named) >= 8
    for path, name in named:
        tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
        functions = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}
        assert name in functions, f"docs/relays.md names {path}::{name}, which does not exist"
