"""`/metrics`: Prometheus' scrape target, open like the health routes (outside /v1)."""

from __future__ import annotations

import time

import structlog
from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

from service.http.deps import MetricsDep, SettingsDep, StatsStoreDep, WebhookStoreDep
from service.outbox import OutboxUnavailable

log = structlog.get_logger("service.metrics")

router = APIRouter(tags=["monitoring"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_PLAIN_0_0_4: {}}, "description": "Prometheus text format"}},
    summary="Prometheus metrics of this process, and of the outbox it shares with other replicas",
)
async def scrape(
    metrics: MetricsDep, stats: StatsStoreDep, webhooks: WebhookStoreDep, settings: SettingsDep
) -> Response:
    try:
        # Read at scrape time: kept counts and one index lookup, whatever the size of the outbox.
        metrics.set_queue_gauges(await stats.queue_gauges(), time.time())
        if settings.webhook_urls():
            metrics.set_webhook_queue_age(await webhooks.oldest_waiting_at(), time.time())
    except OutboxUnavailable as exc:
        # The process' own metrics are still worth serving; the outbox gauges keep their last values.
        log.warning("metrics_outbox_unreadable", error=str(exc))
    # The classic text format: what every Prometheus (2.x and 3.x) parses without a fallback setting.
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_PLAIN_0_0_4)
