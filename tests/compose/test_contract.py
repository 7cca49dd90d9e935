"""The compose stack and the settings agree: compose and config/*.env set only real settings, every setting is
documented there and in the README, the compose files validate, and the image installs exactly what CI installs."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.config import SECRET_FIELDS, Settings
from tests.tools import find_tool

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILES = ["docker-compose.yml", "docker-compose.mailpit.yml"]
# `NAME=value` or a commented-out `# NAME=value`: both say "this variable exists".
ENV_LINE = re.compile(r"^#?\s*([A-Z][A-Z0-9_]*)=")
SETTINGS = set(Settings.model_fields)
# Read by another program in the image, not by Settings: each is named here on purpose, with who reads it.
IMAGE_VARIABLES = {"FORWARDED_ALLOW_IPS": "uvicorn --proxy-headers: addresses trusted for X-Forwarded-*"}


def env_file_names(path: Path) -> set[str]:
    return {match.group(1) for line in path.read_text().splitlines() if (match := ENV_LINE.match(line))}


def load_compose(name: str = "docker-compose.yml") -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / name).read_text())
    return loaded


def notifier_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run this image (built from `.` or named after it), in every profile; not the others
    built here (the webhooks profile's receiver)."""
    return {
        name: service
        for name, service in compose["services"].items()
        if service.get("build") == "." or str(service.get("image", "")).startswith("notification-service")
    }


def environment_of(service: dict[str, Any]) -> dict[str, Any]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):  # the `- NAME=value` form
        return dict(item.split("=", 1) if "=" in item else (item, None) for item in environment)
    return dict(environment)


def notifier_env_files() -> list[dict[str, Any]]:
    entries = load_compose()["services"]["notifier"]["env_file"]
    return [entry if isinstance(entry, dict) else {"path": entry} for entry in entries]


def test_env_files_set_only_known_settings() -> None:
    for path in sorted((ROOT / "config").glob("*.env*")):
        unknown = env_file_names(path) - SETTINGS
        assert not unknown, f"{path.name} sets {sorted(unknown)}, which Settings does not read"


def test_compose_sets_only_known_settings() -> None:
    services = notifier_services(load_compose())
    assert "notifier" in services
    for name, service in services.items():
        environment = environment_of(service)
        unknown = set(environment) - SETTINGS - set(IMAGE_VARIABLES)
        assert not unknown, f"docker-compose.yml sets {sorted(unknown)} on {name}, which Settings does not read"
        # The values must pass the service's own validation, or the container would stop at start.
        values = {key: value for key, value in environment.items() if key in SETTINGS and value is not None}
        Settings(_env_file=None, **values)  # type: ignore[call-arg]


def test_every_setting_is_documented_in_the_env_files() -> None:
    documented = env_file_names(ROOT / "config/notifier.env")
    secrets = env_file_names(ROOT / "config/secrets.env.example")
    missing = SETTINGS - documented - (secrets & SECRET_FIELDS)
    assert not missing, f"add {sorted(missing)} to config/notifier.env (secrets: config/secrets.env.example)"
    committed_values = {line.split("=")[0] for line in (ROOT / "config/notifier.env").read_text().splitlines()}
    assert not SECRET_FIELDS & committed_values, "secret values belong in config/secrets.env, never in a committed file"


def test_every_variable_in_the_env_files_has_a_comment() -> None:
    for path in sorted((ROOT / "config").glob("*.env*")):
        lines = path.read_text().splitlines()
        for number, line in enumerate(lines):
            if not ENV_LINE.match(line) or line.startswith("#"):
                continue
            above = next(prior for prior in reversed(lines[:number]) if not ENV_LINE.match(prior) or prior[0] == "#")
            assert above.startswith("# "), f"{path.name}:{number + 1}: {line.split('=')[0]} has no comment above it"


