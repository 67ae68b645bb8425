# Flotilla: the two commands most people need are `make dev` and `make test`.
GO      ?= go
BIN     := bin/flotilla
DATA    ?= flotilla-data
NODES   ?= 1
DRIVER  ?= auto
DOCKER_ADDR ?= 127.0.0.1:2376

.PHONY: all build setup dev test test-short vet fmt bench clean

all: build

# bin/flotilla, and next to it the runc driver's shim (a smaller binary that
# starts faster at every container start).
build:
	$(GO) build -o $(BIN) ./cmd/flotilla
	$(GO) build -o bin/flotilla-shim ./cmd/flotilla-shim

# Installs PostgreSQL, runc, busybox-static, QEMU, sshfs, the triton CLI and docker compose when missing.
setup:
	./scripts/setup.sh

# Starts a whole cloud on this machine; data persists in $(DATA).
dev: setup build
	./$(BIN) dev --data $(DATA) --nodes $(NODES) --driver $(DRIVER) --docker-addr $(DOCKER_ADDR)

vet:
	$(GO) vet ./...

fmt:
	gofmt -l -w $$(git ls-files '*.go')

# The whole test suite: unit, store (real PostgreSQL), drivers (runc, QEMU as
# root), and end-to-end tests with the real triton and docker CLIs.
test: setup build vet
	$(GO) test -count=1 -timeout 40m -p 2 ./...

test-short: build
	$(GO) test -count=1 -short ./...

bench: build
	./$(BIN) bench e2e --nodes 100 --instances 1000 --json
	./$(BIN) bench place --nodes 10000 --instances 100000 --json

clean:
	rm -rf bin
