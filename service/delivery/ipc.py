"""The pipes between the HTTP process and its dispatcher process (process.py, worker.py): what goes over them.

Parent to child, on the child's stdin: the settings once (length-prefixed JSON), then one byte per wake-up;
closing the pipe says stop. Child to parent, on a pipe of its own: JSON lines, `{"ready": pid}` once, then
`{"metrics": [...]}` every METRICS_EVERY_SECONDS, which the parent serves on /metrics as its own.
"""

from __future__ import annotations

import json
import os
import struct
import weakref
from pathlib import Path
from typing import Any

from prometheus_client.metrics_core import Metric
from pydantic import SecretStr

from service.config import Settings
from service.metrics import Metrics

WAKE = b"w"
# The child's report cadence; the parent calls a child that stays silent much longer than this stuck.
METRICS_EVERY_SECONDS = 0.5

# -- parent to child: the settings ------------------------------------------------------------------------


def settings_payload(settings: Settings) -> bytes:
    """The settings as the child rebuilds them: every field by its env var name, secrets in the clear (the pipe
    is private to the two processes), length-prefixed."""
    values: dict[str, Any] = {}
    for name, value in settings.model_dump().items():
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif isinstance(value, Path):
            value = str(value)
        values[name] = value
    data = json.dumps(values).encode()
    return struct.pack("!I", len(data)) + data


def read_settings(fd: int) -> Settings:
    """In the child: the settings its parent wrote first on `fd` (blocking; before the event loop starts)."""

    def read_exactly(size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = os.read(fd, size - len(data))
            if not chunk:
                raise SystemExit("dispatcher process: the parent closed the pipe before sending the settings")
            data += chunk
        return data

    (size,) = struct.unpack("!I", read_exactly(4))
    return Settings(_env_file=None, **json.loads(read_exactly(size)))


# -- child to parent: reports -----------------------------------------------------------------------------


def ready_report(pid: int) -> bytes:
    return json.dumps({"ready": pid}).encode() + b"\n"


def is_ready_report(line: bytes) -> bool:
    return line.startswith(b'{"ready"')


def metrics_report(metrics: Metrics) -> bytes:
    """The dispatcher's metrics as they are now, as one JSON line for the HTTP process to serve."""
    snapshot = [
        {
            "name": family.name,
            "documentation": family.documentation,
            "type": family.type,
            "samples": [[sample.name, sample.labels, sample.value] for sample in family.samples],
        }
        for collector in metrics.dispatcher_collectors()
        for family in collector.collect()
    ]
    return json.dumps({"metrics": snapshot}).encode() + b"\n"


class MetricsMirror:
    """In the HTTP process: the dispatcher process' metrics, served in place of this process' own (idle) ones.
    Until the first report arrives, the idle values are served."""

    def __init__(self, metrics: Metrics) -> None:
        own = metrics.dispatcher_collectors()
        self.families = [family for collector in own for family in collector.collect()]
        for collector in own:
            metrics.registry.unregister(collector)
        metrics.registry.register(self)

    @classmethod
    def of(cls, metrics: Metrics) -> MetricsMirror:
        """The one mirror of an app's metrics (a second dispatcher handle on the same app shares it)."""
        mirror = _mirrors.get(metrics)
        if mirror is None:
            mirror = _mirrors[metrics] = cls(metrics)
        return mirror

    def collect(self) -> list[Metric]:
        return self.families

    def take(self, line: bytes) -> None:
        """One report line from the child; anything but a well-formed metrics report is passed over."""
        try:
            snapshot = json.loads(line)["metrics"]
            families = []
            for data in snapshot:
                family = Metric(str(data["name"]), str(data["documentation"]), str(data["type"]))
                for name, labels, value in data["samples"]:
                    family.add_sample(name, labels, value)
                families.append(family)
        except (ValueError, KeyError, TypeError):
            return
        self.families = families


_mirrors: weakref.WeakKeyDictionary[Metrics, MetricsMirror] = weakref.WeakKeyDictionary()
