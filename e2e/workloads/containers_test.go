package workloads

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"flotilla/agent/network"
)

// runcState is the part of `runc state` the tests read.
type runcState struct {
	Pid    int    `json:"pid"`
	Status string `json:"status"`
}

// runcStateOf asks runc itself about container id on the dev node; ok is
// false when runc does not know it.
func (c *cloud) runcStateOf(t *testing.T, id string) (runcState, bool) {
	t.Helper()
	root := filepath.Join(c.Data, "nodes", "node-1", "runc", "runc")
	out, err := exec.Command("runc", "--root", root, "state", id).Output()
	if err != nil {
		return runcState{}, false
	}
	var s runcState
	if err := json.Unmarshal(out, &s); err != nil {
		t.Fatalf("runc state %s: %v\n%s", id, err, out)
	}
	return s, true
}

// runningPid is the pid of container id's init process, which runc must
// report running and which must be alive.
func (c *cloud) runningPid(t *testing.T, id string) int {
	t.Helper()
	s, ok := c.runcStateOf(t, id)
	if !ok || s.Status != "running" || !ProcessAlive(s.Pid) {
		t.Fatalf("runc state of %s = %+v (known %v), want a running, live process", id, s, ok)
	}
	return s.Pid
}

func cgroupFile(ctrl, id, file string) string {
	return filepath.Join("/sys/fs/cgroup", ctrl, "flotilla", id, file)
}

// TestContainers drives busybox containers under runc through CloudAPI with
// the triton CLI and checks each step on the host.
func TestContainers(t *testing.T) {
	c := startDev(t, "c", "runc")
	pub := c.addNetwork(t, "wl-pub", "")
	other := c.addAccount(t, "wl2")
	p1 := c.addNetwork(t, "p1", c.Owner.Login)
	p2 := c.addNetwork(t, "p2", other.Login)

	var c1, c2 inst
	ok := t.Run("CreateRunsAndIsReachable", func(t *testing.T) {
		var took time.Duration
		c1, took = c.createAs(t, c.Owner, "c1", "busybox@1.36", "g1-nano-256M", "--network", pub.Name)
		figure("container create -w to running (triton)", "%.0f ms", float64(took.Milliseconds()))
		c2, _ = c.createAs(t, c.Owner, "c2", "busybox@1.36", "g1-micro-512M", "--network", pub.Name)
		for _, in := range []inst{c1, c2} {
			if !subnetContains(t, pub.Subnet, in.PrimaryIP) {
				t.Errorf("%s has IP %s, not on %s (%s)", in.Name, in.PrimaryIP, pub.Name, pub.Subnet)
			}
			pid := c.runningPid(t, in.ID)
			if err := Ping("", in.PrimaryIP, 10*time.Second); err != nil {
				t.Errorf("the host cannot ping %s: %v", in.Name, err)
			}
			// Its supervisor is the shim's own binary, next to flotilla's.
			if exe := shimExe(t, pid); filepath.Base(exe) != "flotilla-shim" {
				t.Errorf("%s is supervised by %s, want flotilla-shim", in.Name, exe)
			}
		}
	})
	if !ok {
		t.FailNow()
	}

	t.Run("SameNetworkReachEachOther", func(t *testing.T) {
		if err := Ping(network.NetNSName(c1.ID), c2.PrimaryIP, 10*time.Second); err != nil {
			t.Errorf("c1 cannot reach c2: %v", err)
		}
		if err := Ping(network.NetNSName(c2.ID), c1.PrimaryIP, 10*time.Second); err != nil {
			t.Errorf("c2 cannot reach c1: %v", err)
		}
	})

	t.Run("MemoryLimitIsThePackages", func(t *testing.T) {
		for _, tc := range []struct {
			in   inst
			want int64
		}{{c1, 256 << 20}, {c2, 512 << 20}} {
			b, err := os.ReadFile(cgroupFile("memory", tc.in.ID, "memory.limit_in_bytes"))
			if err != nil {
				t.Fatal(err)
			}
			if got, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); got != tc.want {
				t.Errorf("%s (%d MiB package): memory.limit_in_bytes = %d, want %d", tc.in.Name, tc.in.Memory, got, tc.want)
			}
		}
	})

	t.Run("PrivateNetworksAreIsolatedBetweenAccounts", func(t *testing.T) {
		mine, _ := c.createAs(t, c.Owner, "priv1", "busybox@1.36", "g1-nano-256M", "--network", p1.Name)
		theirs, _ := c.createAs(t, other, "priv2", "busybox@1.36", "g1-nano-256M", "--network", p2.Name)
		t.Cleanup(func() {
			c.tritonAs(c.Owner, "inst", "rm", "-f", "-w", "priv1")
			c.tritonAs(other, "inst", "rm", "-f", "-w", "priv2")
		})
		if !subnetContains(t, p1.Subnet, mine.PrimaryIP) || !subnetContains(t, p2.Subnet, theirs.PrimaryIP) {
			t.Fatalf("IPs %s and %s are not on %s and %s", mine.PrimaryIP, theirs.PrimaryIP, p1.Subnet, p2.Subnet)
		}
		// Each reaches its own gateway, so a failure below is isolation,
		// not a container without a network.
		for _, x := range []struct {
			in inst
			n  netw
		}{{mine, p1}, {theirs, p2}} {
			if err := Ping(network.NetNSName(x.in.ID), gatewayOf(t, x.n.Subnet), 10*time.Second); err != nil {
				t.Fatalf("%s cannot reach its own gateway: %v", x.in.Name, err)
			}
		}
		if err := PingFails(network.NetNSName(mine.ID), theirs.PrimaryIP, 2); err != nil {
			t.Error(err)
		}
		if err := PingFails(network.NetNSName(theirs.ID), mine.PrimaryIP, 2); err != nil {
			t.Error(err)
		}
		if err := PingFails(network.NetNSName(theirs.ID), c1.PrimaryIP, 1); err != nil {
			t.Errorf("a private network reaches the public one: %v", err)
		}
		// And the other account cannot even name my network.
		_, stderr, err := c.tritonAs(other, "inst", "create", "-w", "-n", "intruder", "--network", p1.Name, "busybox@1.36", "g1-nano-256M")
		if err == nil {
			c.tritonAs(other, "inst", "rm", "-f", "-w", "intruder")
			t.Errorf("account %s created an instance on %s's private network", other.Login, c.Owner.Login)
		} else if !strings.Contains(strings.ToLower(stderr), "network") {
			t.Errorf("create on another account's network failed without naming the network: %s", stderr)
		}
	})

	t.Run("StopStartRebootActOnTheProcess", func(t *testing.T) {
		pid := c.runningPid(t, c1.ID)
		c.tri(t, "inst", "stop", "-w", "c1")
		if in := c.getAs(t, c.Owner, "c1"); in.State != "stopped" {
			t.Fatalf("c1 is %s after stop -w", in.State)
		}
		if !WaitFor(5*time.Second, func() bool { return !ProcessAlive(pid) }) {
			t.Fatalf("c1's process %d still runs after stop", pid)
		}
		if s, ok := c.runcStateOf(t, c1.ID); ok && s.Status == "running" {
			t.Fatalf("runc still reports c1 running: %+v", s)
		}
		c.tri(t, "inst", "start", "-w", "c1")
		pid2 := c.runningPid(t, c1.ID)
		if pid2 == pid {
			t.Fatalf("c1 runs the same process %d after stop and start", pid)
		}
		if err := Ping("", c1.PrimaryIP, 10*time.Second); err != nil {
			t.Errorf("c1 unreachable after start: %v", err)
		}
		c.tri(t, "inst", "reboot", "-w", "c1")
		var pid3 int
		if !WaitFor(20*time.Second, func() bool {
			s, ok := c.runcStateOf(t, c1.ID)
			pid3 = s.Pid
			return ok && s.Status == "running" && s.Pid != pid2 && ProcessAlive(s.Pid)
		}) {
			t.Fatalf("c1 still runs process %d (or none) after reboot", pid2)
		}
		if ProcessAlive(pid2) {
			t.Errorf("the pre-reboot process %d is still alive beside %d", pid2, pid3)
		}
		c.waitState(t, c.Owner, "c1", "running", 10*time.Second)
		if err := Ping("", c1.PrimaryIP, 10*time.Second); err != nil {
			t.Errorf("c1 unreachable after reboot: %v", err)
		}
	})

	t.Run("DeleteLeavesNothing", func(t *testing.T) {
		for _, in := range []inst{c1, c2} {
			pid := c.runningPid(t, in.ID)
			c.tri(t, "inst", "rm", "-f", "-w", in.Name)
			if err := containerGone(c, in.ID, pid); err != nil {
				t.Errorf("%s: %v", in.Name, err)
			}
		}
	})
}

