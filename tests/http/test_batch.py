"""POST /v1/notifications/batch: each item judged alone, the valid ones stored together and sent."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import MAIL, make_settings, running
from tests.smtp_sink import SmtpSink

TEMPLATED = {
    "to": ["grace@example.com"],
    "template": "password-reset",
    "data": {
        "first_name": "Grace",
        "email": "grace@example.com",
        "reset_url": "https://example.com/r/1",
        "expires_in_minutes": 30,
    },
}


async def test_valid_items_are_accepted_beside_invalid_ones_in_order(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    async with running(make_settings(tmp_path, smtp_sink.port)) as service:
        response = await service.client.post(
            "/v1/notifications/batch",
            json={
                "notifications": [
                    MAIL,
                    {**MAIL, "to": ["not an address"]},
                    TEMPLATED,
                    {**TEMPLATED, "data": {"first_name": "Grace"}},
                    "not an object",
                ]
            },
        )

        assert response.status_code == 202, response.text
        items = response.json()["items"]
        assert [sorted(item) for item in items] == [["id", "status"], ["error"], ["id", "status"], ["error"], ["error"]]
        assert items[1]["error"]["detail"][0]["loc"] == ["to", 0]
        assert "missing variable" in items[3]["error"]["detail"][0]["msg"]
        for item in (items[0], items[2]):
            assert item["status"] == "queued"
            await service.wait_for_status(item["id"], "sent")
        assert sorted(r.rcpt_tos[0] for r in smtp_sink.received) == ["ada@example.com", "grace@example.com"]


async def test_a_batch_over_the_limit_is_a_422(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    async with running(make_settings(tmp_path, smtp_sink.port, BATCH_LIMIT=3)) as service:
        response = await service.client.post("/v1/notifications/batch", json={"notifications": [MAIL] * 4})

        assert response.status_code == 422
        assert "BATCH_LIMIT=3" in response.json()["detail"][0]["msg"]
        listed = await service.client.get("/v1/notifications")
        assert listed.json()["items"] == []


async def test_a_batch_retried_with_its_idempotency_key_is_answered_again_without_a_second_mail(
    tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    batch = {"notifications": [MAIL, {**MAIL, "to": ["grace@example.com"]}, {**MAIL, "to": ["bad"]}]}
    headers = {"Idempotency-Key": "batch-4711"}
    async with running(make_settings(tmp_path, smtp_sink.port)) as service:
        first = await service.client.post("/v1/notifications/batch", json=batch, headers=headers)
        await smtp_sink.wait_for(2)
        again = await service.client.post("/v1/notifications/batch", json=batch, headers=headers)
        other = await service.client.post("/v1/notifications/batch", json={"notifications": [MAIL]}, headers=headers)
        listed = (await service.client.get("/v1/notifications")).json()["items"]

    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert other.status_code == 422
    assert len(listed) == 2
    assert len(smtp_sink.received) == 2
