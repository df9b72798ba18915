package nlconv

import (
	"errors"
	"testing"

	"github.com/vishvananda/netlink"
)

func TestRetryDump(t *testing.T) {
	calls := 0
	out, err := RetryDump(func() ([]int, error) {
		calls++
		if calls < 3 {
			return []int{1}, netlink.ErrDumpInterrupted
		}
		return []int{1, 2}, nil
	})
	if err != nil || len(out) != 2 || calls != 3 {
		t.Fatalf("out %v err %v calls %d", out, err, calls)
	}
	calls = 0
	out, err = RetryDump(func() ([]int, error) { calls++; return []int{1}, netlink.ErrDumpInterrupted })
	if !errors.Is(err, netlink.ErrDumpInterrupted) || out != nil || calls != 5 {
		t.Fatalf("always interrupted: out %v err %v calls %d", out, err, calls)
	}
	boom := errors.New("boom")
	calls = 0
	if _, err := RetryDump(func() ([]int, error) { calls++; return nil, boom }); !errors.Is(err, boom) || calls != 1 {
		t.Fatalf("other error retried: %v calls %d", err, calls)
	}
}
