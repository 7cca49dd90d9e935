"""What both compat APIs share: off unless COMPAT_APIS names them, open when API_KEYS is (as /v1 is), addresses
split as Postmark writes them, and a full outbox answered 503 in each API's shape."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.config import Settings
from service.http.compat.common import address_list
from tests.conftest import make_settings, running
from tests.http.compat.conftest import POSTMARK, RESEND
from tests.http.compat.test_postmark import MAIL as POSTMARK_MAIL
from tests.http.compat.test_postmark import assert_postmark_error
from tests.http.compat.test_resend import MAIL as RESEND_MAIL
from tests.http.compat.test_resend import assert_resend_error
from tests.small_disk import small_disk
from tests.smtp_sink import SmtpSink


async def test_off_by_default(settings: Settings) -> None:
    assert settings.COMPAT_APIS == ""
    async with running(settings) as service:
        for path in ("/compat/resend/emails", "/compat/postmark/email"):
            response = await service.client.post(path, json={})
            assert (response.status_code, response.json()) == (404, {"detail": "Not Found"})
        schema = (await service.client.get("/openapi.json")).json()
        assert not [path for path in schema["paths"] if path.startswith("/compat")]


async def test_only_the_named_api_is_mounted(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    settings = make_settings(tmp_path, smtp_sink.port, COMPAT_APIS="resend")
    async with running(settings) as service:
        assert (await service.client.post("/compat/resend/emails", json=RESEND_MAIL)).status_code == 200
        assert (await service.client.post("/compat/postmark/email", json=POSTMARK_MAIL)).status_code == 404


async def test_without_api_keys_both_are_open_as_v1_is(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    settings = make_settings(tmp_path, smtp_sink.port, COMPAT_APIS="resend,postmark")
    async with running(settings) as service:
        resend = await service.client.post("/compat/resend/emails", json=RESEND_MAIL, headers=RESEND)
        postmark = await service.client.post("/compat/postmark/email", json=POSTMARK_MAIL, headers=POSTMARK)
        bare = await service.client.post("/compat/postmark/email", json=POSTMARK_MAIL)
        assert (resend.status_code, postmark.status_code, bare.status_code) == (200, 200, 200)
        assert len(await smtp_sink.wait_for(3)) == 3


def test_an_unknown_api_stops_the_start() -> None:
    with pytest.raises(ValidationError, match="unknown API 'sendgrid'"):
        Settings(_env_file=None, COMPAT_APIS="resend,sendgrid")  # type: ignore[call-arg]
    assert Settings(_env_file=None, COMPAT_APIS=" postmark , resend,resend").compat_apis() == (  # type: ignore[call-arg]
        "postmark",
        "resend",
    )


@pytest.mark.parametrize(
    ("value", "addresses"),
    [
        ("a@example.com", ["a@example.com"]),
        ("a@example.com, b@example.com,", ["a@example.com", "b@example.com"]),
        ('"Lovelace, Ada" <ada@example.com>, b@example.com', ['"Lovelace, Ada" <ada@example.com>', "b@example.com"]),
        (["a@example.com", "b@example.com"], ["a@example.com", "b@example.com"]),
        ("", []),
        (None, []),
    ],
)
def test_addresses_are_split_at_commas_outside_quotes(value: str | list[str] | None, addresses: list[str]) -> None:
    assert address_list(value) == addresses


async def test_a_full_outbox_is_503_in_each_apis_shape(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    with small_disk(tmp_path) as disk:
        settings = make_settings(
            disk.path,
            smtp_sink.port,
            OUTBOX_PATH=disk.path / "outbox.sqlite3",
            JOBS_DIR=disk.path / "jobs",
            COMPAT_APIS="resend,postmark",
        )
        async with running(settings) as service:
            disk.fill(settings.OUTBOX_PATH)
            resend = await service.client.post("/compat/resend/emails", json=RESEND_MAIL, headers=RESEND)
            postmark = await service.client.post("/compat/postmark/email", json=POSTMARK_MAIL, headers=POSTMARK)
            disk.free()
    assert_resend_error(resend, 503, "application_error", "outbox cannot be written")
    assert_postmark_error(postmark, 503, 100, "outbox cannot be written")
    assert int(resend.headers["Retry-After"]) > 0
