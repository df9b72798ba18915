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

.PHONY: all build test unit e2e demo bench lint deps fuzz clean k8s-bins soak scale release race

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

# race runs the packages' tests under the race detector (it needs cgo), one
# package at a time. test/... is left out: it drives the agent as separate,
# uninstrumented processes. Skipped: the single-goroutine IPAM simulations
# (deterministic rounds, nothing for the detector to see; ten minutes
# instrumented). Tests whose timing assumes uninstrumented speed scale it
# (raceEnabled in their package).
RACE_PKGS := ./api/... ./identity/... ./internal/... ./ipam/... ./mesh/... ./router/... ./hostnet/... \
	./fastdp/... ./plugin/... ./agent/... ./kube/... ./cmd/...
RACE_SKIP := ^(TestSim100Peers|TestConsensusNoSplitBrain|TestRandomOpsTenPeers)$$
race: deps build k8s-bins
	CGO_ENABLED=1 $(GO) test -race -count=1 -p 1 -timeout 30m -skip '$(RACE_SKIP)' $(RACE_PKGS)

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
	$(GO) test -run '^$$' -bench . -benchtime 2000x -benchmem ./ipam ./router ./router/lookup ./router/crypto

# soak runs random faults against five hosts in the test bed while pods
# talk, and checks that nothing is lost, owned twice or leaked in the clear
# and that traffic is back within 5 s of each fault (site/operations.md).
# `make test` runs it for two minutes; SOAK_SEED replays a run's faults,
# SOAK_FAULTS=all (or a comma list) chooses the kinds.
SOAK_DURATION ?= 10m
SOAK_SEED     ?=
SOAK_FAULTS   ?=
soak: deps build
	WEFT_SOAK_DURATION=$(SOAK_DURATION) WEFT_SOAK_SEED=$(SOAK_SEED) WEFT_SOAK_FAULTS=$(SOAK_FAULTS) \
		$(GO) test -count=1 -timeout 60m -run '^TestSoak$$' -v ./test/soak/

# scale measures the mesh as it grows (issue 21) and prints one table: 50
# real agents in network namespaces, then 100, 300 and 1,000 simulated ones
# in one process (real gossip and IPAM, no data plane). Under 15 minutes.
# WEFT_SCALE_REAL and WEFT_SCALE_SIZES change the sizes.
scale: deps build
	@out=$$(mktemp); log=$(CURDIR)/.cache/scale.log; mkdir -p $(CURDIR)/.cache; \
	WEFT_SCALE=1 WEFT_SCALE_OUT=$$out $(GO) test -count=1 -v -run '^TestScaleTable$$' -timeout 15m ./test/scale >$$log 2>&1; rc=$$?; \
	cat $$out; rm -f $$out; \
	if [ $$rc -ne 0 ]; then grep -E '^\s*(--- FAIL|FAIL|panic)' $$log | head -20; echo "full log: $$log"; fi; exit $$rc

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

# Kubernetes in the test bed: a real three-node cluster (test/kubecluster)
# with kube-proxy and CoreDNS. Not part of `make test`: ~5 min with cached
# builds; the first build of the Kubernetes binaries and CoreDNS takes
# ~20 minutes on 2 cores (cached in K8S_DIR).
KUBE_APT_PKGS := containerd runc util-linux
KUBE_CMDS := kube-apiserver kubectl kubelet kube-controller-manager kube-scheduler kube-proxy coredns
.PHONY: test-kube demo-kube kube-deps conformance cni-plugins
kube-deps: deps
	@missing=""; for p in $(KUBE_APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing:$$missing"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi
	CMDS="$(KUBE_CMDS)" test/kubeapi/k8s/build.sh

test-kube: kube-deps
	$(GO) test -count=1 -tags kubecluster -run '^TestKubeCluster$$' -timeout 40m -v ./test/e2e/

# conformance runs Kubernetes' own network tests (k8s.io/kubernetes/test/e2e,
# v1.36.3, built offline with agnhost) against the three-node cluster with
# weft; see site/conformance.md for the selection and every skip. JUnit goes
# to _artifacts/conformance/, the counts are printed last.
conformance: kube-deps
	CMDS="e2e.test agnhost ginkgo" test/kubeapi/k8s/build.sh
	@missing=""; for p in busybox-static bind9-dnsutils curl netcat-openbsd; do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing:$$missing"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi
	@mkdir -p _artifacts/conformance
	@(WEFT_CONFORMANCE_DIR=$(CURDIR)/_artifacts/conformance $(GO) test -count=1 -tags kubecluster -run '^TestConformance$$' -timeout 120m -v ./test/e2e/; \
		echo $$? >_artifacts/conformance/rc) | tee _artifacts/conformance/go-test.log; \
	grep -h 'CONFORMANCE ' _artifacts/conformance/go-test.log | sed 's/^ *kubecluster_test.go:[0-9]*: //'; exit $$(cat _artifacts/conformance/rc)

# cni-plugins builds the portmap and bandwidth plugins the image ships into
# bin/ (for prog/image/Dockerfile; prog/image/build.sh builds them itself).
cni-plugins:
	cd prog/image/cni-plugins && $(GO) build -trimpath -ldflags '-s -w' -o $(BIN)/ \
		github.com/containernetworking/plugins/plugins/meta/portmap github.com/containernetworking/plugins/plugins/meta/bandwidth

demo-kube: kube-deps
	$(GO) run ./test/demokube
