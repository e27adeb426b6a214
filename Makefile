# The README's two commands: `make run` (the demo, no Redis needed) and `make test`.
# Both create .venv and install what they need on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat setup.py requirements-dev.txt | cksum | cut -d' ' -f1)
HOST ?= 127.0.0.1
PORT ?= 5000

.PHONY: run test test-fast system-deps lint typecheck docs bench compliance clean

# `make run` installs only what the demo needs (a quick first start); `make test` the rest.
RUN_STAMP := $(VENV)/.run-installed-$(shell cat setup.py | cksum | cut -d' ' -f1)

$(RUN_STAMP): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e ".[demo]"
	rm -f $(VENV)/.run-installed-* && touch $(RUN_STAMP)

$(STAMP): setup.py requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e . -r requirements-dev.txt
	rm -f $(VENV)/.installed-* && touch $(STAMP)

run: $(RUN_STAMP)
	$(BIN)/gunicorn -k gevent -w 1 --worker-connections 10000 -b $(HOST):$(PORT) \
		--graceful-timeout 2 'example_app:create_app()'

# system-deps first: on a machine without the Debian packages, make test stops at once
# with the command that installs them (or, as root, installs them).
test: system-deps $(STAMP) lint typecheck docs
	node --test tests/js/
	$(BIN)/python -m pytest -q -p no:cacheprovider --timeout=300

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -x -m "not browser and not cluster and not soak" --timeout=120

system-deps:
	@bash scripts/system-deps

lint: $(STAMP)
	$(BIN)/ruff check flask_jpulse_ws tests example_app benchmarks compliance
	$(BIN)/lint-imports  # the layers of docs/design.md (pyproject.toml)

typecheck: $(STAMP)
	$(BIN)/mypy

docs: $(STAMP)
	$(BIN)/sphinx-build -q -W -b html docs docs/_build/html

bench: $(STAMP)
	$(BIN)/python -m pip install -q -r benchmarks/requirements.txt
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)

# Autobahn|Testsuite against the server (gunicorn, werkzeug) and the client; not part of
# `make test`. Needs Python 2.7 for wstest (compliance/README.md); about a minute and a half.
compliance: $(STAMP)
	sh compliance/setup-wstest.sh
	$(BIN)/python compliance/run.py $(COMPLIANCE_ARGS)

clean:
	rm -rf $(VENV) docs/_build .pytest_cache .mypy_cache .ruff_cache
