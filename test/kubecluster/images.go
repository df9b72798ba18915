package kubecluster

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// Image names the nodes' containerd must hold. The sandbox image is what
// containerd's CRI asks for by default; the probe image is the workload.
const (
	PauseImage = "registry.k8s.io/pause:3.10"
	ProbeImage = "docker.io/weftnet/netprobe:test"
	WeftImage  = "ghcr.io/weftnet/weft:latest" // the name prog/kube/weft.yaml uses
	// CoreDNSImage is CoreDNS built from ./coredns (the version its go.mod pins).
	CoreDNSImage = "registry.k8s.io/coredns/coredns:v1.14.7"
)

// imageFile is one file of a single-layer image.
type imageFile struct {
	path string // inside the image, without leading slash
	data []byte
	mode int64
	link string // a symbolic link to this target instead of data
}

// writeDockerArchive writes a single-layer image in the `docker save` layout
// (manifest.json, config, layer.tar), which `ctr images import` reads. No
// registry and no network: the image is just a tar of a tar.
func writeDockerArchive(out, ref string, entrypoint []string, files []imageFile) error {
	return writeImage(out, []string{ref}, entrypoint, nil, files)
}

// writeImage is writeDockerArchive with several names and a default command.
func writeImage(out string, refs, entrypoint, cmd []string, files []imageFile) error {
	var layer bytes.Buffer
	lw := tar.NewWriter(&layer)
	epoch := time.Unix(0, 0)
	dirs := map[string]bool{}
	for _, f := range files {
		var parents []string
		for d := filepath.Dir(f.path); d != "." && !dirs[d]; d = filepath.Dir(d) {
			dirs[d] = true
			parents = append(parents, d)
		}
		for i := len(parents) - 1; i >= 0; i-- {
			if err := lw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: parents[i] + "/", Mode: 0o755, ModTime: epoch}); err != nil {
				return err
			}
		}
		if f.link != "" {
			if err := lw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: f.path, Linkname: f.link, Mode: 0o777, ModTime: epoch}); err != nil {
				return err
			}
			continue
		}
		if err := lw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: f.path, Mode: f.mode, Size: int64(len(f.data)), ModTime: epoch}); err != nil {
			return err
		}
		if _, err := lw.Write(f.data); err != nil {
			return err
		}
	}
	if err := lw.Close(); err != nil {
		return err
	}
	layerSum := sha256.Sum256(layer.Bytes())
	layerHex := hex.EncodeToString(layerSum[:])
	config, err := json.Marshal(map[string]any{
		"architecture": "amd64",
		"os":           "linux",
		"created":      epoch.UTC().Format(time.RFC3339),
		"config":       map[string]any{"Entrypoint": entrypoint, "Cmd": cmd},
		"rootfs":       map[string]any{"type": "layers", "diff_ids": []string{"sha256:" + layerHex}},
	})
	if err != nil {
		return err
	}
	configSum := sha256.Sum256(config)
	configName := hex.EncodeToString(configSum[:]) + ".json"
	manifest, err := json.Marshal([]map[string]any{{
		"Config": configName, "RepoTags": refs, "Layers": []string{layerHex + "/layer.tar"},
	}})
	if err != nil {
		return err
	}
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(f)
	for _, e := range []struct {
		name string
		data []byte
	}{{configName, config}, {layerHex + "/layer.tar", layer.Bytes()}, {"manifest.json", manifest}} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: e.name, Mode: 0o644, Size: int64(len(e.data)), ModTime: epoch}); err != nil {
			f.Close()
			return err
		}
		if _, err := tw.Write(e.data); err != nil {
			f.Close()
			return err
		}
	}
	if err := tw.Close(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// buildImages writes the image tarballs into dir and returns their paths:
// the pause and probe images from test/kubecluster/netprobe, CoreDNS from
// k8sBin/coredns, and the weft image from this checkout through
// prog/image/build.sh (the shipping path, so the test also proves the image
// build) unless noWeft (a release's image is imported instead).
func buildImages(root, dir, k8sBin string, noWeft bool, logf func(string, ...any)) ([]string, error) {
	probeBin := filepath.Join(dir, "netprobe")
	build := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", probeBin, "./test/kubecluster/netprobe")
	build.Dir = root
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("build netprobe: %w\n%s", err, out)
	}
	bin, err := os.ReadFile(probeBin)
	if err != nil {
		return nil, err
	}
	files := []imageFile{{path: "netprobe", data: bin, mode: 0o755}}
	pause := filepath.Join(dir, "pause-image.tar")
	// Also under the name the e2e suite uses for its own pods.
	if err := writeImage(pause, []string{PauseImage, E2EPauseImage}, []string{"/netprobe", "pause"}, nil, files); err != nil {
		return nil, fmt.Errorf("pause image: %w", err)
	}
	probe := filepath.Join(dir, "netprobe-image.tar")
	if err := writeDockerArchive(probe, ProbeImage, []string{"/netprobe"}, files); err != nil {
		return nil, fmt.Errorf("probe image: %w", err)
	}
	dnsBin, err := os.ReadFile(filepath.Join(k8sBin, "coredns"))
	if err != nil {
		return nil, err
	}
	coredns := filepath.Join(dir, "coredns-image.tar")
	if err := writeDockerArchive(coredns, CoreDNSImage, []string{"/coredns"}, []imageFile{{path: "coredns", data: dnsBin, mode: 0o755}}); err != nil {
		return nil, fmt.Errorf("coredns image: %w", err)
	}
	if noWeft {
		return []string{pause, probe, coredns}, nil
	}
	weft := filepath.Join(dir, "weft-image.tar")
	start := time.Now()
	cmd := exec.Command(filepath.Join(root, "prog", "image", "build.sh"), weft)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "IMAGE="+WeftImage)
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("prog/image/build.sh: %w\n%s", err, out)
	}
	logf("built the weft image from this checkout with prog/image/build.sh in %s", time.Since(start).Round(100*time.Millisecond))
	return []string{pause, probe, coredns, weft}, nil
}
