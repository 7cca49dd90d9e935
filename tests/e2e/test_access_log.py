"""uvicorn's access log, written by a real uvicorn process: a credential sent in a URL never reaches it."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.e2e.processes import service_env, start_service
from tests.smtp_sink import SmtpSink

API_KEY = "e2e-key-0123456789abcdef"
LEAKED = ["leaked-1-0123456789", "leaked-2-0123456789", "leaked-3-0123456789", "leaked-4-0123456789"]


async def test_credentials_in_a_query_string_never_reach_the_log(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    env = service_env(tmp_path / "outbox.sqlite3", smtp_sink.port, API_KEYS=API_KEY)
    service = await start_service(env, tmp_path / "uvicorn.log")
    try:
        async with httpx.AsyncClient(base_url=service.base_url) as client:
            refused = [
                await client.get(f"/v1/notifications?api_key={LEAKED[0]}"),
                await client.get(f"/v1/notifications?status=sent&access_token={LEAKED[1]}"),
                # A name no rule knows: the whole query of a refused request goes.
                await client.get(f"/v1/notifications?k={LEAKED[2]}"),
            ]
            allowed = await client.get(
                f"/v1/notifications?status=sent&key={LEAKED[3]}", headers={"Authorization": f"Bearer {API_KEY}"}
            )
    finally:
        service.terminate(timeout=30)

    assert [response.status_code for response in refused] == [401, 401, 401]
    assert allowed.status_code == 200
    output = service.output()
    for secret in [*LEAKED, API_KEY]:
        assert secret not in output
    access = [e["event"] for e in service.events() if e.get("logger") == "uvicorn.access"]
    assert sum("/v1/notifications?[redacted] HTTP/1.1" in line for line in access) == 3, access
    assert any("/v1/notifications?status=sent&key=[redacted] HTTP/1.1" in line for line in access), access
