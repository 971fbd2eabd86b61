# SplitZip — the two commands a fresh machine needs are `make demo` and `make test` (see README.md).
SHELL := /bin/bash
GO ?= go
BIN := bin/splitzip

.PHONY: demo test deps build go-test soak scale multihost fuzz-smoke vet clean

# Set everything up and run the main job on the built-in defaults.
demo: build
	$(BIN) demo

# Everything CI runs: installs what the tests need, then the Go suites (race detector on) and fuzz smoke runs.
test: deps vet go-test soak scale fuzz-smoke multihost py-test vllm-test vllm-test-others gpu-vllm-test

build:
	$(GO) build -o $(BIN) ./cmd/splitzip

# deps gets what the tests need, without root: the Go modules, and the nats-server binary built from the module
# go.mod pins (internal/tools) into build/bin. The external-server tests and tests/netns/multihost.sh start it
# themselves, from SPLITZIP_NATS_SERVER (exported to every recipe; a path there that does not exist fails them).
NATS_SERVER := $(CURDIR)/build/bin/nats-server
export SPLITZIP_NATS_SERVER := $(NATS_SERVER)

deps: $(NATS_SERVER) nixl
	$(GO) mod download

# NIXL's C API and UCX for the NIXL payload transport's tests (connector/nixl, connector): the nixl-cu13 wheel
# from PyPI (59 MB, about 2 s), unpacked into build/nixl/wheel. Nothing is built against it; the library is
# loaded at run time from SPLITZIP_NIXL_LIB (exported to every recipe), which also makes those tests fail
# instead of skip when it does not load. UCX runs over TCP and shared memory there (UCX_TLS=tcp,sm,self).
NIXL_VERSION ?= 1.5.1
NIXL_WHEEL := build/nixl/nixl_cu13-$(NIXL_VERSION)-cp312-cp312-manylinux_2_28_x86_64.whl
NIXL_LIB := $(CURDIR)/build/nixl/wheel/.nixl_cu13.mesonpy.libs/libnixl_capi.so
export SPLITZIP_NIXL_LIB := $(NIXL_LIB)

.PHONY: nixl
nixl: $(NIXL_LIB)

$(NIXL_LIB):
	$(PYTHON) -m pip download -q --no-deps nixl-cu13==$(NIXL_VERSION) --python-version 3.12 --only-binary=:all: -d build/nixl
	rm -rf build/nixl/wheel
	$(PYTHON) -m zipfile -e $(NIXL_WHEEL) build/nixl/wheel
	@test -f $@

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
	$(GO) test -count=1 -v -run '^(TestScaleShort|TestScaleStagingPressure|TestFault.*)$$' ./internal/scale

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
PY_PKGS := pybindgen setuptools numpy pytest safetensors ml_dtypes setproctitle

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

wheel-gpu: nixl
	@test -n "$(PY312)" || { echo "wheel-gpu needs Python 3.12 (pyenv install 3.12, or PY312=/path/to/python3.12)"; exit 1; }
	@test -x $(GPU_VENV)/bin/python || $(PY312) -m venv $(GPU_VENV)
	$(GPU_VENV)/bin/python -m pip install -q pybindgen setuptools
	rm -rf .gpu/wheels
	$(GPU_VENV)/bin/python -m pip wheel -q --no-build-isolation --no-deps -w .gpu/wheels .
	$(GPU_VENV)/bin/python -m pip download -q --only-binary=:all: -d .gpu/wheels pytest
	cp $(NIXL_WHEEL) .gpu/wheels/  # the NIXL payload transport (tests/gpu/transports.py)
	@ls -1 .gpu/wheels

