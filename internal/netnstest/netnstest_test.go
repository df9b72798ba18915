package netnstest

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"testing"

	"github.com/vishvananda/netns"

	"github.com/weftnet/weft/internal/roottest"
)

func TestDoEmptyRunsHere(t *testing.T) {
	want := errors.New("marker")
	if err := Do("", func() error { return want }); !errors.Is(err, want) {
		t.Fatalf("err %v", err)
	}
}

func TestDoMissingNamespace(t *testing.T) {
	ran := false
	err := Do("weft-netnstest-does-not-exist", func() error { ran = true; return nil })
	if err == nil || ran {
		t.Fatalf("err %v ran %v", err, ran)
	}
}

// TestDoEntersNamespace checks by name and by path that fn sees the other
// namespace's inode and that the caller's namespace is unchanged after.
func TestDoEntersNamespace(t *testing.T) {
	roottest.Require(t)
	name := fmt.Sprintf("weft-nnt-%d", netnsPID())
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	own, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer own.Close()
	want, err := netns.GetFromName(name)
	if err != nil {
		t.Fatal(err)
	}
	defer want.Close()
	for _, ns := range []string{name, "/run/netns/" + name} {
		err := Do(ns, func() error {
			cur, err := netns.Get()
			if err != nil {
				return err
			}
			defer cur.Close()
			if !cur.Equal(want) {
				return fmt.Errorf("in %s: running in %v, want %v", ns, cur, want)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	cur, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer cur.Close()
	if !cur.Equal(own) {
		t.Fatal("caller's namespace changed")
	}
}

func netnsPID() int { return os.Getpid() }
