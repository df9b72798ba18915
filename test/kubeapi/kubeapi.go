// Package kubeapi runs a real Kubernetes control plane for tests: etcd (the
// Debian etcd-server package) and kube-apiserver on loopback, with kubectl.
// StartIn runs them inside a test-bed network namespace instead, the
// apiserver on that namespace's address, so agents in other namespaces reach
// it as they would a real control plane.
//
// kube-apiserver and kubectl v1.36.3 are built from the Go module proxy by
// k8s/build.sh into $K8S_DIR/bin (default /var/cache/weft-k8s, which persists
// across runs on one machine). The first build takes about 8 minutes on two
// cores, so run it once before `go test` with a short -timeout (or call
// EnsureBinaries from a Makefile step); later runs find the binaries and
// start a fresh apiserver in about 3 seconds.
package kubeapi

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/weftnet/weft/internal/childproc"
)

// ErrUnavailable wraps every reason the control plane cannot be had on this
// machine (no etcd, no binaries and no way to build them). Tests skip on it
// outside CI and fail on it in CI.
var ErrUnavailable = errors.New("kubeapi: control plane unavailable")

// DefaultK8SDir is where binaries are cached when K8S_DIR is not set.
const DefaultK8SDir = "/var/cache/weft-k8s"

// APIServer is a running etcd + kube-apiserver pair.
type APIServer struct {
	Dir        string // this instance's files: pki, etcd data, logs, kubeconfigs
	URL        string // https://127.0.0.1:PORT
	Kubeconfig string // admin (system:masters) kubeconfig
	CACert     string
	AdminCert  string // admin client certificate and key (PEM files)
	AdminKey   string
	Netns      string // namespace etcd and the apiserver run in, "" = the test's own

	binDir string
}

// K8SDir is the binary cache directory.
func K8SDir() string {
	if d := os.Getenv("K8S_DIR"); d != "" {
		return d
	}
	return DefaultK8SDir
}

