# Meridian — build, test, lint and run. See README.md.
SHELL := /bin/bash
GO ?= go
BIN := $(CURDIR)/bin
# Every package of every module in go.work.
PKGS := ./proto/... ./controlplane/... ./dataplane/... ./gatewayctl/... ./e2e/...
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)

.PHONY: all build test test-short lint generate check-generated run bench tools clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/ \
		./controlplane/cmd/controlplane ./dataplane/cmd/dataplane ./gatewayctl ./e2e/cmd/echo

# Unit, integration (embedded etcd) and e2e (real binaries) tests, with the
# race detector.
test:
	$(GO) test -race -count=1 -timeout 15m $(PKGS)

# Everything but e2e, quicker while editing.
test-short:
	$(GO) test -race -count=1 -short $(PKGS)

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

run: build
	./deploy/local/run.sh

bench: build
	./bench/propagation.sh

clean:
	rm -rf $(BIN) .run
