package runc

import (
	"slices"
	"strings"
	"sync"

	"github.com/moby/profiles/seccomp"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// seccompFor returns Docker's default seccomp profile for a container
// whose bounding capabilities are caps: an allowlist (any syscall not
// listed fails with EPERM, so one added to the kernel later is denied until
// allowed), which without CAP_SYS_ADMIN leaves out mount and the new mount
// API, unshare, setns, clone with namespace flags (clone3 answers ENOSYS so
// that libcs fall back to clone), and with the capabilities a container may
// have here io_uring, bpf, the keyring, kernel modules and kexec, clock
// setting, quotas and swap. Profiles are
// built once per capability set and shared; callers must not modify them.
func seccompFor(caps []string) (*specs.LinuxSeccomp, error) {
	key := strings.Join(slices.Sorted(slices.Values(caps)), ",")
	seccompCache.Lock()
	defer seccompCache.Unlock()
	if p, ok := seccompCache.m[key]; ok {
		return p, nil
	}
	p, err := seccomp.GetDefaultProfile(&specs.Spec{Process: &specs.Process{
		Capabilities: &specs.LinuxCapabilities{Bounding: slices.Clone(caps)},
	}})
	if err != nil {
		return nil, err
	}
	// The x32 ABI goes: kernels rarely build it in, and every architecture
	// in the filter is compiled again at each container start (x32 cost
	// some 8 ms of a 70 ms runc create here). Its system calls then fail
	// like any other not allowed. 32-bit x86 programs keep working.
	p.Architectures = slices.DeleteFunc(slices.Clone(p.Architectures), func(a specs.Arch) bool { return a == specs.ArchX32 })
	seccompCache.m[key] = p
	return p, nil
}

var seccompCache = struct {
	sync.Mutex
	m map[string]*specs.LinuxSeccomp
}{m: map[string]*specs.LinuxSeccomp{}}

// defaultSeccomp is the profile for defaultCapabilities.
func defaultSeccomp() (*specs.LinuxSeccomp, error) { return seccompFor(defaultCapabilities) }

// defaultCapabilities is Docker's default capability set.
var defaultCapabilities = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
	"CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
	"CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
}

var maskedPaths = []string{
	"/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
	"/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
	"/sys/firmware", "/sys/devices/virtual/powercap",
}

var readonlyPaths = []string{
	"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
}
