#!/bin/bash
# PID 1 of one simulated Kubernetes node. kubecluster starts it as
#   nsenter --net=NODE-NETNS unshare --mount --propagation slave --uts --pid --fork --mount-proc --kill-child
# so the node has the test bed host's network namespace plus a mount, a UTS and
# a pid namespace of its own:
# - mount: the paths a real node owns (/run, /etc/cni/net.d, /opt/cni/bin,
#   /var/lib/weft, /var/lib/kubelet, /var/log/pods, /var/log/containers) are
#   bind mounts of this node's directory, so the unmodified weft DaemonSet's
#   hostPath volumes land per node, and every mount containerd and kubelet make
#   (overlay rootfs, shm, secrets, netns pins) lives and dies with this namespace;
# - uts: the node's host name is its node name, as on a real node; hostNetwork
#   pods share it (Kubernetes' e2e tests expect their answer to be the name);
# - pid: when this script dies (its parent unshare is killed) the kernel kills
#   every process of the node: kubelet, containerd, shims and all containers.
# Environment: NODE_DIR NODE_NAME NODE_IP K8S_BIN IMAGES (space-separated tarballs).
set -euo pipefail
log() { echo "$(date +%T.%N) node-init $NODE_NAME: $*"; }
hostname "$NODE_NAME"

# -n: no utab entry; libmount would otherwise create /run/mount on the machine
# before the first bind (the one over /run) is in place.
for m in run:/run cni-conf:/etc/cni/net.d cni-bin:/opt/cni/bin weft:/var/lib/weft \
         kubelet-var:/var/lib/kubelet pod-logs:/var/log/pods container-logs:/var/log/containers; do
  mount -n --bind "$NODE_DIR/${m%%:*}" "${m#*:}"
done

# Node prerequisites a distribution or kubeadm's preflight would see to.
# IPv4 forwarding (kubeadm refuses a node without it): a new network namespace
# copies the machine's value, which is 0 here.
sysctl -qw net.ipv4.ip_forward=1
log "starting containerd"
containerd --config "$NODE_DIR/containerd.toml" >"$NODE_DIR/logs/containerd.log" 2>&1 &
for _ in $(seq 1 300); do
  [ -S /run/containerd/containerd.sock ] && ctr version >/dev/null 2>&1 && break
  sleep 0.1
done
for img in $IMAGES; do
  ctr -n k8s.io images import "$img" >>"$NODE_DIR/logs/import.log" 2>&1
done
log "images: $(ctr -n k8s.io images ls -q | tr '\n' ' ')"

log "starting kubelet"
"$K8S_BIN/kubelet" --config "$NODE_DIR/kubelet.yaml" --kubeconfig "$NODE_DIR/kubelet.kubeconfig" \
  --root-dir "$NODE_DIR/kubelet" --cert-dir "$NODE_DIR/kubelet/pki" \
  --hostname-override "$NODE_NAME" --node-ip "$NODE_IP" -v=2 >"$NODE_DIR/logs/kubelet.log" 2>&1 &

# kube-proxy as a node process beside the kubelet (as kubeadm-less installs
# run it), nftables mode, configured by kube-proxy.yaml. It reaches the
# apiserver directly (its kubeconfig), so it programs the kubernetes Service
# that the weft agent then uses: no stand-in rule is needed.
log "starting kube-proxy"
"$K8S_BIN/kube-proxy" --config "$NODE_DIR/kube-proxy.yaml" -v=2 >"$NODE_DIR/logs/kube-proxy.log" 2>&1 &

# Stay PID 1: reap the shims containerd orphans, until killed.
while :; do
  sleep 3600 &
  wait $! || true
done