def test_every_setting_is_in_the_readme_table_with_a_description() -> None:
    readme_rows = set(re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \|", (ROOT / "README.md").read_text(), re.MULTILINE))
    assert not SETTINGS - readme_rows, f"add rows for {sorted(SETTINGS - readme_rows)} to README's configuration table"
    undescribed = [name for name, field in Settings.model_fields.items() if not field.description]
    assert not undescribed, f"Settings fields without a description: {undescribed}"


def test_secrets_file_is_optional_ignored_by_git_and_has_an_example() -> None:
    entries = {entry["path"]: entry for entry in notifier_env_files()}
    assert entries["config/notifier.env"].get("required", True) is True
    assert entries["config/secrets.env"]["required"] is False, "a fresh clone has no secrets.env: compose must start"
    assert (ROOT / "config/secrets.env.example").is_file()
    ignored = subprocess.run(["git", "check-ignore", "-q", "config/secrets.env"], cwd=ROOT, check=False)
    assert ignored.returncode == 0, "config/secrets.env must be in .gitignore"


def test_the_image_installs_with_the_command_ci_runs() -> None:
    # CI runs `make install` = `uv sync --locked`; the image must use the same, so a stale lock fails CI first.
    makefile = (ROOT / "Makefile").read_text()
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^\s*\$\(UV\) sync --locked\b", makefile, re.MULTILINE)
    assert re.search(r"^RUN uv sync --locked --no-dev --no-install-project$", dockerfile, re.MULTILINE)
    order = [dockerfile.index(step) for step in ("COPY pyproject.toml uv.lock", "RUN uv sync", "COPY service")]
    assert order == sorted(order), "the dependency layer comes before the code, so a code change reuses it"


def for_compose_v1(compose: dict[str, Any]) -> dict[str, Any]:
    """Debian's docker-compose 1.29 predates env_file's long syntax (Compose 2.24): rewrite it to plain paths,
    leaving out optional files that are absent, exactly as Compose 2.24+ would; the rest is checked as written."""
    for service in compose.get("services", {}).values():
        if "env_file" in service:
            entries = [entry if isinstance(entry, dict) else {"path": entry} for entry in service["env_file"]]
            service["env_file"] = [
                entry["path"] for entry in entries if entry.get("required", True) or (ROOT / entry["path"]).exists()
            ]
    return compose


@pytest.mark.parametrize("files", [COMPOSE_FILES[:1], COMPOSE_FILES], ids=["mailhog", "mailpit"])
def test_compose_files_validate(files: list[str], tmp_path: Path) -> None:
    docker_compose = find_tool("docker-compose", package="docker-compose", variable="REQUIRE_DOCKER_COMPOSE")
    arguments = []
    for name in files:
        rewritten = tmp_path / name
        rewritten.write_text(yaml.safe_dump(for_compose_v1(load_compose(name))))
        arguments += ["-f", str(rewritten)]
    # --project-directory: relative paths (build: ., the env files) resolve from the repository, as in use.
    result = subprocess.run(
        [docker_compose, "--project-directory", str(ROOT), *arguments, "config", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def folders_given_to_the_notifier_user() -> tuple[set[str], set[str]]:
    """The folders the image's runtime stage makes (`mkdir`) and those it hands to `notifier` (`chown`)."""
    runtime = (ROOT / "Dockerfile").read_text().split(" AS runtime", 1)[1]
    steps = re.sub(r"\\\n\s*", " ", runtime.split("\nUSER notifier", 1)[0])
    made: set[str] = set()
    owned: set[str] = set()
    for line in steps.splitlines():
        if not line.startswith("RUN "):
            continue
        for command in line.removeprefix("RUN ").split("&&"):
            program, *arguments = shlex.split(command)
            paths = [argument for argument in arguments if argument.startswith("/")]
            if program == "mkdir":  # `-p` makes the parents too
                made.update(str(folder) for path in paths for folder in (Path(path), *Path(path).parents))
            elif program == "chown" and "notifier:notifier" in arguments:
                owned.update(paths)
    return made, owned


def named_volume_targets(service: dict[str, Any]) -> list[str]:
    """Where the service mounts named volumes (not host folders, which keep the host's owner)."""
    targets = []
    for volume in service.get("volumes", []):
        source, target = (volume["source"], volume["target"]) if isinstance(volume, dict) else volume.split(":")[:2]
        if not source.startswith((".", "/", "~")):
            targets.append(target)
    return targets


def test_every_volume_of_the_image_is_a_folder_the_notifier_user_owns() -> None:
    # Docker makes a missing mount point owned by root, and the non-root service then cannot write to it
    # (the `scale` profile's CSV jobs answered 500 with Permission denied, issue 14).
    made, owned = folders_given_to_the_notifier_user()
    for name, service in notifier_services(load_compose()).items():
        targets = named_volume_targets(service)
        assert targets, f"{name} keeps nothing on a volume"
        for target in targets:
            assert target in made, f"{name} mounts a volume on {target}: the Dockerfile must `mkdir -p {target}`"
            assert target in owned, f"{name} mounts a volume on {target}: the Dockerfile must chown it to notifier"
        # The CSV uploads (JOBS_DIR, relative to WORKDIR /app) land on one of those volumes, so they survive.
        default = Settings.model_fields["JOBS_DIR"].default
        jobs_dir = Path("/app") / str(environment_of(service).get("JOBS_DIR", default))
        assert any(jobs_dir.is_relative_to(target) for target in targets), f"{name}: {jobs_dir} is on no volume"


def test_prometheus_waits_for_no_notifier() -> None:
    # It finds the notifiers by DNS whenever they run; depending on one breaks `--scale notifier=0` (Compose 2.23).
    compose = load_compose()
    depends_on = compose["services"]["prometheus"].get("depends_on", [])
    assert not set(depends_on) & set(notifier_services(compose))
