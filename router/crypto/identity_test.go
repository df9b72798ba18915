package crypto

import (
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestIdentityPersists(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	id1, err := LoadOrCreateIdentity(dir)
	if err != nil {
		t.Fatal(err)
	}
	if id1.IsZero() {
		t.Fatal("zero identity")
	}
	st, err := os.Stat(filepath.Join(dir, IdentityFile))
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, want 0600", st.Mode().Perm())
	}
	id2, err := LoadOrCreateIdentity(dir)
	if err != nil {
		t.Fatal(err)
	}
	if id1 != id2 {
		t.Fatal("identity changed across loads")
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("temp files left behind: %v", entries)
	}
	other, _ := LoadOrCreateIdentity(t.TempDir())
	if other.Public() == id1.Public() {
		t.Fatal("two state dirs share an identity")
	}
}

func TestIdentityCorruptIsAnErrorAndKept(t *testing.T) {
	valid := string(formatIdentity(mustIdentity(t)))
	for name, content := range map[string]string{
		"empty":         "",
		"garbage":       "hello\n",
		"wrong header":  strings.Replace(valid, "v1", "v9", 1),
		"truncated key": valid[:len(valid)-10] + "\n",
		"not base64":    identityHeader + "\n" + strings.Repeat("!", 44) + "\n",
		"extra line":    valid + "more\n",
		"zero key":      identityHeader + "\n" + strings.Repeat("A", 43) + "=\n",
		"long key":      identityHeader + "\n" + strings.Repeat("A", 400) + "\n",
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, IdentityFile)
			if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := LoadOrCreateIdentity(dir)
			if err == nil || !strings.Contains(err.Error(), "corrupt") {
				t.Fatalf("err = %v, want a corrupt-file error", err)
			}
			after, _ := os.ReadFile(path)
			if string(after) != content {
				t.Fatal("corrupt identity file was changed")
			}
		})
	}
}

func mustIdentity(t *testing.T) Identity {
	t.Helper()
	id, err := GenerateIdentity()
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func FuzzParseIdentity(f *testing.F) {
	id, _ := GenerateIdentity()
	f.Add(formatIdentity(id))
	f.Add([]byte(identityHeader + "\n\n"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := parseIdentity(data)
		if err == nil && got.IsZero() {
			t.Fatal("accepted a zero identity")
		}
	})
}

func TestIdentityNeverPrintsPrivateKey(t *testing.T) {
	id, _ := GenerateIdentity()
	priv := base64.StdEncoding.EncodeToString(id.private[:])
	for _, f := range []string{"%v", "%+v", "%#v", "%s"} {
		if out := fmt.Sprintf(f, id); strings.Contains(out, priv) || strings.Contains(out, strings.TrimSuffix(fmt.Sprint(id.private[:4]), "]")) {
			t.Fatalf("%s prints the private key: %s", f, out)
		}
	}
}
