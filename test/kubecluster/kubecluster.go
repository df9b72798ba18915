// Package kubecluster brings up a real Kubernetes cluster inside the weft test
// bed and tears it down again without a trace:
//
//   - the control plane (etcd, kube-apiserver, kube-controller-manager,
//     kube-scheduler) runs in the test bed's Outside namespace, the apiserver
//     on https://198.18.0.200:6443, reachable from every node;
//   - each node is a test bed host namespace with its own containerd and
//     kubelet, started by node-init.sh as PID 1 of a mount+pid namespace of
//     the node's own (see that script for why);
//   - each node also runs kube-proxy (nftables mode) as a node process, like
//     the kubelet, with --cluster-cidr = weft's range;
//   - the weft image is built from this checkout by prog/image/build.sh, the
//     pause and probe images from ./netprobe, CoreDNS from ./coredns, and all
//     are imported into every node's containerd, so nothing is pulled from any
//     registry;
//   - CoreDNS is applied as the cluster DNS (Deployment + Service kube-dns at
//     DNSServiceIP, which every kubelet hands to its pods), as kubeadm does;
//   - no pod network: the nodes come up NotReady until weft is applied.
//
// Kubernetes binaries (v1.36.3, built through the Go module proxy by
// test/kubeapi/k8s/build.sh) are taken from $K8S_DIR/bin; etcd, containerd,
// runc and ctr from Debian packages. Nothing listens in, or routes from, the
// machine's own network namespace: kubectl runs inside the Outside namespace.
package kubecluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	_ "embed"

	"github.com/weftnet/weft/test/kubeapi"
	"github.com/weftnet/weft/test/testbed"

	"github.com/weftnet/weft/internal/logx"
	"github.com/weftnet/weft/test/testpki"
)

// ErrUnavailable wraps every reason a cluster cannot be had on this machine
// (missing packages or Kubernetes binaries). Tests skip on it outside CI.
var ErrUnavailable = errors.New("kubecluster: unavailable")

//go:embed node-init.sh
var nodeInitScript []byte

// Addresses fixed by the layout.
const (
	APIServerPort = 6443
	ServiceCIDR   = "10.96.0.0/16" // kubernetes Service is 10.96.0.1
	DNSServiceIP  = "10.96.0.10"
	ClusterDomain = "cluster.local"
	// PodCIDR is weft's IPALLOC_RANGE in prog/kube/weft.yaml; kube-proxy's
	// clusterCIDR must be the same range (it tells pod traffic from the rest).
	PodCIDR = "10.32.0.0/12"
)

// K8SCommands are the Kubernetes binaries a cluster needs in $K8S_DIR/bin.
// coredns is built by the same script from test/kubecluster/coredns.
var K8SCommands = []string{"kube-apiserver", "kubectl", "kubelet", "kube-controller-manager", "kube-scheduler", "kube-proxy", "coredns"}

// Options of a cluster.
type Options struct {
	Nodes  int          // default 3
	Dir    string       // work directory (required); keep it short, unix socket paths live below it
	Logger *slog.Logger // progress; nil = discard
	// Conformance also imports the images Kubernetes' e2e tests use
	// (agnhost, busybox) into every node.
	Conformance bool
	// NoWeftImage skips building prog/kube/weft.yaml's image with
	// prog/image/build.sh: the caller installs a release (ImportRelease).
	NoWeftImage bool
}

// Cluster is a running cluster.
type Cluster struct {
	Bed        *testbed.Bed
	Dir        string
	Nodes      []*Node
	APIServer  string // https://198.18.0.200:6443
	Kubeconfig string // admin (system:masters)
	Root       string // this checkout (module root)

	log     *slog.Logger
	k8sBin  string
	control []*process // started in this order, stopped in reverse
	machine *os.File   // machineLock, held shared while the cluster runs
}

