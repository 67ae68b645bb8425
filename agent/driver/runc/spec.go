package runc

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	pathrs "github.com/cyphar/filepath-securejoin/pathrs-lite"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"flotilla/agent/driver"
	"flotilla/agent/network"
	"flotilla/api/errdefs"
)

// CgroupParent is the cgroup (in every v1 hierarchy) under which each
// container gets its own cgroup named by its id.
const CgroupParent = "flotilla"

var _ driver.CgroupReporter = (*Driver)(nil)

// Cgroups implements driver.CgroupReporter: version 2 when /sys/fs/cgroup
// is the unified hierarchy, else 1 (v1 or hybrid); the driver is cgroupfs,
// as runc manages the cgroups named by CgroupsPath itself.
func (d *Driver) Cgroups() driver.CgroupInfo {
	info := driver.CgroupInfo{Version: "1", Driver: "cgroupfs"}
	var fs unix.Statfs_t
	if unix.Statfs("/sys/fs/cgroup", &fs) == nil && fs.Type == unix.CGROUP2_SUPER_MAGIC {
		info.Version = "2"
	}
	return info
}

// buildSpec writes the OCI runtime spec for spec from the image config.
// rootfs is the bundle-relative or absolute rootfs path; bundle holds the
// hosts/resolv.conf/hostname files it bind-mounts.
func buildSpec(spec driver.Spec, img *v1.ConfigFile, bundle, rootfs, netnsPath string) (*specs.Spec, error) {
	var ic v1.Config
	if img != nil {
		ic = img.Config
	}
	entry, cmd := spec.Entrypoint, spec.Cmd
	if len(entry) == 0 {
		entry = ic.Entrypoint
		if len(cmd) == 0 {
			cmd = ic.Cmd
		}
	}
	args := append(append([]string{}, entry...), cmd...)
	if len(args) == 0 {
		return nil, errdefs.InvalidArgument("instance %s has no command: the image defines none and none was given", spec.ID)
	}
	env := mergeEnv(ic.Env, spec.Env)
	if !hasEnv(env, "PATH") {
		env = append(env, "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	}
	if spec.Tty && !hasEnv(env, "TERM") {
		env = append(env, "TERM=xterm")
	}
	hostname := spec.Hostname
	if hostname == "" {
		hostname = spec.ID
		if len(hostname) > 12 {
			hostname = hostname[:12]
		}
	}
	env = append(env, "HOSTNAME="+hostname)
	cwd := spec.WorkingDir
	if cwd == "" {
		cwd = ic.WorkingDir
	}
	if cwd == "" {
		cwd = "/"
	}
	userStr := spec.User
	if userStr == "" {
		userStr = ic.User
	}
	user, err := resolveUser(rootfs, userStr)
	if err != nil {
		return nil, err
	}

	caps := append([]string{}, defaultCapabilities...)
	profile, err := defaultSeccomp()
	if err != nil {
		return nil, errdefs.Wrap(errdefs.Internal, err, "build the default seccomp profile")
	}
	s := &specs.Spec{
		Version:  "1.0.2-dev",
		Hostname: hostname,
		Root:     &specs.Root{Path: rootfs},
		Process: &specs.Process{
			Terminal:        spec.Tty,
			User:            user,
			Args:            args,
			Env:             env,
			Cwd:             cwd,
			NoNewPrivileges: true,
			Capabilities: &specs.LinuxCapabilities{
				Bounding: caps, Effective: caps, Permitted: caps,
			},
		},
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"}},
			{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
			{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
			{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup", Options: []string{"nosuid", "noexec", "nodev", "relatime", "ro"}},
			{Destination: "/etc/hosts", Type: "bind", Source: filepath.Join(bundle, "hosts"), Options: []string{"rbind", "rprivate"}},
			{Destination: "/etc/resolv.conf", Type: "bind", Source: filepath.Join(bundle, "resolv.conf"), Options: []string{"rbind", "rprivate"}},
			{Destination: "/etc/hostname", Type: "bind", Source: filepath.Join(bundle, "hostname"), Options: []string{"rbind", "rprivate"}},
		},
		Linux: &specs.Linux{
			CgroupsPath: "/" + CgroupParent + "/" + spec.ID,
			Resources:   resources(spec),
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace}, {Type: specs.IPCNamespace}, {Type: specs.UTSNamespace},
				{Type: specs.MountNamespace}, {Type: specs.CgroupNamespace},
				{Type: specs.NetworkNamespace, Path: netnsPath},
			},
			MaskedPaths:   maskedPaths,
			ReadonlyPaths: readonlyPaths,
			Seccomp:       profile,
		},
	}
	return s, nil
}

func resources(spec driver.Spec) *specs.LinuxResources {
	r := &specs.LinuxResources{
		Devices: []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}},
	}
	if spec.MemoryMiB > 0 {
		limit := spec.MemoryMiB << 20
		swap := limit // memory+swap = memory: no swap
		r.Memory = &specs.LinuxMemory{Limit: &limit, Swap: &swap}
	}
	cpu := &specs.LinuxCPU{}
	if spec.VCPUs > 0 {
		period := uint64(100000)
		quota := int64(spec.VCPUs * float64(period))
		cpu.Period, cpu.Quota = &period, &quota
	}
	if spec.CPUShares > 0 {
		shares := uint64(spec.CPUShares)
		cpu.Shares = &shares
	}
	if cpu.Quota != nil || cpu.Shares != nil {
		r.CPU = cpu
	}
	pids := spec.PIDsLimit
	if pids <= 0 {
		pids = driver.DefaultPIDsLimit
	}
	r.Pids = &specs.LinuxPids{Limit: &pids}
	return r
}

