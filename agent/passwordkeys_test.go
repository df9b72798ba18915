package agent

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/weftnet/weft/router/crypto"
)

// The first start derives the keys and caches them; the next one takes them
// from the cache (no Argon2id on the restart path); a corrupt cache is
// ignored. Started from a stale cache (the password changed), the agent
// caches the right keys and stops with an error, to be restarted.
func TestPasswordKeysCached(t *testing.T) {
	cfg := validConfig()
	cfg.StateDir = t.TempDir()
	cfg.Password = []byte("correct horse battery")
	log := slog.New(slog.DiscardHandler)
	first, cached, err := passwordKeys(cfg, log)
	if err != nil || cached {
		t.Fatalf("first start: cached %v err %v", cached, err)
	}
	again, cached, err := passwordKeys(cfg, log)
	if err != nil || !cached || !again.Equal(*first) {
		t.Fatalf("restart: cached %v err %v", cached, err)
	}
	path := filepath.Join(cfg.StateDir, crypto.PasswordKeysFile)
	if err := os.WriteFile(path, []byte("torn"), 0o600); err != nil {
		t.Fatal(err)
	}
	derived, cached, err := passwordKeys(cfg, log)
	if err != nil || cached || !derived.Equal(*first) {
		t.Fatalf("corrupt cache: cached %v err %v", cached, err)
	}

	// The password changes; the cache still holds the old keys.
	stale := *first
	cfg.Password = []byte("another password, longer")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a := &Agent{cfg: cfg, log: log, keys: &stale, stop: cancel}
	old := checkKeysAfter
	checkKeysAfter = 0
	defer func() { checkKeysAfter = old }()
	a.checkCachedKeys(ctx)
	if err := a.failed(); !errors.Is(err, errPasswordChanged) || ctx.Err() == nil {
		t.Fatalf("stale cache: failed() = %v, stopped %v", err, ctx.Err() != nil)
	}
	now, cached, err := passwordKeys(cfg, log)
	if err != nil || !cached || now.Equal(stale) {
		t.Fatalf("after the check: cached %v err %v, still the stale keys %v", cached, err, now.Equal(stale))
	}
	// Keys that match: nothing happens.
	ctx2, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	b := &Agent{cfg: cfg, log: log, keys: now, stop: cancel2}
	b.checkCachedKeys(ctx2)
	if b.failed() != nil || ctx2.Err() != nil {
		t.Fatalf("matching keys stopped the agent: %v", b.failed())
	}
}
