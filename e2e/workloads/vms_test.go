package workloads

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"flotilla/agent/driver/qemu"
	"flotilla/agent/network"
)

// vmDir is the qemu driver's directory of instance id on the dev node.
func (c *cloud) vmDir(id string) string {
	return filepath.Join(c.Data, "nodes", "node-1", "qemu", "instances", id)
}

func (c *cloud) console(id string) string {
	b, _ := os.ReadFile(filepath.Join(c.vmDir(id), "console.log"))
	return string(b)
}

// waitConsole waits until the console of id holds marker n times.
func (c *cloud) waitConsole(t *testing.T, id, marker string, n int, within time.Duration) {
	t.Helper()
	if !WaitFor(within, func() bool { return strings.Count(c.console(id), marker) >= n }) {
		t.Fatalf("console of %s does not show %q %d time(s) within %s:\n%s", id, marker, n, within, c.console(id))
	}
}

// qemuPid is the pid of id's QEMU, which must be alive.
func (c *cloud) qemuPid(t *testing.T, id string) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(c.vmDir(id), "qemu.pid"))
	if err != nil {
		t.Fatalf("no qemu.pid for %s: %v", id, err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	if !ProcessAlive(pid) {
		t.Fatalf("qemu.pid of %s names %d, which is not alive", id, pid)
	}
	return pid
}

// accelOf is the accelerator QEMU pid runs with (from its command line).
func accelOf(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	for _, arg := range strings.Split(string(b), "\x00") {
		if _, a, ok := strings.Cut(arg, "accel="); ok {
			a, _, _ = strings.Cut(a, ",")
			return a
		}
	}
	return "unknown"
}

// TestVMs drives tiny-vm instances under QEMU through CloudAPI with the
// triton CLI: metadata reaches the guest, the host reaches the guest, stop
// is an ACPI power-off, and delete leaves nothing. It reports the time to
// running and to the guest's ready marker.
func TestVMs(t *testing.T) {
	c := startDev(t, "v", "qemu")
	pub := c.addNetwork(t, "wl-vm", "")
	key, err := os.ReadFile(c.Owner.Pub)
	if err != nil {
		t.Fatal(err)
	}

	var v1 inst
	var toRunning, toReady []time.Duration
	ok := t.Run("CreateBootsWithMetadata", func(t *testing.T) {
		t0 := time.Now()
		var took time.Duration
		v1, took = c.createAs(t, c.Owner, "v1", "tiny-vm@1.0", "g1-nano-256M", "--network", pub.Name,
			"-m", "foo=bar", "-m", "user-script=echo hello-from-user-script")
		toRunning = append(toRunning, took)
		if v1.Brand != "bhyve" && v1.Brand != "kvm" {
			t.Errorf("brand %q, want bhyve or kvm", v1.Brand)
		}
		c.waitConsole(t, v1.ID, qemu.TinyMarkerReady, 1, 90*time.Second)
		toReady = append(toReady, time.Since(t0))
		// The user-script runs in the background beside the ready marker.
		c.waitConsole(t, v1.ID, "FLOTILLA-USER: hello-from-user-script", 1, 30*time.Second)
		con := c.console(v1.ID)
		for _, want := range []string{
			qemu.TinyMarkerInit,
			qemu.TinyMetaPrefix + "foo=bar",
			qemu.TinyMetaPrefix + "root_authorized_keys=" + strings.TrimSpace(string(key)),
			qemu.TinyNetPrefix + "eth0 " + v1.PrimaryIP + "/24 gw=" + gatewayOf(t, pub.Subnet),
		} {
			if !strings.Contains(con, want) {
				t.Errorf("console lacks %q:\n%s", want, con)
			}
		}
		if err := Ping("", v1.PrimaryIP, 20*time.Second); err != nil {
			t.Errorf("the host cannot ping v1: %v", err)
		}
		figure("vm accelerator", "%s", accelOf(c.qemuPid(t, v1.ID)))
	})
	if !ok {
		t.FailNow()
	}

	t.Run("StopIsACPIAndStartBootsAgain", func(t *testing.T) {
		pid := c.qemuPid(t, v1.ID)
		c.tri(t, "inst", "stop", "-w", "v1")
		if in := c.getAs(t, c.Owner, "v1"); in.State != "stopped" {
			t.Fatalf("v1 is %s after stop -w", in.State)
		}
		if !strings.Contains(c.console(v1.ID), qemu.TinyPowerButton) {
			t.Errorf("console does not show %q: the stop was not an ACPI power-off\n%s", qemu.TinyPowerButton, c.console(v1.ID))
		}
		if !WaitFor(5*time.Second, func() bool { return !ProcessAlive(pid) }) {
			t.Fatalf("qemu %d still runs after stop", pid)
		}
		c.tri(t, "inst", "start", "-w", "v1")
		if c.qemuPid(t, v1.ID) == pid {
			t.Fatal("the same QEMU runs after stop and start")
		}
		c.waitConsole(t, v1.ID, qemu.TinyMarkerReady, 2, 90*time.Second)
		if err := Ping("", v1.PrimaryIP, 20*time.Second); err != nil {
			t.Errorf("v1 unreachable after start: %v", err)
		}
	})

	t.Run("DeleteLeavesNothing", func(t *testing.T) {
		pid := c.qemuPid(t, v1.ID)
		c.tri(t, "inst", "rm", "-f", "-w", "v1")
		if err := vmGone(c, v1.ID, pid); err != nil {
			t.Error(err)
		}
	})

	// A few more boots for the figures: create -w to running, and create to
	// the guest's ready marker.
	t.Run("BootFigures", func(t *testing.T) {
		for i := range 2 {
			name := fmt.Sprintf("vb%d", i)
			t0 := time.Now()
			in, took := c.createAs(t, c.Owner, name, "tiny-vm@1.0", "g1-nano-256M", "--network", pub.Name)
			toRunning = append(toRunning, took)
			c.waitConsole(t, in.ID, qemu.TinyMarkerReady, 1, 90*time.Second)
			toReady = append(toReady, time.Since(t0))
			pid := c.qemuPid(t, in.ID)
			c.tri(t, "inst", "rm", "-f", "-w", name)
			if err := vmGone(c, in.ID, pid); err != nil {
				t.Error(err)
			}
		}
	})
	if len(toReady) > 0 {
		figure("vm create -w to running (triton) p50", "%s over %d (%s)", p50(toRunning), len(toRunning), msList(toRunning))
		figure("vm create to ready marker p50", "%s over %d (%s)", p50(toReady), len(toReady), msList(toReady))
		t.Logf("VM create to running: %s; create to ready marker: %s", msList(toRunning), msList(toReady))
	}
}

// vmGone lists what of VM id is still on the host.
func vmGone(c *cloud, id string, pid int) error {
	var left []string
	if ProcessAlive(pid) {
		left = append(left, fmt.Sprintf("qemu process %d", pid))
	}
	if tap := network.TapName(id, 0); LinkExists(tap) {
		left = append(left, "tap "+tap)
	}
	if p := filepath.Join(c.vmDir(id), "qmp.sock"); fileExists(p) {
		left = append(left, "socket "+p)
	}
	if p := c.vmDir(id); fileExists(p) {
		left = append(left, "instance dir "+p)
	}
	if len(left) > 0 {
		return fmt.Errorf("left behind after delete: %s", strings.Join(left, ", "))
	}
	return nil
}

func p50(ds []time.Duration) string {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2].Round(time.Millisecond).String()
}

func msList(ds []time.Duration) string {
	var parts []string
	for _, d := range ds {
		parts = append(parts, strconv.FormatInt(d.Milliseconds(), 10)+" ms")
	}
	return strings.Join(parts, ", ")
}
