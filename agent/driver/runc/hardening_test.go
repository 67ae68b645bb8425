package runc

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"flotilla/agent/driver"
)

// TestSeccompProfileIsDockersAllowlist checks the profile's shape: deny by
// default with EPERM, and no rule that allows a namespace-creating,
// mounting, io_uring, BPF or keyring syscall (clone only with the
// namespace flags masked out).
func TestSeccompProfileIsDockersAllowlist(t *testing.T) {
	p, err := defaultSeccomp()
	if err != nil {
		t.Fatal(err)
	}
	if p.DefaultAction != specs.ActErrno || p.DefaultErrnoRet == nil || *p.DefaultErrnoRet != 1 {
		t.Fatalf("default action %s (errno %v), want SCMP_ACT_ERRNO with EPERM", p.DefaultAction, p.DefaultErrnoRet)
	}
	denied := []string{"unshare", "setns", "mount", "umount2", "pivot_root", "fsopen", "open_tree", "io_uring_setup",
		"io_uring_enter", "io_uring_register", "bpf", "keyctl", "add_key", "kexec_load", "init_module",
		"perf_event_open", "userfaultfd", "clone3"}
	allowed := map[string]bool{}
	for _, sc := range p.Syscalls {
		if sc.Action != specs.ActAllow {
			continue
		}
		for _, n := range sc.Names {
			if n == "clone" {
				if len(sc.Args) != 1 || sc.Args[0].Op != specs.OpMaskedEqual || sc.Args[0].ValueTwo != 0 {
					t.Errorf("clone is allowed without masking namespace flags: %+v", sc.Args)
				}
				continue
			}
			allowed[n] = true
		}
	}
	for _, n := range denied {
		if allowed[n] {
			t.Errorf("%s is allowed", n)
		}
	}
	for _, n := range []string{"read", "write", "execve", "wait4", "socket", "epoll_wait", "openat"} {
		if !allowed[n] {
			t.Errorf("%s is not allowed: ordinary programs would fail", n)
		}
	}
	if slices.Contains(p.Architectures, specs.ArchX32) || !slices.Contains(p.Architectures, specs.ArchX86_64) || !slices.Contains(p.Architectures, specs.ArchX86) {
		t.Errorf("architectures %v, want x86-64 and x86 without x32", p.Architectures)
	}
}

// TestSeccompFollowsCapabilities: as in Docker, --cap-add SYS_NICE allows
// the NUMA syscalls the default set does not.
func TestSeccompFollowsCapabilities(t *testing.T) {
	allows := func(p *specs.LinuxSeccomp, name string) bool {
		for _, sc := range p.Syscalls {
			if sc.Action == specs.ActAllow && slices.Contains(sc.Names, name) {
				return true
			}
		}
		return false
	}
	def, err := defaultSeccomp()
	must(t, err)
	nice, err := seccompFor(append(slices.Clone(defaultCapabilities), "CAP_SYS_NICE"))
	must(t, err)
	if allows(def, "mbind") || !allows(nice, "mbind") {
		t.Errorf("mbind allowed: default %v, with CAP_SYS_NICE %v; want false, true", allows(def, "mbind"), allows(nice, "mbind"))
	}
	s := &specs.Spec{Process: &specs.Process{Capabilities: &specs.LinuxCapabilities{Bounding: defaultCapabilities}},
		Linux: &specs.Linux{Seccomp: def}}
	must(t, applyOptions(s, driver.ContainerOptions{CapAdd: []string{"SYS_NICE"}}, t.TempDir()))
	if !allows(s.Linux.Seccomp, "mbind") {
		t.Errorf("--cap-add SYS_NICE did not extend the profile")
	}
}

func TestResourcesAlwaysLimitPIDs(t *testing.T) {
	for _, c := range []struct{ in, want int64 }{{0, driver.DefaultPIDsLimit}, {-1, driver.DefaultPIDsLimit}, {64, 64}} {
		r := resources(driver.Spec{PIDsLimit: c.in})
		if r.Pids == nil || r.Pids.Limit == nil || *r.Pids.Limit != c.want {
			t.Errorf("PIDsLimit %d: pids %+v, want %d", c.in, r.Pids, c.want)
		}
	}
}

