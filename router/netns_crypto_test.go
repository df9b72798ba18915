//go:build weftcrypto

package router

import (
	"context"
	"log/slog"
	"net/netip"
	"os"
	"testing"

	"github.com/weftnet/weft/router/crypto"
	"github.com/weftnet/weft/router/udp"
)

// With -tags weftcrypto the netns tests and the throughput benchmark also
// run encrypted, with router/crypto's Manager on both hosts.
func init() {
	setupTestCrypto = func(t *testing.T, tb *dpTestbed) {
		keys, err := crypto.DerivePasswordKeys([]byte("weft datapath test"), crypto.PasswordSalt("10.32.0.0/12", ""))
		if err != nil {
			t.Fatalf("derive keys: %v", err)
		}
		log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
		ids := map[*dpHost]crypto.Identity{}
		for _, h := range []*dpHost{tb.a, tb.b} {
			if ids[h], err = crypto.GenerateIdentity(); err != nil {
				t.Fatalf("identity: %v", err)
			}
		}
		for _, pair := range [][2]*dpHost{{tb.a, tb.b}, {tb.b, tb.a}} {
			self, peer := pair[0], pair[1]
			self.makeCrypto = func(conn udp.Conn) Crypto {
				m, err := crypto.NewManager(crypto.Config{
					Identity: ids[self],
					PSK:      keys.PSK,
					Send:     NewHandshakeSender(conn),
					Logger:   log,
				})
				if err != nil {
					t.Fatalf("crypto manager: %v", err)
				}
				m.SetPeer(peer.ns, ids[peer].Public(), netip.AddrPortFrom(peer.underlay, 6784))
				// The Manager handshakes as soon as it runs: only once the
				// routers can carry its messages.
				tb.afterStart = append(tb.afterStart, func() {
					ctx, cancel := context.WithCancel(context.Background())
					done := make(chan struct{})
					go func() { m.Run(ctx); close(done) }()
					t.Cleanup(func() { cancel(); <-done })
				})
				return m
			}
		}
	}
}
