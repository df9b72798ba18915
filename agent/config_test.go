package agent

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func validConfig() Config {
	return Config{
		Name: "host1", Host: netip.MustParseAddr("198.18.0.1"), Port: DefaultPort,
		Range: netip.MustParsePrefix(DefaultRange), StateDir: "/var/lib/weft", RunDir: "/run/weft",
		Bridge: DefaultBridge, TUN: DefaultTUN,
	}
}

func TestValidateAcceptsDefaults(t *testing.T) {
	c := validConfig()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.Datapath != DatapathAuto || c.VXLANPort != 6786 || c.VNI != 6786 {
		t.Fatalf("fast path defaults: datapath %q, port %d, VNI %d", c.Datapath, c.VXLANPort, c.VNI)
	}
}

func TestValidateNamesEachBadField(t *testing.T) {
	for _, tc := range []struct {
		mutate func(*Config)
		want   string
	}{
		{func(c *Config) { c.Name = "" }, "--name"},
		{func(c *Config) { c.Name = "a b" }, "--name"},
		{func(c *Config) { c.Host = netip.Addr{} }, "--host"},
		{func(c *Config) { c.Host = netip.MustParseAddr("::1") }, "IPv4"},
		{func(c *Config) { c.Port = 65535 }, "--port"},
		{func(c *Config) { c.Range = netip.MustParsePrefix("10.32.0.1/12") }, "host bits"},
		{func(c *Config) { c.Range = netip.MustParsePrefix("10.0.0.0/31") }, "too small"},
		{func(c *Config) { c.MTU = 100 }, "--mtu"},
		{func(c *Config) { c.StateDir = "relative" }, "--state-dir"},
		{func(c *Config) { c.Password = []byte{} }, "--password"},
		{func(c *Config) { c.Password = []byte("s3cret pass") }, "--password-insecure"},
		{func(c *Config) { c.ClusterName = "a\nb" }, "--cluster-name"},
		{func(c *Config) { c.Peers = []string{"host:99999"} }, "bad port"},
		{func(c *Config) { c.Bridge = "a-very-long-bridge-name" }, "--bridge"},
		{func(c *Config) { c.Datapath = "fast" }, "--datapath"},
		{func(c *Config) { c.Datapath = DatapathKernel; c.Password = []byte("a long enough passphrase") }, "no encryption"},
		{func(c *Config) { c.VXLANPort = DefaultPort + 1 }, "--vxlan-port"},
		{func(c *Config) { c.VXLANPort = 70000 }, "--vxlan-port"},
		{func(c *Config) { c.VNI = 1 << 24 }, "--vxlan-vni"},
	} {
		c := validConfig()
		tc.mutate(&c)
		err := c.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("want an error naming %q, got %v", tc.want, err)
		}
	}
}

func TestReadPasswordFile(t *testing.T) {
	dir := t.TempDir()
	if _, err := ReadPasswordFile(dir + "/missing"); err == nil || !strings.Contains(err.Error(), "--password-file") {
		t.Errorf("missing file: %v", err)
	}
}

// A short password is refused unless --password-insecure; 12 characters pass.
func TestPasswordLength(t *testing.T) {
	c := validConfig()
	c.Password = []byte("s3cret pass") // 11
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "shorter than 12") {
		t.Fatalf("11-character password: %v, want refused", err)
	}
	c.PasswordInsecure = true
	if err := c.Validate(); err != nil {
		t.Fatalf("11-character password with --password-insecure: %v", err)
	}
	c.PasswordInsecure = false
	c.Password = []byte("s3cret passw")
	if err := c.Validate(); err != nil {
		t.Fatalf("12-character password: %v", err)
	}
}

// The host filter's ports follow the configuration, not the defaults.
func TestAgentPorts(t *testing.T) {
	c := validConfig()
	c.Port, c.MetricsAddr, c.HTTPAddr = 7000, "10.0.0.1:9100", "127.0.0.1:8080"
	if got, want := c.agentPorts(), []uint16{7000, 7001, 9100, 8080}; !slices.Equal(got, want) {
		t.Errorf("agentPorts = %v, want %v", got, want)
	}
	c.MetricsAddr, c.HTTPAddr = "", ""
	if got, want := c.agentPorts(), []uint16{7000, 7001}; !slices.Equal(got, want) {
		t.Errorf("without metrics and health: agentPorts = %v, want %v", got, want)
	}
	// Pods may not send to the VXLAN port either (frames injected into a
	// peer's fast path under this host's address).
	c.VXLANPort = 7786
	if got, want := c.agentPorts(), []uint16{7000, 7001, 7786}; !slices.Equal(got, want) {
		t.Errorf("with the fast path's port: agentPorts = %v, want %v", got, want)
	}
}
