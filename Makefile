# Stylize: `make serve` and `make test` work on a fresh clone; everything else hangs off them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The stamp records that .venv holds every pinned dependency of pyproject.toml.
INSTALLED := $(VENV)/.installed
PROTO := protos/stylize/v1/stylize.proto
GENERATED := stylize/v1/stylize_pb2.py
export PYTHONPATH := $(CURDIR)

.PHONY: serve test test-fast test-slow fuzz lint format protos models worker bench gallery system-deps clean help
# Debian packages the tests need: promtool and a real Prometheus server, redis-server, and headless Chromium with
# its WebDriver for the web page's tests.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

help:
	@echo "make serve    set up .venv, generate the gRPC code, serve models/ on 127.0.0.1:50051 (HTTP and the page :8080, metrics :9464)"
	@echo "make test     lint and the whole test suite (what .ci/run calls)"
	@echo "make worker   a Gatys worker in the foreground (STYLIZE_QUEUE=redis://... for the distributed queue)"
	@echo "make models   retrain and re-export the bundled models (hours on a CPU)"
	@echo "make bench    the benchmarks in bench/, results in bench/results/"
	@echo "make lint     ruff and mypy;  make protos: regenerate stylize/v1 from protos/"
	@echo "make fuzz     the decoder and request validation under 50,000 generated inputs"

$(INSTALLED): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[serve,torch,queue,dev]' --config-settings editable_mode=compat
	touch $@

$(GENERATED): $(PROTO) $(INSTALLED)
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=. --pyi_out=. --grpc_python_out=. \
		--plugin=protoc-gen-mypy_grpc=$(VENV)/bin/protoc-gen-mypy_grpc --mypy_grpc_out=. $(PROTO)
	touch stylize/__init__.py stylize/v1/__init__.py

protos: $(GENERATED)

serve: $(GENERATED)
	$(PY) -m server

worker: $(GENERATED)
	$(PY) -m server.jobs.worker

test: lint test-fast

test-fast: $(GENERATED) system-deps
	$(PY) -m pytest -m "not slow"

test-slow: $(GENERATED) system-deps
	$(PY) -m pytest -m slow

# The decoder and request validation under many more generated inputs than `make test` runs.
fuzz: $(GENERATED)
	HYPOTHESIS_PROFILE=fuzz FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-50000} $(PY) -m pytest tests/server/test_fuzz.py -p no:cacheprovider

system-deps:
	@command -v promtool >/dev/null && command -v prometheus >/dev/null && command -v redis-server >/dev/null \
		&& command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends prometheus redis-server \
			chromium chromium-driver; }

lint: $(GENERATED)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: $(INSTALLED)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

models: $(GENERATED)
	$(PY) -m export.bundle

bench: $(GENERATED)
	$(PY) -m bench

clean:
	rm -rf stylize .pytest_cache .ruff_cache .mypy_cache
