"""`/metrics`: every metric moves when what it counts happens, read the way Prometheus reads it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from service.domain import Status
from service.metrics import Metrics
from tests.conftest import MAIL, Service, make_settings, running
from tests.smtp_sink import SmtpSink

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def scrape(service: Service) -> Samples:
    response = await service.client.get("/metrics")
    assert response.status_code == 200, response.text
    return parse(response.text)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


async def wait_for_metric(service: Service, name: str, expected: float, timeout: float = 10.0, **labels: str) -> None:
    """Counters move right after the outbox write the status route reads, so a test polls the metric too."""
    deadline = time.monotonic() + timeout
    while (got := value(await scrape(service), name, **labels)) != expected:
        if time.monotonic() > deadline:
            raise AssertionError(f"{name}{labels} is {got}, expected {expected}")
        await asyncio.sleep(0.02)


async def test_metrics_are_prometheus_text_with_every_metric(service: Service) -> None:
    response = await service.client.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    names = {family.name for family in text_string_to_metric_families(response.text)}
    assert names >= {
        "notifications_accepted",
        "notifications_sent",
        "notifications_failed",
        "notification_send_attempts",
        "smtp_send_duration_seconds",
        "outbox_notifications",
        "outbox_oldest_queued_age_seconds",
        "dispatcher_inflight",
        "dispatcher_running",
        "smtp_connections_open",
        "http_requests",
        "http_request_duration_seconds",
    }
    samples = await scrape(service)
    # Every label value exists from the start, at 0, so rate() and dashboards see the first increment.
    assert value(samples, "notifications_failed_total", reason="permanent", tag="") == 0
    assert value(samples, "notifications_failed_total", reason="attempts_exhausted", tag="") == 0
    for result in ("sent", "transient_error", "permanent_error"):
        assert value(samples, "notification_send_attempts_total", result=result) == 0
    for status in ("queued", "sending", "sent", "failed"):
        assert value(samples, "outbox_notifications", status=status) == 0


def test_the_outbox_gauge_has_every_status_of_the_outbox_from_the_start() -> None:
    samples = parse(generate_latest(Metrics().registry).decode())
    assert {dict(labels)["status"] for name, labels in samples if name == "outbox_notifications"} == set(Status)


async def test_an_accepted_and_sent_notification_moves_its_counters(service: Service, smtp_sink: SmtpSink) -> None:
    response = await service.post(**MAIL)
    await service.wait_for_status(response.json()["id"], "sent")
    await wait_for_metric(service, "notifications_sent_total", 1, tag="")

    samples = await scrape(service)
    assert value(samples, "notifications_accepted_total") == 1
    assert value(samples, "notification_send_attempts_total", result="sent") == 1
    assert value(samples, "smtp_send_duration_seconds_count") == 1
    assert value(samples, "smtp_send_duration_seconds_sum") > 0
    assert value(samples, "outbox_notifications", status="sent") == 1
    assert value(samples, "outbox_notifications", status="queued") == 0
    assert value(samples, "outbox_oldest_queued_age_seconds") == 0
    # The worker keeps its connection open for the next mail.
    assert value(samples, "smtp_connections_open") == 1
    assert value(samples, "dispatcher_inflight") == 0


async def test_a_550_counts_a_permanent_failure(service: Service, smtp_sink: SmtpSink) -> None:
    smtp_sink.handler.data_replies.append("550 5.7.1 rejected by policy")

    response = await service.post(**MAIL)
    await service.wait_for_status(response.json()["id"], "failed")
    await wait_for_metric(service, "notifications_failed_total", 1, reason="permanent", tag="")

    samples = await scrape(service)
    assert value(samples, "notification_send_attempts_total", result="permanent_error") == 1
    assert value(samples, "notifications_failed_total", reason="attempts_exhausted", tag="") == 0
    assert value(samples, "notifications_sent_total", tag="") == 0
    assert value(samples, "outbox_notifications", status="failed") == 1


async def test_a_451_counts_a_transient_error_then_a_send(service: Service, smtp_sink: SmtpSink) -> None:
    smtp_sink.handler.data_replies.append("451 4.3.0 try again later")

    response = await service.post(**MAIL)
    await service.wait_for_status(response.json()["id"], "sent")
    await wait_for_metric(service, "notifications_sent_total", 1, tag="")

    samples = await scrape(service)
    assert value(samples, "notification_send_attempts_total", result="transient_error") == 1
    assert value(samples, "notification_send_attempts_total", result="sent") == 1
    assert value(samples, "smtp_send_duration_seconds_count") == 2
    assert value(samples, "notifications_failed_total", reason="permanent", tag="") == 0


async def test_transient_errors_until_max_attempts_count_as_exhausted(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    smtp_sink.handler.data_replies.extend(["452 4.3.1 out of storage"] * 2)

    async with running(make_settings(tmp_path, smtp_sink.port, MAX_ATTEMPTS=2)) as service:
        response = await service.post(**MAIL)
        await service.wait_for_status(response.json()["id"], "failed")
        await wait_for_metric(service, "notifications_failed_total", 1, reason="attempts_exhausted", tag="")

        samples = await scrape(service)
    assert value(samples, "notification_send_attempts_total", result="transient_error") == 2
    assert value(samples, "notifications_failed_total", reason="permanent", tag="") == 0


async def test_a_waiting_notification_shows_in_the_queue_gauges(tmp_path: Path, unreachable_port: int) -> None:
    # No SMTP server: the first attempt fails and the retry is far away, so the notification waits, queued.
    settings = make_settings(tmp_path, unreachable_port, RETRY_BASE_SECONDS=60, RETRY_MAX_SECONDS=60)
    async with running(settings) as service:
        response = await service.post(**MAIL)
        notification_id = response.json()["id"]
        await wait_for_metric(service, "notification_send_attempts_total", 1, result="transient_error")
        await service.wait_for_status(notification_id, "queued")

        samples = await scrape(service)
    assert value(samples, "outbox_notifications", status="queued") == 1
    assert value(samples, "outbox_oldest_queued_age_seconds") > 0
    assert value(samples, "smtp_connections_open") == 0


async def test_a_send_in_progress_shows_in_flight(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    # The sink holds the mail's DATA until the test has looked: in flight for as long as it takes.
    smtp_sink.handler.data_open.clear()

    async with running(make_settings(tmp_path, smtp_sink.port, SEND_TIMEOUT_SECONDS=60)) as service:
        response = await service.post(**MAIL)
        try:
            await service.wait_for_status(response.json()["id"], "sending")
            await wait_for_metric(service, "dispatcher_inflight", 1)

            samples = await scrape(service)
            assert value(samples, "outbox_notifications", status="sending") == 1
            assert value(samples, "smtp_connections_open") == 1
        finally:
            smtp_sink.handler.data_open.set()
        await service.wait_for_status(response.json()["id"], "sent")


async def test_http_requests_are_labelled_by_route_template_and_status_class(service: Service) -> None:
    created = await service.post(**MAIL)
    await service.client.get(f"/v1/notifications/{created.json()['id']}")
    await service.client.get("/v1/notifications/no-such-id")
    await service.client.get("/no/such/route")
    await service.client.request("BREW", "/v1/notifications")

    samples = await scrape(service)
    template = "/v1/notifications/{notification_id}"
    assert value(samples, "http_requests_total", method="POST", route="/v1/notifications", status_class="2xx") == 1
    assert value(samples, "http_requests_total", method="GET", route=template, status_class="2xx") == 1
    assert value(samples, "http_requests_total", method="GET", route=template, status_class="4xx") == 1
    assert value(samples, "http_request_duration_seconds_count", method="GET", route=template, status_class="4xx") == 1
    assert value(samples, "http_requests_total", method="GET", route="unmatched", status_class="4xx") == 1
    assert value(samples, "http_requests_total", method="OTHER", route="/v1/notifications", status_class="4xx") == 1
    routes = {dict(labels).get("route") for (_name, labels) in samples}
    assert not any("no-such-id" in route or created.json()["id"] in route for route in routes if route)


async def test_mail_from_a_csv_job_counts_as_accepted_like_any_other(service: Service, smtp_sink: SmtpSink) -> None:
    csv = b"email,first_name,login_url\r\nada@example.com,Ada,https://x/1\r\ngrace@example.com,Grace,https://x/2\r\n"
    response = await service.client.post(
        "/v1/jobs", files={"file": ("people.csv", csv, "text/csv")}, data={"template": "welcome"}
    )
    assert response.status_code == 202, response.text

    await smtp_sink.wait_for(2)
    await wait_for_metric(service, "notifications_sent_total", 2, tag="")
    assert value(await scrape(service), "notifications_accepted_total") == 2


async def test_every_request_counts_not_only_the_first_of_its_label_set(service: Service) -> None:
    for _ in range(3):
        await service.post(**MAIL)
    await service.client.get("/v1/notifications/no-such-id")
    await service.client.get("/v1/notifications/no-such-id")

    samples = await scrape(service)
    labels = {"method": "POST", "route": "/v1/notifications", "status_class": "2xx"}
    assert value(samples, "http_requests_total", **labels) == 3
    assert value(samples, "http_request_duration_seconds_count", **labels) == 3
    template = "/v1/notifications/{notification_id}"
    assert value(samples, "http_requests_total", method="GET", route=template, status_class="4xx") == 2


@pytest.mark.parametrize("own_process", [False, True], ids=["in-process", "own-process"])
async def test_dispatcher_running_is_1_while_it_runs_and_0_once_it_stops(
    tmp_path: Path, smtp_sink: SmtpSink, own_process: bool
) -> None:
    async with running(make_settings(tmp_path, smtp_sink.port, DISPATCHER_PROCESS=own_process)) as service:
        assert value(await scrape(service), "dispatcher_running") == 1
        await service.app.state.dispatcher.stop()
        assert value(await scrape(service), "dispatcher_running") == 0
