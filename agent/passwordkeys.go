package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/weftnet/weft/router/crypto"
)

// errPasswordChanged stops an agent that started from cached keys of
// another password; the next start derives and uses the new one.
var errPasswordChanged = errors.New("the password changed since the keys were cached: restarting with the new one")

// checkKeysAfter (a variable for tests) delays the check of cached keys past the start, so that
// Argon2id does not compete with the restart it was cached to speed up.
var checkKeysAfter = 3 * time.Second

// passwordKeys returns the keys of the password: from the cache in the
// state dir when there is one for this range and cluster (cached is then
// true, and Run checks them against the password soon after the start),
// else derived (Argon2id, slow on purpose) and cached.
func passwordKeys(cfg Config, log *slog.Logger) (keys *crypto.PasswordKeys, cached bool, err error) {
	salt := crypto.PasswordSalt(cfg.Range.String(), cfg.ClusterName)
	k, ok, err := crypto.CachedPasswordKeys(cfg.StateDir, salt)
	if err != nil {
		log.Warn("ignoring the cached password keys; deriving them again", "err", err)
	}
	if ok {
		return &k, true, nil
	}
	if k, err = crypto.DerivePasswordKeys(cfg.Password, salt); err != nil {
		return nil, false, fmt.Errorf("password: %w", err)
	}
	if err := crypto.SavePasswordKeys(cfg.StateDir, salt, k); err != nil {
		log.Warn("could not cache the password keys; the next start derives them again", "err", err)
	}
	return &k, false, nil
}

// checkCachedKeys derives the keys from the password, as a start without a
// cache would, and stops the agent (non-zero exit: it is restarted) when the
// cached ones differ, after caching the right ones.
func (a *Agent) checkCachedKeys(ctx context.Context) {
	select {
	case <-ctx.Done():
		return
	case <-time.After(checkKeysAfter):
	}
	salt := crypto.PasswordSalt(a.cfg.Range.String(), a.cfg.ClusterName)
	k, err := crypto.DerivePasswordKeys(a.cfg.Password, salt)
	if err != nil {
		a.fail(fmt.Errorf("password: %w", err))
		return
	}
	if k.Equal(*a.keys) {
		return
	}
	if err := crypto.SavePasswordKeys(a.cfg.StateDir, salt, k); err != nil {
		// Not replaced: removed, or the next start would use them again.
		a.log.Error("could not replace the cached password keys; removing them", "err", err)
		dropCachedKeys(a.cfg.StateDir, a.log)
	}
	a.log.Error(errPasswordChanged.Error())
	a.fail(errPasswordChanged)
}

// dropCachedKeys removes the cache of password keys, if any.
func dropCachedKeys(dir string, log *slog.Logger) {
	if err := os.Remove(filepath.Join(dir, crypto.PasswordKeysFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		log.Error("could not remove the cached password keys", "err", err)
	}
}