// containerGone lists what of container id is still on the host.
func containerGone(c *cloud, id string, pid int) error {
	var left []string
	if ProcessAlive(pid) {
		left = append(left, fmt.Sprintf("process %d", pid))
	}
	if v := network.VethName(id, 0); LinkExists(v) {
		left = append(left, "veth "+v)
	}
	if ns := network.NetNSName(id); fileExists(network.NetNSPath(ns)) {
		left = append(left, "netns "+ns)
	}
	for _, ctrl := range []string{"memory", "cpu", "pids", "freezer", "devices", "blkio", "cpuset", "cpuacct"} {
		if p := filepath.Join("/sys/fs/cgroup", ctrl, "flotilla", id); fileExists(p) {
			left = append(left, "cgroup "+p)
		}
	}
	for _, m := range MountsContaining(id) {
		left = append(left, "mount "+m)
	}
	if p := filepath.Join(c.Data, "nodes", "node-1", "runc", "containers", id); fileExists(p) {
		left = append(left, "bundle "+p)
	}
	if len(left) > 0 {
		return fmt.Errorf("left behind after delete: %s", strings.Join(left, ", "))
	}
	return nil
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// shimExe returns the executable of the parent of process pid (a
// container's init: its shim).
func shimExe(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "PPid:"); ok {
			exe, err := os.Readlink(filepath.Join("/proc", strings.TrimSpace(v), "exe"))
			if err != nil {
				t.Fatal(err)
			}
			return exe
		}
	}
	t.Fatalf("no PPid in /proc/%d/status", pid)
	return ""
}
