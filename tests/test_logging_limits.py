"""No log line is unbounded and none carries a secret, whatever a client sends: values and tracebacks are cut
to a bounded size, and credentials in a URL's query are redacted (uvicorn's access line records the full URL)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import structlog

from service.logging import MAX_LOGGED_TRACEBACK_CHARS, MAX_LOGGED_VALUE_CHARS, configure_logging
from tests.conftest import make_settings

SECRET = "s3cr3t-0123456789abcdef"


def lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [line for line in capsys.readouterr().out.splitlines() if line.strip()]


def access(path: str, status: int) -> None:
    logging.getLogger("uvicorn.access").info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", path, "1.1", status)


def deep_failure() -> BaseException:
    # Two frames that call each other: the traceback cannot fold them into "[Previous line repeated ...]".
    def scan(value: Any) -> bool:
        return any(scan(item) for item in value) if isinstance(value, list) else False

    value: Any = 0
    for _ in range(5000):
        value = [value]
    try:
        scan(value)
    except RecursionError as exc:
        return exc
    raise AssertionError("no RecursionError")


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_a_huge_value_is_cut(tmp_path: Path, capsys: pytest.CaptureFixture[str], log_format: str) -> None:
    configure_logging(make_settings(tmp_path, 25, LOG_FORMAT=log_format))
    capsys.readouterr()

    structlog.get_logger("service").warning("value_logged", value="x" * 1_000_000, items=["y" * 100_000])
    logging.getLogger("uvicorn.error").warning("odd path %s", "/" + "z" * 1_000_000)

    logged = lines(capsys)
    assert len(logged) == 2
    for line in logged:
        assert len(line) < 4 * MAX_LOGGED_VALUE_CHARS, line[:200]
        assert "characters cut" in line
    if log_format == "json":
        first = json.loads(logged[0])
        assert first["value"].startswith("x" * 100)
        assert first["event"] == "value_logged"


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_a_deep_traceback_is_cut_and_keeps_its_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], log_format: str
) -> None:
    configure_logging(make_settings(tmp_path, 25, LOG_FORMAT=log_format))
    capsys.readouterr()
    failure = deep_failure()

    # Where the 127 KB line came from: Starlette's error middleware logging a RecursionError through uvicorn.
    logging.getLogger("uvicorn.error").error(
        "Exception in ASGI application", exc_info=(type(failure), failure, failure.__traceback__)
    )
    structlog.get_logger("service").error("job_crashed", exc_info=failure)

    output = capsys.readouterr().out
    assert len(output) < 2 * (MAX_LOGGED_TRACEBACK_CHARS + 2 * MAX_LOGGED_VALUE_CHARS)
    assert "characters cut" in output
    # The start (where it entered) and the end (the error itself) are both kept.
    assert output.count("Traceback (most recent call last)") == 2
    assert output.count("RecursionError: maximum recursion depth exceeded") == 2


@pytest.mark.parametrize("log_format", ["json", "console"])
@pytest.mark.parametrize(
    "query",
    [
        f"api_key={SECRET}",
        f"status=sent&token={SECRET}",
        f"key={SECRET}&limit=5",
        f"access_token={SECRET}",
        f"X-Api-Key={SECRET}",
        f"apikey={SECRET}#frag",
        f"password={SECRET}",
        f"auth={SECRET}",
    ],
)
def test_credentials_in_a_query_are_redacted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], log_format: str, query: str
) -> None:
    configure_logging(make_settings(tmp_path, 25, LOG_FORMAT=log_format))
    capsys.readouterr()

    access(f"/v1/notifications?{query}", 200)
    structlog.get_logger("service").info("url_logged", url=f"http://service/v1/notifications?{query}")

    logged = lines(capsys)
    assert len(logged) == 2
    for line in logged:
        assert SECRET not in line
        assert "/v1/notifications?" in line
        assert "[redacted]" in line
    assert ("status=sent" in logged[0]) == ("status=sent" in query)


def test_the_whole_query_of_an_unauthenticated_request_is_redacted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging(make_settings(tmp_path, 25, LOG_FORMAT="json"))
    capsys.readouterr()

    # Any name at all: a 401 says the request was not the caller's to make.
    access(f"/v1/notifications?k={SECRET}&status=sent", 401)
    access("/v1/notifications?status=sent&limit=5", 200)

    refused, answered = (json.loads(line)["event"] for line in lines(capsys))
    assert refused == '127.0.0.1:5000 - "GET /v1/notifications?[redacted] HTTP/1.1" 401'
    assert answered == '127.0.0.1:5000 - "GET /v1/notifications?status=sent&limit=5 HTTP/1.1" 200'