// TestContainerCannotCreateNamespaces runs real containers: unshare of a
// network, user or mount namespace fails with EPERM, ordinary commands
// still work, and the container sees its own cgroup as the root of a
// cgroup namespace.
func TestContainerCannotCreateNamespaces(t *testing.T) {
	needRuntime(t)
	d := newDriver(t, "")
	id := testID("ns")
	create(t, d, baseSpec(id, "sleep", "3600"))
	waitState(t, d, id, func(s driver.Status) bool { return s.State == driver.StateRunning && s.Pid > 0 }, 5*time.Second)
	for _, flag := range []string{"-n", "-U", "-m", "-p", "-i", "-u"} {
		out, code := execOut(t, d, id, "unshare", flag, "true")
		if code == 0 || !strings.Contains(out, "Operation not permitted") {
			t.Errorf("unshare %s inside the container: exit %d %q, want EPERM", flag, code, out)
		}
	}
	if out, code := execOut(t, d, id, "sh", "-c", "echo hi; ls / >/dev/null; sleep 0.1; cat /proc/self/cgroup"); code != 0 || !strings.HasPrefix(out, "hi\n") {
		t.Fatalf("ordinary commands fail under the profile: exit %d %q", code, out)
	} else {
		for _, line := range strings.Split(strings.TrimSpace(out), "\n")[1:] {
			if f := strings.SplitN(line, ":", 3); len(f) == 3 && strings.Contains(f[1], "pids") && f[2] != "/" {
				t.Errorf("the container sees its host cgroup path %q: no cgroup namespace", line)
			}
		}
	}
}

// TestForkBombIsContained runs a fork bomb in a container with a small pid
// limit: the container's pids cgroup never exceeds the limit, the host can
// still start processes and the driver answers, and the container is killed
// and deleted afterwards.
func TestForkBombIsContained(t *testing.T) {
	needRuntime(t)
	d := newDriver(t, "")
	id := testID("bomb")
	const limit = 64
	spec := baseSpec(id, "sleep", "3600")
	spec.PIDsLimit = limit
	create(t, d, spec)
	waitState(t, d, id, func(s driver.Status) bool { return s.State == driver.StateRunning && s.Pid > 0 }, 5*time.Second)
	cg := filepath.Join("/sys/fs/cgroup/pids", CgroupParent, id)
	if b, err := os.ReadFile(filepath.Join(cg, "pids.max")); err != nil || strings.TrimSpace(string(b)) != strconv.Itoa(limit) {
		t.Fatalf("pids.max = %q, %v; want %d", b, err, limit)
	}
	p, err := d.Exec(context.Background(), id, driver.ExecConfig{Cmd: []string{"sh", "-c", "b(){ b|b& }; b >/dev/null 2>&1"}})
	if err != nil {
		t.Fatalf("exec the bomb: %v", err)
	}
	p.Wait()
	peak := 0
	for end := time.Now().Add(2 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		b, err := os.ReadFile(filepath.Join(cg, "pids.current"))
		if err != nil {
			t.Fatalf("read pids.current: %v", err)
		}
		n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		peak = max(peak, n)
		if n > limit {
			t.Fatalf("pids.current = %d, over the limit %d", n, limit)
		}
	}
	t.Logf("peak pids.current during the bomb: %d (limit %d)", peak, limit)
	if peak < limit/2 {
		t.Errorf("the bomb never got near the limit (peak %d): it did not run", peak)
	}
	if out, err := exec.Command("sh", "-c", "echo host-ok").Output(); err != nil || string(out) != "host-ok\n" {
		t.Errorf("the host cannot start processes during the bomb: %q %v", out, err)
	}
	if st, err := d.Inspect(context.Background(), id); err != nil || st.State != driver.StateRunning {
		t.Errorf("Inspect during the bomb = %+v, %v", st, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := d.Stop(ctx, id, time.Second); err != nil {
		t.Fatalf("Stop of the bombed container: %v", err)
	}
	waitState(t, d, id, stopped, 10*time.Second)
	if ids, err := os.ReadFile(filepath.Join(cg, "cgroup.procs")); err == nil && len(strings.TrimSpace(string(ids))) != 0 {
		t.Errorf("processes left in the container's cgroup after stop: %q", ids)
	}
}