// EnsureBinaries builds kube-apiserver and kubectl into K8SDir()/bin unless
// they are there, holding a file lock so concurrent test binaries build once.
// It returns the bin directory.
func EnsureBinaries(ctx context.Context, logf func(format string, args ...any)) (string, error) {
	bin := filepath.Join(K8SDir(), "bin")
	if haveBinaries(bin) {
		return bin, nil
	}
	if err := os.MkdirAll(bin, 0o755); err != nil {
		return "", fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	lock, err := os.OpenFile(filepath.Join(K8SDir(), ".build.lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return "", fmt.Errorf("%w: lock: %w", ErrUnavailable, err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)
	if haveBinaries(bin) { // built by someone else while we waited
		return bin, nil
	}
	script := os.Getenv("WEFT_K8S_BUILD")
	if script == "" {
		script = filepath.Join(pkgDir(), "k8s", "build.sh")
	}
	logf("building kube-apiserver and kubectl with %s into %s (first time ~8 min)", script, bin)
	start := time.Now()
	cmd := exec.CommandContext(ctx, script)
	cmd.Env = append(os.Environ(), "K8S_DIR="+K8SDir(), "CMDS=kube-apiserver kubectl")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%w: %s: %w\n%s", ErrUnavailable, script, err, tail(out, 2000))
	}
	logf("built kube-apiserver and kubectl in %s", time.Since(start).Round(time.Second))
	return bin, nil
}

func haveBinaries(bin string) bool {
	for _, b := range []string{"kube-apiserver", "kubectl"} {
		if st, err := os.Stat(filepath.Join(bin, b)); err != nil || st.Mode()&0o111 == 0 {
			return false
		}
	}
	return true
}

// Options say where the control plane runs.
type Options struct {
	// Netns is the network namespace (a name under /var/run/netns) that etcd
	// and kube-apiserver run in, started with `ip netns exec`; "" runs them
	// in the test's own namespace. etcd always listens on loopback.
	Netns string
	// Addr is the IPv4 address kube-apiserver binds, serves its certificate
	// for and advertises; default 127.0.0.1. With Netns it is usually that
	// namespace's underlay address, so agents in other namespaces reach it.
	Addr string
}

// Start builds (or finds) the binaries, starts etcd and kube-apiserver on
// free loopback ports and waits until the apiserver is ready or ctx is done.
// Everything is stopped in t.Cleanup: the apiserver before etcd (the other
// way round it hangs on shutdown), each by the pid this function started.
func Start(ctx context.Context, t testing.TB) (*APIServer, error) {
	t.Helper()
	return StartIn(ctx, t, Options{})
}

// StartIn is Start inside a network namespace and on a given address. The
// test process reaches the apiserver through DialContext, Client and
// Kubectl, which enter the namespace for it.
func StartIn(ctx context.Context, t testing.TB, opts Options) (*APIServer, error) {
	t.Helper()
	addr := netip.MustParseAddr("127.0.0.1")
	if opts.Addr != "" {
		a, err := netip.ParseAddr(opts.Addr)
		if err != nil || !a.Is4() {
			return nil, fmt.Errorf("kubeapi: Options.Addr %q: want an IPv4 address", opts.Addr)
		}
		addr = a
	}
	etcdBin, err := exec.LookPath("etcd")
	if err != nil {
		return nil, fmt.Errorf("%w: etcd not in PATH (apt-get install etcd-server)", ErrUnavailable)
	}
	bin, err := EnsureBinaries(ctx, t.Logf)
	if err != nil {
		return nil, err
	}
	dir := t.TempDir()
	s := &APIServer{Dir: dir, Netns: opts.Netns, binDir: bin}
	if opts.Netns != "" {
		// etcd needs loopback; a fresh namespace has it down.
		if out, err := exec.CommandContext(ctx, "ip", "-n", opts.Netns, "link", "set", "lo", "up").CombinedOutput(); err != nil {
			return nil, fmt.Errorf("kubeapi: loopback up in %s: %w: %s", opts.Netns, err, bytes.TrimSpace(out))
		}
	}
	p, err := genPKI(dir, net.IP(addr.AsSlice()))
	if err != nil {
		return nil, fmt.Errorf("kubeapi: certificates: %w", err)
	}
	s.CACert = p.CACert
	etcdPorts, err := freePorts(opts.Netns, "127.0.0.1", 2)
	if err != nil {
		return nil, fmt.Errorf("kubeapi: free ports: %w", err)
	}
	apiPort, err := freePorts(opts.Netns, addr.String(), 1)
	if err != nil {
		return nil, fmt.Errorf("kubeapi: free port on %s: %w", addr, err)
	}
	etcdURL := "http://127.0.0.1:" + strconv.Itoa(etcdPorts[0])
	peerURL := "http://127.0.0.1:" + strconv.Itoa(etcdPorts[1])
	s.URL = "https://" + net.JoinHostPort(addr.String(), strconv.Itoa(apiPort[0]))

	etcd, err := s.startProcess(t, filepath.Join(dir, "etcd.log"), etcdBin,
		"--name", "weft", "--data-dir", filepath.Join(dir, "etcd"),
		"--listen-client-urls", etcdURL, "--advertise-client-urls", etcdURL,
		"--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL,
		"--initial-cluster", "weft="+peerURL)
	if err != nil {
		return nil, err
	}
	// Registered first, so it runs after the apiserver's stop (t.Cleanup is LIFO).
	t.Cleanup(func() { etcd.stop(t) })

	api, err := s.startProcess(t, filepath.Join(dir, "apiserver.log"), filepath.Join(bin, "kube-apiserver"),
		"--etcd-servers="+etcdURL,
		"--bind-address="+addr.String(), "--secure-port="+strconv.Itoa(apiPort[0]), "--advertise-address="+addr.String(),
		"--tls-cert-file="+p.ServingCert, "--tls-private-key-file="+p.ServingK,
		"--client-ca-file="+p.CACert,
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file="+p.SAPub, "--service-account-signing-key-file="+p.SAKey,
		"--service-cluster-ip-range=10.96.0.0/16",
		"--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
		"--allow-privileged=true",
		"--kubelet-client-certificate="+p.AdminCert, "--kubelet-client-key="+p.AdminKey,
	)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { api.stop(t) })

	s.AdminCert, s.AdminKey = p.AdminCert, p.AdminKey
	s.Kubeconfig = filepath.Join(dir, "admin.kubeconfig")
	if err := s.writeKubeconfig(s.Kubeconfig, "admin", fmt.Sprintf("client-certificate: %s\n    client-key: %s", p.AdminCert, p.AdminKey)); err != nil {
		return nil, err
	}
	if err := s.waitReady(ctx, p, api); err != nil {
		return nil, fmt.Errorf("%w\napiserver log:\n%s\netcd log:\n%s", err, tailFile(api.logPath, 3000), tailFile(etcd.logPath, 1500))
	}
	return s, nil
}

// Kubectl runs kubectl against this apiserver as admin and returns its
// combined output; a non-zero exit is an error that includes the output.
func (s *APIServer) Kubectl(args ...string) ([]byte, error) {
	return s.KubectlAs(s.Kubeconfig, args...)
}

// KubectlAs runs kubectl with another kubeconfig (for example one from
// TokenKubeconfig).
func (s *APIServer) KubectlAs(kubeconfig string, args ...string) ([]byte, error) {
	argv := append([]string{filepath.Join(s.binDir, "kubectl"), "--kubeconfig", kubeconfig}, args...)
	cmd := exec.Command(argv[0], argv[1:]...)
	if s.Netns != "" {
		cmd = exec.Command("ip", append([]string{"netns", "exec", s.Netns}, argv...)...)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("kubectl %v: %w\n%s", args, err, out)
	}
	return out, nil
}

// TokenKubeconfig writes a kubeconfig authenticating with a bearer token
// (for example `kubectl create token SA`) and returns its path.
func (s *APIServer) TokenKubeconfig(name, token string) (string, error) {
	path := filepath.Join(s.Dir, name+".kubeconfig")
	return path, s.writeKubeconfig(path, name, "token: "+strconv.Quote(token))
}

func (s *APIServer) writeKubeconfig(path, user, cred string) error {
	kc := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: %s
    certificate-authority: %s
users:
- name: %s
  user:
    %s
contexts:
- name: test
  context: {cluster: test, user: %s}
current-context: test
`, s.URL, s.CACert, user, cred, user)
	if err := os.WriteFile(path, []byte(kc), 0o600); err != nil {
		return fmt.Errorf("kubeapi: kubeconfig: %w", err)
	}
	return nil
}

// waitReady polls /readyz until it answers ok, the apiserver exits, or a
// deadline of 60 s (or ctx) passes.
func (s *APIServer) waitReady(ctx context.Context, p *pki, api *process) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	cert, err := tls.LoadX509KeyPair(p.AdminCert, p.AdminKey)
	if err != nil {
		return fmt.Errorf("kubeapi: admin cert: %w", err)
	}
	caPEM, err := os.ReadFile(p.CACert)
	if err != nil {
		return err
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{cert}},
		DialContext:     s.DialContext,
	}}
	defer hc.CloseIdleConnections()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.URL+"/readyz", nil)
		if resp, err := hc.Do(req); err == nil {
			var body bytes.Buffer
			body.ReadFrom(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && bytes.Equal(bytes.TrimSpace(body.Bytes()), []byte("ok")) {
				return nil
			}
		}
		select {
		case <-api.exited:
			return fmt.Errorf("kubeapi: kube-apiserver exited before ready: %v", api.err)
		case <-ctx.Done():
			return fmt.Errorf("kubeapi: kube-apiserver not ready: %w", ctx.Err())
		case <-tick.C:
		}
	}
}

// process is a child started by this package, stopped only by its pid.
type process struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	exited  chan struct{}
	err     error // valid after exited is closed
}

// startProcess starts path with args, inside s.Netns when set (`ip netns
// exec` execs the program in place, so the pid is the program's own).
func (s *APIServer) startProcess(t testing.TB, logPath, path string, args ...string) (*process, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("kubeapi: log file: %w", err)
	}
	cmd := exec.Command(path, args...)
	if s.Netns != "" {
		cmd = exec.Command("ip", append([]string{"netns", "exec", s.Netns, path}, args...)...)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	// If the test binary dies (timeout panic), the kernel kills the child.
	// (childproc forks from a thread that never ends: see its doc).
	if err := childproc.Start(cmd); err != nil {
		logf.Close()
		return nil, fmt.Errorf("kubeapi: start %s: %w", filepath.Base(path), err)
	}
	p := &process{name: filepath.Base(path), cmd: cmd, logPath: logPath, exited: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		logf.Close()
		close(p.exited)
	}()
	return p, nil
}

// stop sends SIGTERM to the pid, then SIGKILL after 15 s.
func (p *process) stop(t testing.TB) {
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(15 * time.Second):
		t.Logf("kubeapi: %s (pid %d) ignored SIGTERM, killing", p.name, p.cmd.Process.Pid)
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}

// pkgDir is this source directory, to find k8s/build.sh from any test.
func pkgDir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(file)
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

func tailFile(path string, n int) string {
	b, _ := os.ReadFile(path)
	return string(tail(b, n))
}
