# notification-service — `make` lists the targets.
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= python3
# uv never downloads a Python of its own: it uses the machine's python3.
export UV_PYTHON_DOWNLOADS := never
UV := $(shell command -v uv 2>/dev/null || echo "$(PYTHON) -m uv")
RUN := $(UV) run --no-sync

.PHONY: help uv install dev test test-fast lint screenshots

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-11s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

uv:
	@command -v uv >/dev/null 2>&1 || $(PYTHON) -m uv --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv

install: uv ## make .venv with the service and its dev tools, exactly as uv.lock pins them
	$(UV) sync --locked --python $(PYTHON)

dev: install ## run the service on :8000 beside an SMTP sink on :1025 that prints every mail here
	@trap 'kill 0' EXIT; \
	$(RUN) python -m aiosmtpd -n -l 127.0.0.1:1025 -c aiosmtpd.handlers.Debugging & \
	SMTP_HOST=127.0.0.1 SMTP_PORT=1025 LOG_FORMAT=console $(RUN) uvicorn service.main:app --host 127.0.0.1 --port 8000 --reload

test: install ## run the test suite (real SMTP server, real SQLite, real HTTP, Chromium for the page; no Docker)
	$(RUN) pytest

test-fast: install ## the suite without the slow tests that start processes or soak (-m "not slow")
	$(RUN) pytest -m "not slow"

screenshots: install ## the README's pictures of the activity page, again (docs/ui-*.png; needs chromium)
	$(RUN) python -m tests.ui.screenshots

lint: install ## ruff (lint and format check), mypy --strict on service/, import layers (import-linter)
	$(RUN) ruff check .
	$(RUN) ruff format --check .
	$(RUN) mypy
	$(RUN) lint-imports --no-cache --no-logo

# --- Docker Compose: the service beside MailHog (docker-compose.yml) ------------------------------------------------
COMPOSE ?= docker compose

.PHONY: up down logs smoke

up: ## build and start the service beside MailHog; returns when both are healthy (inbox: http://localhost:8025)
	$(COMPOSE) up -d --build --wait

down: ## stop the stack; the outbox volume stays (`docker compose down -v` wipes it)
	$(COMPOSE) down

logs: ## follow the stack's logs
	$(COMPOSE) logs -f --tail=100

smoke: install ## post a notification to the running stack and find it in MailHog (NOTIFIER_URL, MAILHOG_URL)
	$(RUN) pytest -m compose -s tests/compose

.PHONY: bench bench-burst bench-replicas bench-paced bench-drain
bench: uv ## the service beside a bare endpoint, the floor (bare + outbox commit), the tutorial's way, aiosmtplib alone, the drain of 50,000 (SQLite, PostgreSQL); issues 5 and 18's targets; 3 rounds (wrk if installed)
	$(UV) sync --locked --group bench --python $(PYTHON)
	$(RUN) python -m benchmarks.bench --chart docs/bench.png
	$(RUN) python -m benchmarks.attachments_cost

bench-burst: uv ## 100,000 notifications at once: all accepted, all delivered, peak RSS
	$(UV) sync --locked --group bench --python $(PYTHON)
	$(RUN) python -m benchmarks.bench --burst

REPLICAS ?= 3
bench-replicas: uv ## SQLite (1 process) vs PostgreSQL (1 and REPLICAS=3 replicas) under the same load
	$(UV) sync --locked --group bench --python $(PYTHON)
	$(RUN) python -m benchmarks.bench --replicas $(REPLICAS)

RATE ?= 50
bench-drain: uv ## N=50000 due mails in a stopped outbox, then the service with no HTTP load: drain rate beside aiosmtplib's (SQLite, PostgreSQL), one round
	$(UV) sync --locked --group bench --python $(PYTHON)
	$(RUN) python -m benchmarks.bench --drain $(or $(N),50000) --drain-postgres

bench-paced: uv ## SEND_RATE_LIMIT=RATE (50): 20 s worth of mail at once, the rate it is delivered at; DKIM's cost per mail
	$(UV) sync --locked --group bench --python $(PYTHON)
	$(RUN) python -m benchmarks.bench --paced $(RATE)
	$(RUN) python -m benchmarks.dkim_cost
