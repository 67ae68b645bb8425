package driver

import (
	"path"
	"slices"
	"strconv"
	"strings"

	"flotilla/api/errdefs"
)

// DefaultCapabilities is Docker's default capability set (no CAP_ prefix).
var DefaultCapabilities = []string{"CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID",
	"SETUID", "SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE"}

// AddableCapabilities are the capabilities a container may add beyond
// Docker's default set: none of them reaches past the container's own
// namespaces and cgroup. Everything else (SYS_ADMIN, NET_ADMIN,
// SYS_MODULE, SYS_PTRACE, ...) is refused.
var AddableCapabilities = []string{"IPC_LOCK", "LEASE", "SYS_NICE", "NET_BROADCAST", "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ"}

// KnownCapabilities are the names --cap-drop accepts (besides ALL).
var KnownCapabilities = []string{"AUDIT_CONTROL", "AUDIT_READ", "AUDIT_WRITE", "BLOCK_SUSPEND", "BPF", "CHECKPOINT_RESTORE",
	"CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "IPC_LOCK", "IPC_OWNER", "KILL", "LEASE",
	"LINUX_IMMUTABLE", "MAC_ADMIN", "MAC_OVERRIDE", "MKNOD", "NET_ADMIN", "NET_BIND_SERVICE", "NET_BROADCAST",
	"NET_RAW", "PERFMON", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYSLOG", "SYS_ADMIN", "SYS_BOOT",
	"SYS_CHROOT", "SYS_MODULE", "SYS_NICE", "SYS_PACCT", "SYS_PTRACE", "SYS_RAWIO", "SYS_RESOURCE", "SYS_TIME",
	"SYS_TTY_CONFIG", "WAKE_ALARM"}

// Rlimits maps --ulimit names to setrlimit resources.
var Rlimits = map[string]string{
	"as": "RLIMIT_AS", "core": "RLIMIT_CORE", "cpu": "RLIMIT_CPU", "data": "RLIMIT_DATA", "fsize": "RLIMIT_FSIZE",
	"locks": "RLIMIT_LOCKS", "memlock": "RLIMIT_MEMLOCK", "msgqueue": "RLIMIT_MSGQUEUE", "nice": "RLIMIT_NICE",
	"nofile": "RLIMIT_NOFILE", "nproc": "RLIMIT_NPROC", "rss": "RLIMIT_RSS", "rtprio": "RLIMIT_RTPRIO",
	"rttime": "RLIMIT_RTTIME", "sigpending": "RLIMIT_SIGPENDING", "stack": "RLIMIT_STACK",
}

// MaxNofile is the highest open-files limit a container may ask for (the
// kernel's default nr_open).
const MaxNofile = 1 << 20

// tmpfsOptions are the mount options --tmpfs may carry.
var tmpfsOptions = map[string]bool{"ro": true, "rw": true, "exec": true, "noexec": true, "suid": false, "nosuid": true,
	"dev": false, "nodev": true, "atime": true, "noatime": true, "relatime": true, "strictatime": true, "nodiratime": true}

