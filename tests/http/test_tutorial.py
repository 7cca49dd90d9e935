"""The tutorial's two routes still work as the tutorial shows them, and now really send mail."""

from __future__ import annotations

from service.http.routes.tutorial import write_notification
from tests.conftest import Service, captured_events
from tests.smtp_sink import SmtpSink


async def test_send_notification_queues_a_mail_and_writes_the_log_line(service: Service, smtp_sink: SmtpSink) -> None:
    with captured_events() as events:
        response = await service.client.post("/send-notification/ada@example.com")

    assert response.status_code == 200
    assert response.json() == {"message": "Notification sent in the background"}
    assert any(e["event"] == "Notification sent to ada@example.com" for e in events)
    [mail] = await smtp_sink.wait_for(1)
    assert mail.rcpt_tos == ["ada@example.com"]
    assert "ada@example.com" in mail.message.get_content()


async def test_email_route_sends_the_test_mail(service: Service, smtp_sink: SmtpSink) -> None:
    response = await service.client.post("/email/grace@example.com")

    assert response.status_code == 200
    assert response.json() == {"message": "Email sent in the background"}
    [mail] = await smtp_sink.wait_for(1)
    assert mail.message["Subject"] == "Test email"
    assert mail.message.get_content_type() == "multipart/alternative"


async def test_tutorial_routes_refuse_a_bad_address(service: Service) -> None:
    for path in ("/send-notification/not-an-address", "/email/not-an-address"):
        response = await service.client.post(path)
        assert response.status_code == 422, path
        assert response.json()["detail"][0]["loc"][0] == "path"


def test_write_notification_logs_the_tutorial_line() -> None:
    with captured_events() as events:
        write_notification("x@example.com")

    assert events == [{"event": "Notification sent to x@example.com", "email": "x@example.com", "log_level": "info"}]