// Node is one kubelet + containerd in a test bed host.
type Node struct {
	Name   string
	IP     netip.Addr
	Host   *testbed.Host
	Dir    string // bind-mounted over the node's /run, /etc/cni/net.d, ...
	Cgroup string // cgroupRoot of the kubelet, e.g. /wkc-1a2b3c-node1

	init   *process
	pidNS  string // "pid:[inode]" of the node's pid namespace
	images []string
}

// RunDir is the node's /run as seen from the machine.
func (n *Node) RunDir() string { return filepath.Join(n.Dir, "run") }

// WeftRunDir holds the node's weft.sock (the DaemonSet's /run/weft).
func (n *Node) WeftRunDir() string { return filepath.Join(n.Dir, "run", "weft") }

// Log returns the tail of one of the node's logs: "kubelet", "containerd", "init".
func (n *Node) Log(name string, lines int) string {
	return tailFile(filepath.Join(n.Dir, "logs", name+".log"), lines)
}

// Running reports whether the node's processes are up.
func (n *Node) Running() bool { return n.init != nil && n.init.running() }

// bindDirs are the node's own directories, bind-mounted by node-init.sh
// over the machine path given (keep the two lists in step).
var bindDirs = map[string]string{
	"run": "/run", "cni-conf": "/etc/cni/net.d", "cni-bin": "/opt/cni/bin", "weft": "/var/lib/weft",
	"kubelet-var": "/var/lib/kubelet", "pod-logs": "/var/log/pods", "container-logs": "/var/log/containers",
}

