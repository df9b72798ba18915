package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// asWeft makes the test binary the weft command when this variable is set:
// the shells in TestCompletionInShells run it as `weft`.
const asWeft = "WEFT_TEST_BINARY_IS_WEFT"

func TestMain(m *testing.M) {
	if os.Getenv(asWeft) == "1" {
		os.Exit(run(context.Background(), os.Args, os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// TestCompletionInShells sources each completion script in its own shell
// and completes a few command lines, the binary answering as the scripts
// ask it: a command, a status view, a flag. A shell that is not installed
// is skipped with a log line (apt-get install zsh fish).
func TestCompletionInShells(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := t.TempDir()
	if err := os.Symlink(exe, filepath.Join(bin, "weft")); err != nil {
		t.Fatal(err)
	}
	env := append(os.Environ(), asWeft+"=1", "PATH="+bin+string(os.PathListSeparator)+os.Getenv("PATH"))

	// Each shell completes the line in $line (words separated by spaces,
	// the last one possibly empty) and prints the candidates one a line.
	drivers := map[string]string{
		"bash": `source <(weft completion bash)
read -r -a COMP_WORDS <<< "$line"
[[ "$line" == *" " ]] && COMP_WORDS+=("")
COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))
_weft_complete
printf '%s\n' "${COMPREPLY[@]}"`,
		// Outside a completion widget: _describe and _files print what
		// they were given.
		"zsh": `compdef() {}
_describe() { print -rl -- "${(@P)2}" }
_files() { print -- FILES }
source <(weft completion zsh)
words=("${(@s: :)line}")
CURRENT=${#words}
_weft`,
		"fish": `weft completion fish | source
complete -C "$line"`,
	}
	cases := []struct {
		line string
		want []string
	}{
		{"weft sta", []string{"status"}},
		{"weft status ", []string{"peers", "connections", "ipam", "mesh", "policy", "targets"}},
		{"weft status -o json ", []string{"mesh"}},
		{"weft status --ru", []string{"--run-dir"}},
		{"weft ps --ou", []string{"--output"}},
	}
	for sh, script := range drivers {
		shell, err := exec.LookPath(sh)
		if err != nil {
			t.Logf("%s not installed: its completion not exercised", sh)
			continue
		}
		for _, c := range cases {
			cmd := exec.Command(shell, "-c", script)
			cmd.Env = append(env, "line="+c.line)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Errorf("%s, %q: %v\n%s", sh, c.line, err, out)
				continue
			}
			got := map[string]bool{}
			for _, l := range strings.Split(string(out), "\n") {
				word, _, _ := strings.Cut(l, "\t") // fish: word, tab, description
				word, _, _ = strings.Cut(word, ":")
				got[strings.TrimSpace(word)] = true
			}
			for _, w := range c.want {
				if !got[w] {
					t.Errorf("%s completes %q without %q:\n%s", sh, c.line, w, out)
				}
			}
		}
	}
}
