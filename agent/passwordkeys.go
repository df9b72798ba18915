package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/weftnet/weft/router/crypto"
)

// passwordKeys returns the keys of the password: from the cache in the
// state dir when there is one for this range, cluster and password (cached
// is then true), else derived (Argon2id, slow on purpose) and cached. A
// restart with the same password runs no Argon2id at all: its burst of CPU,
// in the agent's cgroup, would stall the node's BestEffort pods in the middle
// of a rolling restart (site/operations.md, "Restarts").
func passwordKeys(cfg Config, log *slog.Logger) (keys *crypto.PasswordKeys, cached bool, err error) {
	salt := crypto.PasswordSalt(cfg.Range.String(), cfg.ClusterName)
	k, ok, err := crypto.CachedPasswordKeys(cfg.StateDir, salt, cfg.Password)
	if err != nil {
		log.Warn("ignoring the cached password keys; deriving them again", "err", err)
	}
	if ok {
		return &k, true, nil
	}
	if k, err = crypto.DerivePasswordKeys(cfg.Password, salt); err != nil {
		return nil, false, fmt.Errorf("password: %w", err)
	}
	if err := crypto.SavePasswordKeys(cfg.StateDir, salt, cfg.Password, k); err != nil {
		log.Warn("could not cache the password keys; the next start derives them again", "err", err)
	}
	return &k, false, nil
}

// dropCachedKeys removes the cache of password keys, if any.
func dropCachedKeys(dir string, log *slog.Logger) {
	if err := os.Remove(filepath.Join(dir, crypto.PasswordKeysFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		log.Error("could not remove the cached password keys", "err", err)
	}
}
