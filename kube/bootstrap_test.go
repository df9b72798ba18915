package kube

import (
	"strings"
	"testing"
)

func TestParseSeeds(t *testing.T) {
	good := map[string][]string{
		"node-1":                   {"node-1"},
		"a,b,c":                    {"a", "b", "c"},
		"ip-10-0-0-1.ec2.internal": {"ip-10-0-0-1.ec2.internal"},
		strings.Repeat("x", 128):   {strings.Repeat("x", 128)},
	}
	for in, want := range good {
		got, err := ParseSeeds(in)
		if err != nil {
			t.Errorf("ParseSeeds(%q): %v", in, err)
			continue
		}
		if strings.Join(got, "|") != strings.Join(want, "|") {
			t.Errorf("ParseSeeds(%q) = %q, want %q", in, got, want)
		}
		if FormatSeeds(got) != in {
			t.Errorf("FormatSeeds(ParseSeeds(%q)) = %q", in, FormatSeeds(got))
		}
	}
	bad := map[string]string{
		"":                               "empty",
		",":                              "seed 1",
		"a,":                             "seed 2",
		"a,,b":                           "seed 2",
		"a b":                            "contains",
		"a\n":                            "contains",
		"a/b":                            "contains",
		"a=b":                            "contains",
		"a,a":                            "twice",
		strings.Repeat("x", 129):         "at most 128",
		strings.Repeat("a,", 1100) + "z": "at most 1024",
	}
	for in, want := range bad {
		_, err := ParseSeeds(in)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseSeeds(%.40q) = %v, want error containing %q", in, err, want)
		}
	}
}

// FuzzParseSeeds: the ConfigMap is writable by anyone with access to the
// namespace, so its value is untrusted. Never panic; whatever is accepted
// round-trips and is a list of valid distinct names.
func FuzzParseSeeds(f *testing.F) {
	for _, s := range []string{"", "a", "a,b", "a,,b", "a,a", "ä,\x00", strings.Repeat("n,", 50) + "m"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		seeds, err := ParseSeeds(s)
		if err != nil {
			return
		}
		if FormatSeeds(seeds) != s {
			t.Fatalf("round trip %q -> %q", s, FormatSeeds(seeds))
		}
		seen := map[string]bool{}
		for _, n := range seeds {
			if validPeerName(n) != nil || seen[n] {
				t.Fatalf("accepted bad or duplicate name %q in %q", n, s)
			}
			seen[n] = true
		}
	})
}
