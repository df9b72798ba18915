package agent

import (
	"net/netip"
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
		{func(c *Config) { c.Peers = []string{"host:99999"} }, "bad port"},
		{func(c *Config) { c.Bridge = "a-very-long-bridge-name" }, "--bridge"},
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
