# SplitZip — the two commands a fresh machine needs are `make demo` and `make test` (see README.md).
SHELL := /bin/bash
GO ?= go
BIN := bin/splitzip

.PHONY: demo test deps build go-test soak multihost fuzz-smoke vet clean

# Set everything up and run the main job on the built-in defaults.
demo: build
	$(BIN) demo

# Everything CI runs: installs what the tests need, then the Go suites (race detector on) and fuzz smoke runs.
test: deps vet go-test soak fuzz-smoke multihost

build:
	$(GO) build -o $(BIN) ./cmd/splitzip

# deps installs what the tests need on a fresh Debian machine: Go modules and the nats-server binary
# (the external-server tests start it themselves).
deps:
	$(GO) mod download
	@if ! command -v nats-server >/dev/null; then \
		echo "installing nats-server (Debian package)"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq nats-server; \
	fi

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

vet:
	$(GO) vet ./...
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$unformatted" ]; then echo "gofmt needed: $$unformatted"; exit 1; fi

go-test:
	$(GO) test -race -count=1 ./...

# 10,000 handoffs without the race detector's slowdown: no growth in goroutines, staging or heap.
soak:
	$(GO) test -count=1 -run '^TestManyHandoffsStayBounded$$' ./connector

# Producer, consumer and NATS in separate network namespaces, the link shaped with tc (skips, saying why, where
# the machine does not allow namespaces).
multihost:
	TOKENS=4096 REPEAT=1 tests/netns/multihost.sh 1 0

# Short fuzz runs of the decoder and the round trip; longer campaigns: go test -fuzz FuzzDecode -fuzztime 10m ./codec
fuzz-smoke:
	$(GO) test -run '^$$' -fuzz '^FuzzDecode$$' -fuzztime 15s ./codec
	$(GO) test -run '^$$' -fuzz '^FuzzRoundTrip$$' -fuzztime 15s ./codec

clean:
	rm -rf bin
