"""The `scale` profile's nginx (config/nginx.conf): it re-resolves the replicas through Docker's DNS, a dead replica
costs one short connect wait, and the image named in docker-compose.yml is new enough for the config."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.compose.test_contract import ROOT, load_compose, notifier_services

NGINX_CONF = ROOT / "config/nginx.conf"
# `server … resolve` in an upstream block: open source nginx has it since 1.27.3.
RESOLVE_SINCE = (1, 27, 3)


def directives(block: str, name: str) -> list[list[str]]:
    """The arguments of every `name …;` in `block` (comments dropped)."""
    text = re.sub(r"#.*", "", block)
    return [match.group(1).split() for match in re.finditer(rf"(?:^|[;{{}}\s]){name}\s+([^;{{}}]*);", text)]


def upstream_block() -> str:
    match = re.search(r"upstream\s+notifier\s*\{(.*?)\}", NGINX_CONF.read_text(), re.DOTALL)
    assert match, "config/nginx.conf has no `upstream notifier { … }`"
    return match.group(1)


def duration_seconds(value: str) -> float:
    number, unit = re.fullmatch(r"(\d+)(ms|s|m)?", value).groups()  # type: ignore[union-attr]
    return int(number) * {"ms": 0.001, "s": 1, None: 1, "m": 60}[unit]


def options(arguments: list[str]) -> dict[str, str]:
    return dict(argument.split("=", 1) for argument in arguments if "=" in argument)


def test_nginx_asks_dockers_dns_again_and_again() -> None:
    # Resolved once at start, a replica re-created with a new address would lose its traffic for good.
    resolvers = directives(NGINX_CONF.read_text(), "resolver")
    assert resolvers, "no `resolver`: nginx resolves the replicas' name once, at start, and never again"
    [resolver] = resolvers
    assert resolver[0] == "127.0.0.11", "Docker's embedded DNS answers on 127.0.0.11 in a compose network"
    assert duration_seconds(options(resolver)["valid"]) <= 30, "Docker's answers say 600 s: nginx must ask sooner"
    block = upstream_block()
    assert directives(block, "zone"), "`resolve` keeps its servers in shared memory: the upstream needs a zone"
    servers = directives(block, "server")
    assert servers
    replicas = {f"{name}:8000" for name in notifier_services(load_compose())}
    for server in servers:
        assert server[0] in replicas, f"{server[0]} is not a notifier service of docker-compose.yml"
        assert "resolve" in server, f"`server {server[0]}` is resolved once, at start: add `resolve`"


def test_a_dead_replica_costs_one_short_wait() -> None:
    # A stopped container's address answers nothing: each try waits the whole connect timeout (docs/scaling.md).
    [[connect_timeout]] = directives(NGINX_CONF.read_text(), "proxy_connect_timeout")
    assert duration_seconds(connect_timeout) <= 1
    for server in directives(upstream_block(), "server"):
        settings = options(server)
        assert settings.get("max_fails") == "1", "the first failed connect takes the replica out"
        # Out for at least as long as the DNS answer that may still name it.
        assert duration_seconds(settings["fail_timeout"]) >= 10


def image_version(image: str) -> tuple[int, ...]:
    match = re.fullmatch(r"nginx:(\d+)\.(\d+)\.(\d+)(?:-[a-z0-9.]+)?", image)
    assert match, f"pin the proxy's image to a full nginx version, not {image!r}"
    return tuple(int(part) for part in match.groups())


def test_the_proxy_image_understands_the_config() -> None:
    image = load_compose()["services"]["proxy"]["image"]
    assert image_version(image) >= RESOLVE_SINCE, f"{image} refuses `server … resolve`"


def test_nginx_accepts_the_config(tmp_path: Path) -> None:
    # Optional: only where an nginx new enough is installed (Debian 12 has 1.22); the image itself is checked above.
    nginx = shutil.which("nginx")
    if nginx is None:
        pytest.skip("nginx not installed")
    version = subprocess.run([nginx, "-v"], capture_output=True, text=True, check=False).stderr
    found = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", version)
    if found is None or tuple(int(part) for part in found.groups()) < RESOLVE_SINCE:
        pytest.skip(f"{version.strip()} predates `server … resolve` (1.27.3)")
    result = subprocess.run(
        [nginx, "-t", "-p", str(tmp_path), "-e", "stderr", "-c", str(NGINX_CONF), "-g", f"pid {tmp_path}/nginx.pid;"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
