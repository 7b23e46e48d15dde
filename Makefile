# Tandem: replicated VM disks over NBD.
#   make run    start a local dev Tandem with volume vol0 (Ctrl-C stops it)
#   make test   run every test (unit, fuzz seeds, end-to-end with real clients)
#   make lint   gofmt, go vet, staticcheck
#   make bench  benchmark Tandem against baseline NBD servers
#   make build  build bin/tandem

GO          ?= go
BIN         := bin/tandem
VERSION     ?= $(shell git describe --always --dirty 2>/dev/null || echo devel)
LDFLAGS     := -X main.version=$(VERSION)
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.6.1
TEST_FLAGS  ?=

.PHONY: all build run test lint bench deps clean

all: build

build: deps-go
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/tandem

run: build
	$(BIN) dev $(ARGS)

test: deps-go
	@scripts/check-deps.sh test
	GO=$(GO) scripts/test-raft-copy.sh $(TEST_FLAGS)
	TANDEM_REQUIRE_TOOLS=1 $(GO) test -race -timeout 14m $(TEST_FLAGS) ./...

lint: deps-go
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed on:"; gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...

bench: build
	@scripts/check-deps.sh bench
	$(BIN) bench $(ARGS)

deps-go:
	@command -v $(GO) >/dev/null || { echo "Go is not installed: get Go 1.25 or newer from https://go.dev/dl/"; exit 1; }

clean:
	rm -rf bin
