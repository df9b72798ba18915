#!/bin/bash
# Builds kube-apiserver and kubectl (CMDS overrides, e.g. CMDS="kube-apiserver kubectl kubelet")
# v1.36.3 from the Go module proxy into $K8S_DIR/bin, skipping binaries already there.
# build/ is a wrapper module requiring k8s.io/kubernetes v1.36.3 with every staging module
# replaced by v0.36.3 (the proxy serves only that release). Copied from the checked recipe in
# the shared k8s notes. ~7 min for kube-apiserver on 2 cores the first time; $K8S_DIR/bin and
# GOCACHE are the cache (K8S_DIR defaults to /var/cache/weft-k8s, which survives reboots).
set -eu
K8S_DIR=${K8S_DIR:-/var/cache/weft-k8s}; mkdir -p "$K8S_DIR/bin"
cd "$(dirname "$0")/build"
LD="-s -w -X k8s.io/component-base/version.gitVersion=v1.36.3 -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=36 -X k8s.io/client-go/pkg/version.gitVersion=v1.36.3 -X k8s.io/component-base/version.gitTreeState=clean"
for c in ${CMDS:-kube-apiserver kubectl}; do
  [ -x "$K8S_DIR/bin/$c" ] && continue
  s=$(date +%s)
  # Build to a temporary name and rename, so an interrupted build never leaves a
  # truncated binary that the skip above would take for a good one.
  CGO_ENABLED=0 GOFLAGS=-buildvcs=false go build -trimpath -ldflags "$LD" -o "$K8S_DIR/bin/.$c.tmp" k8s.io/kubernetes/cmd/$c
  mv "$K8S_DIR/bin/.$c.tmp" "$K8S_DIR/bin/$c"
  echo "$c built in $(( $(date +%s) - s )) s"
done
