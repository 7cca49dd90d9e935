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
@pytest.mark.slow
def test_a_bad_value_stops_the_start_with_one_clear_line(tmp_path: Path, env: dict[str, str], expected: str) -> None:
    result = start_with(env, tmp_path)

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert expected in result.stderr


@pytest.mark.slow
def test_a_bad_secret_is_named_but_never_echoed(tmp_path: Path) -> None:
    result = start_with({"SMTP_PASSWORD": "hunter2-secret"}, tmp_path)

    assert result.returncode == 2
    assert "SMTP_USERNAME and SMTP_PASSWORD are set together" in result.stderr
    assert "hunter2-secret" not in result.stderr + result.stdout


@pytest.mark.slow
def test_a_lease_shorter_than_two_sends_is_refused(tmp_path: Path) -> None:
    result = start_with(
        {"SEND_TIMEOUT_SECONDS": "30", "LEASE_SECONDS": "60", "OUTBOX_URL": "postgresql://db/app"}, tmp_path
    )

    assert result.returncode == 2
    assert "LEASE_SECONDS must be more than twice SEND_TIMEOUT_SECONDS" in result.stderr


def test_the_lease_does_not_bound_sends_on_the_sqlite_file() -> None:
    from service.config import Settings

    settings = Settings(_env_file=None, SEND_TIMEOUT_SECONDS=90)  # type: ignore[call-arg]

    assert settings.SEND_TIMEOUT_SECONDS == 90


@pytest.mark.slow
def test_an_outbox_url_that_is_not_postgresql_is_refused_without_echoing_it(tmp_path: Path) -> None:
    result = start_with({"OUTBOX_URL": "mysql://app:s3cret-pw@db/app"}, tmp_path)

    assert result.returncode == 2
    assert "OUTBOX_URL must start with postgresql://" in result.stderr
    assert "s3cret-pw" not in result.stderr + result.stdout


def test_an_empty_outbox_url_keeps_the_sqlite_file() -> None:
    from service.config import Settings

    settings = Settings(_env_file=None, OUTBOX_URL="")  # type: ignore[call-arg]

    assert settings.OUTBOX_URL is None
