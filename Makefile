# weft — see README.md. Every target installs what it needs on a fresh Debian
# machine (run as root for test, demo and bench: they create network namespaces).

GO       ?= go
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X github.com/weftnet/weft/api.Version=$(VERSION)
BIN      := $(CURDIR)/bin
TOOLS    := $(CURDIR)/.cache/tools
APT_PKGS := iproute2 iputils-ping iperf3 nftables tcpdump procps containernetworking-plugins etcd-server
CNITOOL_VERSION := v1.3.0

export CGO_ENABLED = 0
export WEFT_BIN_DIR = $(BIN)
export PATH := $(TOOLS):$(PATH)

.PHONY: all build test unit e2e demo bench lint deps fuzz clean k8s-bins release

all: build

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/weft ./cmd/weft
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/weft-cni ./cmd/weft-cni

# deps installs the system packages and tools the tests, the demo and the
# benchmarks use, only when they are missing.
deps:
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@test -x $(TOOLS)/cnitool || GOBIN=$(TOOLS) CGO_ENABLED=0 $(GO) install github.com/containernetworking/cni/cnitool@$(CNITOOL_VERSION)

# k8s-bins builds kube-apiserver and kubectl from the Go module proxy for the
# Kubernetes tests (about 8 minutes the first time; cached in K8S_DIR).
K8S_DIR ?= /var/cache/weft-k8s
export K8S_DIR
k8s-bins:
	CMDS="kube-apiserver kubectl" test/kubeapi/k8s/build.sh

test: deps build lint k8s-bins
	$(GO) test -count=1 -timeout 20m ./...

# unit runs only the tests that need neither root nor network namespaces.
unit:
	$(GO) test -count=1 -short ./...

lint:
	@fmt=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$fmt" ]; then echo "gofmt needed:"; echo "$$fmt"; exit 1; fi
	$(GO) vet ./...

# fuzz runs every fuzz target briefly beyond its seed corpus.
fuzz:
	@for pkg in $$($(GO) list ./...); do \
		for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
			$(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime 10s $$pkg || exit 1; \
		done; \
	done

demo: deps build
	$(GO) run ./test/demo

# bench prints every table in one run: datapath throughput and RTT beside the
# bare underlay, CNI ADD/DEL latency beside bridge+host-local, IPAM
# allocation latency, mesh formation time, then the micro-benchmarks of the
# hot paths (ring lookup and merge, sealing and opening, forwarding).
bench: deps build
	$(GO) run ./test/bench
	$(GO) test -run '^$$' -bench . -benchtime 2000x -benchmem ./ipam ./router ./router/crypto

clean:
	rm -rf $(BIN) $(CURDIR)/.cache $(CURDIR)/dist

# release builds, offline, everything a release ships into dist/VERSION:
# weft.yaml (image pinned to IMAGE:VERSION@digest), image.tar (OCI image
# index for linux/amd64 and linux/arm64, as an OCI layout tarball), the
# binaries weft-linux-{amd64,arm64} and weft-cni-linux-{amd64,arm64}, and
# SHA256SUMS. site/install-kubernetes.md says how to push or load it.
IMAGE ?= ghcr.io/weftnet/weft
release:
	$(GO) run ./prog/release -version '$(VERSION)' -image '$(IMAGE)' -out dist/$(VERSION)

# Kubernetes in the test bed: a real three-node cluster (test/kubecluster).
# Not part of `make test`: ~75 s with cached builds; the first build of the
# five Kubernetes binaries takes ~12 minutes (cached in K8S_DIR).
KUBE_APT_PKGS := containerd runc util-linux
.PHONY: test-kube demo-kube kube-deps
kube-deps: deps
	@missing=""; for p in $(KUBE_APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing:$$missing"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi
	CMDS="kube-apiserver kubectl kubelet kube-controller-manager kube-scheduler" test/kubeapi/k8s/build.sh

test-kube: kube-deps
	$(GO) test -count=1 -tags kubecluster -run '^TestKubeCluster$$' -timeout 20m -v ./test/e2e/

demo-kube: kube-deps
	$(GO) run ./test/demokube
