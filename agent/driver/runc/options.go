package runc

import (
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"flotilla/agent/driver"
	"flotilla/api/errdefs"
)

// applyOptions puts a container's run options into its runtime spec;
// volumes are bind-mounted from their directories under volumeRoot.
func applyOptions(s *specs.Spec, o driver.ContainerOptions, volumeRoot string) error {
	if err := o.Check(); err != nil {
		return err
	}
	for _, v := range o.Volumes {
		var src string
		var err error
		if v.Remote != nil {
			// Another node's: sshfs mounts it there before the start.
			src = shareDir(volumeRoot, v.Volume)
			err = os.MkdirAll(src, 0o755)
		} else {
			src, err = volumeDir(volumeRoot, v.Volume)
		}
		if err != nil {
			return err
		}
		opts := []string{"rbind", "rprivate", "nosuid", "nodev"}
		if v.ReadOnly {
			opts = append(opts, "ro")
		}
		dst := path.Clean(v.Destination)
		s.Mounts = slices.DeleteFunc(s.Mounts, func(m specs.Mount) bool { return m.Destination == dst })
		s.Mounts = append(s.Mounts, specs.Mount{Destination: dst, Type: "bind", Source: src, Options: opts})
	}
	if o.ReadOnly {
		s.Root.Readonly = true
	}
	if s.Process.Terminal && o.ConsoleHeight > 0 && o.ConsoleWidth > 0 {
		s.Process.ConsoleSize = &specs.Box{Height: o.ConsoleHeight, Width: o.ConsoleWidth}
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
		// Docker's profile follows the capabilities (CAP_SYS_NICE allows mbind ...).
		profile, err := seccompFor(caps)
		if err != nil {
			return errdefs.Wrap(errdefs.Internal, err, "build the seccomp profile")
		}
		s.Linux.Seccomp = profile
	}
	return nil
}

// volumeDir makes (if needed) and returns the directory holding volume id's
// data on this node: <root>/<id>/_data.
func volumeDir(root, id string) (string, error) {
	dir := filepath.Join(root, id, "_data")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", errdefs.Wrap(errdefs.Internal, err, "create the storage of volume %s", id)
	}
	return dir, nil
}
