"""`make bench`: the service side by side with its baselines, against one counting SMTP sink, one table.

In turn: a bare FastAPI endpoint (the accept floor); the same endpoint committing each notification to the
service's outbox before its 202 (the floor of any design that keeps the service's promise); the tutorial's
BackgroundTasks + smtplib; the service; aiosmtplib alone with 8 persistent connections (the delivery
ceiling), and once more with every mail built before the clock starts (the SMTP conversation alone). Each HTTP
system runs in uvicorn with one worker and is driven by wrk (or benchmarks/loadgen.py when wrk is missing); the
benchmark waits until the sink has every accepted mail. All of that `--rounds` times (3), the systems in turn
in each round; the table shows the medians, and each ratio is taken within a round, then the median of those.
Results go to benchmarks/results/ as JSON; `--chart` draws throughput and p99.

    python -m benchmarks.bench [--duration 10] [--rounds 3] [--systems bare,durable,tutorial,service,alone,wire]
                               [--chart docs/bench.png]
    python -m benchmarks.bench --burst [100000]
    python -m benchmarks.bench --paced 50 [--paced-count 1000]
    python -m benchmarks.bench --replicas 3 [--postgres-url postgresql://postgres@127.0.0.1:5432/postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BODY = json.dumps({"to": ["ada@example.com"], "subject": "Benchmark", "text": "Hello from the benchmark."})
PATH = "/v1/notifications"
SYSTEMS = ("bare", "durable", "tutorial", "service", "alone", "wire")
LABELS = {
    "bare": "bare FastAPI endpoint (202, nothing else)",
    "durable": "bare endpoint + outbox commit (the floor)",
    "tutorial": "tutorial: BackgroundTasks + smtplib",
    "service": "notification-service",
    "alone": "aiosmtplib alone, 8 connections",
    "wire": "aiosmtplib alone, mails built before",
}
CHART_LABELS = {
    "bare": "bare\nendpoint",
    "durable": "floor\n(bare + outbox\ncommit)",
    "tutorial": "tutorial\n(Background-\nTasks + smtplib)",
    "service": "notification-\nservice",
    "alone": "aiosmtplib\nalone",
    "wire": "aiosmtplib alone,\nmails built\nbefore",
}
# The targets of issue 5, as ratios measured in the same run.
DELIVERED_VS_ALONE = 0.85
P99_VS_BARE = 2.0
ACCEPTED_VS_TUTORIAL = 3.0
BURST_RSS_MB = 200.0
# Issue 18: the dispatcher alone empties a backlog at >= this share of what aiosmtplib alone sends, mails built before.
DRAIN_TARGET = 0.7
# Waiting for the sink: give up when it has taken nothing new for this long.
STALL_SECONDS = 30.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def family(pid: int) -> list[int]:
    """The process and its children: the service's dispatcher runs in a child process (DISPATCHER_PROCESS)."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError), open(entry / "stat", encoding="ascii") as stat:
                if int(stat.read().rpartition(")")[2].split()[1]) == pid:
                    children.append(int(entry.name))
    return [pid, *children]


