package main

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// DefaultImage is where the official images are pushed.
const DefaultImage = "ghcr.io/weftnet/weft"

// Arches are the Linux architectures of a release.
var Arches = []string{"amd64", "arm64"}

// Options of one release.
type Options struct {
	Version  string // tag of the image and value of api.Version
	Image    string // repository, without tag
	Out      string // output directory
	Manifest string // the manifest to pin
	// Binaries, when set, returns the path of an already built binary
	// ("weft", "weft-cni" or a chained plugin) for an architecture instead
	// of building it.
	Binaries func(bin, arch string) string
	// PluginDir keeps the chained CNI plugins built for the image, as
	// PLUGIN-linux-ARCH ("": a temporary directory).
	PluginDir string
}

// ChainedPlugins are the reference CNI plugins weft chains and `weft
// install-cni` copies from the image (kube.ChainedPlugins), built from the
// module pinned in prog/image/cni-plugins. They go into the image only.
var ChainedPlugins = []string{"portmap", "bandwidth"}

// Result of a release.
type Result struct {
	Ref    string   // IMAGE:VERSION@sha256:... as pinned in weft.yaml
	Digest v1.Hash  // of the image index
	Files  []string // written into Out, sorted
}

// Sentinel errors of bad input.
var (
	ErrBadVersion = errors.New("release: bad version")
	ErrNoImage    = errors.New("release: no weft image in the manifest")
)