// mergeEnv returns base with over's variables replacing same-named ones.
func mergeEnv(base, over []string) []string {
	idx := map[string]int{}
	var out []string
	for _, list := range [][]string{base, over} {
		for _, kv := range list {
			k, _, _ := strings.Cut(kv, "=")
			if i, ok := idx[k]; ok {
				out[i] = kv
				continue
			}
			idx[k] = len(out)
			out = append(out, kv)
		}
	}
	return out
}

func hasEnv(env []string, key string) bool {
	for _, kv := range env {
		if strings.HasPrefix(kv, key+"=") {
			return true
		}
	}
	return false
}

// resolveUser turns "user[:group]" (names or numbers) into ids, reading
// names from the rootfs's /etc/passwd and /etc/group. "" is root.
func resolveUser(rootfs, s string) (specs.User, error) {
	if s == "" {
		return specs.User{}, nil
	}
	u, g, hasGroup := strings.Cut(s, ":")
	var out specs.User
	if n, err := strconv.ParseUint(u, 10, 32); err == nil {
		out.UID = uint32(n)
		if f, ok := lookupFile(rootfs, "etc/passwd", func(f []string) bool { return len(f) > 3 && f[2] == u }); ok {
			if gid, err := strconv.ParseUint(f[3], 10, 32); err == nil {
				out.GID = uint32(gid)
			}
		}
	} else {
		f, ok := lookupFile(rootfs, "etc/passwd", func(f []string) bool { return len(f) > 3 && f[0] == u })
		if !ok {
			return out, errdefs.InvalidArgument("user %q is not in the image's /etc/passwd", u)
		}
		uid, err1 := strconv.ParseUint(f[2], 10, 32)
		gid, err2 := strconv.ParseUint(f[3], 10, 32)
		if err1 != nil || err2 != nil {
			return out, errdefs.InvalidArgument("user %q has a malformed /etc/passwd entry", u)
		}
		out.UID, out.GID = uint32(uid), uint32(gid)
	}
	if hasGroup {
		if n, err := strconv.ParseUint(g, 10, 32); err == nil {
			out.GID = uint32(n)
		} else {
			f, ok := lookupFile(rootfs, "etc/group", func(f []string) bool { return len(f) > 2 && f[0] == g })
			if !ok {
				return out, errdefs.InvalidArgument("group %q is not in the image's /etc/group", g)
			}
			gid, err := strconv.ParseUint(f[2], 10, 32)
			if err != nil {
				return out, errdefs.InvalidArgument("group %q has a malformed /etc/group entry", g)
			}
			out.GID = uint32(gid)
		}
	}
	return out, nil
}

// lookupFile finds the first colon-separated line of /name in the rootfs
// that matches. The path is resolved inside the rootfs (symlinks, /etc
// itself included, are followed as if the rootfs were /, never to the
// host), and only a regular file is read, at most maxEtcFile bytes of it.
func lookupFile(rootfs, name string, match func([]string) bool) ([]string, bool) {
	h, err := pathrs.OpenInRoot(rootfs, "/"+name)
	if err != nil {
		return nil, false
	}
	defer h.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(h.Fd()), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, false
	}
	f, err := pathrs.Reopen(h, unix.O_RDONLY|unix.O_CLOEXEC)
	if err != nil {
		return nil, false
	}
	defer f.Close()
	sc := bufio.NewScanner(io.LimitReader(f, maxEtcFile))
	for sc.Scan() {
		fields := strings.Split(sc.Text(), ":")
		if match(fields) {
			return fields, true
		}
	}
	return nil, false
}

// maxEtcFile bounds how much of an image's /etc/passwd or /etc/group is read.
const maxEtcFile = 16 << 20

// writeNetworkFiles writes the hosts, resolv.conf and hostname files the
// container bind-mounts. resolv.conf is dns (the network's resolvers when
// it names no nameserver).
func writeNetworkFiles(bundle, hostname string, nics []driver.NIC, dns driver.DNSConfig) error {
	hosts := "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
	var resolvers []string
	for _, n := range nics {
		if n.Primary || len(nics) == 1 {
			hosts += fmt.Sprintf("%s\t%s\n", n.IP, hostname)
			resolvers = n.Resolvers
		}
	}
	if len(dns.Nameservers) == 0 {
		dns.Nameservers = resolvers
	}
	resolv := dns.ResolvConf()
	for name, data := range map[string]string{"hosts": hosts, "resolv.conf": resolv, "hostname": hostname + "\n"} {
		if err := os.WriteFile(filepath.Join(bundle, name), []byte(data), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// primaryNIC picks the NIC the container's eth0 gets: the one marked
// primary, else the first.
func primaryNIC(nics []driver.NIC) (driver.NIC, bool) {
	for _, n := range nics {
		if n.Primary {
			return n, true
		}
	}
	if len(nics) > 0 {
		return nics[0], true
	}
	return driver.NIC{}, false
}

var _ = network.NetNSPath

// HostInterfaces names the host end of each NIC's veth pair: the one its
// MAC address has in the instance's namespace, else the one a fresh
// namespace gives it (eth0 for the primary, then eth1... in order).
func (d *Driver) HostInterfaces(id string, nics []driver.NICRef) [][]string {
	out := make([][]string, len(nics))
	have, _ := network.InstanceVeths(network.NetNSName(id), id)
	n := 0
	for _, primaryPass := range []bool{true, false} {
		for i, nic := range nics {
			if nic.Primary != primaryPass {
				continue
			}
			if name, ok := have[strings.ToLower(nic.MAC)]; ok {
				out[i] = []string{name}
			} else {
				out[i] = []string{network.VethName(id, n)}
			}
			n++
		}
	}
	return out
}
