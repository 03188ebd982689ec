# Meridian — build, test, lint and run. See README.md.
SHELL := /bin/bash
GO ?= go
BIN := $(CURDIR)/bin
# Every package of every module in go.work.
PKGS := ./proto/... ./controlplane/... ./dataplane/... ./gatewayctl/... ./e2e/...
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)

.PHONY: all build test test-short test-deps lint generate check-generated run bench tools clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/ \
		./controlplane/cmd/controlplane ./dataplane/cmd/dataplane ./gatewayctl ./e2e/cmd/echo

# Unit, integration (embedded etcd) and e2e (real binaries) tests, with the
# race detector.
test: test-deps
	$(GO) test -race -count=1 -timeout 15m $(PKGS)

# Everything but e2e, quicker while editing.
test-short: test-deps
	$(GO) test -race -count=1 -short $(PKGS)

# What the tests need beyond Go (redis-server, promtool, a C compiler for
# -race): silent when all is there, installs it as root, else names it and
# exits 2. The list is in the script.
test-deps:
	@bash tools/test-deps.sh

# Tools live in their own modules (tools/, tools/buf/) so their
# dependencies never mix with the gateway's.
$(BIN)/staticcheck: tools/go.mod
	GOWORK=off $(GO) build -C tools -o $(BIN)/staticcheck honnef.co/go/tools/cmd/staticcheck
$(BIN)/buf: tools/buf/go.mod
	GOWORK=off $(GO) build -C tools/buf -o $(BIN)/buf github.com/bufbuild/buf/cmd/buf
tools: $(BIN)/staticcheck $(BIN)/buf

lint: tools
	@unformatted=$$(gofmt -l proto controlplane dataplane gatewayctl e2e); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet $(PKGS)
	$(BIN)/staticcheck $(PKGS)
	$(BIN)/buf lint

generate: $(BIN)/buf
	GOWORK=off $(BIN)/buf generate

# Regenerate and fail when the committed generated code differs.
check-generated: generate
	@if [ -n "$$(git status --porcelain -- proto)" ]; then \
		echo "generated code is out of date; run 'make generate' and commit:"; \
		git status --porcelain -- proto; git diff --stat -- proto; exit 1; fi

# make hands command-line variables (make run DP_FLAGS="--redis 127.0.0.1:6379",
# CP_FLAGS=...) and the environment to the script; see its header.
run: build
	./deploy/local/run.sh

bench: build
	./bench/propagation.sh

clean:
	rm -rf $(BIN) .run