def read_status(pid: int, key: str) -> float:
    """A /proc/<pid>/status size in MB (VmHWM: the peak resident set; VmRSS: now), its children's added."""
    total = 0.0
    for member in family(pid):
        with contextlib.suppress(OSError), open(f"/proc/{member}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(key + ":"):
                    total += int(line.split()[1]) / 1024
    return total


def cpu_seconds(pid: int, *, children: bool = True) -> float:
    """User + system CPU time the process (and its children) used so far: unlike req/s, barely moved by a busy
    neighbour."""
    total = 0
    for member in family(pid) if children else [pid]:
        with contextlib.suppress(OSError), open(f"/proc/{member}/stat", encoding="ascii") as stat:
            fields = stat.read().rpartition(")")[2].split()
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


@dataclass
class Result:
    system: str
    accepted: int | None = None  # 2xx answers the load generator saw
    accepted_per_s: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    delivered: int | None = None
    delivered_per_s: float | None = None
    peak_rss_mb: float | None = None
    lost: int | None = None
    cpu_ms_per_mail: float | None = None  # CPU the system's process spent per request (or per mail, alone)
    # CPU the HTTP process alone (not the service's dispatcher) spent per 2xx while the load ran: what caps
    # accepted req/s when that process has a core to itself.
    accept_cpu_ms: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# -- the sink ----------------------------------------------------------------------------------------------


class Sink:
    def __init__(self) -> None:
        self.port, self.control_port = free_port(), free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.sink", str(self.port), str(self.control_port)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != "sink ready":
            raise RuntimeError("the SMTP sink did not start")

    def _ask(self, command: str) -> dict[str, Any]:
        with socket.create_connection(("127.0.0.1", self.control_port), timeout=5) as conn:
            conn.sendall(command.encode() + b"\n")
            data = b""
            while chunk := conn.recv(4096):
                data += chunk
        answer: dict[str, Any] = json.loads(data)
        return answer

    def get(self) -> dict[str, Any]:
        return self._ask("get")

    def reset(self) -> None:
        self._ask("reset")

    def wait_for(self, expected: int, stall_seconds: float = STALL_SECONDS) -> dict[str, Any]:
        """Until the sink has `expected` mails, or has taken none for `stall_seconds`."""
        state = self.get()
        progress_at, seen = time.monotonic(), state["count"]
        while state["count"] < expected and time.monotonic() - progress_at < stall_seconds:
            time.sleep(0.1)
            state = self.get()
            if state["count"] != seen:
                progress_at, seen = time.monotonic(), state["count"]
        return state

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def delivered_rate(state: dict[str, Any]) -> float | None:
    if state["count"] < 2 or state["last"] <= state["first"]:
        return None
    return float(state["count"] / (state["last"] - state["first"]))


# -- the systems under test --------------------------------------------------------------------------------


@contextlib.contextmanager
def uvicorn(app: str, env: dict[str, str], log_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            # In the run's own folder: the service's Settings would read a developer's `.env` in the checkout.
            cwd=log_path.parent,
            env={
                **os.environ,
                "TEMPLATES_DIR": str(ROOT / "config" / "templates"),
                **env,
                "PYTHONPATH": str(ROOT),
            },
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{base_url}/openapi.json", timeout=1):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    process.kill()
                    raise RuntimeError(f"{app} did not start:\n{log_path.read_text()[-2000:]}") from None
                time.sleep(0.1)
        try:
            yield base_url, process
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(10)


def drive(url: str, args: argparse.Namespace, *, requests: int | None = None) -> dict[str, float]:
    """Load one system: wrk for a duration, or benchmarks/loadgen.py (an exact number of requests needs it)."""
    if requests is None and args.loadgen == "wrk":
        return run_wrk(url, args.duration, args.connections, args.threads)
    limit = ["--requests", str(requests)] if requests is not None else ["--duration", str(args.duration)]
    output = subprocess.run(
        [sys.executable, "-m", "benchmarks.loadgen", url, BODY, "--connections", str(args.connections), *limit],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result: dict[str, float] = json.loads(output)
    return result


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def run_wrk(url: str, duration: float, connections: int, threads: int) -> dict[str, float]:
    output = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(duration))}s",
            "--latency",
            "--timeout",
            "10s",
            "-s",
            str(ROOT / "benchmarks" / "post.lua"),
            url,
        ],
        env={**os.environ, "BENCH_BODY": BODY},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return parse_wrk(output)


def parse_wrk(output: str) -> dict[str, float]:
    completed_match = re.search(r"(\d+) requests in ([\d.]+)(\w+)", output)
    if completed_match is None:
        raise RuntimeError(f"unexpected wrk output:\n{output}")
    completed = int(completed_match[1])
    seconds = _ms(completed_match[2] + completed_match[3]) / 1000
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = int(non_2xx[1]) if non_2xx else 0
    # wrk pads a value in seconds with a trailing space ("1.25s "): allow it, or the tutorial's p99 reads as 0.
    p50 = re.search(r"^\s+50%\s+(\S+)\s*$", output, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)\s*$", output, re.M)
    return {
        "completed": completed,
        "ok": completed - errors,
        "errors": errors,
        "seconds": seconds,
        "p50_ms": _ms(p50[1]) if p50 else float("nan"),
        "p99_ms": _ms(p99[1]) if p99 else float("nan"),
    }


def per_mail(cpu: float, count: int | None) -> float | None:
    return cpu * 1000 / count if count else None


def from_load(system: str, load: dict[str, float]) -> Result:
    return Result(
        system=system,
        accepted=int(load["ok"]),
        accepted_per_s=load["ok"] / load["seconds"],
        p50_ms=load["p50_ms"],
        p99_ms=load["p99_ms"],
        extra={"errors": int(load["errors"])},
    )


def load(system: str, process: subprocess.Popen[bytes], url: str, args: argparse.Namespace, **kw: Any) -> Result:
    """Drive one HTTP system; also what its HTTP process alone spent per 2xx meanwhile (`accept_cpu_ms`)."""
    before = cpu_seconds(process.pid, children=False)
    result = from_load(system, drive(url + PATH, args, **kw))
    result.accept_cpu_ms = per_mail(cpu_seconds(process.pid, children=False) - before, result.accepted)
    return result


