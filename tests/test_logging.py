"""The standard library's records (uvicorn's) render through our chain exactly as structlog's own
ProcessorFormatter renders them: the test that fails on the structlog version whose rendering ours no longer matches."""

from __future__ import annotations

import io
import json
import logging
import sys
from pathlib import Path

import pytest
import structlog

from service.logging import StdlibRecordFormatter, configure_logging
from tests.conftest import make_settings


def records() -> list[logging.LogRecord]:
    access = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "POST", "/v1", "1.1", 202),
        None,
    )
    try:
        raise ValueError("broken")
    except ValueError:
        failed = logging.LogRecord(
            "uvicorn.error", logging.ERROR, __file__, 2, "Exception in ASGI application", None, sys.exc_info()
        )
    stacked = logging.LogRecord(
        "asyncio",
        logging.WARNING,
        __file__,
        3,
        "slow %s",
        ("callback",),
        None,
        sinfo="Stack (most recent call last):\n  here",
    )
    return [access, failed, stacked]


def without_timestamp(line: str, log_format: str) -> object:
    if log_format == "json":
        return [(key, value) for key, value in json.loads(line).items() if key != "timestamp"]
    return line.split(" ", 1)[1]


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_a_stdlib_record_renders_as_processor_formatter_renders_it(tmp_path: Path, log_format: str) -> None:
    configure_logging(make_settings(tmp_path, 25, LOG_FORMAT=log_format))
    [handler] = logging.getLogger().handlers
    ours = handler.formatter
    assert isinstance(ours, StdlibRecordFormatter)
    theirs = structlog.stdlib.ProcessorFormatter(foreign_pre_chain=ours.foreign_pre_chain, processors=ours.processors)

    for record in records():
        expected = theirs.format(record)
        before = dict(record.__dict__)
        assert without_timestamp(ours.format(record), log_format) == without_timestamp(expected, log_format)
        # Read, not changed: another handler would see the record as it was.
        assert record.__dict__ == before


def test_events_reach_the_stdout_of_the_moment_through_one_writer_per_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure_logging(make_settings(tmp_path, 25, LOG_FORMAT="json"))
    factory = structlog.get_config()["logger_factory"]
    assert factory("service.delivery") is factory("service.delivery")
    assert factory("service.delivery") is not factory("service.http")

    first, second = io.StringIO(), io.StringIO()
    log = structlog.get_logger("service.delivery")
    monkeypatch.setattr(sys, "stdout", first)
    log.info("notification_sent", attempts=1)
    monkeypatch.setattr(sys, "stdout", second)
    log.info("notification_failed", attempts=2)

    [one] = [json.loads(line) for line in first.getvalue().splitlines()]
    [two] = [json.loads(line) for line in second.getvalue().splitlines()]
    assert (one["event"], one["logger"]) == ("notification_sent", "service.delivery")
    assert (two["event"], two["logger"]) == ("notification_failed", "service.delivery")
