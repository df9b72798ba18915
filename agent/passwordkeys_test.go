package agent

import (
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/weftnet/weft/router/crypto"
)

// The first start derives the keys and caches them; the next one takes them
// from the cache (no Argon2id on the restart path, neither before the start
// nor after it); a corrupt cache is ignored. A changed password does not
// use the cache of the old one: its keys are derived and cached instead.
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

	// The password changes; the cache holds the old one's keys.
	cfg.Password = []byte("another password, longer")
	other, cached, err := passwordKeys(cfg, log)
	if err != nil || cached || other.Equal(*first) {
		t.Fatalf("changed password: cached %v err %v, the old keys %v", cached, err, other.Equal(*first))
	}
	now, cached, err := passwordKeys(cfg, log)
	if err != nil || !cached || !now.Equal(*other) {
		t.Fatalf("restart with the new password: cached %v err %v", cached, err)
	}
}
