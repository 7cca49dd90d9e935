"""The app's middleware (service/http/middleware.py): the HTTP metrics clock stops when the response is sent, not when
background work ends."""

from __future__ import annotations

import asyncio
import time

import httpx
from asgi_lifespan import LifespanManager
from fastapi import BackgroundTasks

from service.config import Settings
from service.main import create_app
from tests.http.test_metrics import parse, value


async def test_request_latency_excludes_background_work(settings: Settings) -> None:
    app = create_app(settings)
    background_seconds: list[float] = []

    async def slow_work() -> None:
        started = time.perf_counter()
        await asyncio.sleep(0.3)
        background_seconds.append(time.perf_counter() - started)

    async def answer_then_work(background: BackgroundTasks) -> dict[str, str]:
        background.add_task(slow_work)
        return {"status": "accepted"}

    # Starlette runs BackgroundTasks inside the response call: a middleware timing the whole call would
    # count them.
    app.add_api_route("/slow-background", answer_then_work, methods=["POST"])
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=manager.app), base_url="http://service") as client,
    ):
        for _ in range(3):
            assert (await client.post("/slow-background")).status_code == 200
        samples = parse((await client.get("/metrics")).text)

    labels = {"method": "POST", "route": "/slow-background", "status_class": "2xx"}
    assert len(background_seconds) == 3
    assert value(samples, "http_request_duration_seconds_count", **labels) == 3
    # Had the background work been timed, the sum would be at least the work's own time.
    assert value(samples, "http_request_duration_seconds_sum", **labels) < sum(background_seconds)


async def test_a_request_that_crashes_is_counted_as_5xx(settings: Settings) -> None:
    app = create_app(settings)

    async def crash() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/crash", crash)
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app, raise_app_exceptions=False), base_url="http://service"
        ) as client,
    ):
        assert (await client.get("/crash")).status_code == 500
        samples = parse((await client.get("/metrics")).text)

    assert value(samples, "http_requests_total", method="GET", route="/crash", status_class="5xx") == 1