// tagPattern is what a registry accepts as a tag.
var tagPattern = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$`)

// Build writes a release into o.Out.
func Build(o Options, log *slog.Logger) (Result, error) {
	if !tagPattern.MatchString(o.Version) {
		return Result{}, fmt.Errorf("%w %q: want an image tag such as v1.2.3", ErrBadVersion, o.Version)
	}
	repo, err := name.NewRepository(o.Image)
	if err != nil {
		return Result{}, fmt.Errorf("release: image %q: %w", o.Image, err)
	}
	manifest, err := os.ReadFile(o.Manifest)
	if err != nil {
		return Result{}, fmt.Errorf("release: %w", err)
	}
	if err := os.MkdirAll(o.Out, 0o755); err != nil {
		return Result{}, fmt.Errorf("release: %w", err)
	}
	files := []string{}

	// The binaries, per architecture.
	bins := map[string]map[string]string{} // arch -> bin -> path in Out
	for _, arch := range Arches {
		bins[arch] = map[string]string{}
		for _, bin := range []string{"weft", "weft-cni"} {
			dst := filepath.Join(o.Out, bin+"-linux-"+arch)
			if o.Binaries != nil {
				if err := copyFile(o.Binaries(bin, arch), dst); err != nil {
					return Result{}, err
				}
			} else {
				log.Info("building", "binary", bin, "arch", arch)
				if err := goBuild(bin, arch, o.Version, dst); err != nil {
					return Result{}, err
				}
			}
			bins[arch][bin] = dst
			files = append(files, filepath.Base(dst))
		}
	}

	// The chained plugins, per architecture, for the image only.
	pluginDir := o.PluginDir
	if pluginDir == "" {
		if pluginDir, err = os.MkdirTemp("", "weft-release-plugins"); err != nil {
			return Result{}, fmt.Errorf("release: %w", err)
		}
		defer os.RemoveAll(pluginDir)
	}
	for _, arch := range Arches {
		for _, p := range ChainedPlugins {
			dst := filepath.Join(pluginDir, p+"-linux-"+arch)
			if o.Binaries != nil {
				if err := copyFile(o.Binaries(p, arch), dst); err != nil {
					return Result{}, err
				}
			} else {
				log.Info("building", "plugin", p, "arch", arch)
				if err := goBuildPlugin(p, arch, dst); err != nil {
					return Result{}, err
				}
			}
			bins[arch][p] = dst
		}
	}

	// One image per architecture, in one index.
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	for _, arch := range Arches {
		img, err := image(arch, bins[arch], o.Version)
		if err != nil {
			return Result{}, err
		}
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{
			Platform: &v1.Platform{OS: "linux", Architecture: arch},
		}})
	}
	digest, err := idx.Digest()
	if err != nil {
		return Result{}, fmt.Errorf("release: image index digest: %w", err)
	}
	tag := repo.Tag(o.Version)
	if err := writeLayoutTar(filepath.Join(o.Out, "image.tar"), idx, tag); err != nil {
		return Result{}, err
	}
	files = append(files, "image.tar")

	ref := tag.String() + "@" + digest.String()
	pinned, err := Pin(manifest, ref)
	if err != nil {
		return Result{}, err
	}
	if err := os.WriteFile(filepath.Join(o.Out, "weft.yaml"), pinned, 0o644); err != nil {
		return Result{}, fmt.Errorf("release: %w", err)
	}
	files = append(files, "weft.yaml")

	sort.Strings(files)
	if err := writeSums(o.Out, files); err != nil {
		return Result{}, err
	}
	files = append(files, "SHA256SUMS")
	sort.Strings(files)
	log.Info("release written", "dir", o.Out, "image", ref)
	return Result{Ref: ref, Digest: digest, Files: files}, nil
}

// goBuildPlugin cross-compiles one reference CNI plugin, static, from the
// module pinned in prog/image/cni-plugins (as prog/image/build.sh does).
func goBuildPlugin(plugin, arch, dst string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	abs, err := filepath.Abs(dst)
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, goTool(), "build", "-trimpath", "-ldflags", "-s -w", "-o", abs,
		"github.com/containernetworking/plugins/plugins/meta/"+plugin)
	cmd.Dir = filepath.Join(moduleRoot(), "prog", "image", "cni-plugins")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch, "GOFLAGS=-buildvcs=false")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("release: go build %s for %s: %w\n%s", plugin, arch, err, out)
	}
	return nil
}

// goBuild cross-compiles one static binary of this module.
func goBuild(bin, arch, version, dst string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	abs, err := filepath.Abs(dst)
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, goTool(), "build", "-trimpath",
		"-ldflags", "-s -w -X github.com/weftnet/weft/api.Version="+version,
		"-o", abs, "./cmd/"+bin)
	cmd.Dir = moduleRoot()
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("release: go build %s for %s: %w\n%s", bin, arch, err, out)
	}
	return nil
}

func goTool() string {
	if p := filepath.Join(runtime.GOROOT(), "bin", "go"); fileExists(p) {
		return p
	}
	return "go"
}

// moduleRoot is the directory of go.mod above the working directory.
func moduleRoot() string {
	dir, _ := os.Getwd()
	for d := dir; ; d = filepath.Dir(d) {
		if fileExists(filepath.Join(d, "go.mod")) {
			return d
		}
		if d == filepath.Dir(d) {
			return dir
		}
	}
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// image is the weft image of one architecture: bin/weft, bin/weft-cni and
// the chained plugins, entrypoint /bin/weft.
func image(arch string, bins map[string]string, version string) (v1.Image, error) {
	files := map[string]string{}
	for name, path := range bins {
		files["bin/"+name] = path
	}
	layerTar, err := rootfs(files)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, fmt.Errorf("release: layer for %s: %w", arch, err)
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.Append(img, mutate.Addendum{Layer: layer, History: v1.History{CreatedBy: "weft release " + version}})
	if err != nil {
		return nil, fmt.Errorf("release: image for %s: %w", arch, err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", arch
	cf.Config.Entrypoint = []string{"/bin/weft"}
	cf.Config.Labels = map[string]string{
		"org.opencontainers.image.version": version,
		"org.opencontainers.image.source":  "https://github.com/weftnet/weft",
		"org.opencontainers.image.title":   "weft",
	}
	return mutate.ConfigFile(img, cf)
}

// rootfs is a tar of the given files (path in image -> file on disk), owned
// by root, mode 0755, time zero, in sorted order: reproducible.
func rootfs(files map[string]string) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirHdr := &tar.Header{Typeflag: tar.TypeDir, Name: "bin/", Mode: 0o755, ModTime: time.Unix(0, 0), Format: tar.FormatPAX}
	if err := tw.WriteHeader(dirHdr); err != nil {
		return nil, err
	}
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		data, err := os.ReadFile(files[n])
		if err != nil {
			return nil, fmt.Errorf("release: %w", err)
		}
		hdr := &tar.Header{Typeflag: tar.TypeReg, Name: n, Mode: 0o755, Size: int64(len(data)),
			ModTime: time.Unix(0, 0), Format: tar.FormatPAX}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, err
		}
		if _, err := tw.Write(data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// writeLayoutTar writes idx as an OCI image layout, packed as one tar file:
// what `ctr images import` and `docker load` read. The index is named
// IMAGE:VERSION for both (containerd's annotation and the OCI ref name).
func writeLayoutTar(dst string, idx v1.ImageIndex, tag name.Tag) error {
	dir, err := os.MkdirTemp("", "weft-release-oci")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return fmt.Errorf("release: OCI layout: %w", err)
	}
	if err := p.AppendIndex(idx, layout.WithAnnotations(map[string]string{
		"io.containerd.image.name":          tag.String(),
		"org.opencontainers.image.ref.name": tag.TagStr(),
	})); err != nil {
		return fmt.Errorf("release: OCI layout: %w", err)
	}
	return tarDir(dir, dst)
}

// tarDir packs a directory's files (relative names, sorted, fixed times).
func tarDir(dir, dst string) error {
	f, err := os.Create(dst)
	if err != nil {
		return fmt.Errorf("release: %w", err)
	}
	tw := tar.NewWriter(f)
	err = filepath.Walk(dir, func(path string, info os.FileInfo, err error) error {
		if err != nil || path == dir {
			return err
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil {
			return err
		}
		hdr := &tar.Header{Name: filepath.ToSlash(rel), Mode: 0o644, ModTime: time.Unix(0, 0), Format: tar.FormatPAX}
		if info.IsDir() {
			hdr.Typeflag, hdr.Name, hdr.Mode = tar.TypeDir, hdr.Name+"/", 0o755
			return tw.WriteHeader(hdr)
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		hdr.Typeflag, hdr.Size = tar.TypeReg, int64(len(data))
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		_, err = tw.Write(data)
		return err
	})
	if cerr := tw.Close(); err == nil {
		err = cerr
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("release: write %s: %w", dst, err)
	}
	return nil
}

// imageLine is an `image:` line naming the weft image, any tag or digest.
var imageLine = regexp.MustCompile(`(?m)^(\s*(?:-\s+)?image:\s*)"?` + regexp.QuoteMeta(DefaultImage) + `[:@][^\s"]*"?\s*$`)

