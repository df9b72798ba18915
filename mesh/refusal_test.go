package mesh

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"
)

func TestRefusalFrom(t *testing.T) {
	for line, want := range map[string]string{
		"Decrypt packet failed: No installed keys could decrypt the message from=198.18.0.7:6783": "198.18.0.7",
		"failed to receive: message authentication failed from=[2001:db8::1]:40112":               "2001:db8::1",
		"failed to receive: x from=198.18.0.9 trailing":                                           "198.18.0.9",
		"failed to receive: x from=<unknown address>":                                             "invalid IP",
		"No installed keys could decrypt the message":                                             "invalid IP",
		// Seen in the cluster: a member with a password joining one without.
		"failed to join 198.18.0.2:6783: encryption is configured but remote state is not encrypted": "198.18.0.2",
		"failed to join [2001:db8::2]:6783: no installed keys could decrypt the message":             "2001:db8::2",
	} {
		if got := refusalFrom(line).String(); got != want {
			t.Errorf("%q: got %s, want %s", line, got, want)
		}
	}
}

// A member with another password is reported to OnRefusal with its
// address, every time (the log line is throttled, the hook is not).
func TestOnRefusalNamesTheSender(t *testing.T) {
	var (
		mu  sync.Mutex
		got []Refusal
	)
	port := freePort(t)
	a, err := New(Config{
		Name: "a", Bind: netip.MustParseAddr("127.0.0.1"), Port: port,
		Meta:      Meta{Protocol: ProtocolMin, DataPort: uint16(port + 1), Encrypted: true, Version: "test", SigningKey: bytes.Repeat([]byte("a"), 32)},
		SecretKey: []byte("0123456789abcdef0123456789abcdef"), Timing: LocalTiming(),
		OnRefusal: func(r Refusal) { mu.Lock(); got = append(got, r); mu.Unlock() },
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { a.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	b, _ := startMesh(t, "b", []byte("fedcba9876543210fedcba9876543210"), nil)
	if err := b.Connect([]string{fmt.Sprintf("127.0.0.1:%d", port)}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a refusal with the sender's address", 5*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, r := range got {
			if r.Password && r.From == netip.MustParseAddr("127.0.0.1") {
				return true
			}
		}
		return false
	})
}
