# The two commands of the README: `make demo` and `make test`. Both set up .venv themselves.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: venv xla-venv demo test test-fast lint typecheck cluster-build cluster-up cluster-down cluster-status crds manifests image

# uv keeps repeat installs of the multi-GB CUDA torch wheel cheap through its cache.
$(VENV)/.installed: pyproject.toml
	@command -v uv >/dev/null 2>&1 || python3 -m pip install --quiet uv
	@test -x $(PY) || uv venv --quiet --python python3.11 $(VENV)
	VIRTUAL_ENV=$(abspath $(VENV)) uv pip install --quiet -e '.[runtime,dev]'
	@touch $@

venv: $(VENV)/.installed

# torch_xla's own torch beside the main one, for the XLA tests (e2e/xla_venv.py).
xla-venv: venv
	$(PY) -m e2e.xla_venv

# The cluster's binaries (Go) and the image (podman) build side by side: minutes each, cold.
demo: venv
	$(MAKE) --no-print-directory -j2 cluster-build image
	$(PY) -m e2e.demo

test: venv
	$(MAKE) --no-print-directory -j2 cluster-build image xla-venv
	$(PY) -m e2e.pytest_run $(PYTEST_ARGS)

test-fast: venv
	$(PY) -m e2e.pytest_run -m "not e2e and not slow" $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check operator tests e2e bench
	$(VENV)/bin/mypy

# The container image from the Dockerfile, on a local Debian base, cached by content (root, podman).
image: venv
	$(PY) -m e2e.image build

cluster-build: venv
	$(PY) -m e2e.cluster build

cluster-up: cluster-build
	$(PY) -m e2e.cluster up

cluster-down: venv
	$(PY) -m e2e.cluster down

cluster-status: venv
	$(PY) -m e2e.cluster status

crds: venv
	$(PY) -m pdserve crds --output crds/

# The chart's copy of crds/ and manifests/install.yaml (helm template of the chart).
manifests: venv cluster-build
	$(PY) manifests/generate.py
