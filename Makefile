# Two commands matter: `make run` and `make test`. Everything they need is installed here.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
RECEIVER_PORT ?= 8000
DASHBOARD_PORT ?= 8501
STANDIN_PORT ?= 12111
# The demo runs the alert job beside the receiver and dashboard (cron's job in production).
ALERT_EVERY_S ?= 60

# Embedded demo defaults; a .env file or the environment overrides each of them.
export DATABASE_URL ?= sqlite:///data/payments.db
export AUTH_CONFIG ?= data/users.yaml
export STRIPE_WEBHOOK_SECRETS ?= whsec_demo_local_only_not_a_real_secret
export APP_ENV ?= development

.PHONY: help run test lint format bench system-deps venv migrate demo clean

help:
	@echo "make run    install, migrate, seed the demo and start receiver + dashboard"
	@echo "make test   install and run lint, types and the whole test suite"
	@echo "make bench  run the benchmarks and write docs/benchmarks.md"

$(STAMP): requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e . 2>/dev/null || $(BIN)/pip install --quiet --no-deps -e .
	@touch $(STAMP)

venv: $(STAMP)

# Debian packages: PostgreSQL (tests run a real server), Chromium (browser journey), wrk (bench),
# nginx (tests run deploy/nginx/receiver.conf in front of the receiver).
system-deps:
	@missing=""; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	test -x /usr/bin/chromium || missing="$$missing chromium"; \
	command -v wrk >/dev/null 2>&1 || missing="$$missing wrk"; \
	test -x /usr/sbin/nginx || command -v nginx >/dev/null 2>&1 || missing="$$missing nginx-light"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $$missing; \
	fi

migrate: venv
	$(BIN)/python -m core migrate

run: venv migrate
	@$(BIN)/python -m core demo --once
	@$(BIN)/python -m core users demo
	@mkdir -p -m 700 data
	@echo "receiver:  http://127.0.0.1:$(RECEIVER_PORT)/webhooks/stripe"
	@echo "dashboard: http://127.0.0.1:$(DASHBOARD_PORT)  (admin / admin-demo, finance / finance-demo, support / support-demo)"
	@trap 'kill 0' EXIT INT TERM; \
	if [ -z "$$STRIPE_SECRET_KEY" ] && ! grep -qs '^STRIPE_SECRET_KEY=.' .env; then \
	  export STRIPE_API_BASE=http://127.0.0.1:$(STANDIN_PORT); \
	  echo "stripe:    no STRIPE_SECRET_KEY, so a local Stripe STAND-IN (not Stripe) at $$STRIPE_API_BASE"; \
	  $(BIN)/python -m core standin --port $(STANDIN_PORT) --receiver-url http://127.0.0.1:$(RECEIVER_PORT)/webhooks/stripe & \
	fi; \
	$(BIN)/python -m receiver --host 127.0.0.1 --port $(RECEIVER_PORT) --log-level warning & \
	$(BIN)/streamlit run dashboard/app.py --server.address 127.0.0.1 --server.port $(DASHBOARD_PORT) & \
	echo "alerts:    python -m core alerts every $(ALERT_EVERY_S) s (what cron does in production)"; \
	while true; do $(BIN)/python -m core alerts >/dev/null; sleep $(ALERT_EVERY_S); done & \
	wait

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .
	$(BIN)/lint-imports --no-cache

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: venv system-deps lint
	$(BIN)/pytest

bench: venv system-deps
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache artifacts
