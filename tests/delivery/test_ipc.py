"""The pipe protocol between the HTTP process and its dispatcher process, on real pipes and real registries: the
settings arrive whole (secrets too), and the child's metrics are served by the parent as they were reported."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from prometheus_client import generate_latest
from pydantic import SecretStr

from service.delivery import ipc
from service.delivery.classify import DeliveryFailed
from service.metrics import Metrics
from tests.conftest import make_settings
from tests.http.test_metrics import parse, value


def test_the_settings_reach_the_child_whole_secrets_included(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, 2525, SMTP_USERNAME="mailer", SMTP_PASSWORD=SecretStr("s3cret"), API_KEYS=SecretStr("k" * 32)
    )
    payload = ipc.settings_payload(settings)
    read_fd, write_fd = os.pipe()
    # Written from another thread in pieces: the child reads until the whole payload is there.
    writer = threading.Thread(
        target=lambda: [os.write(write_fd, payload[i : i + 7]) for i in range(0, len(payload), 7)]
    )
    writer.start()
    try:
        received = ipc.read_settings(read_fd)
    finally:
        writer.join()
        os.close(read_fd)
        os.close(write_fd)
    assert received == settings
    assert received.SMTP_PASSWORD is not None
    assert received.SMTP_PASSWORD.get_secret_value() == "s3cret"


def test_the_parent_serves_the_childs_metrics_as_reported(tmp_path: Path) -> None:
    child, parent = Metrics(), Metrics()
    mirror = ipc.MetricsMirror.of(parent)
    assert ipc.MetricsMirror.of(parent) is mirror, "a second handle on the same app must not register twice"
    # Until the child reports, the parent's own (idle) values are served.
    assert value(parse(generate_latest(parent.registry).decode()), "notifications_sent_total", tag="") == 0

    child.observe_send(0.02)
    child.observe_send(0.03, DeliveryFailed("451 later", transient=True))
    parent.notifications_accepted.inc(2)
    mirror.take(ipc.ready_report(1234))  # not a metrics report: passed over
    mirror.take(b'{"metrics": [{"name": 1}]}\n')  # malformed: passed over, the last good values stay
    mirror.take(ipc.metrics_report(child))

    samples = parse(generate_latest(parent.registry).decode())
    assert value(samples, "notifications_sent_total", tag="") == 1
    assert value(samples, "notification_send_attempts_total", result="transient_error") == 1
    assert value(samples, "smtp_send_duration_seconds_count") == 2
    # What the HTTP process moves itself is still its own.
    assert value(samples, "notifications_accepted_total") == 2
