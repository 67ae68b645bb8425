package runc

import specs "github.com/opencontainers/runtime-spec/specs-go"

// deniedSyscalls is the denylist of the default seccomp profile. It follows
// the syscalls Docker's default profile leaves out of its allowlist for a
// container without extra capabilities: kernel modules and kexec, clock and
// time setting, mount and namespace manipulation (mount, umount, pivot_root,
// unshare, setns, the new mount API), tracing and cross-process memory
// access (ptrace, process_vm_*, perf_event_open, kcmp), the kernel keyring,
// BPF, userfaultfd, swap, reboot, quotas, NUMA policy, handle-based opens,
// iopl/ioperm and obsolete syscalls. Everything else is allowed: this is a
// denylist, so a syscall added to the kernel later is allowed until listed.
var deniedSyscalls = []string{
	"acct", "add_key", "bpf", "clock_adjtime", "clock_settime", "create_module",
	"delete_module", "finit_module", "fsconfig", "fsmount", "fsopen", "fspick",
	"get_kernel_syms", "get_mempolicy", "init_module", "ioperm", "iopl", "kcmp",
	"kexec_file_load", "kexec_load", "keyctl", "lookup_dcookie", "mbind", "mount",
	"mount_setattr", "move_mount", "move_pages", "name_to_handle_at", "nfsservctl",
	"open_by_handle_at", "open_tree", "perf_event_open", "pivot_root",
	"process_vm_readv", "process_vm_writev", "ptrace", "query_module", "quotactl",
	"quotactl_fd", "reboot", "request_key", "set_mempolicy", "setns", "settimeofday",
	"stime", "swapoff", "swapon", "sysfs", "_sysctl", "umount", "umount2", "unshare",
	"uselib", "userfaultfd", "ustat", "vm86", "vm86old",
}

// defaultSeccomp returns the default profile: allow, except deniedSyscalls,
// which fail with EPERM (as Docker's do).
func defaultSeccomp() *specs.LinuxSeccomp {
	eperm := uint(1)
	s := &specs.LinuxSeccomp{
		DefaultAction: specs.ActAllow,
		Architectures: []specs.Arch{specs.ArchX86_64, specs.ArchX86, specs.ArchX32, specs.ArchAARCH64, specs.ArchARM},
		Syscalls: []specs.LinuxSyscall{{
			Names: deniedSyscalls, Action: specs.ActErrno, ErrnoRet: &eperm,
		}},
	}
	return s
}

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
