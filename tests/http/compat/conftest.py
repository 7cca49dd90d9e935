"""The app with both compat APIs on and an API key, reached in-process; each test reads its mails at the sink."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import Service, make_settings, running
from tests.smtp_sink import SmtpSink

KEY = "compat-test-key-0123456789"
RESEND = {"Authorization": f"Bearer {KEY}"}
POSTMARK = {"X-Postmark-Server-Token": KEY}


@pytest.fixture
async def compat(tmp_path: Path, smtp_sink: SmtpSink) -> AsyncIterator[Service]:
    settings = make_settings(tmp_path, smtp_sink.port, COMPAT_APIS="resend,postmark", API_KEYS=KEY)
    async with running(settings) as service:
        service.client.headers["Authorization"] = f"Bearer {KEY}"
        yield service
