# notification-service image: `docker compose up` builds it; `docker build -t notification-service .` does too.
# Two stages: `build` installs the locked dependencies with uv into /app/.venv; `runtime` copies only that venv and
# the code onto a clean slim base, so no uv, pip cache or build tool ships in the image.

ARG PYTHON_IMAGE=python:3.12-slim

FROM ${PYTHON_IMAGE} AS build
# Same uv as the lock was made with; from PyPI, because that is the one registry every builder reaches.
ARG UV_VERSION=0.13.9
RUN pip install --no-cache-dir --disable-pip-version-check "uv==${UV_VERSION}"
ENV UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3 \
    UV_PROJECT_ENVIRONMENT=/app/.venv \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1
WORKDIR /app
# Dependencies only, in their own layer: it is rebuilt when pyproject.toml or uv.lock change, not when code does.
# `uv sync --locked` is the command CI runs (make install), so a lock that no longer matches pyproject.toml
# fails CI first and this build the same way; --no-dev leaves pytest, ruff and mypy out of the image.
COPY pyproject.toml uv.lock ./
RUN uv sync --locked --no-dev --no-install-project

FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/app/.venv/bin:$PATH
# A fixed uid/gid, so files on a bind-mounted data folder have a predictable owner.
RUN groupadd --system --gid 10001 notifier \
    && useradd --system --uid 10001 --gid notifier --home-dir /app --no-create-home --shell /usr/sbin/nologin notifier
WORKDIR /app
# Code and venv stay owned by root: the service can write its outbox folder and nothing else.
COPY --from=build /app/.venv /app/.venv
COPY service ./service
# The mail templates (TEMPLATES_DIR defaults to config/templates); mount over it to use your own.
COPY config/templates ./config/templates
# The outbox lives here (OUTBOX_PATH defaults to data/outbox.sqlite3), CSV uploads in data/jobs (JOBS_DIR). An
# empty named volume mounted on either starts as a copy of its folder, owner included; a folder missing here would
# be made by Docker, owned by root, and the non-root user could not write to it (tests/compose/test_contract.py).
RUN mkdir -p /app/data/jobs && chown notifier:notifier /app/data /app/data/jobs
USER notifier
EXPOSE 8000
# Slim images have no curl: ask /health/live with the Python that is already there.
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health/live', timeout=2)"]
# Exec form: uvicorn is PID 1 and gets SIGTERM itself, so in-flight sends finish (SHUTDOWN_GRACE_SECONDS).
# --proxy-headers trusts X-Forwarded-* only from FORWARDED_ALLOW_IPS (uvicorn's own variable; 127.0.0.1 by default).
CMD ["uvicorn", "service.main:app", "--host", "0.0.0.0", "--port", "8000", "--proxy-headers"]