// Check reports what is missing to run a cluster, wrapped in ErrUnavailable.
func Check() error {
	var missing []string
	for _, c := range []string{"etcd", "containerd", "containerd-shim-runc-v2", "runc", "ctr", "nsenter", "unshare", "nft", "ip", "sysctl"} {
		if _, err := exec.LookPath(c); err != nil {
			missing = append(missing, c)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: not in PATH: %s (apt-get install -y etcd-server containerd runc nftables util-linux iproute2)", ErrUnavailable, strings.Join(missing, " "))
	}
	bin := filepath.Join(kubeapi.K8SDir(), "bin")
	for _, c := range K8SCommands {
		if st, err := os.Stat(filepath.Join(bin, c)); err != nil || st.Mode()&0o111 == 0 {
			missing = append(missing, c)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: %s missing in %s: run CMDS=%q K8S_DIR=%s test/kubeapi/k8s/build.sh (about 12 minutes the first time)",
			ErrUnavailable, strings.Join(missing, " "), bin, strings.Join(missing, " "), kubeapi.K8SDir())
	}
	for _, plugin := range []string{"loopback", "tuning"} {
		if _, err := os.Stat("/usr/lib/cni/" + plugin); err != nil {
			return fmt.Errorf("%w: /usr/lib/cni/%s missing (apt-get install -y containernetworking-plugins)", ErrUnavailable, plugin)
		}
	}
	return nil
}

// Start builds the images, creates the test bed and brings up the control
// plane and the nodes, and waits until every node has registered. On error
// everything made so far is torn down again.
func Start(ctx context.Context, opts Options) (c *Cluster, err error) {
	if opts.Nodes == 0 {
		opts.Nodes = 3
	}
	if opts.Dir == "" {
		return nil, errors.New("kubecluster: Options.Dir is required")
	}
	opts.Logger = logx.OrDiscard(opts.Logger)
	if err := Check(); err != nil {
		return nil, err
	}
	root, err := testbed.ModuleRoot()
	if err != nil {
		return nil, fmt.Errorf("kubecluster: module root: %w", err)
	}
	c = &Cluster{Dir: opts.Dir, Root: root, log: opts.Logger, k8sBin: filepath.Join(kubeapi.K8SDir(), "bin")}
	// made, not c: every `return nil, err` below has set c to nil by the
	// time this runs.
	made := c
	defer func() {
		if err != nil {
			if cerr := made.Close(); cerr != nil {
				made.log.Warn("teardown after a failed start", "err", cerr)
			}
			c = nil
		}
	}()
	imgDir := filepath.Join(c.Dir, "images")
	if err := os.MkdirAll(imgDir, 0o755); err != nil {
		return nil, err
	}
	images, err := buildImages(root, imgDir, c.k8sBin, opts.NoWeftImage, func(f string, a ...any) { c.log.Info(fmt.Sprintf(f, a...)) })
	if err != nil {
		return nil, fmt.Errorf("kubecluster: images: %w", err)
	}
	if opts.Conformance {
		more, err := conformanceImages(imgDir, c.k8sBin)
		if err != nil {
			return nil, fmt.Errorf("kubecluster: e2e images: %w", err)
		}
		images = append(images, more...)
	}
	c.Bed, err = testbed.New(ctx, testbed.Options{Hosts: opts.Nodes, Dir: filepath.Join(c.Dir, "bed"), BinDir: imgDir, Prefix: "wkc", Outside: true,
		Logf: func(f string, a ...any) { c.log.Warn(fmt.Sprintf(f, a...)) }})
	if err != nil {
		return nil, fmt.Errorf("kubecluster: test bed: %w", err)
	}
	p, err := testpki.New(filepath.Join(c.Dir, "pki"))
	if err != nil {
		return nil, fmt.Errorf("kubecluster: pki: %w", err)
	}
	if err := c.holdMachine(); err != nil {
		return nil, err
	}
	if err := c.startControlPlane(ctx, p); err != nil {
		return nil, err
	}
	for i, h := range c.Bed.Hosts {
		n := &Node{Name: fmt.Sprintf("node%d", i+1), IP: h.Addr, Host: h, Dir: filepath.Join(c.Dir, fmt.Sprintf("n%d", i+1)),
			Cgroup: fmt.Sprintf("/wkc-%s-node%d", c.Bed.ID, i+1), images: images}
		c.Nodes = append(c.Nodes, n)
		if err := c.startNode(ctx, p, n); err != nil {
			return nil, fmt.Errorf("kubecluster: %s: %w", n.Name, err)
		}
	}
	if opts.Conformance {
		// The control plane lives in the outside-world namespace, which
		// has no route to pods; on a real cluster it runs on a node with
		// the pod network. Kubernetes' e2e tests read results from pods
		// through the apiserver's pod proxy (the DNS tests do), so give
		// it a way in: through the first node, which routes the range.
		if out, err := exec.CommandContext(ctx, "ip", "-n", c.Bed.Outside, "route", "replace", PodCIDR, "via", c.Nodes[0].IP.String()).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("kubecluster: route to pods from the control plane: %w: %s", err, out)
		}
	}
	start := time.Now()
	// Generous: each node imports every image into its containerd before
	// its kubelet starts, which on the shared 2-core machine under load
	// took more than 2 minutes.
	err = c.WaitNodes(ctx, 5*time.Minute, func(nodes []NodeStatus) error {
		if len(nodes) != len(c.Nodes) {
			return fmt.Errorf("%d of %d nodes registered", len(nodes), len(c.Nodes))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("kubecluster: nodes did not register: %w\n%s", err, c.Diagnose())
	}
	c.log.Info("nodes registered", "nodes", len(c.Nodes), "after", time.Since(start).Round(100*time.Millisecond))
	// The cluster DNS, as kubeadm installs it: Pending until a pod network
	// makes the nodes Ready.
	if _, err := c.KubectlStdin(ctx, fmt.Appendf(nil, corednsYAML, CoreDNSImage, DNSServiceIP, ClusterDomain), "apply", "-f", "-"); err != nil {
		return nil, fmt.Errorf("kubecluster: CoreDNS: %w", err)
	}
	return c, nil
}

func (c *Cluster) startControlPlane(ctx context.Context, p *testpki.PKI) error {
	out := c.Bed.Outside
	apiIP := testbed.OutsideAddr.String()
	c.APIServer = "https://" + net.JoinHostPort(apiIP, strconv.Itoa(APIServerPort))
	servingCert, servingKey, err := p.Serving("apiserver", net.ParseIP(apiIP), net.IPv4(127, 0, 0, 1), net.IPv4(10, 96, 0, 1))
	if err != nil {
		return err
	}
	adminCert, adminKey, err := p.Client("admin", "admin", "system:masters")
	if err != nil {
		return err
	}
	c.Kubeconfig = filepath.Join(p.Dir, "admin.kubeconfig")
	if err := p.Kubeconfig(c.Kubeconfig, c.APIServer, "admin", adminCert, adminKey); err != nil {
		return err
	}
	logs := filepath.Join(c.Dir, "logs")
	if err := os.MkdirAll(logs, 0o755); err != nil {
		return err
	}
	start := func(name string, args ...string) error {
		pr, err := startIn(out, filepath.Join(logs, name+".log"), nil, args...)
		if err != nil {
			return fmt.Errorf("kubecluster: %w", err)
		}
		c.control = append(c.control, pr)
		return nil
	}
	// etcd on the Outside namespace's loopback only.
	if err := start("etcd", "etcd", "--name", "weft", "--data-dir", filepath.Join(c.Dir, "etcd"),
		"--listen-client-urls", "http://127.0.0.1:2379", "--advertise-client-urls", "http://127.0.0.1:2379",
		"--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
		"--initial-cluster", "weft=http://127.0.0.1:2380"); err != nil {
		return err
	}
	if err := start("kube-apiserver", filepath.Join(c.k8sBin, "kube-apiserver"),
		"--etcd-servers=http://127.0.0.1:2379",
		"--bind-address=0.0.0.0", "--secure-port="+strconv.Itoa(APIServerPort), "--advertise-address="+apiIP,
		"--tls-cert-file="+servingCert, "--tls-private-key-file="+servingKey, "--client-ca-file="+p.CACert,
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file="+p.SAPub, "--service-account-signing-key-file="+p.SAKey,
		"--service-cluster-ip-range="+ServiceCIDR,
		"--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction", "--allow-privileged=true",
		"--kubelet-client-certificate="+adminCert, "--kubelet-client-key="+adminKey,
		"--kubelet-preferred-address-types=InternalIP"); err != nil {
		return err
	}
	if err := c.wait(ctx, time.Minute, "kube-apiserver ready", func() error {
		if !c.control[1].running() {
			return fmt.Errorf("%w: kube-apiserver exited: %s", errStop, tailFile(c.control[1].logPath, 20))
		}
		_, err := c.Kubectl(ctx, "get", "--raw", "/readyz")
		return err
	}); err != nil {
		return err
	}
	if err := start("kube-controller-manager", filepath.Join(c.k8sBin, "kube-controller-manager"),
		"--kubeconfig="+c.Kubeconfig, "--bind-address=127.0.0.1", "--leader-elect=false",
		"--service-account-private-key-file="+p.SAKey, "--root-ca-file="+p.CACert,
		"--use-service-account-credentials=true"); err != nil {
		return err
	}
	return start("kube-scheduler", filepath.Join(c.k8sBin, "kube-scheduler"),
		"--kubeconfig="+c.Kubeconfig, "--bind-address=127.0.0.1", "--leader-elect=false")
}

func (c *Cluster) startNode(ctx context.Context, p *testpki.PKI, n *Node) error {
	for d := range bindDirs {
		if err := os.MkdirAll(filepath.Join(n.Dir, d), 0o755); err != nil {
			return err
		}
	}
	for _, d := range []string{"logs", "containerd", "kubelet", "volume-plugins"} {
		if err := os.MkdirAll(filepath.Join(n.Dir, d), 0o755); err != nil {
			return err
		}
	}
	for _, target := range bindDirs {
		if err := c.ensureMountpoint(target); err != nil {
			return err
		}
	}
	// The loopback plugin is part of any node's CNI install (containerd's
	// CRI sets up each pod's lo with it); weft-cni, portmap and bandwidth
	// are installed by the DaemonSet's init container. tuning is there for
	// the operator's own chained plugin (the scenario adds it).
	for _, plugin := range []string{"loopback", "tuning"} {
		b, err := os.ReadFile(filepath.Join("/usr/lib/cni", plugin))
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(n.Dir, "cni-bin", plugin), b, 0o755); err != nil {
			return err
		}
	}
	cert, key, err := p.Client("kubelet-"+n.Name, "system:node:"+n.Name, "system:nodes")
	if err != nil {
		return err
	}
	if err := p.Kubeconfig(filepath.Join(n.Dir, "kubelet.kubeconfig"), c.APIServer, n.Name, cert, key); err != nil {
		return err
	}
	// kube-proxy's identity: the built-in binding system:node-proxier
	// grants the user system:kube-proxy what it needs.
	cert, key, err = p.Client("kube-proxy-"+n.Name, "system:kube-proxy")
	if err != nil {
		return err
	}
	if err := p.Kubeconfig(filepath.Join(n.Dir, "kube-proxy.kubeconfig"), c.APIServer, "kube-proxy", cert, key); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(n.Dir, "kube-proxy.yaml"), []byte(kubeProxyConfig(n)), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(n.Dir, "containerd.toml"), []byte(containerdConfig(n)), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(n.Dir, "kubelet.yaml"), []byte(kubeletConfig(n, p.CACert)), 0o644); err != nil {
		return err
	}
	script := filepath.Join(n.Dir, "node-init.sh")
	if err := os.WriteFile(script, nodeInitScript, 0o755); err != nil {
		return err
	}
	if err := makeCgroup(n.Cgroup); err != nil {
		return err
	}
	n.init, err = startIn(n.Host.Netns, filepath.Join(n.Dir, "logs", "init.log"), []string{
		"NODE_DIR=" + n.Dir, "NODE_NAME=" + n.Name, "NODE_IP=" + n.IP.String(),
		"K8S_BIN=" + c.k8sBin, "IMAGES=" + strings.Join(n.images, " "),
	}, "unshare", "--mount", "--propagation", "slave", "--uts", "--pid", "--fork", "--mount-proc", "--kill-child", "--", "/bin/bash", script)
	if err != nil {
		return err
	}
	// Remember the node's pid namespace, to prove at teardown that every
	// process in it is gone.
	return c.wait(ctx, 10*time.Second, n.Name+" init", func() error {
		child, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", n.init.pid(), n.init.pid()))
		if err != nil || len(bytes.Fields(child)) == 0 {
			return fmt.Errorf("no child of unshare yet")
		}
		pid := string(bytes.Fields(child)[0])
		if n.pidNS, err = os.Readlink(fmt.Sprintf("/proc/%s/ns/pid", pid)); err != nil {
			return err
		}
		// hostNetwork pods share the node's UTS namespace: their host
		// name must be the node's name, as on a real node (Kubernetes'
		// e2e tests compare hostNetwork answers with node names).
		out, err := exec.Command("nsenter", "-t", pid, "-u", "hostname").Output()
		if err != nil {
			return fmt.Errorf("host name of %s: %w", n.Name, err)
		}
		if got := strings.TrimSpace(string(out)); got != n.Name {
			return fmt.Errorf("host name of %s is %q, not its node name", n.Name, got)
		}
		return nil
	})
}

