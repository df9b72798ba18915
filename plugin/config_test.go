package plugin

import (
	"strings"
	"testing"
)

func TestParseConfig(t *testing.T) {
	for _, tc := range []struct {
		name, in, key string
	}{
		{"defaults", `{"cniVersion":"1.0.0","name":"n","type":"weft-cni"}`, ""},
		{"socket and mtu", `{"cniVersion":"1.1.0","name":"n","type":"weft-cni","socket":"/run/x/../weft.sock","mtu":1400}`, ""},
		{"wrong type", `{"cniVersion":"1.1.0","name":"n","type":"bridge"}`, "type"},
		{"no name", `{"cniVersion":"1.1.0","type":"weft-cni"}`, "name"},
		{"old version", `{"cniVersion":"0.4.0","name":"n","type":"weft-cni"}`, "cniVersion"},
		{"relative socket", `{"cniVersion":"1.1.0","name":"n","type":"weft-cni","socket":"weft.sock"}`, "socket"},
		{"socket not string", `{"cniVersion":"1.1.0","name":"n","type":"weft-cni","socket":5}`, "socket"},
		{"mtu too small", `{"cniVersion":"1.1.0","name":"n","type":"weft-cni","mtu":10}`, "mtu"},
		{"mtu not int", `{"cniVersion":"1.1.0","name":"n","type":"weft-cni","mtu":1400.5}`, "mtu"},
		{"bad attachment", `{"cniVersion":"1.1.0","name":"n","type":"weft-cni","cni.dev/valid-attachments":[{"containerID":"x"}]}`, "cni.dev/valid-attachments"},
		{"bad prevResult", `{"cniVersion":"1.1.0","name":"n","type":"weft-cni","prevResult":{"ips":"no"}}`, "prevResult"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conf, err := ParseConfig([]byte(tc.in))
			if tc.key == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("accepted %s", tc.in)
			}
			if got := configKey(err); got != tc.key {
				t.Fatalf("error %q names key %q, want %q", err, got, tc.key)
			}
			_ = conf
		})
	}
	conf, err := ParseConfig([]byte(`{"cniVersion":"1.1.0","name":"n","type":"weft-cni","socket":"/run/x/../weft.sock","mtu":1400}`))
	if err != nil {
		t.Fatal(err)
	}
	if conf.Socket != "/run/weft.sock" || conf.MTU != 1400 {
		t.Fatalf("socket %q mtu %d", conf.Socket, conf.MTU)
	}
	conf, _ = ParseConfig([]byte(`{"cniVersion":"1.1.0","name":"n","type":"weft-cni"}`))
	if conf.Socket != DefaultSocket || conf.MTU != 0 {
		t.Fatalf("defaults: socket %q mtu %d", conf.Socket, conf.MTU)
	}
}

func FuzzParseConfig(f *testing.F) {
	for _, s := range []string{
		`{"cniVersion":"1.1.0","name":"n","type":"weft-cni"}`,
		`{"cniVersion":"1.0.0","name":"n","type":"weft-cni","socket":"/run/weft/weft.sock","mtu":1376}`,
		`{"cniVersion":"1.1.0","name":"n","type":"weft-cni","cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]}`,
		`{"cniVersion":"1.1.0","name":"n","type":"weft-cni","prevResult":{"cniVersion":"1.1.0","interfaces":[{"name":"eth0","sandbox":"/x"}],"ips":[{"address":"10.32.0.2/32","gateway":"10.32.0.1","interface":0}],"routes":[{"dst":"0.0.0.0/0","gw":"10.32.0.1"}]}}`,
		`{"cniVersion":"1.1.0","name":"n","type":"weft-cni","mtu":-1}`,
		`{"socket":null,"mtu":null}`,
		`[]`, `null`, ``, `{`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		conf, err := ParseConfig(data)
		if err != nil {
			if conf != nil {
				t.Fatal("config returned together with an error")
			}
			if !strings.HasPrefix(err.Error(), "weft-cni config") {
				t.Fatalf("error does not say what was wrong: %v", err)
			}
			return
		}
		if conf.Type != PluginType || conf.Name == "" || !strings.HasPrefix(conf.Socket, "/") {
			t.Fatalf("accepted an invalid config: %+v", conf)
		}
		if conf.MTU != 0 && (conf.MTU < minMTU || conf.MTU > maxMTU) {
			t.Fatalf("accepted MTU %d", conf.MTU)
		}
	})
}
