package runc

import (
	"path"
	"slices"
	"strconv"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"flotilla/agent/driver"
)

// applyOptions puts a container's run options into its runtime spec.
func applyOptions(s *specs.Spec, o driver.ContainerOptions) error {
	if err := o.Check(); err != nil {
		return err
	}
	if o.ReadOnly {
		s.Root.Readonly = true
	}
	if o.ShmSize > 0 {
		for i := range s.Mounts {
			if s.Mounts[i].Destination == "/dev/shm" {
				s.Mounts[i].Options = []string{"nosuid", "noexec", "nodev", "mode=1777", "size=" + strconv.FormatInt(o.ShmSize, 10)}
			}
		}
	}
	dsts := make([]string, 0, len(o.Tmpfs))
	for dst := range o.Tmpfs {
		dsts = append(dsts, dst)
	}
	slices.Sort(dsts)
	for _, dst := range dsts {
		opts, _ := driver.TmpfsMountOptions(o.Tmpfs[dst])
		s.Mounts = slices.DeleteFunc(s.Mounts, func(m specs.Mount) bool { return m.Destination == path.Clean(dst) })
		s.Mounts = append(s.Mounts, specs.Mount{Destination: path.Clean(dst), Type: "tmpfs", Source: "tmpfs", Options: opts})
	}
	for _, u := range o.Ulimits {
		s.Process.Rlimits = append(s.Process.Rlimits, specs.POSIXRlimit{Type: driver.Rlimits[u.Name], Soft: uint64(u.Soft), Hard: uint64(u.Hard)})
	}
	if len(o.CapAdd) > 0 || len(o.CapDrop) > 0 {
		caps := slices.Clone(s.Process.Capabilities.Bounding)
		for _, c := range o.CapDrop {
			c = "CAP_" + strings.TrimPrefix(strings.ToUpper(c), "CAP_")
			if c == "CAP_ALL" {
				caps = nil
				continue
			}
			caps = slices.DeleteFunc(caps, func(x string) bool { return x == c })
		}
		for _, c := range o.CapAdd {
			c = "CAP_" + strings.TrimPrefix(strings.ToUpper(c), "CAP_")
			if !slices.Contains(caps, c) {
				caps = append(caps, c)
			}
		}
		s.Process.Capabilities = &specs.LinuxCapabilities{Bounding: caps, Effective: slices.Clone(caps), Permitted: slices.Clone(caps)}
	}
	return nil
}
