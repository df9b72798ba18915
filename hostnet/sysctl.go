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

// sysctlForward is IPv4 forwarding, which weft cannot work without.
const sysctlForward = "/proc/sys/net/ipv4/ip_forward"

// rpFilterPath is one link's rp_filter, which weft sets to 2 (loose). Loose
// mode accepts a packet whose source is routable through any link: pods' and
// remote pods' sources are, while strict mode could drop them during route
// changes. The kernel uses the larger of conf/all and conf/<link>, so all=1
// still wins.
func rpFilterPath(link string) string {
	return "/proc/sys/net/ipv4/conf/" + link + "/rp_filter"
}

// sysctlValue is a /proc/sys value without its newline.
func sysctlValue(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("hostnet: read %s: %w", path, err)
	}
	return string(bytes.TrimSpace(b)), nil
}
