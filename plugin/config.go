// Package plugin is the weft CNI shim: it asks the local weft agent for an
// address and wires a veth pair between the pod and the host's weft bridge.
//
// The shim keeps no state of its own. Everything it needs to undo its work is
// derived from what the runtime hands it (container ID, interface name): the
// host end of the veth has a deterministic name and the agent keeps the
// address allocation.
package plugin

import (
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
)

// PluginType is the value of the "type" key that selects this plugin.
const PluginType = "weft-cni"

// DefaultSocket is where the agent listens when the config names no socket.
const DefaultSocket = "/run/weft/weft.sock"

// MTU limits accepted in the "mtu" key: the IPv4 minimum and the largest
// value a link can carry.
const (
	minMTU = 68
	maxMTU = 65535
)

// SupportedVersions are the CNI spec versions the shim speaks. Only 1.x: the
// STATUS and GC verbs and the result format the shim builds are 1.x ones.
var SupportedVersions = []string{"1.0.0", "1.1.0"}

// Config is the shim's network configuration, decoded once from stdin.
type Config struct {
	types.PluginConf

	// Socket is the agent's local API socket.
	Socket string
	// MTU overrides the MTU the agent announces; 0 means "take the agent's".
	MTU int
}

// ConfigError names the configuration key that was wrong.
type ConfigError struct {
	Key    string
	Reason string
}

func (e *ConfigError) Error() string {
	return fmt.Sprintf("weft-cni config: key %q: %s", e.Key, e.Reason)
}

// rawConfig is the JSON shape of the keys weft-cni itself owns. Keys of other
// consumers (runtimeConfig, args, capabilities...) pass through untouched.
type rawConfig struct {
	Socket *json.RawMessage `json:"socket"`
	MTU    *json.RawMessage `json:"mtu"`
}

// ParseConfig decodes and validates the network configuration. A prevResult,
// when present, is parsed into PluginConf.PrevResult. Errors are *ConfigError
// naming the offending key, or a decoding error for malformed JSON.
func ParseConfig(data []byte) (*Config, error) {
	var conf Config
	if err := json.Unmarshal(data, &conf.PluginConf); err != nil {
		return nil, fmt.Errorf("weft-cni config: decode: %w", err)
	}
	var raw rawConfig
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("weft-cni config: decode: %w", err)
	}

	if conf.Type != PluginType {
		return nil, &ConfigError{Key: "type", Reason: fmt.Sprintf("is %q, want %q", conf.Type, PluginType)}
	}
	if conf.Name == "" {
		return nil, &ConfigError{Key: "name", Reason: "missing"}
	}
	if err := checkVersion(conf.CNIVersion); err != nil {
		return nil, err
	}

	conf.Socket = DefaultSocket
	if raw.Socket != nil {
		var s string
		if err := json.Unmarshal(*raw.Socket, &s); err != nil {
			return nil, &ConfigError{Key: "socket", Reason: "must be a string"}
		}
		if !filepath.IsAbs(s) {
			return nil, &ConfigError{Key: "socket", Reason: fmt.Sprintf("%q is not an absolute path", s)}
		}
		conf.Socket = filepath.Clean(s)
	}

	if raw.MTU != nil {
		var mtu int
		if err := json.Unmarshal(*raw.MTU, &mtu); err != nil {
			return nil, &ConfigError{Key: "mtu", Reason: "must be an integer"}
		}
		if mtu < minMTU || mtu > maxMTU {
			return nil, &ConfigError{Key: "mtu", Reason: fmt.Sprintf("%d is outside %d..%d", mtu, minMTU, maxMTU)}
		}
		conf.MTU = mtu
	}

	if conf.RawPrevResult != nil {
		if err := version.ParsePrevResult(&conf.PluginConf); err != nil {
			return nil, &ConfigError{Key: "prevResult", Reason: err.Error()}
		}
	}
	for i, a := range conf.ValidAttachments {
		if a.ContainerID == "" || a.IfName == "" {
			return nil, &ConfigError{Key: "cni.dev/valid-attachments",
				Reason: fmt.Sprintf("entry %d lacks containerID or ifname", i)}
		}
	}
	return &conf, nil
}

func checkVersion(v string) error {
	if v == "" {
		return &ConfigError{Key: "cniVersion", Reason: "missing"}
	}
	for _, s := range SupportedVersions {
		if v == s {
			return nil
		}
	}
	return &ConfigError{Key: "cniVersion", Reason: fmt.Sprintf("%q is not one of %v", v, SupportedVersions)}
}

// configKey reports the key a config error is about, "" if it is not one.
func configKey(err error) string {
	var ce *ConfigError
	if errors.As(err, &ce) {
		return ce.Key
	}
	return ""
}
