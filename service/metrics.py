"""Prometheus metrics: every metric object of the service and the few calls that move them.

Each app has its own CollectorRegistry: tests build many apps in one process, and the global default
registry would refuse the second set of metrics with the same names.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

from service.domain import SendFailed, Status

# One SMTP transaction is milliseconds on a LAN and seconds through a busy relay; SEND_TIMEOUT_SECONDS
# (30 s by default) bounds it.
SMTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# An accept is one group commit to disk: a few milliseconds, more under load or on a slow disk.
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

C = TypeVar("C")

# No `*_created` series beside every counter and histogram: Prometheus' text format doesn't need them and
# they double what is stored. A process-wide switch, idempotent.
disable_created_metrics()  # type: ignore[no-untyped-call]


class QueueGauges(Protocol):
    """What a scrape reads from the outbox (service.outbox.QueueGauges fits it)."""

    @property
    def counts(self) -> Mapping[Status, int]: ...

    @property
    def oldest_queued_at(self) -> float | None: ...


class Metrics:
    """The metric objects of one app, and the calls the routes and the dispatcher make at each transition."""

    def __init__(self, metric_tags: Sequence[str] = ()) -> None:
        """`metric_tags` (METRIC_TAGS): the only tags that become a `tag` label value; any other counts under ""."""
        self.registry = CollectorRegistry()
        r = self.registry
        self.metric_tags = frozenset(metric_tags)
        self.notifications_accepted = Counter(
            "notifications_accepted", "Notifications accepted (on disk, answered 202).", registry=r
        )
        self.notifications_sent = Counter(
            "notifications_sent",
            'Notifications the SMTP server took, by their first tag listed in METRIC_TAGS (else tag="").',
            ["tag"],
            registry=r,
        )
        self.notifications_failed = Counter(
            "notifications_failed",
            "Notifications that ended failed: a permanent refusal, or MAX_ATTEMPTS transient failures; by their"
            ' first tag listed in METRIC_TAGS (else tag="").',
            ["reason", "tag"],
            registry=r,
        )
        self.send_attempts = Counter(
            "notification_send_attempts", "Send attempts by their outcome.", ["result"], registry=r
        )
        self.smtp_send_duration = Histogram(
            "smtp_send_duration_seconds",
            "Time of one send attempt, connecting included when the connection had to be opened.",
            buckets=SMTP_BUCKETS,
            registry=r,
        )
        self.outbox_notifications = Gauge(
            "outbox_notifications", "Notifications in the outbox per status (all replicas).", ["status"], registry=r
        )
        self.outbox_oldest_queued_age = Gauge(
            "outbox_oldest_queued_age_seconds",
            "Age of the oldest queued notification (waiting or waiting for a retry); 0 when none waits.",
            registry=r,
        )
        self.dispatcher_inflight = Gauge("dispatcher_inflight", "Sends in progress in this process.", registry=r)
        self.outcomes_unwritten = Gauge(
            "outcomes_unwritten",
            "Send outcomes the outbox could not take (a full disk), kept in memory and written again until it can;"
            " their notifications stay sending meanwhile.",
            registry=r,
        )
        self.dispatcher_running = Gauge(
            "dispatcher_running",
            "1 while this replica's dispatcher runs (its process is up and reporting), 0 while it is restarted or"
            " stuck: mail is accepted but waits.",
            registry=r,
        )
        self.smtp_connections_open = Gauge(
            "smtp_connections_open", "SMTP connections this process holds open.", registry=r
        )
        self.http_requests = Counter(
            "http_requests", "HTTP requests answered.", ["method", "route", "status_class"], registry=r
        )
        self.http_request_duration = Histogram(
            "http_request_duration_seconds",
            "From the request to the last byte of the response; background work after it is not included.",
            ["method", "route", "status_class"],
            buckets=HTTP_BUCKETS,
            registry=r,
        )
        self.webhook_deliveries = Counter(
            "webhook_deliveries",
            "Webhook delivery attempts by their result: delivered (2xx), retry (to be tried again), failed (given up"
            " after WEBHOOK_MAX_ATTEMPTS).",
            ["result"],
            registry=r,
        )
        self.webhook_queue_oldest_age = Gauge(
            "webhook_queue_oldest_age_seconds",
            "Age of the oldest webhook delivery not yet delivered or given up (all replicas); 0 when none waits.",
            registry=r,
        )
        # Every label value from the start, so a rate() sees the first increment and dashboards show 0.
        # One child per label value, looked up once (as _http_children below): the sent counter moves on every send.
        self._sent_children: dict[str, Counter] = {}
        for tag in ("", *metric_tags):
            self._sent_children[tag] = self.notifications_sent.labels(tag=tag)
            for reason in ("permanent", "attempts_exhausted"):
                self.notifications_failed.labels(reason=reason, tag=tag)
        for result in ("delivered", "retry", "failed"):
            self.webhook_deliveries.labels(result=result)
        for result in ("sent", "transient_error", "permanent_error"):
            self.send_attempts.labels(result=result)
        for status in Status:
            self.outbox_notifications.labels(status=status)
        self._connections: weakref.WeakSet[object] = weakref.WeakSet()
        # Each label set's children, looked up once: `labels(**...)` takes a lock and builds the key on every
        # call. Bounded like the series themselves (methods x route templates x status classes).
        self._http_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self.smtp_connections_open.set_function(
            lambda: sum(1 for connection in self._connections if getattr(connection, "is_open", False))
        )

    # -- the dispatcher's transitions ---------------------------------------------------------------------

    def metric_tag(self, tags: Sequence[str]) -> str:
        """A notification's `tag` label: its first tag that METRIC_TAGS lists, else "" (bounded cardinality)."""
        if self.metric_tags:
            for tag in tags:
                if tag in self.metric_tags:
                    return tag
        return ""

    def observe_send(self, seconds: float, failure: SendFailed | None = None, *, tags: Sequence[str] = ()) -> None:
        """One send attempt ended: taken by the server (no failure), or refused / broken."""
        self.smtp_send_duration.observe(seconds)
        if failure is None:
            self.send_attempts.labels(result="sent").inc()
            self.count_sent(tags)
        else:
            self.send_attempts.labels(result="transient_error" if failure.transient else "permanent_error").inc()

    def count_sent(self, tags: Sequence[str] = ()) -> None:
        self._sent_children[self.metric_tag(tags)].inc()

    def count_failed(self, *, permanent: bool, tags: Sequence[str] = ()) -> None:
        reason = "permanent" if permanent else "attempts_exhausted"
        self.notifications_failed.labels(reason=reason, tag=self.metric_tag(tags)).inc()

    def watch_dispatcher(self, running: Callable[[], bool]) -> None:
        self.dispatcher_running.set_function(lambda: 1.0 if running() else 0.0)

    def watch_inflight(self, read: Callable[[], int]) -> None:
        self.dispatcher_inflight.set_function(read)

    def watch_unwritten(self, read: Callable[[], int]) -> None:
        self.outcomes_unwritten.set_function(read)

    def unwritten_outcomes(self) -> int:
        """`outcomes_unwritten` as this process serves it: its own dispatcher's, or its dispatcher process'."""
        return int(self.registry.get_sample_value("outcomes_unwritten") or 0)

    def track_connections(self, factory: Callable[..., C]) -> Callable[..., C]:
        """Wrap a connection factory so that `smtp_connections_open` counts what it made and is open."""

        def make(*args: object, **kwargs: object) -> C:
            connection = factory(*args, **kwargs)
            self._connections.add(connection)
            return connection

        return make

    # -- the dispatcher in a process of its own (service/delivery/ipc.py mirrors these) -------------------

    def dispatcher_collectors(self) -> list[Counter | Gauge | Histogram]:
        """The metrics only the dispatcher moves."""
        return [
            self.notifications_sent,
            self.notifications_failed,
            self.send_attempts,
            self.smtp_send_duration,
            self.dispatcher_inflight,
            self.smtp_connections_open,
            self.outcomes_unwritten,
        ]

    # -- the outbox ---------------------------------------------------------------------------------------

    def set_queue_gauges(self, gauges: QueueGauges, now: float) -> None:
        for status, count in gauges.counts.items():
            self.outbox_notifications.labels(status=status).set(count)
        oldest = gauges.oldest_queued_at
        self.outbox_oldest_queued_age.set(0.0 if oldest is None else max(0.0, now - oldest))

    def set_webhook_queue_age(self, oldest: float | None, now: float) -> None:
        self.webhook_queue_oldest_age.set(0.0 if oldest is None else max(0.0, now - oldest))

    # -- HTTP ---------------------------------------------------------------------------------------------

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """One answered request, by its method (or OTHER), route template and status class."""
        key = (method, route, status // 100)
        children = self._http_children.get(key)
        if children is None:
            labels = {"method": method, "route": route, "status_class": f"{status // 100}xx"}
            children = self._http_children[key] = (
                self.http_requests.labels(**labels),
                self.http_request_duration.labels(**labels),
            )
        children[0].inc()
        children[1].observe(seconds)
