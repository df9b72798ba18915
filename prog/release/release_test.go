package main

import (
	"archive/tar"
	"bufio"
	"bytes"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
)

func TestPin(t *testing.T) {
	in := []byte("      containers:\n      - name: weft\n        image: ghcr.io/weftnet/weft:latest\n" +
		"        imagePullPolicy: IfNotPresent\n      - image: \"ghcr.io/weftnet/weft@sha256:00\"\n        name: x\n" +
		"        image: registry.example/other:1\n")
	out, err := Pin(in, "registry.example/weft:v1@sha256:ab")
	if err != nil {
		t.Fatal(err)
	}
	want := "      containers:\n      - name: weft\n        image: registry.example/weft:v1@sha256:ab\n" +
		"        imagePullPolicy: IfNotPresent\n      - image: registry.example/weft:v1@sha256:ab\n        name: x\n" +
		"        image: registry.example/other:1\n"
	if string(out) != want {
		t.Errorf("Pin:\n%s\nwant:\n%s", out, want)
	}
	if _, err := Pin([]byte("image: busybox\n"), "x"); !errors.Is(err, ErrNoImage) {
		t.Errorf("Pin of a manifest without weft: %v, want ErrNoImage", err)
	}
}

func TestBadVersion(t *testing.T) {
	for _, v := range []string{"", "v1 2", "-v1", strings.Repeat("x", 129), "v1/2"} {
		if _, err := Build(Options{Version: v, Image: DefaultImage}, slog.New(slog.DiscardHandler)); !errors.Is(err, ErrBadVersion) {
			t.Errorf("version %q: %v, want ErrBadVersion", v, err)
		}
	}
}

// TestRelease builds a whole release the way `make release` does (two
// cross-compilations: about a minute) and checks what tests outside the
// repository rely on.
func TestRelease(t *testing.T) {
	if testing.Short() {
		t.Skip("cross-compiles weft twice")
	}
	const version = "v0.0.1-test"
	const image = "registry.example:5000/weft"
	out := t.TempDir()
	plugins := t.TempDir()
	r, err := Build(Options{Version: version, Image: image, Out: out, Manifest: "../kube/weft.yaml", PluginDir: plugins},
		slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"SHA256SUMS", "image.tar", "weft-cni-linux-amd64", "weft-cni-linux-arm64",
		"weft-linux-amd64", "weft-linux-arm64", "weft.yaml"}
	entries, err := os.ReadDir(out)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range entries {
		got = append(got, e.Name())
	}
	if !slices.Equal(got, want) || !slices.Equal(r.Files, want) {
		t.Fatalf("files %v (result %v), want %v", got, r.Files, want)
	}
	checkSums(t, out, want[1:])

	// The binaries: the right machine each, static, and the version in.
	for file, machine := range map[string]elf.Machine{
		"weft-linux-amd64": elf.EM_X86_64, "weft-linux-arm64": elf.EM_AARCH64,
		"weft-cni-linux-amd64": elf.EM_X86_64, "weft-cni-linux-arm64": elf.EM_AARCH64,
	} {
		checkELF(t, file, readAll(t, filepath.Join(out, file)), machine)
	}
	if runtime.GOOS == "linux" && runtime.GOARCH == "amd64" {
		v, err := exec.Command(filepath.Join(out, "weft-linux-amd64"), "version").Output()
		if err != nil || strings.TrimSpace(string(v)) != "weft "+version {
			t.Errorf("weft-linux-amd64 version: %q, %v; want \"weft %s\"", v, err, version)
		}
	}

	// The manifest: pinned to the index's digest, Linux nodes only.
	yaml := string(readAll(t, filepath.Join(out, "weft.yaml")))
	ref := image + ":" + version + "@" + r.Digest.String()
	if r.Ref != ref || strings.Count(yaml, "image: "+ref+"\n") != 2 || strings.Contains(yaml, "ghcr.io/weftnet/weft") {
		t.Errorf("weft.yaml does not pin both containers to %s (result %s)", ref, r.Ref)
	}
	if !strings.Contains(yaml, "kubernetes.io/os: linux") {
		t.Error("weft.yaml: the DaemonSet does not select kubernetes.io/os: linux")
	}

	// The image: an OCI layout whose one index has both platforms, read
	// back with go-containerregistry.
	dir := t.TempDir()
	untar(t, filepath.Join(out, "image.tar"), dir)
	p, err := layout.FromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	top, err := p.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	topm, err := top.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(topm.Manifests) != 1 || topm.Manifests[0].Digest != r.Digest ||
		topm.Manifests[0].Annotations["io.containerd.image.name"] != image+":"+version ||
		topm.Manifests[0].Annotations["org.opencontainers.image.ref.name"] != version {
		t.Fatalf("index.json: %+v, want one index %s named %s:%s", topm.Manifests, r.Digest, image, version)
	}
	idx, err := top.ImageIndex(r.Digest)
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	var platforms []string
	for _, d := range im.Manifests {
		platforms = append(platforms, d.Platform.String())
		img, err := idx.Image(d.Digest)
		if err != nil {
			t.Fatalf("%s: %v", d.Platform, err)
		}
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		if cf.OS != d.Platform.OS || cf.Architecture != d.Platform.Architecture ||
			!slices.Equal(cf.Config.Entrypoint, []string{"/bin/weft"}) {
			t.Errorf("%s: config os %s arch %s entrypoint %v", d.Platform, cf.OS, cf.Architecture, cf.Config.Entrypoint)
		}
		files := layerFiles(t, img)
		if len(files) != 4 {
			t.Errorf("%s: image files %v, want bin/weft, bin/weft-cni, bin/portmap and bin/bandwidth only", d.Platform, keys(files))
		}
		machine := map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}[d.Platform.Architecture]
		for _, f := range []string{"bin/weft", "bin/weft-cni", "bin/portmap", "bin/bandwidth"} {
			checkELF(t, d.Platform.String()+" "+f, files[f], machine)
		}
		if !bytes.Equal(files["bin/weft"], readAll(t, filepath.Join(out, "weft-linux-"+d.Platform.Architecture))) {
			t.Errorf("%s: bin/weft is not weft-linux-%s", d.Platform, d.Platform.Architecture)
		}
	}
	slices.Sort(platforms)
	if !slices.Equal(platforms, []string{"linux/amd64", "linux/arm64"}) {
		t.Errorf("index platforms %v, want linux/amd64 and linux/arm64", platforms)
	}

	// Reproducible: the same binaries give the same digest.
	out2 := t.TempDir()
	r2, err := Build(Options{Version: version, Image: image, Out: out2, Manifest: "../kube/weft.yaml",
		Binaries: func(bin, arch string) string {
			if slices.Contains(ChainedPlugins, bin) {
				return filepath.Join(plugins, bin+"-linux-"+arch)
			}
			return filepath.Join(out, bin+"-linux-"+arch)
		}}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if r2.Digest != r.Digest {
		t.Errorf("rebuilt from the same binaries: digest %s, first %s", r2.Digest, r.Digest)
	}
}

