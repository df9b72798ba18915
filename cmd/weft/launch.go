package main

import (
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"
	"k8s.io/klog/v2"

	"github.com/weftnet/weft/agent"
	"github.com/weftnet/weft/kube"
	"github.com/weftnet/weft/router/crypto"
	"github.com/weftnet/weft/router/tun"
)

func launchCommand() *cli.Command {
	return &cli.Command{
		Name:      "launch",
		Usage:     "run the weft agent on this host in the foreground",
		ArgsUsage: "[PEER...]",
		Description: "Runs the agent until SIGINT or SIGTERM. PEER is host or host:port of any other agent;\n" +
			"the agents find all the others from there. Peers that are not up yet are retried.\n" +
			"Every flag can also be given by its environment variable.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "name", EnvVars: []string{"WEFT_NAME"}, Usage: "this peer's name, unique in the mesh (default: host name)"},
			&cli.StringFlag{Name: "host", EnvVars: []string{"WEFT_HOST"}, Usage: "underlay address to bind and advertise (default: address of the default-route interface)"},
			&cli.IntFlag{Name: "port", EnvVars: []string{"WEFT_PORT"}, Value: agent.DefaultPort, Usage: "gossip port, TCP and UDP; the data plane uses UDP port+1"},
			&cli.StringFlag{Name: "ipalloc-range", EnvVars: []string{"IPALLOC_RANGE"}, Value: agent.DefaultRange, Usage: "pod address range of the whole mesh"},
			&cli.StringFlag{Name: "ipalloc-init", EnvVars: []string{"IPALLOC_INIT"}, Usage: "how the address ring is created: seed=NAME,NAME,... | consensus=N | observer (default: consensus=number of PEERs+1)"},
			&cli.StringFlag{Name: "password", EnvVars: []string{"WEFT_PASSWORD"}, Usage: "encrypt gossip and data with keys derived from this password"},
			&cli.StringFlag{Name: "password-file", EnvVars: []string{"WEFT_PASSWORD_FILE"}, Usage: "read the password from this file"},
			&cli.BoolFlag{Name: "password-insecure", EnvVars: []string{"WEFT_PASSWORD_INSECURE"}, Usage: fmt.Sprintf("accept a password shorter than %d characters", crypto.MinPasswordLength)},
			&cli.StringFlag{Name: "cluster-name", EnvVars: []string{"WEFT_CLUSTER_NAME"}, Usage: "name of this mesh, mixed into the keys derived from the password (the same on every host)"},
			&cli.BoolFlag{Name: "plaintext", EnvVars: []string{"WEFT_PLAINTEXT"}, Usage: "run without encryption on purpose (required in a Kubernetes pod when there is no password)"},
			&cli.StringFlag{Name: "datapath", EnvVars: []string{tun.EnvDatapath}, Value: agent.DefaultDatapath,
				Usage: "auto: the kernel's VXLAN fast path for unencrypted pairs that can use it, userspace otherwise; kernel: the same, but fail when the kernel has no VXLAN; userspace: never the kernel path; water: userspace through the portable TUN"},
			&cli.IntFlag{Name: "vxlan-port", EnvVars: []string{"WEFT_VXLAN_PORT"}, Value: agent.DefaultVXLANPort, Usage: "UDP port of the kernel fast path (VXLAN); the same on every host"},
			&cli.IntFlag{Name: "vxlan-vni", EnvVars: []string{"WEFT_VXLAN_VNI"}, Value: agent.DefaultVNI, Usage: "VXLAN network identifier of the fast path; the same on every host"},
			&cli.IntFlag{Name: "mtu", EnvVars: []string{"WEFT_MTU"}, Usage: "overlay MTU", DefaultText: "underlay MTU minus weft's overhead"},
			&cli.StringFlag{Name: "state-dir", EnvVars: []string{"WEFT_STATE_DIR"}, Value: agent.DefaultStateDir, Usage: "what must survive a restart (address ring, identity)"},
			runDirFlag(),
			&cli.StringFlag{Name: "metrics-addr", EnvVars: []string{"WEFT_METRICS_ADDR"}, Value: agent.DefaultMetricsAddr, Usage: "listen address of Prometheus /metrics (empty: off)"},
			&cli.BoolFlag{Name: "metrics-per-peer", EnvVars: []string{"WEFT_METRICS_PER_PEER"}, Value: true, Usage: "per-peer traffic and IPAM series; false sums them (per-peer series grow as N² across a cluster)"},
			&cli.StringFlag{Name: "http-addr", EnvVars: []string{"WEFT_HTTP_ADDR"}, Value: agent.DefaultHTTPAddr, Usage: "listen address of /healthz and /readyz (empty: off)"},
			&cli.BoolFlag{Name: "kube", EnvVars: []string{"WEFT_KUBE"}, Usage: "take peers and the address ring from the Kubernetes API", DefaultText: "on when running in a cluster"},
			&cli.StringFlag{Name: "kubeconfig", EnvVars: []string{"KUBECONFIG"}, Usage: "kubeconfig for --kube outside a pod (default: in-cluster)"},
			&cli.StringFlag{Name: "cni-conf-dir", EnvVars: []string{"WEFT_CNI_CONF_DIR"}, Usage: "write 10-weft.conflist here once the agent is ready (Kubernetes)"},
			&cli.StringFlag{Name: "cni-chain", EnvVars: []string{"WEFT_CNI_CHAIN"}, Usage: "JSON array of extra CNI plugin configs, chained after weft-cni, portmap and bandwidth in 10-weft.conflist"},
			&cli.BoolFlag{Name: "network-policy", EnvVars: []string{"WEFT_NETWORK_POLICY"},
				Usage:       "enforce Kubernetes NetworkPolicy on this node; false for clusters that run another policy engine (removes weft's policy table). Kubernetes only: not applicable on bare hosts",
				DefaultText: "true in Kubernetes, false on bare hosts"},
			&cli.DurationFlag{Name: "rekey-after", EnvVars: []string{"WEFT_REKEY_AFTER"}, Value: 2 * time.Minute, Usage: "age at which encrypted sessions are replaced"},
			&cli.StringFlag{Name: "log-format", EnvVars: []string{"WEFT_LOG_FORMAT"}, Value: "text", Usage: "text or json"},
			&cli.StringFlag{Name: "log-level", EnvVars: []string{"WEFT_LOG_LEVEL"}, Value: "info", Usage: "debug, info, warn or error"},
		},
		Action: launch,
	}
}

