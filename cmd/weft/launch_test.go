package main

import (
	"strings"
	"testing"
)

// In a Kubernetes pod, no password means plaintext only when WEFT_PLAINTEXT
// says so; elsewhere no password is plaintext as before.
func TestCheckEncryptionChoice(t *testing.T) {
	for _, c := range []struct {
		password, plaintext, inCluster bool
		want                           string // "" = accepted
	}{
		{false, false, false, ""},
		{true, false, false, ""},
		{false, true, false, ""},
		{true, false, true, ""},
		{false, true, true, ""},
		{false, false, true, "WEFT_PLAINTEXT=true"},
		{true, true, false, "give only one"},
		{true, true, true, "give only one"},
	} {
		err := checkEncryptionChoice(c.password, c.plaintext, c.inCluster)
		if (c.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), c.want)) {
			t.Errorf("password=%v plaintext=%v in-cluster=%v: %v, want %q", c.password, c.plaintext, c.inCluster, err, c.want)
		}
	}
}
