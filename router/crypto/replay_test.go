package crypto

import "testing"

func TestReplayWindow(t *testing.T) {
	const limit = rejectAfterMessages
	if ReplayWindow < 2048 {
		t.Fatalf("window %d is below the required 2048", ReplayWindow)
	}
	type step struct {
		counter uint64
		want    bool
	}
	cases := []struct {
		name  string
		steps []step
	}{
		{"in order", []step{{0, true}, {1, true}, {2, true}, {3, true}}},
		{"duplicate", []step{{0, true}, {0, false}, {5, true}, {5, false}, {4, true}, {4, false}}},
		{"out of order within window", []step{{100, true}, {50, true}, {99, true}, {0, true}, {50, false}}},
		{"oldest edge of the window", []step{
			{ReplayWindow + 10, true},
			{10, true},  // exactly ReplayWindow behind: accepted
			{9, false},  // one more: too old
			{10, false}, // duplicate at the edge
			{ReplayWindow + 9, true},
		}},
		{"2048 behind after 2048 in order", func() []step {
			var s []step
			for i := uint64(0); i <= 2048; i++ {
				s = append(s, step{i * 2, true})
			}
			// odd counters skipped so far all still within reach
			s = append(s, step{2048*2 - 2047, true}, step{2048*2 - 2047, false})
			return s
		}()},
		{"big jump clears the ring", []step{{1, true}, {2, true}, {1 << 40, true}, {1, false}, {(1 << 40) - 1, true}, {(1 << 40) + 1, true}}},
		{"jump by exactly the ring", []step{{5, true}, {5 + replayBits, true}, {5, false}, {5 + replayBits - 64, true}}},
		{"limit", []step{{limit - 1, true}, {limit, false}, {limit + 1, false}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var w replayWindow
			for i, s := range tc.steps {
				if may := w.mayAccept(s.counter, limit); may != s.want {
					t.Fatalf("step %d: mayAccept(%d) = %v, want %v", i, s.counter, may, s.want)
				}
				if got := w.accept(s.counter, limit); got != s.want {
					t.Fatalf("step %d: accept(%d) = %v, want %v", i, s.counter, got, s.want)
				}
			}
		})
	}
}

// TestReplayWindowAgainstModel compares the bitmap with a plain set over a
// long pseudo-random sequence of near-in-order counters.
func TestReplayWindowAgainstModel(t *testing.T) {
	var w replayWindow
	seen := map[uint64]bool{}
	var newest uint64
	x := uint64(12345)
	next := uint64(0)
	for i := 0; i < 200000; i++ {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		var c uint64
		switch x % 4 {
		case 0: // jump ahead
			next += x % 300
			c = next
		case 1: // late
			if next > x%5000 {
				c = next - x%5000
			}
		default:
			next++
			c = next
		}
		want := !seen[c] && (c > newest || newest-c <= ReplayWindow)
		if may := w.mayAccept(c, rejectAfterMessages); may != want {
			t.Fatalf("step %d counter %d: mayAccept %v, want %v", i, c, may, want)
		}
		if got := w.accept(c, rejectAfterMessages); got != want {
			t.Fatalf("step %d counter %d newest %d: got %v want %v", i, c, newest, got, want)
		}
		if want {
			seen[c] = true
			if c > newest {
				newest = c
			}
		}
	}
}