def bench_no_mail(system: str, app: str, env: dict[str, str], workdir: Path, args: argparse.Namespace) -> Result:
    """The bare endpoint and the floor: they owe no mail, so there is nothing to wait for after the load."""
    with uvicorn(app, env, workdir / f"{system}.log") as (url, process):
        cpu = cpu_seconds(process.pid)
        result = load(system, process, url, args)
        result.peak_rss_mb = read_status(process.pid, "VmHWM")
        result.cpu_ms_per_mail = per_mail(cpu_seconds(process.pid) - cpu, result.accepted)
    return result


def bench_bare(sink: Sink, workdir: Path, args: argparse.Namespace) -> Result:
    return bench_no_mail("bare", "benchmarks.bare_app:app", {}, workdir, args)


def bench_durable(sink: Sink, workdir: Path, args: argparse.Namespace) -> Result:
    outbox = workdir / f"durable-outbox-{uuid.uuid4().hex[:8]}.sqlite3"
    return bench_no_mail("durable", "benchmarks.durable_app:app", {"OUTBOX_PATH": str(outbox)}, workdir, args)


def bench_tutorial(sink: Sink, workdir: Path, args: argparse.Namespace) -> Result:
    sink.reset()
    env = {"SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(sink.port)}
    with uvicorn("benchmarks.tutorial_app:app", env, workdir / "tutorial.log") as (url, process):
        cpu = cpu_seconds(process.pid)
        result = load("tutorial", process, url, args)
        state = sink.wait_for(result.accepted or 0)
        result.peak_rss_mb = read_status(process.pid, "VmHWM")
        result.cpu_ms_per_mail = per_mail(cpu_seconds(process.pid) - cpu, result.accepted)
    # The tutorial keeps nothing: a mail it answered 202 for and never sent is simply gone.
    result.delivered, result.delivered_per_s = state["count"], delivered_rate(state)
    result.lost = max(0, (result.accepted or 0) - state["count"])
    return result


def service_env(sink: Sink, outbox: Path, args: argparse.Namespace) -> dict[str, str]:
    return {
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(sink.port),
        "OUTBOX_PATH": str(outbox),
        "LOG_FORMAT": "json",
        "SEND_CONCURRENCY": "8",
        **dict(item.split("=", 1) for item in args.service_env),
    }


def outbox_counts(outbox: Path) -> dict[str, int]:
    with contextlib.closing(sqlite3.connect(outbox, timeout=30)) as db:
        return dict(db.execute("SELECT status, count(*) FROM notifications GROUP BY status").fetchall())


def bench_service(sink: Sink, workdir: Path, args: argparse.Namespace, *, requests: int | None = None) -> Result:
    sink.reset()
    # A file of its own for each run: the rows of an earlier round would count as owed again.
    outbox = workdir / f"service-outbox-{uuid.uuid4().hex[:8]}.sqlite3"
    with uvicorn("service.main:app", service_env(sink, outbox, args), workdir / "service.log") as (url, process):
        cpu = cpu_seconds(process.pid)
        result = load("service", process, url, args, requests=requests)
        # Every row in the outbox is a mail the service owes: the 202s the load generator saw, plus any whose
        # answer was cut off when the load generator stopped.
        stored = sum(outbox_counts(outbox).values())
        state = sink.wait_for(stored)
        if process.poll() is not None:
            # Its numbers would be wrong, not just bad: say so instead of printing them.
            raise RuntimeError(f"the service exited during the run (status {process.returncode})")
        result.peak_rss_mb = read_status(process.pid, "VmHWM")
        result.cpu_ms_per_mail = per_mail(cpu_seconds(process.pid) - cpu, stored)
        counts = outbox_counts(outbox)
    result.delivered, result.delivered_per_s = state["count"], delivered_rate(state)
    result.lost = max(0, stored - state["count"])
    result.extra.update(stored=stored, outbox=counts, answered_202_not_stored=max(0, (result.accepted or 0) - stored))
    return result


# -- replicas on PostgreSQL -------------------------------------------------------------------------------


async def _postgres(url: str, sql: str) -> Any:
    import asyncpg  # the service's own driver; only this mode needs it here

    connection = await asyncpg.connect(url)
    try:
        return await connection.fetchval(sql)
    finally:
        await connection.close()


@contextlib.contextmanager
def temporary_database(admin_url: str) -> Iterator[str]:
    """A database of its own for one run, dropped afterwards (with whatever connections are left)."""
    name = f"nsvc_bench_{uuid.uuid4().hex[:10]}"
    asyncio.run(_postgres(admin_url, f'CREATE DATABASE "{name}"'))
    try:
        yield urlunsplit(urlsplit(admin_url)._replace(path=f"/{name}"))
    finally:
        asyncio.run(_postgres(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def bench_replicas(sink: Sink, workdir: Path, args: argparse.Namespace, replicas: int) -> Result:
    """`replicas` service processes on one PostgreSQL outbox, the load spread over them round-robin."""
    sink.reset()
    label = f"postgres-{replicas}"
    with temporary_database(args.postgres_url) as url, contextlib.ExitStack() as stack:
        env = {**service_env(sink, workdir / "unused.sqlite3", args), "OUTBOX_URL": url}
        started = [
            stack.enter_context(uvicorn("service.main:app", env, workdir / f"{label}-{number}.log"))
            for number in range(replicas)
        ]
        cpu = [cpu_seconds(process.pid) for _, process in started]
        result = from_load(label, drive(",".join(base + PATH for base, _ in started), args))
        stored = int(asyncio.run(_postgres(url, "SELECT count(*) FROM notifications")))
        state = sink.wait_for(stored)
        if any(process.poll() is not None for _, process in started):
            raise RuntimeError("a replica exited during the run")
        result.peak_rss_mb = max(read_status(process.pid, "VmHWM") for _, process in started)
        spent = sum(cpu_seconds(process.pid) - before for (_, process), before in zip(started, cpu, strict=True))
        result.cpu_ms_per_mail = per_mail(spent, stored)
    result.delivered, result.delivered_per_s = state["count"], delivered_rate(state)
    result.lost = max(0, stored - state["count"])
    result.extra.update(stored=stored, replicas=replicas, duplicates=max(0, state["count"] - stored))
    return result


def scaling(args: argparse.Namespace) -> dict[str, Result]:
    """SQLite with one process, then PostgreSQL with one and with `--replicas` processes, same load."""
    # wrk drives one URL; the Python generator spreads connections over every replica. Same one for all three.
    args.loadgen = "python"
    info = machine()
    results: dict[str, Result] = {}
    sink = Sink()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-") as workdir:
            print("… SQLite, 1 process", file=sys.stderr, flush=True)
            results["sqlite-1"] = bench_service(sink, Path(workdir), args)
            for replicas in sorted({1, args.replicas}):
                print(f"… PostgreSQL, {replicas} replica(s)", file=sys.stderr, flush=True)
                results[f"postgres-{replicas}"] = bench_replicas(sink, Path(workdir), args, replicas)
    finally:
        sink.stop()
    lines = [
        f"{info['cpus']} CPUs ({info['cpu']}), Python {info['python']}, load average before: "
        + " ".join(f"{x:.2f}" for x in info["load_average"]),
        f"load: python, {args.connections} connections spread over the replicas, {args.duration:g} s each",
        "",
        "| outbox, processes | accepted req/s | p50 ms | p99 ms | delivered mails/s | peak RSS MB (each) | lost |"
        " CPU ms/mail (all) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        backend, count = name.split("-")
        label = f"{'SQLite' if backend == 'sqlite' else 'PostgreSQL'}, {count}"
        lines.append(
            f"| {label} | {_fmt(r.accepted_per_s)} | {_fmt(r.p50_ms, 1)} | {_fmt(r.p99_ms, 1)} |"
            f" {_fmt(r.delivered_per_s)} | {_fmt(r.peak_rss_mb, 1)} | {_fmt(r.lost)} | {_fmt(r.cpu_ms_per_mail, 2)} |"
        )
    print("\n".join(lines))
    report = {"kind": "replicas", "machine": info, "results": {name: asdict(r) for name, r in results.items()}}
    print(f"\nresults: {save(report, args.out, 'replicas')}")
    return results


def bench_alone(sink: Sink, workdir: Path, args: argparse.Namespace, *, prebuilt: bool = False) -> Result:
    sink.reset()
    output = subprocess.run(
        [sys.executable, "-m", "benchmarks.smtp_alone", str(sink.port), str(args.alone_count), "8"]
        + (["--prebuilt"] if prebuilt else []),
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    sent = json.loads(output)
    state = sink.wait_for(args.alone_count)
    return Result(
        system="wire" if prebuilt else "alone",
        delivered=state["count"],
        delivered_per_s=delivered_rate(state),
        peak_rss_mb=sent["peak_rss_mb"],
        cpu_ms_per_mail=per_mail(sent["cpu_seconds"], args.alone_count),
        lost=args.alone_count - state["count"],
    )


# -- the report --------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "load_average": os.getloadavg(),
    }


def _fmt(value: float | None, digits: int = 0) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


# name, numerator (system, field), denominator (system, field), target bound, at least (True) or at most.
# The rows without a bound explain the third target: the floor is what any design that commits each mail
# before its 202 (the service's promise) reaches with one uvicorn worker on this machine.
RATIOS: tuple[tuple[str, tuple[str, str], tuple[str, str], float | None, bool], ...] = (
    (
        "delivered mails/s, service ÷ aiosmtplib alone",
        ("service", "delivered_per_s"),
        ("alone", "delivered_per_s"),
        DELIVERED_VS_ALONE,
        True,
    ),
    ("accept p99, service ÷ bare endpoint", ("service", "p99_ms"), ("bare", "p99_ms"), P99_VS_BARE, False),
    (
        "accepted req/s, service ÷ tutorial",
        ("service", "accepted_per_s"),
        ("tutorial", "accepted_per_s"),
        ACCEPTED_VS_TUTORIAL,
        True,
    ),
    ("accepted req/s, floor ÷ tutorial", ("durable", "accepted_per_s"), ("tutorial", "accepted_per_s"), None, True),
    ("accepted req/s, service ÷ floor", ("service", "accepted_per_s"), ("durable", "accepted_per_s"), None, True),
)


def ratios(rounds: list[dict[str, Result]]) -> list[dict[str, Any]]:
    """Each ratio within each round (the two systems measured minutes apart, not a round apart), then the
    median over the rounds, which the verdict is on, and the range, which says how far to trust it."""
    rows = []
    for name, (system, metric), (other, other_metric), bound, at_least in RATIOS:
        values = []
        for results in rounds:
            a, b = results.get(system), results.get(other)
            value = _ratio(a and getattr(a, metric), b and getattr(b, other_metric))
            if value is not None:
                values.append(value)
        median = statistics.median(values) if values else None
        met = None
        if median is not None and bound is not None:
            met = median >= bound if at_least else median <= bound
        target = "" if bound is None else f"{'≥' if at_least else '≤'} {bound:g}"
        rows.append({"name": name, "value": median, "values": values, "target": target, "met": met})
    return rows


def combine(rounds: list[dict[str, Result]]) -> dict[str, Result]:
    """One result per system over the rounds: medians, the highest peak RSS, every lost mail."""
    combined: dict[str, Result] = {}
    for name in SYSTEMS:
        runs = [results[name] for results in rounds if name in results]
        if not runs:
            continue

        def over(metric: str, fold: Callable[[list[Any]], Any], runs: list[Result] = runs) -> Any:
            values = [v for r in runs if (v := getattr(r, metric)) is not None]
            return fold(values) if values else None

        combined[name] = Result(
            system=name,
            accepted=over("accepted", sum),
            accepted_per_s=over("accepted_per_s", statistics.median),
            p50_ms=over("p50_ms", statistics.median),
            p99_ms=over("p99_ms", statistics.median),
            delivered=over("delivered", sum),
            delivered_per_s=over("delivered_per_s", statistics.median),
            peak_rss_mb=over("peak_rss_mb", max),
            lost=over("lost", sum),
            cpu_ms_per_mail=over("cpu_ms_per_mail", statistics.median),
            accept_cpu_ms=over("accept_cpu_ms", statistics.median),
            extra={"rounds": len(runs)},
        )
    return combined


def table(
    results: dict[str, Result], rows: list[dict[str, Any]], rounds: int, args: argparse.Namespace, info: dict[str, Any]
) -> str:
    lines = [
        f"{info['cpus']} CPUs ({info['cpu']}), Python {info['python']}, load average before: "
        + " ".join(f"{x:.2f}" for x in info["load_average"]),
        f"load: {args.loadgen}, {args.connections} connections, {args.duration:g} s per HTTP system;"
        f" aiosmtplib alone: {args.alone_count} mails; {rounds} round(s), the systems in turn in each;"
        " medians over the rounds (the highest peak RSS, every lost mail)",
        "",
        f"| {'system':<42} | accepted req/s | p50 ms | p99 ms | delivered mails/s | peak RSS MB | lost | CPU ms/mail |"
        " HTTP CPU ms/accept |",
        f"|{'-' * 44}|---------------:|-------:|-------:|------------------:|------------:|-----:|------------:|"
        "------------------:|",
    ]
    for name in SYSTEMS:
        if (r := results.get(name)) is None:
            continue
        lines.append(
            f"| {LABELS[name]:<42} | {_fmt(r.accepted_per_s):>14} | {_fmt(r.p50_ms, 1):>6} | {_fmt(r.p99_ms, 1):>6} |"
            f" {_fmt(r.delivered_per_s):>17} | {_fmt(r.peak_rss_mb, 1):>11} | {_fmt(r.lost):>4} |"
            f" {_fmt(r.cpu_ms_per_mail, 2):>11} | {_fmt(r.accept_cpu_ms, 2):>18} |"
        )
    lines.append("")
    lines.append(f"  {'ratio, within each round':<48} {'median':>6}  {'rounds':<17}  target")
    for row in rows:
        verdict = "" if row["met"] is None else ("met" if row["met"] else "MISSED")
        spread = " ".join(_fmt(v, 2) for v in row["values"]) or "—"
        lines.append(f"  {row['name']:<48} {_fmt(row['value'], 2):>6}  {spread:<17}  {row['target']}  {verdict}")
    return "\n".join(lines)


def chart(results: dict[str, Result], path: Path, info: dict[str, Any], rounds: int) -> None:
    import matplotlib  # a bench-only dependency: imported only when a chart is asked for

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [name for name in SYSTEMS if name in results]
    labels = [CHART_LABELS[name] for name in names]
    figure, (throughput, latency) = plt.subplots(1, 2, figsize=(14, 5.5))
    positions = range(len(names))
    width = 0.38
    accepted = [results[n].accepted_per_s or 0 for n in names]
    delivered = [results[n].delivered_per_s or 0 for n in names]
    throughput.bar([p - width / 2 for p in positions], accepted, width, label="accepted req/s", color="#4c72b0")
    throughput.bar([p + width / 2 for p in positions], delivered, width, label="delivered mails/s", color="#55a868")
    throughput.set_xticks(list(positions), labels, fontsize=8)
    throughput.set_title("Throughput (higher is better)")
    throughput.legend()
    p99 = [results[n].p99_ms or 0 for n in names]
    latency.bar(list(positions), p99, 0.6, color="#c44e52")
    latency.set_xticks(list(positions), labels, fontsize=8)
    latency.set_ylabel("ms (log scale)")
    if any(p99):
        latency.set_yscale("log")
    latency.set_title("Accept latency p99 (lower is better; none without HTTP)")
    figure.suptitle(
        f"one uvicorn worker each (the service's dispatcher in a second process), {info['cpus']} CPUs,"
        f" load average {info['load_average'][0]:.1f} before the run\nmedians of {rounds} round(s)"
        " — compare the ratios, not the absolute numbers",
        fontsize=10,
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    print(f"chart: {path}")


def save(report: dict[str, Any], out: Path, kind: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{kind}-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2, default=str))
    return path


# -- main --------------------------------------------------------------------------------------------------


def side_by_side(args: argparse.Namespace) -> dict[str, Result]:
    runners = {
        "bare": bench_bare,
        "durable": bench_durable,
        "tutorial": bench_tutorial,
        "service": bench_service,
        "alone": bench_alone,
        "wire": lambda sink, workdir, args: bench_alone(sink, workdir, args, prebuilt=True),
    }
    info = machine()
    rounds: list[dict[str, Result]] = []
    sink = Sink()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-") as workdir:
            for number in range(args.rounds):
                results: dict[str, Result] = {}
                for name in args.systems:
                    print(f"… round {number + 1}/{args.rounds}: {LABELS[name]}", file=sys.stderr, flush=True)
                    results[name] = runners[name](sink, Path(workdir), args)
                rounds.append(results)
    finally:
        sink.stop()
    combined, rows = show(rounds, args, info)
    report = {
        "kind": "side_by_side",
        "machine": info,
        "load_average_after": os.getloadavg(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("chart", "out")},
        "results": {name: asdict(r) for name, r in combined.items()},
        "rounds": [{name: asdict(r) for name, r in results.items()} for results in rounds],
        "ratios": rows,
    }
    print(f"\nresults: {save(report, args.out, 'bench')}")
    if args.chart:
        chart(combined, args.chart, info, len(rounds))
    return combined


def show(
    rounds: list[dict[str, Result]], args: argparse.Namespace, info: dict[str, Any]
) -> tuple[dict[str, Result], list[dict[str, Any]]]:
    """Print the table of these rounds; the medians and the ratios are computed once, here."""
    combined, rows = combine(rounds), ratios(rounds)
    print(table(combined, rows, len(rounds), args, info))
    return combined, rows


def redraw(path: Path, chart_path: Path | None) -> None:
    """The table (and the chart) of a saved run again, without running anything."""
    report = json.loads(path.read_text())
    rounds = [{name: Result(**r) for name, r in results.items()} for results in report["rounds"]]
    combined, _ = show(rounds, argparse.Namespace(**report["settings"]), report["machine"])
    if chart_path:
        chart(combined, chart_path, report["machine"], len(rounds))


def burst(args: argparse.Namespace) -> Result:
    info = machine()
    sink = Sink()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-") as workdir:
            started = time.monotonic()
            result = bench_service(sink, Path(workdir), args, requests=args.burst)
            result.extra["seconds_until_all_delivered"] = time.monotonic() - started
    finally:
        sink.stop()
    print(
        f"{info['cpus']} CPUs ({info['cpu']}), load average before: "
        + " ".join(f"{x:.2f}" for x in info["load_average"])
    )
    print(f"burst of {args.burst:,} notifications, {args.connections} connections, one uvicorn worker")
    print(
        f"  accepted (202)        {result.accepted:,}   at {_fmt(result.accepted_per_s)} req/s,"
        f" p50 {_fmt(result.p50_ms, 1)} ms, p99 {_fmt(result.p99_ms, 1)} ms"
    )
    print(f"  on disk (outbox rows) {result.extra['stored']:,}")
    print(f"  delivered             {result.delivered:,}   at {_fmt(result.delivered_per_s)} mails/s")
    print(f"  lost                  {result.lost:,}")
    rss_met = (result.peak_rss_mb or 0) <= BURST_RSS_MB
    print(
        f"  peak RSS              {_fmt(result.peak_rss_mb, 1)} MB  (target ≤ {BURST_RSS_MB:g})"
        f"  {'met' if rss_met else 'MISSED'}"
    )
    all_met = rss_met and result.lost == 0 and result.accepted == args.burst == result.delivered
    print(f"  all accepted, all delivered, none lost: {'met' if all_met else 'MISSED'}")
    report = {"kind": "burst", "machine": info, "result": asdict(result), "requests": args.burst}
    print(f"\nresults: {save(report, args.out, 'burst')}")
    return result


def paced(args: argparse.Namespace) -> Result:
    """SEND_RATE_LIMIT at work: a burst accepted at once, then delivered at the limit (docs/production-mail.md)."""
    rate = args.paced
    count = args.paced_count or max(200, int(rate * 20))
    args.service_env = [*args.service_env, f"SEND_RATE_LIMIT={rate:g}"]
    info = machine()
    sink = Sink()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-") as workdir:
            result = bench_service(sink, Path(workdir), args, requests=count)
    finally:
        sink.stop()
    achieved = result.delivered_per_s or 0.0
    print(f"{info['cpus']} CPUs ({info['cpu']}), load average before: {info['load_average'][0]:.2f}")
    print(f"paced: {count:,} notifications at SEND_RATE_LIMIT={rate:g}, one uvicorn worker")
    print(f"  accepted (202)   {result.accepted:,}   at {_fmt(result.accepted_per_s)} req/s")
    print(f"  delivered        {result.delivered:,}   at {achieved:.1f} mails/s, first to last mail at the sink")
    print(f"  achieved ÷ limit {achieved / rate:.3f}  (the bucket lets a tenth of a second's mails go at once)")
    print(f"  lost             {result.lost:,}")
    report = {"kind": "paced", "machine": info, "result": asdict(result), "requests": count, "rate": rate}
    print(f"\nresults: {save(report, args.out, 'paced')}")
    return result


def bench_drain(sink: Sink, workdir: Path, args: argparse.Namespace, *, postgres_url: str | None = None) -> Result:
    """`args.drain` due notifications put in the outbox while the service is stopped, then the service started
    with no HTTP load: the rate at which the dispatcher alone empties it, first to last mail at the sink."""
    sink.reset()
    label = "drain-postgres" if postgres_url else "drain-sqlite"
    outbox = workdir / f"drain-{uuid.uuid4().hex[:8]}.sqlite3"
    env = service_env(sink, outbox, args)
    if postgres_url:
        env["OUTBOX_URL"] = postgres_url
    env["QUEUE_LIMIT"] = str(args.drain + 1)
    subprocess.run(
        [sys.executable, "-m", "benchmarks.fill_outbox", str(args.drain)],
        cwd=workdir,
        env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
        check=True,
    )
    with uvicorn("service.main:app", env, workdir / f"{label}.log") as (_, process):
        http_cpu, all_cpu = cpu_seconds(process.pid, children=False), cpu_seconds(process.pid)
        state = sink.wait_for(args.drain)
        if process.poll() is not None:
            raise RuntimeError(f"the service exited during the drain (status {process.returncode})")
        dispatcher_cpu = (cpu_seconds(process.pid) - all_cpu) - (cpu_seconds(process.pid, children=False) - http_cpu)
        result = Result(system=label, peak_rss_mb=read_status(process.pid, "VmHWM"))
    result.delivered, result.delivered_per_s = state["count"], delivered_rate(state)
    result.lost = max(0, args.drain - state["count"])
    # The dispatcher's own process (DISPATCHER_PROCESS, the default): its CPU per mail beside aiosmtplib's.
    result.cpu_ms_per_mail = per_mail(dispatcher_cpu, state["count"])
    return result


def drain(args: argparse.Namespace) -> dict[str, Result]:
    """The drain rate on SQLite (and PostgreSQL with --drain-postgres) beside aiosmtplib alone, mails built
    before, with the same connections (SEND_CONCURRENCY=8) and the same sink."""
    info = machine()
    results: dict[str, Result] = {}
    sink = Sink()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-") as workdir:
            args.alone_count = args.drain
            results["wire"] = bench_alone(sink, Path(workdir), args, prebuilt=True)
            results["drain-sqlite"] = bench_drain(sink, Path(workdir), args)
            if args.drain_postgres:
                with temporary_database(args.postgres_url) as url:
                    results["drain-postgres"] = bench_drain(sink, Path(workdir), args, postgres_url=url)
    finally:
        sink.stop()
    wire = results["wire"]
    print(f"{info['cpus']} CPUs ({info['cpu']}), load average before: {info['load_average'][0]:.2f}")
    print(f"drain: {args.drain:,} due notifications, 8 connections, no HTTP load")
    print("| system | delivered mails/s | ÷ aiosmtplib, mails built before | CPU ms/mail | lost |")
    print("|---|---:|---:|---:|---:|")
    for name, r in results.items():
        share = _ratio(r.delivered_per_s, wire.delivered_per_s)
        print(
            f"| {name} | {_fmt(r.delivered_per_s)} | {_fmt(share, 2)} (target ≥ {DRAIN_TARGET:g}) |"
            f" {_fmt(r.cpu_ms_per_mail, 3)} | {_fmt(r.lost)} |"
        )
    report = {"kind": "drain", "machine": info, "results": {name: asdict(r) for name, r in results.items()}}
    print(f"\nresults: {save(report, args.out, 'drain')}")
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per HTTP system")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument(
        "--rounds", type=int, default=3, help="times each system runs, in turn; the table shows the medians"
    )
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--alone-count", type=int, default=10_000, help="mails aiosmtplib alone sends")
    parser.add_argument("--systems", type=lambda s: s.split(","), default=list(SYSTEMS))
    parser.add_argument("--loadgen", choices=("wrk", "python"), default="wrk" if shutil.which("wrk") else "python")
    parser.add_argument("--burst", type=int, nargs="?", const=100_000, default=None, help="burst mode: N requests")
    parser.add_argument(
        "--paced", type=float, default=None, metavar="RATE", help="pacing mode: SEND_RATE_LIMIT=RATE, achieved rate"
    )
    parser.add_argument("--drain", type=int, nargs="?", const=50_000, default=None, help="drain mode: N due mails")
    parser.add_argument("--drain-postgres", action="store_true", help="drain mode: PostgreSQL too (--postgres-url)")
    parser.add_argument("--paced-count", type=int, default=None, help="notifications in pacing mode (20 s worth)")
    parser.add_argument(
        "--service-env", action="append", default=[], metavar="NAME=VALUE", help="a setting for the service"
    )
    parser.add_argument(
        "--replicas",
        type=int,
        default=None,
        help="scaling mode: SQLite with 1 process, PostgreSQL with 1 and with N replicas on one database",
    )
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
        help="a PostgreSQL where the scaling mode may create (and drop) a database of its own",
    )
    parser.add_argument("--chart", type=Path, default=None, help="write the chart PNG here")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON results")
    parser.add_argument(
        "--from-json", type=Path, default=None, help="print the table (and --chart) of a saved run; run nothing"
    )
    args = parser.parse_args(argv)
    unknown = set(args.systems) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown systems: {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.from_json is not None:
        redraw(args.from_json, args.chart)
    elif args.burst is not None:
        burst(args)
    elif args.paced is not None:
        paced(args)
    elif args.drain is not None:
        drain(args)
    elif args.replicas is not None:
        scaling(args)
    else:
        side_by_side(args)


if __name__ == "__main__":
    main()