func containerdConfig(n *Node) string {
	return fmt.Sprintf(`# containerd of %[1]s. /run, /etc/cni/net.d and /opt/cni/bin are the node's
# own (bind mounts in its mount namespace), so the defaults under them are per node.
version = 2
root = "%[2]s/containerd"
state = "/run/containerd"
[grpc]
  address = "/run/containerd/containerd.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "%[2]s/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %[3]q
  stream_server_address = "127.0.0.1"
  # No CAP_SYS_RESOURCE on this machine kind: without this runc fails with
  # "can't get final child's PID from pipe".
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/opt/cni/bin"
    conf_dir = "/etc/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
`, n.Name, n.Dir, PauseImage)
}

func kubeletConfig(n *Node, ca string) string {
	return fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: %[1]s
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: %[2]s}
authorization: {mode: AlwaysAllow}
# Every node's pods under its own cgroup root; cgroup v1 and containerd 1.6
# (no RuntimeConfig call) need the driver and failCgroupV1 spelled out.
cgroupRoot: %[3]s
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
volumePluginDir: %[4]s/volume-plugins
resolvConf: /etc/resolv.conf
clusterDNS: [%[5]s]
clusterDomain: %[6]s
serializeImagePulls: false
# Images are imported, never pulled: keep them all, evict nothing.
evictionHard: {}
imageGCHighThresholdPercent: 100
nodeStatusUpdateFrequency: 4s
`, n.IP, ca, n.Cgroup, n.Dir, DNSServiceIP, ClusterDomain)
}

// kubeProxyConfig: nftables mode (the kernel and nft here support it; see
// site/conformance.md), the pod range of weft as clusterCIDR, and nothing
// that needs more than the node's network namespace: conntrack sysctls and
// the OOM score (no CAP_SYS_RESOURCE on this machine kind) are left alone.
func kubeProxyConfig(n *Node) string {
	return fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: %[1]s/kube-proxy.kubeconfig
mode: nftables
clusterCIDR: %[2]s
hostnameOverride: %[3]s
bindAddress: %[4]s
healthzBindAddress: 0.0.0.0:10256
metricsBindAddress: 127.0.0.1:10249
oomScoreAdj: 0
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
`, n.Dir, PodCIDR, n.Name, n.IP)
}

