"""A bad setting stops the start with one clear line per variable, and no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def start_with(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "import service.main"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"SEND_CONCURRENCY": "0"},
            "config error: SEND_CONCURRENCY: Input should be greater than or equal to 1 (got '0')",
        ),
        ({"SMTP_PORT": "smtp"}, "config error: SMTP_PORT: Input should be a valid integer"),
        ({"LOG_FORMAT": "xml"}, "config error: LOG_FORMAT: Input should be 'auto', 'json' or 'console'"),
        ({"SMTP_TLS": "true", "SMTP_STARTTLS": "true"}, "SMTP_TLS and SMTP_STARTTLS are exclusive"),
    ],
)
def test_a_bad_value_stops_the_start_with_one_clear_line(tmp_path: Path, env: dict[str, str], expected: str) -> None:
    result = start_with(env, tmp_path)

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert expected in result.stderr


def test_a_bad_secret_is_named_but_never_echoed(tmp_path: Path) -> None:
    result = start_with({"SMTP_PASSWORD": "hunter2-secret"}, tmp_path)

    assert result.returncode == 2
    assert "SMTP_USERNAME and SMTP_PASSWORD are set together" in result.stderr
    assert "hunter2-secret" not in result.stderr + result.stdout