func launch(c *cli.Context) error {
	log, err := newLogger(os.Stderr, c.String("log-format"), c.String("log-level"))
	if err != nil {
		return usagef(c, "%v", err)
	}
	bridgeKlog(log)
	cfg, err := launchConfig(c)
	if err != nil {
		return usagef(c, "%v", err)
	}
	a, err := agent.New(cfg, log)
	if err != nil {
		return err
	}
	log.Info("starting weft", "name", cfg.Name, "host", cfg.Host, "port", cfg.Port, "range", cfg.Range,
		"encryption", cfg.Password != nil)
	ctx, stop := signal.NotifyContext(c.Context, os.Interrupt, syscall.SIGTERM)
	defer stop()
	return a.Run(ctx)
}

// launchConfig decodes flags and environment into a validated agent.Config.
func launchConfig(c *cli.Context) (agent.Config, error) {
	cfg := agent.Config{
		Name:        c.String("name"),
		Port:        c.Int("port"),
		Peers:       c.Args().Slice(),
		IPAMInit:    c.String("ipalloc-init"),
		MTU:         c.Int("mtu"),
		Datapath:    c.String("datapath"),
		VXLANPort:   c.Int("vxlan-port"),
		VNI:         c.Int("vxlan-vni"),
		StateDir:    c.String("state-dir"),
		RunDir:      c.String("run-dir"),
		MetricsAddr: c.String("metrics-addr"),
		HTTPAddr:    c.String("http-addr"),
		Bridge:      agent.DefaultBridge,
		TUN:         agent.DefaultTUN,
		Kube:        c.Bool("kube"),
		Kubeconfig:  c.String("kubeconfig"),
		CNIConfDir:  c.String("cni-conf-dir"),
		RekeyAfter:  c.Duration("rekey-after"),

		NoPerPeerMetrics: !c.Bool("metrics-per-peer"),
		PasswordInsecure: c.Bool("password-insecure"),
		ClusterName:      c.String("cluster-name"),
	}
	chain, err := kube.ParseCNIChain(c.String("cni-chain"))
	if err != nil {
		return cfg, fmt.Errorf("--cni-chain: %w", err)
	}
	cfg.CNIChain = chain
	if cfg.Datapath == agent.DatapathWater {
		// The TUN device reads its choice from the environment; the flag
		// says the same thing.
		if err := os.Setenv(tun.EnvDatapath, agent.DatapathWater); err != nil {
			return cfg, err
		}
	}
	if !c.IsSet("kube") && kube.InCluster() {
		cfg.Kube = true
	}
	// On by default in Kubernetes; given on a bare host, Validate refuses it.
	cfg.NetworkPolicy = cfg.Kube
	if c.IsSet("network-policy") {
		cfg.NetworkPolicy = c.Bool("network-policy")
	}
	if cfg.Name == "" {
		cfg.Name, _ = os.Hostname()
	}
	if h := c.String("host"); h != "" {
		addr, err := netip.ParseAddr(h)
		if err != nil {
			return cfg, fmt.Errorf("--host %q: not an IP address", h)
		}
		cfg.Host = addr
	} else if addr, err := defaultHost(); err == nil {
		cfg.Host = addr
	} else {
		return cfg, fmt.Errorf("--host not given and %w", err)
	}
	r, err := netip.ParsePrefix(c.String("ipalloc-range"))
	if err != nil {
		return cfg, fmt.Errorf("--ipalloc-range %q: not a CIDR", c.String("ipalloc-range"))
	}
	cfg.Range = r
	switch pw, file := c.String("password"), c.String("password-file"); {
	case pw != "" && file != "":
		return cfg, fmt.Errorf("--password and --password-file: give only one")
	case pw != "":
		cfg.Password = []byte(pw)
	case file != "":
		if cfg.Password, err = agent.ReadPasswordFile(file); err != nil {
			return cfg, err
		}
	}
	if err := checkEncryptionChoice(cfg.Password != nil, c.Bool("plaintext"), kube.InCluster()); err != nil {
		return cfg, err
	}
	return cfg, cfg.Validate()
}

// checkEncryptionChoice refuses to run a pod of the DaemonSet in plaintext
// unless that was chosen: a Secret with a mistyped key must not quietly
// leave the whole cluster unencrypted.
func checkEncryptionChoice(password, plaintext, inCluster bool) error {
	switch {
	case password && plaintext:
		return fmt.Errorf("--plaintext and a password: give only one")
	case !password && !plaintext && inCluster:
		return fmt.Errorf("no password in this Kubernetes pod: put WEFT_PASSWORD in the Secret weft-passwd to encrypt, " +
			"or WEFT_PLAINTEXT=true to run without encryption on purpose")
	}
	return nil
}

// bridgeKlog sends the log lines of client-go (klog) through log, so that
// --log-format json makes every line JSON.
func bridgeKlog(log *slog.Logger) {
	klog.SetSlogLogger(log.With("component", "client-go"))
}

func newLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", format)
}