# What tests/gpu/validate.sh needs on the GPU machine, in one carry folder (.gpu/pack, about 36 MiB): the GPU
# test binaries and the splitzip binary, stripped and xz-packed, the connector's cp312 wheel (the GPU machine
# has pytest and ml_dtypes), and NIXL trimmed as the vLLM kit trims it (tests/gpu/vllm/pack.sh nixl-site).
gpu-pack: wheel-gpu
	rm -rf .gpu/pack && mkdir -p .gpu/pack
	go test -c -ldflags='-s -w' -o .gpu/pack/cuda.test ./kernels/cuda
	go test -c -ldflags='-s -w' -o .gpu/pack/kernels.test ./kernels
	go test -c -ldflags='-s -w' -o .gpu/pack/gpubench.test ./internal/gpubench
	go test -c -ldflags='-s -w' -o .gpu/pack/connector.test ./connector
	go build -ldflags='-s -w' -o .gpu/pack/splitzip ./cmd/splitzip
	xz -T0 -6 .gpu/pack/*.test .gpu/pack/splitzip
	cp .gpu/wheels/splitzip_connector-*.whl .gpu/pack/
	tests/gpu/vllm/pack.sh nixl-site build/nixl-site >/dev/null  # NIXL trimmed (74 MB) for its GPU checks
	tar -C build/nixl-site/site -cf - . | xz -T0 -6 >.gpu/pack/nixl.tar.xz
	@du -sh .gpu/pack

.PHONY: gpu-pack

# --- vLLM connector: splitzip_connector.vllm under the pinned vLLM release ---------------------------------
# Its own venv (vLLM pins its torch): installing vllm==$(VLLM_VERSION) from PyPI takes about 12 min and 9.4 GB
# on the CI machine (torch + CUDA wheels; no GPU needed to import it). vllm-test runs the connector under vLLM's
# real Scheduler (tests/python/vllm_connector) and the handoff binding tests. The example deployment's end-to-end
# run needs vLLM's CPU backend instead (examples/vllm/README.md).
VLLM_VERSION ?= 0.33.0
VVENV ?= build/venv-vllm
VVPY := $(VVENV)/bin/python

.PHONY: vllm-deps vllm-test vllm-test-others

vllm-deps:
	@test -x $(VVPY) || $(PYTHON) -m venv $(VVENV)
	@if ! $(VVPY) -c 'import sys, importlib.metadata as m; sys.exit(m.version("vllm") != "$(VLLM_VERSION)")' 2>/dev/null; then \
		echo "installing vllm==$(VLLM_VERSION) from PyPI (about 12 min, 9.4 GB)"; \
		$(VVPY) -m pip install -q vllm==$(VLLM_VERSION) pytest safetensors; fi

vllm-test: py-build vllm-deps
	$(VVPY) -m pip install -q --force-reinstall --no-deps dist/py/splitzip_connector-*.whl
	HF_HUB_OFFLINE=1 SPLITZIP_VLLM_VERSION=$(VLLM_VERSION) $(VVPY) -m pytest -q -p no:cacheprovider tests/python/vllm_connector tests/python/test_handoff.py tests/python/test_layering.py

# The connector suite on other releases' Python code, each wheel (240-340 MB) unpacked into build/vllm-V and
# imported ahead of the pinned release in the same venv: the oldest supported (0.26.0, what the GPU machine runs)
# and the newest (0.34.0, not pinned because the package index CI installs from lacks the flashinfer-python
# 0.7.3 it pins). Their compiled ops do not load beside the pinned torch; the tests need only vLLM's scheduler
# and KV cache code.
VLLM_OTHERS ?= 0.26.0 0.34.0

vllm-test-others: py-build vllm-deps
	$(VVPY) -m pip install -q --force-reinstall --no-deps dist/py/splitzip_connector-*.whl
	@set -e; for v in $(VLLM_OTHERS); do \
		test -d build/vllm-$$v/vllm || { $(VVPY) -m pip download -q --no-deps vllm==$$v -d build/dl && \
			$(VVPY) -m zipfile -e build/dl/vllm-$$v-*.whl build/vllm-$$v; }; \
		echo "vLLM $$v (its Python code over $(VLLM_VERSION)'s dependencies)"; \
		HF_HUB_OFFLINE=1 SPLITZIP_VLLM_VERSION=$$v PYTHONPATH=build/vllm-$$v \
			$(VVPY) -m pytest -q -p no:cacheprovider tests/python/vllm_connector; \
	done

# --- Real vLLM on the GPU machine (tests/gpu/vllm/README.md) ------------------------------------------------
# gpu-vllm-pack builds the kit — vLLM 0.26.0 trimmed with the wheels it needs there, the SmolLM2 GGUF, this
# checkout's connector wheel, nats-server — and cuts it into one carry folder per device call (.gpu/vllm/carry*,
# PLAN.txt); gpu-vllm-test runs the kit's own tests and those of tests/gpu/ab_table.py (no GPU or vLLM needed).
.PHONY: gpu-vllm-pack gpu-vllm-test

gpu-vllm-pack:
	tests/gpu/vllm/pack.sh all

# In the vLLM venv: its aiohttp and tokenizers let the dry runs (every step against fakevllm.py) run, not skip.
gpu-vllm-test: vllm-deps
	$(VVPY) -m pytest -q -p no:cacheprovider tests/gpu/vllm/test_kit.py tests/gpu/test_ab_table.py
