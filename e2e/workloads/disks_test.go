package workloads

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"flotilla/agent/driver/qemu"
)

// disk is what the tests read of `triton inst disk get` and list -j (the
// CLI leaves out the state).
type disk struct {
	ID      string `json:"id"`
	Size    int64  `json:"size"`
	Boot    bool   `json:"boot"`
	PCISlot string `json:"pci_slot"`
}

func (c *cloud) disks(t *testing.T, name string) []disk {
	t.Helper()
	var out []disk
	for _, line := range strings.Split(strings.TrimSpace(c.tri(t, "inst", "disk", "list", "-j", name)), "\n") {
		if line == "" {
			continue
		}
		var d disk
		if err := json.Unmarshal([]byte(line), &d); err != nil {
			t.Fatalf("triton inst disk list -j: %v\n%s", err, line)
		}
		out = append(out, d)
	}
	return out
}

func (c *cloud) diskGet(t *testing.T, name, id string) disk {
	t.Helper()
	var d disk
	if err := json.Unmarshal([]byte(c.tri(t, "inst", "disk", "get", name, id)), &d); err != nil {
		t.Fatal(err)
	}
	return d
}

// qcow2MiB is the virtual size of a qcow2 file, read with qemu-img.
func qcow2MiB(t *testing.T, path string) int64 {
	t.Helper()
	out, err := exec.Command("qemu-img", "info", "-U", "--output=json", path).Output()
	if err != nil {
		t.Fatalf("qemu-img info %s: %v", path, err)
	}
	var info struct {
		VirtualSize int64  `json:"virtual-size"`
		Format      string `json:"format"`
	}
	if err := json.Unmarshal(out, &info); err != nil || info.Format != "qcow2" {
		t.Fatalf("qemu-img info %s: %v %s", path, err, out)
	}
	return info.VirtualSize >> 20
}

// guestDisks are the disk lines of the tiny VM's last boot on the console.
func guestDisks(con string) []string {
	boots := strings.Split(con, qemu.TinyMarkerInit)
	var out []string
	for _, l := range strings.Split(boots[len(boots)-1], "\n") {
		if _, rest, ok := strings.Cut(l, qemu.TinyDiskPrefix); ok {
			out = append(out, strings.TrimSpace(rest))
		}
	}
	return out
}