// ensureMountpoint creates target on the machine if missing, recording
// what it created in machineMounts so that the last cluster to close
// removes exactly that.
func (c *Cluster) ensureMountpoint(target string) error {
	var created []string
	for d := target; d != "/"; d = filepath.Dir(d) {
		if _, err := os.Stat(d); err == nil {
			break
		}
		created = append(created, d)
	}
	if len(created) == 0 {
		return nil
	}
	if err := os.MkdirAll(target, 0o755); err != nil {
		return fmt.Errorf("mountpoint %s: %w", target, err)
	}
	f, err := os.OpenFile(machineMounts, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("kubecluster: %w", err)
	}
	defer f.Close()
	if _, err := f.WriteString(strings.Join(created, "\n") + "\n"); err != nil {
		return fmt.Errorf("kubecluster: %w", err)
	}
	return nil
}

var errStop = errors.New("stop waiting")

// wait polls cond every 200 ms until it returns nil, returns an error
// wrapping errStop, or the timeout passes.
func (c *Cluster) wait(ctx context.Context, timeout time.Duration, what string, cond func() error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		err := cond()
		if err == nil {
			return nil
		}
		if errors.Is(err, errStop) {
			return fmt.Errorf("%s: %w", what, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: not within %s: %w", what, timeout, err)
		case <-tick.C:
		}
	}
}

