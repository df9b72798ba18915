package hostnet

import (
	"bytes"
	"fmt"
	"os"
)

// writeSysctl sets a /proc/sys value unless it already has it. /proc/sys/net
// is per network namespace: the calling thread's namespace is the one set.
func writeSysctl(path, value string) error {
	cur, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("hostnet: read %s: %w", path, err)
	}
	if string(bytes.TrimSpace(cur)) == value {
		return nil
	}
	if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
		return fmt.Errorf("hostnet: write %s=%s: %w", path, value, err)
	}
	return nil
}

// setRPFilterLoose sets rp_filter=2 on one link. Loose mode accepts a packet
// whose source is routable through any link: pods' and remote pods' sources
// are, while strict mode could drop them during route changes. The kernel
// uses the larger of conf/all and conf/<link>, so all=1 still wins.
func setRPFilterLoose(link string) error {
	return writeSysctl("/proc/sys/net/ipv4/conf/"+link+"/rp_filter", "2")
}
