"""The benchmark runs end to end (tiny, with the Python load generator) so it doesn't rot. No timing asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.postgres import POSTGRES_URL, _connect_admin

ROOT = Path(__file__).resolve().parents[1]


def test_the_benchmark_runs_every_system_and_the_service_loses_nothing(tmp_path: Path) -> None:
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.bench",
            "--loadgen",
            "python",
            "--duration",
            "0.5",
            "--connections",
            "4",
            "--alone-count",
            "20",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert completed.returncode == 0, completed.stderr
    assert "| notification-service" in completed.stdout
    assert "accepted req/s, service ÷ tutorial" in completed.stdout
    [path] = tmp_path.glob("bench-*.json")
    results = json.loads(path.read_text())["results"]
    assert set(results) == {"bare", "tutorial", "service", "alone", "wire"}
    service = results["service"]
    assert service["accepted"] > 0
    assert service["extra"]["answered_202_not_stored"] == 0
    assert service["delivered"] == service["extra"]["stored"]
    assert service["lost"] == 0
    assert results["alone"]["delivered"] == results["wire"]["delivered"] == 20


async def test_the_replicas_mode_runs_on_postgresql_and_loses_nothing(tmp_path: Path) -> None:
    # Skipped without a server, a failure with REQUIRE_POSTGRES=1 (as in CI), like every PostgreSQL test.
    await (await _connect_admin()).close()
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.bench",
            "--replicas",
            "2",
            "--postgres-url",
            POSTGRES_URL,
            "--duration",
            "0.5",
            "--connections",
            "4",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert completed.returncode == 0, completed.stderr
    assert "| PostgreSQL, 2 |" in completed.stdout
    [path] = tmp_path.glob("replicas-*.json")
    results = json.loads(path.read_text())["results"]
    assert set(results) == {"sqlite-1", "postgres-1", "postgres-2"}
    for result in results.values():
        assert result["accepted"] > 0
        assert result["lost"] == 0
    assert results["postgres-2"]["extra"]["duplicates"] == 0
