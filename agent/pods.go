package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"

	"github.com/weftnet/weft/internal/atomicfile"
)

// podsFile keeps podNames across restarts of the agent, beside the IPAM
// state but apart from it: it is for display only, and losing it loses
// nothing but the POD column of weft ps.
const podsFile = "pods.json"

// podKey names one container interface, as an IPAM allocation does.
type podKey struct{ ContainerID, IfName string }

// podRef is the Kubernetes pod a container belongs to.
type podRef struct {
	ContainerID string `json:"container_id"`
	IfName      string `json:"ifname"`
	Namespace   string `json:"namespace"`
	Name        string `json:"name"`
}

// podNames is the agent's table of container -> pod, filled from the
// K8S_POD_NAMESPACE and K8S_POD_NAME the runtime passes to the CNI shim.
type podNames struct {
	path string
	log  *slog.Logger

	mu sync.Mutex
	m  map[podKey]podRef
}

// loadPodNames reads the table; a missing or unreadable file starts empty
// (with a warning), since the table is informational.
func loadPodNames(stateDir string, log *slog.Logger) *podNames {
	p := &podNames{path: filepath.Join(stateDir, podsFile), log: log, m: map[podKey]podRef{}}
	data, err := os.ReadFile(p.path)
	if errors.Is(err, fs.ErrNotExist) {
		return p
	}
	var refs []podRef
	if err == nil {
		err = json.Unmarshal(data, &refs)
	}
	if err != nil {
		log.Warn("ignoring the pod names of weft ps", "file", p.path, "err", err)
		return p
	}
	for _, r := range refs {
		p.m[podKey{r.ContainerID, r.IfName}] = r
	}
	return p
}

// set records the pod of one container interface and forgets those no
// longer allocated (live lists which are), so the table stays as small as
// the host's set of pods.
func (p *podNames) set(ref podRef, live func() map[podKey]bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	k := podKey{ref.ContainerID, ref.IfName}
	if old, ok := p.m[k]; ok && old == ref {
		return
	}
	p.m[k] = ref
	alive := live()
	refs := make([]podRef, 0, len(p.m))
	for k, r := range p.m {
		if !alive[k] {
			delete(p.m, k)
			continue
		}
		refs = append(refs, r)
	}
	if err := p.saveLocked(refs); err != nil {
		p.log.Warn("saving the pod names of weft ps", "err", err)
	}
}

func (p *podNames) saveLocked(refs []podRef) error {
	data, err := json.Marshal(refs)
	if err != nil {
		return fmt.Errorf("encode %s: %w", p.path, err)
	}
	return atomicfile.Write(p.path, data, 0o600)
}

// get returns the pod of a container interface, if known.
func (p *podNames) get(id, ifName string) (podRef, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	r, ok := p.m[podKey{id, ifName}]
	return r, ok
}
