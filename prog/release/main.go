// Command release builds a weft release offline, from this source tree:
//
//	go run ./prog/release -version v1.2.3 -image ghcr.io/weftnet/weft -out dist/v1.2.3
//
// (`make release VERSION=v1.2.3 IMAGE=...` runs it). Into -out it writes
//
//	weft-linux-amd64, weft-linux-arm64           the weft binary per architecture
//	weft-cni-linux-amd64, weft-cni-linux-arm64   the CNI shim per architecture
//	image.tar   an OCI image layout (tar) holding one image index for
//	            linux/amd64 and linux/arm64, named IMAGE:VERSION
//	weft.yaml   prog/kube/weft.yaml with the image pinned to IMAGE:VERSION@DIGEST
//	SHA256SUMS  the checksums of all of the above, in sha256sum's format
//
// Each image is the two static binaries in /bin, with the portmap and
// bandwidth CNI plugins weft chains (built from prog/image/cni-plugins), and
// nothing else (no shell, no libc), entrypoint /bin/weft, as prog/image/Dockerfile describes. Layers
// are built with fixed owners, modes and times, so the image digest depends
// only on the binaries.
package main

import (
	"flag"
	"fmt"
	"log/slog"
	"os"
)

func main() {
	var o Options
	flag.StringVar(&o.Version, "version", "", "release version, also the image tag (required), e.g. v1.2.3")
	flag.StringVar(&o.Image, "image", DefaultImage, "image repository, without tag")
	flag.StringVar(&o.Out, "out", "", "output directory (default dist/VERSION)")
	flag.StringVar(&o.Manifest, "manifest", "prog/kube/weft.yaml", "the Kubernetes manifest to pin")
	flag.Parse()
	if o.Out == "" {
		o.Out = "dist/" + o.Version
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	r, err := Build(o, log)
	if err != nil {
		fmt.Fprintln(os.Stderr, "release:", err)
		os.Exit(1)
	}
	fmt.Printf("wrote %s: %s\n", o.Out, r.Ref)
}
