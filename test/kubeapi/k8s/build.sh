#!/bin/bash
# Builds Kubernetes v1.36.3 binaries from the Go module proxy into $K8S_DIR/bin, skipping
# binaries already there. CMDS picks them (default: kube-apiserver kubectl); names:
#   kube-apiserver kubectl kubelet kube-controller-manager kube-scheduler kube-proxy
#   agnhost   (the e2e test image's binary, k8s.io/kubernetes/test/images/agnhost)
#   e2e.test  (Kubernetes' end-to-end suite, `go test -c k8s.io/kubernetes/test/e2e`)
#   coredns   (the cluster DNS, from the wrapper module test/kubecluster/coredns)
#   ginkgo    (the ginkgo CLI at the version k8s.io/kubernetes v1.36.3 pins: runs e2e.test in parallel)
# build/ is a wrapper module requiring k8s.io/kubernetes v1.36.3 with every staging module
# replaced by v0.36.3 (the proxy serves only that release); build/tools.go pins every package
# built here so go.sum holds all their dependencies. Copied from the checked recipe in the
# shared k8s notes. First builds on 2 cores: kube-apiserver ~7 min, kube-proxy ~3 min,
# e2e.test ~15 min; $K8S_DIR/bin and GOCACHE are the cache (K8S_DIR defaults to
# /var/cache/weft-k8s, which survives reboots).
set -eu
K8S_DIR=${K8S_DIR:-/var/cache/weft-k8s}; mkdir -p "$K8S_DIR/bin"
cd "$(dirname "$0")/build"
LD="-s -w -X k8s.io/component-base/version.gitVersion=v1.36.3 -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=36 -X k8s.io/client-go/pkg/version.gitVersion=v1.36.3 -X k8s.io/component-base/version.gitTreeState=clean"
for c in ${CMDS:-kube-apiserver kubectl}; do
  [ -x "$K8S_DIR/bin/$c" ] && continue
  s=$(date +%s)
  # Build to a temporary name and rename, so an interrupted build never leaves a
  # truncated binary that the skip above would take for a good one.
  out="$K8S_DIR/bin/.$c.tmp"
  case $c in
  e2e.test) CGO_ENABLED=0 GOFLAGS=-buildvcs=false go test -c -trimpath -ldflags "$LD" -o "$out" k8s.io/kubernetes/test/e2e ;;
  coredns) (cd ../../../kubecluster/coredns && CGO_ENABLED=0 GOFLAGS=-buildvcs=false go build -trimpath -ldflags "-s -w" -o "$out" .) ;;
  ginkgo) CGO_ENABLED=0 GOFLAGS=-buildvcs=false go build -trimpath -ldflags "-s -w" -o "$out" github.com/onsi/ginkgo/v2/ginkgo ;;
  agnhost) CGO_ENABLED=0 GOFLAGS=-buildvcs=false go build -trimpath -ldflags "$LD" -o "$out" k8s.io/kubernetes/test/images/agnhost ;;
  *) CGO_ENABLED=0 GOFLAGS=-buildvcs=false go build -trimpath -ldflags "$LD" -o "$out" "k8s.io/kubernetes/cmd/$c" ;;
  esac
  mv "$out" "$K8S_DIR/bin/$c"
  echo "$c built in $(( $(date +%s) - s )) s"
done
