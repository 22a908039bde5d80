# Two commands matter: `make demo` (the daemon on embedded defaults, with a simulated POS)
# and `make test` (the whole suite on real parts). Both create the environment they need.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Re-install when the dependencies change.
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)

.PHONY: demo test test-fast screenshots bench bench-backend schemas clean help tools

help:
	@echo "make demo   run the till daemon on a demo video with a simulated POS and a local broker"
	@echo "make test   install what is needed and run the test suite"
	@echo "make test-fast  the suite without the slow, browser, root-only and network tests (under 3 minutes)"
	@echo "make screenshots  retake the docs' screenshots (docs/console-*.png, docs/backend-reports.png)"
	@echo "make bench  measure the till pipeline on this machine (BENCH_ARGS='--bundles DIR ...')"
	@echo "make bench-backend  events/s that agegate-backend ingests into SQLite and PostgreSQL, broker restarted mid-run"

$(STAMP):
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (3.11+)"; exit 1; }
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $@

# System tools the tests use, from Debian's packages, installed once when missing:
# mosquitto (the tests start their own brokers), systemd-analyze (checks the unit),
# chromium (the console tests drive it headless through Playwright; no `playwright install`),
# postgresql (the backend's tests and benchmark start throwaway clusters with its initdb).
tools:
	@missing=""; \
	command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || missing="$$missing mosquitto"; \
	command -v systemd-analyze >/dev/null || missing="$$missing systemd"; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	command -v openssl >/dev/null || missing="$$missing openssl"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq $$missing; \
	fi

demo: $(STAMP)
	$(PY) -m agegate.edge.demo

# --durations: the slowest tests, in every log (CI's too), to see what to make faster: the suite
# took about 34 minutes on CI's 2 cores in November 2026, over the half hour it should stay under.
test: $(STAMP) tools
	$(PY) -m pytest -ra --durations=25

# Leaves out the tests marked slow (training, export, TensorFlow), browser (Chromium), root (tmpfs
# mounts) and network (brokers, the daemon's process, agegate-backend, PostgreSQL); markers in
# pyproject.toml, tests/conftest.py adds them from the fixtures. What stays is the till's logic on
# real parts in one process: decisions, tracker, capture from video files, the detectors and
# .tflite models, config and env files, the outbox and history on SQLite, model delivery, the CLI
# and its `check`, systemd's unit and notify protocol, the docs' checks, the install's resolution.
FAST_MARKERS ?= not slow and not browser and not root and not network
test-fast: $(STAMP) tools
	$(PY) -m pytest -ra -m "$(FAST_MARKERS)"

# Tests write screenshots into a temporary folder, so that a test run leaves the tree as it found
# it; this takes them again into one and copies them into docs/ (README, console.md, backend.md show them).
SCREENSHOT_TESTS := tests/test_console.py::test_screenshots_of_the_shipped_model \
                    tests/test_backend_web.py::test_the_reports_page_in_a_browser
screenshots: $(STAMP) tools
	@shots=$$(mktemp -d) && \
	AGEGATE_SCREENSHOT_DIR=$$shots $(PY) -m pytest -ra $(SCREENSHOT_TESTS) && \
	cp -v $$shots/*.png docs/ && rm -rf $$shots

# The till pipeline on this machine: isolated costs, the real daemon with a real broker, the
# peers (docs/performance.md). Writes bench-results/bench.json and bench.md. The shipped
# bundle is measured; add exported variants with BENCH_ARGS='--bundles DIR' (repeatable).
BENCH_ARGS ?=
BENCH_STAMP := $(VENV)/.bench-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[dev,bench]'
	rm -f $(VENV)/.bench-* && touch $@

bench: $(BENCH_STAMP) tools
	$(PY) -m benchmarks $(BENCH_ARGS)

# agegate-backend's ingest rate from a real Mosquitto into SQLite and a throwaway PostgreSQL,
# with the broker restarted mid-run; writes docs/backend-bench.json and .md (docs/backend.md cites them).
BACKEND_BENCH_ARGS ?=
bench-backend: $(STAMP) tools
	$(PY) -m benchmarks.backend $(BACKEND_BENCH_ARGS)

schemas: $(STAMP)
	$(PY) -m agegate.edge.events docs/schemas

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