// TestVMDisks drives the disks of a tiny-vm on a flexible-disk package
// with the triton CLI on a QEMU node: create --disk, disk add -w, list,
// get, resize -w, delete -w on the stopped VM, all refused while it runs;
// the next start attaches the disks and the guest sees their sizes.
func TestVMDisks(t *testing.T) {
	c := startDev(t, "vdisk", "qemu")
	pub := c.addNetwork(t, "vdisk-pub", "")
	c.admin(t, "package", "create", "--name", "flex-1G", "--memory", "256", "--disk", "1024", "--flexible-disk")

	t0 := time.Now()
	in, _ := c.createAs(t, c.Owner, "vd", "tiny-vm@1.0", "flex-1G", "--network", pub.Name, "--disk", `{"size":64}`)
	figure("vm create --disk -w to running (triton)", "%.0f ms", float64(time.Since(t0).Milliseconds()))
	list := c.disks(t, "vd")
	if len(list) != 1 || list[0].Size != 64 || list[0].Boot || list[0].PCISlot != "0:25:0" {
		t.Fatalf("disks after create --disk = %+v, want one 64 MiB data disk at 0:25:0 (a kernel-booted VM has no boot disk)", list)
	}
	first := list[0].ID
	c.waitConsole(t, in.ID, qemu.TinyMarkerReady, 1, 90*time.Second)
	if got := guestDisks(c.console(in.ID)); len(got) != 2 || got[1] != "vdb sectors=131072 serial="+qemu.DiskSerial(first) {
		t.Fatalf("the guest sees disks %q, want the config drive then 64 MiB vdb", got)
	}

	t.Run("RefusedWhileRunning", func(t *testing.T) {
		for _, args := range [][]string{
			{"inst", "disk", "add", "vd", "32"},
			{"inst", "disk", "resize", "vd", first, "128"},
			{"inst", "disk", "delete", "vd", first},
		} {
			stderr := c.triFails(t, c.Owner, args...)
			if !strings.Contains(stderr, "is running: stop it before") {
				t.Errorf("triton %s: %s", strings.Join(args, " "), stderr)
			}
		}
		if n := len(c.disks(t, "vd")); n != 1 {
			t.Fatalf("%d disks after refused changes", n)
		}
	})

	c.tri(t, "inst", "stop", "-w", "vd")
	var second string
	ok := t.Run("ChangeWhileStopped", func(t *testing.T) {
		t0 := time.Now()
		out := c.tri(t, "inst", "disk", "add", "-w", "vd", "128")
		figure("disk add -w, stopped VM (triton)", "%.0f ms", float64(time.Since(t0).Milliseconds()))
		if !strings.Contains(out, "Added disk") {
			t.Fatalf("disk add -w printed %q", out)
		}
		list := c.disks(t, "vd")
		if len(list) != 2 || list[1].Size != 128 || list[1].PCISlot != "0:26:0" {
			t.Fatalf("disks after add = %+v", list)
		}
		second = list[1].ID
		if d := c.diskGet(t, "vd", second[:8]); d.ID != second || d.Size != 128 {
			t.Fatalf("disk get by short id = %+v", d)
		}
		if got := qcow2MiB(t, c.vmDir(in.ID)+"/disk-"+second+".qcow2"); got != 128 {
			t.Fatalf("the added disk's qcow2 is %d MiB", got)
		}

		t0 = time.Now()
		out = c.tri(t, "inst", "disk", "resize", "-w", "vd", first, "96")
		figure("disk resize -w, stopped VM (triton)", "%.0f ms", float64(time.Since(t0).Milliseconds()))
		if !strings.Contains(out, "Resized disk") {
			t.Fatalf("disk resize -w printed %q", out)
		}
		if got := qcow2MiB(t, c.vmDir(in.ID)+"/disk-"+first+".qcow2"); got != 96 {
			t.Fatalf("the resized disk's qcow2 is %d MiB, want 96", got)
		}
		if stderr := c.triFails(t, c.Owner, "inst", "disk", "resize", "vd", second, "64"); !strings.Contains(stderr, "dangerous-allow-shrink") {
			t.Errorf("a shrink without --dangerous-allow-shrink: %s", stderr)
		}
		c.tri(t, "inst", "disk", "resize", "-w", "--dangerous-allow-shrink", "vd", second, "64")
		if got := qcow2MiB(t, c.vmDir(in.ID)+"/disk-"+second+".qcow2"); got != 64 {
			t.Fatalf("the shrunk disk's qcow2 is %d MiB, want 64", got)
		}
		if stderr := c.triFails(t, c.Owner, "inst", "disk", "add", "vd", "2000"); !strings.Contains(stderr, "only 864 MiB remain") {
			t.Errorf("a disk past the package's disk: %s", stderr)
		}

		t0 = time.Now()
		out = c.tri(t, "inst", "disk", "delete", "-w", "vd", second)
		figure("disk delete -w, stopped VM (triton)", "%.0f ms", float64(time.Since(t0).Milliseconds()))
		if !strings.Contains(out, "Deleted disk") {
			t.Fatalf("disk delete -w printed %q", out)
		}
		if _, err := os.Stat(c.vmDir(in.ID) + "/disk-" + second + ".qcow2"); !os.IsNotExist(err) {
			t.Fatalf("the deleted disk's file is still there: %v", err)
		}
		if stderr := c.triFails(t, c.Owner, "inst", "disk", "get", "vd", second); !strings.Contains(stderr, "ResourceNotFound") {
			t.Errorf("disk get of a deleted disk: %s", stderr)
		}

		// "remaining" takes what the package's 1024 MiB leave (-w cannot
		// wait for it: the CLI compares the size with "remaining").
		c.tri(t, "inst", "disk", "add", "vd", "remaining")
		if !WaitFor(60*time.Second, func() bool {
			list = c.disks(t, "vd")
			if len(list) != 2 || list[1].Size != 1024-96 {
				return false
			}
			_, err := os.Stat(c.vmDir(in.ID) + "/disk-" + list[1].ID + ".qcow2")
			return err == nil
		}) {
			t.Fatalf("disks after add remaining = %+v", list)
		}
		if got := qcow2MiB(t, c.vmDir(in.ID)+"/disk-"+list[1].ID+".qcow2"); got != 1024-96 {
			t.Fatalf("the remaining disk's qcow2 is %d MiB, want %d", got, 1024-96)
		}
	})
	if !ok {
		t.FailNow()
	}

	t.Run("StartAttachesThem", func(t *testing.T) {
		list := c.disks(t, "vd")
		t0 := time.Now()
		c.tri(t, "inst", "start", "-w", "vd")
		c.waitConsole(t, in.ID, qemu.TinyMarkerReady, 2, 90*time.Second)
		figure("vm start -w to ready marker with 2 data disks", "%.0f ms", float64(time.Since(t0).Milliseconds()))
		want := []string{
			"vdb sectors=" + fmt.Sprint(96*2048) + " serial=" + qemu.DiskSerial(first),
			"vdc sectors=" + fmt.Sprint(list[1].Size*2048) + " serial=" + qemu.DiskSerial(list[1].ID),
		}
		if got := guestDisks(c.console(in.ID)); len(got) != 3 || got[1] != want[0] || got[2] != want[1] {
			t.Fatalf("the guest sees disks %q, want the config drive then %q", got, want)
		}
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", c.qemuPid(t, in.ID)))
		for _, dk := range list {
			if !strings.Contains(string(cmdline), "disk-"+dk.ID+".qcow2") {
				t.Errorf("QEMU's command line lacks disk %s", dk.ID)
			}
		}
		if strings.Contains(string(cmdline), second) {
			t.Errorf("QEMU's command line still has the deleted disk %s", second)
		}
	})
}
