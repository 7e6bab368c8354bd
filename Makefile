# TokenByte: `make run` serves the embedded demo; `make test` runs the suite on real PostgreSQL + Redis.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The browser tests' OpenID Connect provider (Flask/Authlib) lives apart from the project's resolver.
OIDC_VENV := .venv-oidc
SCREENSHOTS := .tmp/screenshots
HOST ?= 127.0.0.1
PORT ?= 8000
STRIPE_PORT ?= 12111
MOCK_PORT ?= 8001

.PHONY: run test bench bench-logs lint format os-packages-test os-packages-bench

$(VENV)/.installed-base: requirements/base.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements/base.txt
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed-base requirements/dev.txt
	$(PY) -m pip install --quiet -r requirements/dev.txt
	touch $@

$(OIDC_VENV)/.installed: requirements/oidc-mock.txt
	test -x $(OIDC_VENV)/bin/python || $(PYTHON) -m venv $(OIDC_VENV)
	$(OIDC_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(OIDC_VENV)/bin/python -m pip install --quiet -r requirements/oidc-mock.txt
	touch $@

$(VENV)/.installed-bench: $(VENV)/.installed-dev requirements/bench.txt
	$(PY) -m pip install --quiet -r requirements/bench.txt
	touch $@

os-packages-bench:
	@bash scripts/os_packages.sh postgresql:initdb redis-server:redis-server wrk:wrk

os-packages-test:
	@bash scripts/os_packages.sh postgresql:initdb redis-server:redis-server chromium:chromium \
		fonts-liberation:/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf

# The demo channel points at the bundled mock upstream, and top-ups at the bundled fake Stripe,
# both started here beside the server.
run: $(VENV)/.installed-base
	$(PY) manage.py migrate --noinput
	MOCK_UPSTREAM_URL=http://127.0.0.1:$(MOCK_PORT)/v1 $(PY) manage.py seed_demo --host $(HOST) --port $(PORT)
	@echo "Serving on http://$(HOST):$(PORT)/ (relay at /v1, staff admin at /admin/); Ctrl-C stops."
	@$(PY) manage.py mock_upstream --port $(MOCK_PORT) & mock=$$!; \
	$(PY) manage.py fake_stripe --port $(STRIPE_PORT) \
		--webhook-url http://$(HOST):$(PORT)/billing/stripe/webhook/ & stripe=$$!; \
	trap 'kill $$mock $$stripe 2>/dev/null' EXIT INT TERM; \
	STRIPE_API_BASE=http://127.0.0.1:$(STRIPE_PORT) \
		$(VENV)/bin/daphne -b $(HOST) -p $(PORT) tokenbyte.asgi:application

test: os-packages-test $(VENV)/.installed-dev $(OIDC_VENV)/.installed
	@$(PY) scripts/with_services.py -- $(PY) -m pytest $(PYTEST_ARGS); status=$$?; \
	if [ -d $(SCREENSHOTS) ]; then echo "Browser screenshots: $(CURDIR)/$(SCREENSHOTS)/"; fi; \
	exit $$status

# make bench [QUICK=1] [PEER=litellm] [SERVERS=1]: writes bench/results/latest.{json,md,png},
# then the logs at scale (10 million rows: bench/results/logs-latest.*; QUICK: 1 million, logs-1000000.*)
LOG_ROWS ?= $(if $(QUICK),1000000,10000000)
bench: os-packages-bench $(VENV)/.installed-bench
	$(PY) bench/run.py $(if $(QUICK),--quick) $(if $(PEER),--peer $(PEER)) \
		$(if $(SERVERS),--compare-servers)
	$(PY) bench/logs_scale.py --rows $(LOG_ROWS)

# Only the logs at scale: make bench-logs [LOG_ROWS=N]
bench-logs: os-packages-bench $(VENV)/.installed-bench
	$(PY) bench/logs_scale.py --rows $(LOG_ROWS)

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .
