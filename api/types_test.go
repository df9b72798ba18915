package api

import "testing"

func TestContainerAddr(t *testing.T) {
	for in, want := range map[string]string{"10.32.0.5": "10.32.0.5", "10.32.0.5/32": "10.32.0.5", "10.32.0.5/12": "10.32.0.5"} {
		got, err := Container{Address: in}.Addr()
		if err != nil || got.String() != want {
			t.Errorf("%q: %v %v, want %s", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "10.32.0", "host", "10.32.0.5/33"} {
		if got, err := (Container{Address: bad}).Addr(); err == nil {
			t.Errorf("%q accepted as %v", bad, got)
		}
	}
}
