"""Logging for the whole process, set up in one place: structlog events, and the standard library's loggers
(uvicorn's among them) rendered by the same chain. (The request id is bound by service/http/middleware.py.)"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Sequence
from typing import Any

import structlog
from structlog.typing import Processor

from service.config import Settings

# A logged value (a URL, an error, a client's text) longer than this is cut: one line stays readable and
# bounded whatever a client sends.
MAX_LOGGED_VALUE_CHARS = 2_000
# A traceback keeps its start (where it entered our code) and its end (the failing frames and the error): a
# RecursionError's ran to ~127 KB.
MAX_LOGGED_TRACEBACK_CHARS = 10_000
_TRACEBACK_KEYS = frozenset({"exception", "stack", "stack_info"})
_CONTAINERS = frozenset({dict, list, tuple, set, bytes})
# A query parameter whose name says it holds a credential (api_key, token, access_token, X-Api-Key, password).
_CREDENTIAL_WORDS = "key|token|secret|passw|pwd|auth|sig|credential|session"
_CREDENTIAL_WORD = re.compile(_CREDENTIAL_WORDS)
_CREDENTIAL_IN_QUERY = re.compile(
    rf"([?&;](?=[^=&;#\s\"]*(?:{_CREDENTIAL_WORDS}))[^=&;#\s\"]*=)[^&;#\s\"]*", re.IGNORECASE
)
# uvicorn's access line for a refused request (401): its whole query goes, whatever the names in it.
_UNAUTHENTICATED_ACCESS = re.compile(r'^(.* - "\S+ [^?\s]*\?)\S*( HTTP/[0-9.]+" 401)$', re.DOTALL)


def configure_logging(settings: Settings) -> None:
    """Idempotent: the app factory may run more than once in one process (tests, reloads)."""
    renderer: Any
    json_output = settings.LOG_FORMAT == "json" or (settings.LOG_FORMAT == "auto" and not sys.stdout.isatty())
    # No local variables in console tracebacks (structlog's rich default shows them): an ASGI scope in a frame
    # carries the request's Authorization header, and an API key must never reach a log.
    renderer = (
        structlog.processors.JSONRenderer()
        if json_output
        else structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback)
    )

    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if json_output:
        shared.append(structlog.processors.format_exc_info)
    shared.append(redact_and_cap)

    structlog.configure(
        # Our own events skip the standard library: no LogRecord and no formatter copy per event, about half
        # the cost of one event (benchmarks: 0.1 ms of CPU per mail). uvicorn's records still use the handler.
        processors=[*shared, renderer],
        logger_factory=_WriterPerName(),
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(settings.LOG_LEVEL)),
        # Not cached: create_app() may reconfigure (tests do, with other levels), and cached loggers would
        # keep the old chain.
        cache_logger_on_first_use=False,
    )

    formatter = StdlibRecordFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.LOG_LEVEL)
    # uvicorn installs its own handlers before it imports the app: route its records through ours instead.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
    # aiosmtplib and asyncio are chatty at DEBUG; their failures reach us as exceptions anyway.
    logging.getLogger("aiosmtplib").setLevel(max(logging.INFO, root.level))


def redact_and_cap(logger: Any, method_name: str, event_dict: Any) -> Any:
    """The last shared processor: credentials in a URL's query redacted, every value cut to a bounded size.
    A short value without `?` (nearly all of them) costs one type check, one length and one `in`."""
    if "exc_info" in event_dict:
        # Rendered here for the console too (its renderer would write it whole): the same plain text.
        event_dict = structlog.processors.format_exc_info(logger, method_name, event_dict)
    for key, value in event_dict.items():
        kind = type(value)
        if kind is str:
            if len(value) <= MAX_LOGGED_VALUE_CHARS and "?" not in value:
                continue
            if "?" in value:
                value = _redact_query(value, event_dict.get("logger") == "uvicorn.access")
            if key in _TRACEBACK_KEYS:
                if len(value) > MAX_LOGGED_TRACEBACK_CHARS:
                    value = _cut(value, MAX_LOGGED_TRACEBACK_CHARS, keep_end=True)
            elif len(value) > MAX_LOGGED_VALUE_CHARS:
                value = _cut(value, MAX_LOGGED_VALUE_CHARS, keep_end=False)
            event_dict[key] = value
        elif kind in _CONTAINERS:
            text = repr(value)
            if len(text) > MAX_LOGGED_VALUE_CHARS:
                event_dict[key] = _cut(text, MAX_LOGGED_VALUE_CHARS, keep_end=False)
    return event_dict


def _redact_query(text: str, access_line: bool) -> str:
    if access_line and text.endswith(" 401"):
        text = _UNAUTHENTICATED_ACCESS.sub(r"\1[redacted]\2", text)
    # The case-blind regex is slow (~20 µs a line): a plain search of the lowered text decides first.
    if _CREDENTIAL_WORD.search(text.lower()) is None:
        return text
    return _CREDENTIAL_IN_QUERY.sub(r"\1[redacted]", text)


def _cut(text: str, limit: int, *, keep_end: bool) -> str:
    cut = len(text) - limit
    if not keep_end:
        return f"{text[:limit]}… [{cut} characters cut]"
    head = limit // 5
    return f"{text[:head]}\n… [{cut} characters cut] …\n{text[head - limit :]}"


class StdlibRecordFormatter(logging.Formatter):
    """The standard library's records (uvicorn's access line, one per request) through the same chain.

    structlog's ProcessorFormatter renders the same line (tests/test_logging.py compares the two) but first copies
    the record for other handlers: ~5 of its ~15 µs per line (measured). Here it is the only handler and only
    reads the record. Public parts only: the processors, and the `_record` / `_from_structlog` keys that
    ProcessorFormatter documents for them (add_logger_name reads `_record`, remove_processors_meta drops both)."""

    def __init__(self, *, foreign_pre_chain: Sequence[Processor], processors: Sequence[Processor]) -> None:
        super().__init__()
        self.foreign_pre_chain = tuple(foreign_pre_chain)
        self.processors = tuple(processors)
        self._chain = (*self.foreign_pre_chain, *self.processors)

    def format(self, record: logging.LogRecord) -> str:
        method_name = record.levelname.lower()
        event: Any = {"event": record.getMessage(), "_record": record, "_from_structlog": False}
        if record.exc_info:
            event["exc_info"] = record.exc_info
        if record.stack_info:
            event["stack_info"] = record.stack_info
        for processor in self._chain:
            event = processor(None, method_name, event)
        line: str = event
        return line


class _NamedWriteLogger(structlog.WriteLogger):
    """structlog's plain writer to stdout, with the name `add_logger_name` reads."""

    def __init__(self, name: str = "service", *_args: Any) -> None:
        super().__init__(sys.stdout)
        self.name = name


class _WriterPerName:
    """structlog's logger factory: one writer per logger name, made again only when sys.stdout is replaced.

    With `cache_logger_on_first_use` off, structlog asks the factory on every event, and a new WriteLogger each
    time was ~8 µs of an event's ~32 (benchmarks: two events per delivered mail, one per accept)."""

    def __init__(self) -> None:
        self._stdout: object = None
        self._writers: dict[str, _NamedWriteLogger] = {}

    def __call__(self, name: str = "service", *_args: Any) -> _NamedWriteLogger:
        if self._stdout is not sys.stdout:  # a test capturing the output swaps it
            self._stdout, self._writers = sys.stdout, {}
        writer = self._writers.get(name)
        if writer is None:
            writer = self._writers[name] = _NamedWriteLogger(name)
        return writer
