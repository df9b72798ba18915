package kubecluster

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

const cgroupFS = "/sys/fs/cgroup"

// cgroupHierarchies are the mounted hierarchies: on a cgroup v1 machine one
// directory per controller (cpu, memory, ..., name=systemd, unified), on a
// cgroup v2 machine the root itself.
func cgroupHierarchies() ([]string, error) {
	if _, err := os.Stat(filepath.Join(cgroupFS, "cgroup.controllers")); err == nil {
		return []string{cgroupFS}, nil // v2
	}
	ents, err := os.ReadDir(cgroupFS)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		p := filepath.Join(cgroupFS, e.Name())
		if _, err := os.Stat(filepath.Join(p, "cgroup.procs")); e.IsDir() && err == nil {
			out = append(out, p)
		}
	}
	return out, nil
}

// makeCgroup creates the kubelet's cgroupRoot in every hierarchy (kubelet
// refuses a cgroupRoot that does not exist). A new v1 cpuset starts with no
// CPUs and memory nodes; it gets its parent's.
func makeCgroup(name string) error {
	hs, err := cgroupHierarchies()
	if err != nil {
		return fmt.Errorf("cgroups: %w", err)
	}
	for _, h := range hs {
		dir := filepath.Join(h, name)
		if err := os.Mkdir(dir, 0o755); err != nil && !os.IsExist(err) {
			return fmt.Errorf("cgroup %s: %w", dir, err)
		}
		if filepath.Base(h) == "cpuset" {
			for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
				v, err := os.ReadFile(filepath.Join(h, f))
				if err != nil {
					return err
				}
				if err := os.WriteFile(filepath.Join(dir, f), v, 0o644); err != nil {
					return fmt.Errorf("cgroup %s/%s: %w", dir, f, err)
				}
			}
		}
	}
	return nil
}

// removeCgroup removes the cgroup tree name (what kubelet and runc made
// below it too), deepest first, in every hierarchy. It fails while a cgroup
// still has processes, naming them.
func removeCgroup(name string) error {
	hs, err := cgroupHierarchies()
	if err != nil {
		return err
	}
	var errs []error
	for _, h := range hs {
		top := filepath.Join(h, name)
		var dirs []string
		err := filepath.WalkDir(top, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		sort.Slice(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
		for _, d := range dirs {
			if err := os.Remove(d); err != nil && !os.IsNotExist(err) {
				procs, _ := os.ReadFile(filepath.Join(d, "cgroup.procs"))
				errs = append(errs, fmt.Errorf("cgroup %s (processes: %s): %w", d, strings.Join(strings.Fields(string(procs)), " "), err))
				break
			}
		}
	}
	return errors.Join(errs...)
}