// Check returns an Invalid error saying what is wrong with o.
func (o ContainerOptions) Check() error {
	for _, c := range o.CapAdd {
		c = strings.TrimPrefix(strings.ToUpper(c), "CAP_")
		if slices.Contains(DefaultCapabilities, c) || slices.Contains(AddableCapabilities, c) {
			continue
		}
		if c == "ALL" || slices.Contains(KnownCapabilities, c) {
			return errdefs.InvalidArgument("capability %s cannot be added on this cloud: it reaches beyond the container; addable: %s", c, strings.Join(AddableCapabilities, ", "))
		}
		return errdefs.InvalidArgument("unknown capability to add: %q", c)
	}
	for _, c := range o.CapDrop {
		c = strings.TrimPrefix(strings.ToUpper(c), "CAP_")
		if c != "ALL" && !slices.Contains(KnownCapabilities, c) {
			return errdefs.InvalidArgument("unknown capability to drop: %q", c)
		}
	}
	for dst, opts := range o.Tmpfs {
		if !path.IsAbs(dst) || path.Clean(dst) == "/" || strings.ContainsAny(dst, ",:") {
			return errdefs.InvalidArgument("invalid --tmpfs mount point %q: give an absolute path other than /", dst)
		}
		if _, err := TmpfsMountOptions(opts); err != nil {
			return err
		}
	}
	seen := map[string]bool{}
	for _, v := range o.Volumes {
		if !ValidVolumeID(v.Volume) {
			return errdefs.InvalidArgument("invalid volume id %q", v.Volume)
		}
		if !path.IsAbs(v.Destination) || path.Clean(v.Destination) == "/" || strings.ContainsAny(v.Destination, ",:") {
			return errdefs.InvalidArgument("invalid volume mount point %q: give an absolute path other than /", v.Destination)
		}
		if v.SizeMiB < 0 {
			return errdefs.InvalidArgument("invalid size %d MiB of volume %s", v.SizeMiB, v.Volume)
		}
		if d := path.Clean(v.Destination); seen[d] {
			return errdefs.InvalidArgument("duplicate mount point: %s", d)
		} else {
			seen[d] = true
		}
	}
	if o.ShmSize < 0 || o.ShmSize > 0 && o.ShmSize < 4096 {
		return errdefs.InvalidArgument("invalid --shm-size %d: give at least 4k", o.ShmSize)
	}
	for _, u := range o.Ulimits {
		if _, ok := Rlimits[u.Name]; !ok {
			return errdefs.InvalidArgument("invalid --ulimit %q: use one of as, core, cpu, data, fsize, locks, memlock, msgqueue, nice, nofile, nproc, rss, rtprio, rttime, sigpending, stack", u.Name)
		}
		if u.Soft < 0 || u.Hard < 0 || u.Soft > u.Hard {
			return errdefs.InvalidArgument("invalid --ulimit %s=%d:%d: the soft limit must not exceed the hard one", u.Name, u.Soft, u.Hard)
		}
		if u.Name == "nofile" && u.Hard > MaxNofile {
			return errdefs.InvalidArgument("invalid --ulimit nofile=%d: at most %d", u.Hard, MaxNofile)
		}
	}
	return nil
}

// ValidVolumeID reports whether id is a lower-case uuid, the only form a
// volume's directory name on a node may take.
func ValidVolumeID(id string) bool {
	if len(id) != 36 {
		return false
	}
	for i, r := range id {
		switch {
		case i == 8 || i == 13 || i == 18 || i == 23:
			if r != '-' {
				return false
			}
		case !(r >= '0' && r <= '9' || r >= 'a' && r <= 'f'):
			return false
		}
	}
	return true
}

// TmpfsMountOptions turns "size=64m,mode=1777,noexec" into mount options,
// nosuid and nodev always included.
func TmpfsMountOptions(opts string) ([]string, error) {
	out := []string{"nosuid", "nodev"}
	for _, o := range strings.Split(opts, ",") {
		o = strings.TrimSpace(o)
		if o == "" {
			continue
		}
		k, v, hasV := strings.Cut(o, "=")
		switch {
		case hasV && (k == "size" || k == "nr_inodes" || k == "nr_blocks"):
			if strings.TrimRight(v, "0123456789kKmMgG%") != "" || v == "" {
				return nil, errdefs.InvalidArgument("invalid --tmpfs option %q", o)
			}
		case hasV && (k == "mode" || k == "uid" || k == "gid"):
			base := 10
			if k == "mode" {
				base = 8
			}
			if _, err := strconv.ParseUint(v, base, 32); err != nil {
				return nil, errdefs.InvalidArgument("invalid --tmpfs option %q", o)
			}
		case !hasV && tmpfsOptions[k]:
		default:
			return nil, errdefs.InvalidArgument("--tmpfs option %q is not allowed: use size, mode, uid, gid, nr_inodes, ro/rw, exec/noexec, atime options", o)
		}
		if k != "nosuid" && k != "nodev" {
			out = append(out, o)
		}
	}
	return out, nil
}
