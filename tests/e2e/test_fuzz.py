"""The app's own OpenAPI schema, fuzzed with schemathesis against uvicorn: no 5xx, and every response (401, 413,
422, 429 included) is one the schema declares, in the shape it declares."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.config import Settings
from service.main import create_app
from tests.e2e.processes import outside_the_checkout
from tests.smtp_sink import SmtpSink, free_port

API_KEY = "fuzz-key-0123456789abcdef"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def fuzzed_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    sink = SmtpSink().start()
    port = free_port()
    workdir = tmp_path_factory.mktemp("fuzz")
    env = {
        **os.environ,
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(sink.port),
        "OUTBOX_PATH": str(workdir / "outbox.sqlite3"),
        "API_KEYS": API_KEY,
        # Small limits, so that fuzzing reaches 413 and 429 too.
        "MAX_BODY_BYTES": "4096",
        "QUEUE_LIMIT": "20",
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "WARNING",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "service.main:app", "--host", "127.0.0.1", "--port", str(port)],
        cwd=workdir,
        env=outside_the_checkout(env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    try:
        while True:
            try:
                if httpx.get(f"{base_url}/health/live", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, "uvicorn exited at start"
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        yield base_url
    finally:
        process.kill()
        process.wait(10)
        sink.stop()


# The schema the app serves at /openapi.json (it does not depend on the settings), read without starting it.
schema = schemathesis.openapi.from_dict(create_app(Settings(_env_file=None)).openapi())  # type: ignore[call-arg]


@schema.parametrize()
@settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_the_api_answers_as_its_schema_says(case: schemathesis.Case, fuzzed_service: str) -> None:
    case.call_and_validate(
        base_url=fuzzed_service, headers={"Authorization": f"Bearer {API_KEY}"}, checks=CHECKS, timeout=10
    )


@schema.parametrize()
@settings(max_examples=5, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_without_a_key_every_answer_is_still_declared(case: schemathesis.Case, fuzzed_service: str) -> None:
    case.call_and_validate(base_url=fuzzed_service, checks=CHECKS, timeout=10)


def test_over_the_wire_a_large_body_is_413_whether_declared_or_chunked(fuzzed_service: str) -> None:
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}

    def chunks() -> Iterator[bytes]:
        for _ in range(64):
            yield b"x" * 1024

    with httpx.Client(base_url=fuzzed_service, headers=headers, timeout=10) as client:
        declared = client.post("/v1/notifications", content=b"x" * 5000)
        chunked = client.post("/v1/notifications", content=chunks())

    assert declared.status_code == chunked.status_code == 413
    assert "MAX_BODY_BYTES=4096" in declared.json()["detail"]
    assert "MAX_BODY_BYTES=4096" in chunked.json()["detail"]
