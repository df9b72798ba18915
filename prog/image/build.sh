#!/bin/bash
# Builds the weft image without a docker daemon or network registry: the same
# content as prog/image/Dockerfile (FROM scratch, /bin/weft, /bin/weft-cni,
# /bin/portmap, /bin/bandwidth, entrypoint /bin/weft), written as an image tarball that
#   ctr -n k8s.io images import weft-image.tar   or   docker load -i weft-image.tar
# loads under the name $IMAGE. crane talks to a throw-away registry it serves on
# loopback; that registry process is stopped (by its pid) on exit.
#
# Usage: prog/image/build.sh [OUT.tar]     (default bin/weft-image.tar)
# Env:   BIN_DIR (take weft and weft-cni, and portmap and bandwidth if there,
#        from there instead of building),
#        IMAGE (default ghcr.io/weftnet/weft:latest), CRANE (crane binary; else
#        crane in PATH or GOPATH/bin, else go install from the Go module proxy).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-bin/weft-image.tar}
IMAGE=${IMAGE:-ghcr.io/weftnet/weft:latest}
CRANE_VERSION=v0.22.1

work=$(mktemp -d)
regpid=""
cleanup() {
  local rc=$?
  if [ -n "$regpid" ]; then kill "$regpid" 2>/dev/null; wait "$regpid" 2>/dev/null || true; fi
  rm -rf "$work"
  exit $rc
}
trap cleanup EXIT

crane=${CRANE:-$(command -v crane || true)}
if [ -z "$crane" ]; then
  crane="$(go env GOPATH)/bin/crane"
  [ -x "$crane" ] || GOFLAGS=-buildvcs=false go install "github.com/google/go-containerregistry/cmd/crane@$CRANE_VERSION"
fi

# Static binaries: the image has no libc.
mkdir -p "$work/rootfs/bin" "$(dirname "$OUT")"
if [ -n "${BIN_DIR:-}" ]; then # already built (make build)
  cp "$BIN_DIR/weft" "$BIN_DIR/weft-cni" "$work/rootfs/bin/"
else
  CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$work/rootfs/bin/weft" ./cmd/weft
  CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$work/rootfs/bin/weft-cni" ./cmd/weft-cni
fi
# The reference plugins weft chains (hostPort, bandwidth), from the pinned
# module in prog/image/cni-plugins through the Go module proxy; the Go build
# cache makes every build after the first a matter of seconds.
if [ -n "${BIN_DIR:-}" ] && [ -x "$BIN_DIR/portmap" ] && [ -x "$BIN_DIR/bandwidth" ]; then
  cp "$BIN_DIR/portmap" "$BIN_DIR/bandwidth" "$work/rootfs/bin/"
else
  (cd prog/image/cni-plugins && CGO_ENABLED=0 GOFLAGS=-buildvcs=false go build -trimpath -ldflags "-s -w" -o "$work/rootfs/bin/" \
    github.com/containernetworking/plugins/plugins/meta/portmap github.com/containernetworking/plugins/plugins/meta/bandwidth)
fi
for b in weft weft-cni portmap bandwidth; do # a dynamic binary would not start in a scratch image
  if file "$work/rootfs/bin/$b" 2>/dev/null | grep -q "dynamically linked"; then
    echo "$b is dynamically linked; build with CGO_ENABLED=0" >&2; exit 1
  fi
done
# Owned by root in the image whoever builds it; fixed times and order, so the
# layer digest depends only on the binaries.
tar --owner=0 --group=0 --numeric-owner --mtime=@0 --sort=name -C "$work/rootfs" -cf "$work/layer.tar" bin

# A free loopback port for the throw-away registry.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$crane" registry serve --address "127.0.0.1:$port" >"$work/registry.log" 2>&1 &
regpid=$!
for _ in $(seq 1 50); do
  "$crane" catalog --insecure "127.0.0.1:$port" >/dev/null 2>&1 && break
  kill -0 "$regpid" 2>/dev/null || { cat "$work/registry.log"; exit 1; }
  sleep 0.1
done

raw="127.0.0.1:$port/weft:raw"
"$crane" append --insecure --oci-empty-base -f "$work/layer.tar" -t "$raw" >"$work/append.log" 2>&1 || { cat "$work/append.log" >&2; exit 1; }
# Platform and entrypoint go into the config; -o writes the result as a
# tarball tagged $IMAGE instead of pushing it anywhere.
"$crane" mutate --insecure "$raw" --entrypoint=/bin/weft --set-platform linux/amd64 -t "$IMAGE" -o "$OUT" >/dev/null
echo "wrote $OUT ($IMAGE, $(du -h "$OUT" | cut -f1))"