// Kubectl runs kubectl as admin inside the Outside namespace and returns its
// standard output; a failure includes its standard error.
func (c *Cluster) Kubectl(ctx context.Context, args ...string) ([]byte, error) {
	return c.KubectlStdin(ctx, nil, args...)
}

// KubectlStdin is Kubectl with stdin (for `apply -f -`).
func (c *Cluster) KubectlStdin(ctx context.Context, stdin []byte, args ...string) ([]byte, error) {
	full := append([]string{"--net=" + netnsPath(c.Bed.Outside), "--", filepath.Join(c.k8sBin, "kubectl"), "--kubeconfig", c.Kubeconfig}, args...)
	cmd := exec.CommandContext(ctx, "nsenter", full...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return out, nil
}

// StopNode kills every process of the node at once, like a machine that
// loses power: the node's PID 1 dies, so the kernel kills the rest of its pid
// namespace (kubelet, containerd, shims, containers, the weft agent). It
// waits until they are all gone and removes the node's cgroups.
func (c *Cluster) StopNode(n *Node) error {
	if n.init == nil {
		return nil
	}
	n.init.stop(syscall.SIGKILL, 0)
	var errs []error
	if n.pidNS != "" {
		if err := c.wait(context.Background(), 30*time.Second, n.Name+" processes gone", func() error {
			if pids := pidsInNamespace(n.pidNS); len(pids) > 0 {
				return fmt.Errorf("still running: %v", pids)
			}
			return nil
		}); err != nil {
			errs = append(errs, err)
		}
	}
	if err := c.wait(context.Background(), 30*time.Second, n.Name+" cgroups removed", func() error {
		return removeCgroup(n.Cgroup)
	}); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Close stops the nodes, then the control plane (apiserver before etcd),
// deletes the namespaces and removes every file and directory the cluster
// made. Safe to call twice and on a half-started cluster.
func (c *Cluster) Close() error {
	var errs []error
	for _, n := range c.Nodes {
		if err := c.StopNode(n); err != nil {
			errs = append(errs, err)
		}
	}
	for i := len(c.control) - 1; i >= 0; i-- {
		c.control[i].stop(syscall.SIGTERM, 15*time.Second)
	}
	c.control = nil
	if c.Bed != nil {
		c.Bed.Close()
		c.Bed = nil
	}
	// Mounts: all of them lived in the nodes' mount namespaces, which died
	// with their processes; check that none is left on the machine anyway.
	if err := checkNoMounts(c.Dir); err != nil {
		errs = append(errs, err)
	} else if err := os.RemoveAll(c.Dir); err != nil {
		errs = append(errs, fmt.Errorf("kubecluster: remove %s: %w", c.Dir, err))
	}
	if err := c.releaseMachine(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Bind targets made on the machine (/opt/cni/bin, /etc/cni/net.d, ...) are
// shared by every cluster running on it: removing one detaches the bind
// mounts of other clusters' nodes at that path too (Linux drops the mounts of
// other namespaces on a directory that is removed), and their nodes lose
// their CNI plugins mid-test. So each cluster holds machineLock shared while
// it runs, records the targets it made in machineMounts, and only the last
// one to close (the one that gets the lock exclusively) removes them all.
const (
	machineLock   = "/run/weft-kubecluster.lock"
	machineMounts = "/run/weft-kubecluster.mountpoints"
)

// holdMachine takes the shared lock (waiting while a closing cluster
// removes the targets).
func (c *Cluster) holdMachine() error {
	f, err := os.OpenFile(machineLock, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("kubecluster: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_SH); err != nil {
		f.Close()
		return fmt.Errorf("kubecluster: lock %s: %w", machineLock, err)
	}
	c.machine = f
	return nil
}

// releaseMachine removes the recorded bind targets if no other cluster runs.
func (c *Cluster) releaseMachine() error {
	if c.machine == nil {
		return nil
	}
	defer func() { c.machine.Close(); c.machine = nil }()
	if err := syscall.Flock(int(c.machine.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		c.log.Info("another cluster runs on this machine: the bind targets stay for the last one to remove")
		return nil
	}
	b, err := os.ReadFile(machineMounts)
	if err != nil {
		if os.IsNotExist(err) {
			return nil
		}
		return fmt.Errorf("kubecluster: %w", err)
	}
	dirs := strings.Fields(string(b))
	sort.Sort(sort.Reverse(sort.StringSlice(dirs))) // children before parents
	var errs []error
	for _, d := range slices.Compact(dirs) {
		if err := os.Remove(d); err != nil && !os.IsNotExist(err) {
			errs = append(errs, fmt.Errorf("kubecluster: remove mountpoint: %w", err))
		}
	}
	if err := os.Remove(machineMounts); err != nil && !os.IsNotExist(err) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// checkNoMounts fails if the machine's mount table has anything under dir.
func checkNoMounts(dir string) error {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
			return fmt.Errorf("kubecluster: mount left under %s: %s", dir, f[4])
		}
	}
	return nil
}

// pidsInNamespace lists the processes whose pid namespace is ns.
func pidsInNamespace(ns string) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if l, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", pid)); err == nil && l == ns {
			pids = append(pids, pid)
		}
	}
	return pids
}
