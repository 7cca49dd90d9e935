"""Webhook settings: a URL that is not http(s), one that resolves to a non-public address under the SSRF guard, a
missing or malformed secret: each stops the start with one clear line, and the secret is never echoed."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.config import Settings, describe_errors
from tests.test_config import start_with
from tests.webhook_receiver import SECRET


def refusal(**values: object) -> list[str]:
    with pytest.raises(ValidationError) as caught:
        Settings(_env_file=None, **values)  # type: ignore[arg-type]
    return describe_errors(caught.value)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:8080/hooks", "resolves to loopback address 127.0.0.1"),
        ("http://localhost/hooks", "resolves to loopback address"),
        ("http://169.254.169.254/latest", "resolves to link-local address 169.254.169.254"),
        ("http://10.1.2.3/hooks", "resolves to non-public address 10.1.2.3"),
        ("http://[::1]/hooks", "resolves to loopback address ::1"),
    ],
)
def test_the_ssrf_guard_refuses_non_public_addresses(url: str, expected: str) -> None:
    [line] = refusal(WEBHOOK_URLS=url, WEBHOOK_SECRET=SECRET, WEBHOOK_ALLOW_PRIVATE=False)
    assert expected in line
    assert "WEBHOOK_ALLOW_PRIVATE=false" in line


def test_private_addresses_are_allowed_by_default_and_public_ones_always() -> None:
    assert Settings(_env_file=None, WEBHOOK_URLS="http://127.0.0.1/h", WEBHOOK_SECRET=SECRET).webhook_urls() == [  # type: ignore[call-arg]
        "http://127.0.0.1/h"
    ]
    public = Settings(  # type: ignore[call-arg]
        _env_file=None,
        WEBHOOK_URLS="https://93.184.215.14/h, http://8.8.8.8/x",
        WEBHOOK_SECRET=SECRET,
        WEBHOOK_ALLOW_PRIVATE=False,
    )
    assert public.webhook_urls() == ["https://93.184.215.14/h", "http://8.8.8.8/x"]


@pytest.mark.parametrize("url", ["ftp://example.com/hooks", "file:///etc/passwd", "example.com/hooks", "http:///x"])
def test_a_url_that_is_not_http_is_refused_whatever_the_guard(url: str) -> None:
    [line] = refusal(WEBHOOK_URLS=url, WEBHOOK_SECRET=SECRET)
    assert "is not an http(s) URL with a host" in line


@pytest.mark.parametrize(
    ("secret", "expected"),
    [
        ("not-a-whsec-secret", "must be whsec_<base64>"),
        ("whsec_!!not*base64!!", "is not base64"),
        ("whsec_c2hvcnQ=", "24 to 64 bytes (it is 5)"),
    ],
)
def test_a_bad_secret_is_refused_without_being_echoed(secret: str, expected: str) -> None:
    [line] = refusal(WEBHOOK_SECRET=secret)
    assert line.startswith("config error: WEBHOOK_SECRET: ")
    assert expected in line
    assert secret not in line


def test_urls_without_a_secret_are_refused() -> None:
    [line] = refusal(WEBHOOK_URLS="http://127.0.0.1/h")
    assert "WEBHOOK_URLS is set without WEBHOOK_SECRET" in line


@pytest.mark.slow
def test_a_url_refused_by_the_guard_stops_the_start_with_one_line(tmp_path: Path) -> None:
    result = start_with(
        {"WEBHOOK_URLS": "http://169.254.169.254/", "WEBHOOK_SECRET": SECRET, "WEBHOOK_ALLOW_PRIVATE": "false"},
        tmp_path,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "config error: settings: WEBHOOK_URLS: 'http://169.254.169.254/' resolves to link-local address"
        " 169.254.169.254, refused while WEBHOOK_ALLOW_PRIVATE=false"
    ]
    assert SECRET not in result.stderr + result.stdout
