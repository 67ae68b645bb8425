package runc

import (
	"sync"

	"github.com/moby/profiles/seccomp"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// defaultSeccomp returns Docker's default seccomp profile for a container
// with defaultCapabilities: an allowlist (any syscall not listed fails with
// EPERM, so one added to the kernel later is denied until allowed), which
// without CAP_SYS_ADMIN leaves out mount and the new mount API, unshare,
// setns, clone with namespace flags (clone3 answers ENOSYS so that libcs
// fall back to clone), io_uring, bpf, the keyring, ptrace, kernel modules
// and kexec, clock setting, quotas and swap. The profile is the same for
// every container and built once; callers must not modify it.
var defaultSeccomp = sync.OnceValues(func() (*specs.LinuxSeccomp, error) {
	return seccomp.GetDefaultProfile(&specs.Spec{Process: &specs.Process{
		Capabilities: &specs.LinuxCapabilities{Bounding: defaultCapabilities},
	}})
})

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
