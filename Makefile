# SplitZip — the two commands a fresh machine needs are `make demo` and `make test` (see README.md).
SHELL := /bin/bash
GO ?= go
BIN := bin/splitzip

.PHONY: demo test deps build go-test soak scale multihost fuzz-smoke vet clean

# Set everything up and run the main job on the built-in defaults.
demo: build
	$(BIN) demo

# Everything CI runs: installs what the tests need, then the Go suites (race detector on) and fuzz smoke runs.
test: deps vet go-test soak scale fuzz-smoke multihost py-test vllm-test

build:
	$(GO) build -o $(BIN) ./cmd/splitzip

# deps gets what the tests need, without root: the Go modules, and the nats-server binary built from the module
# go.mod pins (internal/tools) into build/bin. The external-server tests and tests/netns/multihost.sh start it
# themselves, from SPLITZIP_NATS_SERVER (exported to every recipe; a path there that does not exist fails them).
NATS_SERVER := $(CURDIR)/build/bin/nats-server
export SPLITZIP_NATS_SERVER := $(NATS_SERVER)

deps: $(NATS_SERVER)
	$(GO) mod download

$(NATS_SERVER): go.mod go.sum
	$(GO) build -o $@ github.com/nats-io/nats-server/v2

vet:
	$(GO) vet ./...
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$unformatted" ]; then echo "gofmt needed: $$unformatted"; exit 1; fi

# The codec's tests run twice: with its amd64 assembly (where the CPU has it) and with the pure-Go twins the
# assembly is checked against (noasm), which is what every other CPU runs.
go-test: $(NATS_SERVER)
	$(GO) test -race -count=1 ./...
	$(GO) test -count=1 -tags noasm ./codec

# 10,000 handoffs, 16 in flight, without the race detector's slowdown: no growth in goroutines, staging, heap
# or RSS, and no warning logged. Then real handoffs timed raw against auto over a slow and a fast link.
soak:
	$(GO) test -count=1 -run '^(TestManyHandoffsStayBounded|TestAutoAgainstRawOverLinks)$$' ./connector

# Many engines on one NATS cluster: 4 producer and 4 consumer processes and 3 nats-server processes (JetStream
# R3), 64 handoffs in flight; the short scale run, then the same load with a NATS node, a producer and a
# consumer killed, bits flipped in transit, the cluster restarted and handoffs expired. Each prints its counts.
# The full benchmark: bin/splitzip bench scale.
scale: $(NATS_SERVER)
	$(GO) test -count=1 -v -run '^(TestScaleShort|TestFault.*)$$' ./internal/scale

# Producer, consumer and NATS in separate network namespaces, the link shaped with tc (skips, saying why, where
# the machine does not allow namespaces).
multihost: $(NATS_SERVER)
	TOKENS=4096 REPEAT=1 tests/netns/multihost.sh 1 0

# Short fuzz runs of the decoder and the round trip; longer campaigns: go test -fuzz FuzzDecode -fuzztime 10m ./codec
fuzz-smoke:
	$(GO) test -run '^$$' -fuzz '^FuzzDecode$$' -fuzztime 15s ./codec
	$(GO) test -run '^$$' -fuzz '^FuzzRoundTrip$$' -fuzztime 15s ./codec

clean:
	rm -rf bin build/bin

# --- Python package: python/splitzip_connector, with the Go core (pybind/) compiled in by gopy ----------------
# py-deps makes a venv under the repo ($(VENV)) with what the build and the tests need. torch comes from PyPI
# with its CUDA libraries (about 2.5 min and 5 GB on the CI machine); PY_TORCH=0 leaves it out and the torch
# tests skip. py-build builds the wheel the way `pip install .` does and installs it into the venv; py-test
# runs tests/python against the installed wheel (CUDA tests skip without a GPU).
PYTHON ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
PY_TORCH ?= 1
PY_PKGS := pybindgen setuptools numpy pytest safetensors ml_dtypes

.PHONY: py-deps py-build py-test py-bench wheel-gpu

py-deps:
	@test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q $(PY_PKGS)
	@if [ "$(PY_TORCH)" = 1 ] && ! $(VPY) -c 'import torch' 2>/dev/null; then \
		echo "installing torch from PyPI (PY_TORCH=0 to skip)"; $(VPY) -m pip install -q torch; fi

py-build: py-deps
	rm -rf dist/py
	$(VPY) -m pip wheel -q --no-build-isolation --no-deps -w dist/py .
	$(VPY) -m pip install -q --force-reinstall --no-deps dist/py/splitzip_connector-*.whl

py-test: py-build
	$(VPY) -m pytest -q -p no:cacheprovider tests/python

# Per-call overhead and large-tensor throughput of the binding (tests/python/bench.py).
py-bench: py-build
	$(VPY) tests/python/bench.py

# The cp312 wheel for the GPU machine (Python 3.12, no Go, no network), plus pytest's pure-Python wheels, into
# .gpu/wheels. There: pip install --no-index --no-deps --target /tmp/site .gpu/wheels/*.whl (see README).
PY312 ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3.12) $(shell command -v python3.12))
GPU_VENV := build/venv-gpu

wheel-gpu:
	@test -n "$(PY312)" || { echo "wheel-gpu needs Python 3.12 (pyenv install 3.12, or PY312=/path/to/python3.12)"; exit 1; }
	@test -x $(GPU_VENV)/bin/python || $(PY312) -m venv $(GPU_VENV)
	$(GPU_VENV)/bin/python -m pip install -q pybindgen setuptools
	rm -rf .gpu/wheels
	$(GPU_VENV)/bin/python -m pip wheel -q --no-build-isolation --no-deps -w .gpu/wheels .
	$(GPU_VENV)/bin/python -m pip download -q --only-binary=:all: -d .gpu/wheels pytest
	@ls -1 .gpu/wheels

# --- vLLM connector: splitzip_connector.vllm under the pinned vLLM release ---------------------------------
# Its own venv (vLLM pins its torch): installing vllm==$(VLLM_VERSION) from PyPI takes about 12 min and 9.4 GB
# on the CI machine (torch + CUDA wheels; no GPU needed to import it). vllm-test runs the connector under vLLM's
# real Scheduler (tests/python/vllm_connector) and the handoff binding tests. The example deployment's end-to-end
# run needs vLLM's CPU backend instead (examples/vllm/README.md).
VLLM_VERSION ?= 0.33.0
VVENV ?= build/venv-vllm
VVPY := $(VVENV)/bin/python

.PHONY: vllm-deps vllm-test

vllm-deps:
	@test -x $(VVPY) || $(PYTHON) -m venv $(VVENV)
	@if ! $(VVPY) -c 'import sys, importlib.metadata as m; sys.exit(m.version("vllm") != "$(VLLM_VERSION)")' 2>/dev/null; then \
		echo "installing vllm==$(VLLM_VERSION) from PyPI (about 12 min, 9.4 GB)"; \
		$(VVPY) -m pip install -q vllm==$(VLLM_VERSION) pytest safetensors; fi

vllm-test: py-build vllm-deps
	$(VVPY) -m pip install -q --force-reinstall --no-deps dist/py/splitzip_connector-*.whl
	HF_HUB_OFFLINE=1 $(VVPY) -m pytest -q -p no:cacheprovider tests/python/vllm_connector tests/python/test_handoff.py tests/python/test_layering.py
