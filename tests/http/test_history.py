"""The status object's `history`: every attempt's outcome, as the API shows it."""

from __future__ import annotations

from datetime import datetime

from tests.conftest import MAIL, Service
from tests.smtp_sink import SmtpSink


async def test_a_notification_sent_after_a_retry_shows_both_attempts_and_keeps_its_last_error(
    service: Service, smtp_sink: SmtpSink
) -> None:
    smtp_sink.handler.data_replies.append("451 4.3.0 try again later")
    accepted = await service.post(**MAIL)
    assert accepted.json()["history"] == []

    sent = await service.wait_for_status(accepted.json()["id"], "sent")

    assert sent["attempts"] == 2
    assert "451" in sent["last_error"], "last_error is the last error seen, kept after the success"
    retry, success = sent["history"]
    assert (retry["outcome"], retry["smtp_code"]) == ("retry", 451)
    assert "try again later" in retry["message"]
    assert (success["outcome"], success["smtp_code"]) == ("sent", 250)
    assert success["message"] == sent["smtp_reply"]
    assert datetime.fromisoformat(retry["at"]) <= datetime.fromisoformat(success["at"])
    listed = (await service.client.get("/v1/notifications")).json()["items"][0]
    assert listed["history"] == sent["history"]
