"""The programs some tests run besides Python (docker-compose, promtool, nginx): found on PATH, or the test is
skipped, or failed where CI or the tool's REQUIRE_* variable says it must be there, so CI never passes by skipping."""

from __future__ import annotations

import os
import shutil

import pytest

# CI=false or REQUIRE_PROMTOOL=0 mean "not required": only these spell no.
NO = {"", "0", "false", "no", "off"}


def is_required(variable: str) -> bool:
    return any(os.environ.get(name, "").strip().lower() not in NO for name in ("CI", variable))


def find_tool(name: str, *, package: str, variable: str) -> str:
    """The path of `name`; without it a skip, or a failure when `variable` or CI is set."""
    path = shutil.which(name)
    if path is not None:
        return path
    message = f"{name} is not installed (Debian: apt-get install {package}; .ci/run installs it)"
    if is_required(variable):
        pytest.fail(f"{message}, and {variable} or CI says it must be", pytrace=False)
    pytest.skip(f"{message}; {variable}=1 makes this a failure")