func readAll(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func checkELF(t *testing.T, what string, data []byte, machine elf.Machine) {
	t.Helper()
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		t.Errorf("%s: not ELF: %v", what, err)
		return
	}
	defer f.Close()
	if f.Machine != machine || f.Type != elf.ET_EXEC {
		t.Errorf("%s: ELF %v %v, want an executable for %v", what, f.Machine, f.Type, machine)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("%s: dynamically linked; the image has no libc", what)
		}
	}
}

// checkSums verifies SHA256SUMS as `sha256sum -c` would.
func checkSums(t *testing.T, dir string, files []string) {
	t.Helper()
	f, err := os.Open(filepath.Join(dir, "SHA256SUMS"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var listed []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		sum, name, ok := strings.Cut(sc.Text(), "  ")
		if !ok {
			t.Fatalf("SHA256SUMS: bad line %q", sc.Text())
		}
		h := sha256.Sum256(readAll(t, filepath.Join(dir, name)))
		if hex.EncodeToString(h[:]) != sum {
			t.Errorf("SHA256SUMS: %s does not match", name)
		}
		listed = append(listed, name)
	}
	if !slices.Equal(listed, files) {
		t.Errorf("SHA256SUMS lists %v, want %v", listed, files)
	}
}

func untar(t *testing.T, src, dir string) {
	t.Helper()
	f, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(dir, filepath.FromSlash(h.Name))
		if !strings.HasPrefix(dst, dir+string(filepath.Separator)) {
			t.Fatalf("image.tar: entry %q escapes the layout", h.Name)
		}
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(dst, 0o755); err != nil {
				t.Fatal(err)
			}
		case tar.TypeReg:
			if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
				t.Fatal(err)
			}
			data, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(dst, data, 0o644); err != nil {
				t.Fatal(err)
			}
		default:
			t.Fatalf("image.tar: unexpected entry %q type %c", h.Name, h.Typeflag)
		}
	}
}

// layerFiles returns the regular files of an image's layers by path.
func layerFiles(t *testing.T, img v1.Image) map[string][]byte {
	t.Helper()
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]byte{}
	for _, l := range layers {
		rc, err := l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		tr := tar.NewReader(rc)
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			if h.Typeflag == tar.TypeReg {
				if h.Uid != 0 || h.Gid != 0 || h.Mode&0o111 == 0 {
					t.Errorf("layer file %s: uid %d gid %d mode %o, want root-owned executable", h.Name, h.Uid, h.Gid, h.Mode)
				}
				data, err := io.ReadAll(tr)
				if err != nil {
					t.Fatal(err)
				}
				out[h.Name] = data
			}
		}
		rc.Close()
	}
	return out
}

func keys(m map[string][]byte) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