// Pin rewrites every image of weft in a manifest to ref.
func Pin(manifest []byte, ref string) ([]byte, error) {
	n := 0
	out := imageLine.ReplaceAllFunc(manifest, func(line []byte) []byte {
		n++
		m := imageLine.FindSubmatch(line)
		return append(append([]byte{}, m[1]...), ref...)
	})
	if n == 0 {
		return nil, fmt.Errorf("%w: no line `image: %s:...`", ErrNoImage, DefaultImage)
	}
	return out, nil
}

// writeSums writes SHA256SUMS of files in dir, as `sha256sum -c` reads it.
func writeSums(dir string, files []string) error {
	var b strings.Builder
	for _, f := range files {
		h := sha256.New()
		r, err := os.Open(filepath.Join(dir, f))
		if err != nil {
			return fmt.Errorf("release: %w", err)
		}
		_, err = io.Copy(h, r)
		r.Close()
		if err != nil {
			return fmt.Errorf("release: %w", err)
		}
		fmt.Fprintf(&b, "%s  %s\n", hex.EncodeToString(h.Sum(nil)), f)
	}
	return os.WriteFile(filepath.Join(dir, "SHA256SUMS"), []byte(b.String()), 0o644)
}

func copyFile(src, dst string) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return fmt.Errorf("release: %w", err)
	}
	if err := os.WriteFile(dst, data, 0o755); err != nil {
		return fmt.Errorf("release: %w", err)
	}
	return nil
}
