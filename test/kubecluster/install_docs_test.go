package kubecluster

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// The cluster installs a release "exactly as site/install-kubernetes.md
// says": the ctr import the page shows is ImportArgs, word for word, and the
// page applies the release's weft.yaml as applyRelease does.
func TestReleaseInstalledAsDocumented(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "..", "site", "install-kubernetes.md"))
	if err != nil {
		t.Fatal(err)
	}
	// Shell lines, backslash continuations joined, comments dropped.
	joined := strings.ReplaceAll(string(doc), "\\\n", " ")
	comment := regexp.MustCompile(`\s#\s.*$`)
	var ctr []string
	for _, l := range strings.Split(joined, "\n") {
		l = strings.TrimSpace(comment.ReplaceAllString(l, ""))
		if strings.HasPrefix(l, "ctr ") && strings.Contains(l, " images import ") {
			ctr = strings.Fields(l)
		}
	}
	if ctr == nil {
		t.Fatal("install-kubernetes.md shows no `ctr ... images import` line")
	}
	// The page's example release: IMAGE and dist/VERSION as it writes them.
	var image, dir string
	for i, w := range ctr {
		if w == "--base-name" && i+1 < len(ctr) {
			image = ctr[i+1]
		}
		if strings.HasSuffix(w, "/image.tar") {
			dir = filepath.Dir(w)
		}
	}
	want := append([]string{"ctr"}, ImportArgs(&Release{Image: image, Dir: dir})...)
	if !slices.Equal(ctr, want) {
		t.Errorf("install-kubernetes.md imports with\n  %s\nthe cluster test with\n  %s", strings.Join(ctr, " "), strings.Join(want, " "))
	}
	if apply := "kubectl apply -f " + filepath.Join(dir, "weft.yaml"); !strings.Contains(joined, apply) {
		t.Errorf("install-kubernetes.md does not say %q", apply)
	}
}
