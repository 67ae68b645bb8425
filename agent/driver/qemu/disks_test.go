package qemu

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"flotilla/agent/driver"
	"flotilla/api/errdefs"
)

// diskLines are the tiny image's disk lines in console output out (after
// the n-th ready marker's predecessor: only the last boot's).
func lastBootDisks(out []byte) []string {
	boots := bytes.Split(out, []byte(TinyMarkerInit))
	var lines []string
	for _, l := range strings.Split(string(boots[len(boots)-1]), "\n") {
		if i := strings.Index(l, TinyDiskPrefix); i >= 0 {
			lines = append(lines, strings.TrimSpace(l[i+len(TinyDiskPrefix):]))
		}
	}
	return lines
}

// TestDataDisks gives a kernel-booted VM data disks: qcow2 files made,
// grown, shrunk and removed with qemu-img while it is stopped, refused
// while it runs, and attached at the next start, where the guest sees each
// with its size and serial.
func TestDataDisks(t *testing.T) {
	ti := needTiny(t)
	d := newTestDriver(t, memImages{"tiny": ti.Image})
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
	defer cancel()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	id := fmt.Sprintf("vm-disks-%d", rand.IntN(1e6))
	d1 := driver.Disk{ID: "5d1a0000-0000-4000-8000-00000000d001", Slot: 1, SizeMiB: 64}
	d2 := driver.Disk{ID: "5d1a0000-0000-4000-8000-00000000d002", Slot: 2, SizeMiB: 32}
	spec := driver.Spec{ID: id, Name: "disks", Brand: driver.BrandBhyve, Image: driver.Image{ID: "tiny"}, MemoryMiB: 192, VCPUs: 1,
		Disks: []driver.Disk{d1}}
	t0 := time.Now()
	must(d.Create(ctx, spec))
	t.Cleanup(func() { d.Delete(context.Background(), id) })
	t.Logf("create with a 64 MiB data disk: %s", time.Since(t0).Round(time.Millisecond))
	console := d.ConsoleLogPath(id)
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(console)
			t.Logf("console:\n%s", b)
		}
	})
	virtualMiB := func(dk driver.Disk) int64 {
		t.Helper()
		info, err := d.diskInfo(ctx, d.DataDiskPath(id, dk.ID))
		if err != nil {
			t.Fatalf("disk %s: %v", dk.ID, err)
		}
		if info.Format != "qcow2" {
			t.Fatalf("disk %s is %s, want qcow2", dk.ID, info.Format)
		}
		return info.VirtualSize / mib
	}
	if got := virtualMiB(d1); got != 64 {
		t.Fatalf("data disk is %d MiB, want 64", got)
	}

	must(d.Start(ctx, id))
	st, err := d.Inspect(ctx, id)
	must(err)
	cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", st.Pid))
	args := strings.Split(string(cmdline), "\x00")
	wantDev := fmt.Sprintf("virtio-blk-pci,drive=data1,serial=%s,addr=0x19", DiskSerial(d1.ID))
	wantDrive := "if=none,id=data1,format=qcow2,discard=unmap,file=" + d.DataDiskPath(id, d1.ID)
	if !containsArg(args, wantDev) || !containsArg(args, wantDrive) {
		t.Fatalf("QEMU's command line lacks %q or %q:\n%q", wantDev, wantDrive, args)
	}
	out := waitConsole(t, console, TinyMarkerReady, 1, 60*time.Second)
	// The config drive is vda; the data disk comes after it.
	if got, want := lastBootDisks(out), []string{"vda sectors=", "vdb sectors=131072 serial=" + DiskSerial(d1.ID)}; len(got) != 2 ||
		!strings.HasPrefix(got[0], want[0]) || got[1] != want[1] {
		t.Fatalf("guest disks = %q, want the config drive then %q", got, want[1])
	}

	// While QEMU runs, the disks stay as they are.
	grown := d1
	grown.SizeMiB = 128
	running := spec
	running.Disks = []driver.Disk{grown, d2}
	if err := d.Update(ctx, running); !errdefs.Is(err, errdefs.Conflict) {
		t.Fatalf("Update of a running VM: %v, want Conflict", err)
	}
	if _, err := os.Stat(d.DataDiskPath(id, d2.ID)); !os.IsNotExist(err) {
		t.Fatalf("a disk was made for a running VM: %v", err)
	}
	must(d.Stop(ctx, id, 20*time.Second))

	// Stopped: grow the first, add a second.
	t0 = time.Now()
	must(d.Update(ctx, running))
	t.Logf("update (grow 64->128 MiB, add 32 MiB): %s", time.Since(t0).Round(time.Millisecond))
	if got := virtualMiB(grown); got != 128 {
		t.Fatalf("grown disk is %d MiB, want 128", got)
	}
	if got := virtualMiB(d2); got != 32 {
		t.Fatalf("added disk is %d MiB, want 32", got)
	}
	must(d.Start(ctx, id))
	out = waitConsole(t, console, TinyMarkerReady, 2, 60*time.Second)
	if got := lastBootDisks(out); len(got) != 3 || got[1] != "vdb sectors=262144 serial="+DiskSerial(d1.ID) ||
		got[2] != "vdc sectors=65536 serial="+DiskSerial(d2.ID) {
		t.Fatalf("guest disks after the update = %q", got)
	}
	must(d.Stop(ctx, id, 20*time.Second))

	// Remove the first, shrink the second; the second keeps its slot.
	shrunk := d2
	shrunk.SizeMiB = 16
	spec.Disks = []driver.Disk{shrunk}
	must(d.Update(ctx, spec))
	if _, err := os.Stat(d.DataDiskPath(id, d1.ID)); !os.IsNotExist(err) {
		t.Fatalf("the removed disk's file is still there: %v", err)
	}
	if got := virtualMiB(shrunk); got != 16 {
		t.Fatalf("shrunk disk is %d MiB, want 16", got)
	}
	files, _ := filepath.Glob(filepath.Join(d.dir(id), "disk-*"))
	if len(files) != 1 {
		t.Fatalf("disk files %v, want only the second disk's", files)
	}
	must(d.Start(ctx, id))
	st, err = d.Inspect(ctx, id)
	must(err)
	cmdline, _ = os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", st.Pid))
	if !strings.Contains(string(cmdline), "drive=data2,serial="+DiskSerial(d2.ID)+",addr=0x1a") || strings.Contains(string(cmdline), "data1") {
		t.Fatalf("QEMU's command line after the delete: %q", cmdline)
	}
	out = waitConsole(t, console, TinyMarkerReady, 3, 60*time.Second)
	if got := lastBootDisks(out); len(got) != 2 || got[1] != "vdb sectors=32768 serial="+DiskSerial(d2.ID) {
		t.Fatalf("guest disks after the delete = %q", got)
	}

	// Bad disks are refused before anything is made.
	for _, bad := range [][]driver.Disk{
		{{ID: "a,b", Slot: 1, SizeMiB: 1}},
		{{ID: "x", Slot: 0, SizeMiB: 1}},
		{{ID: "x", Slot: 1, SizeMiB: 0}},
		{{ID: "x", Slot: 1, SizeMiB: 1}, {ID: "y", Slot: 1, SizeMiB: 1}},
	} {
		if err := checkDisks(bad); !errdefs.Is(err, errdefs.Invalid) {
			t.Errorf("checkDisks(%+v) = %v, want Invalid", bad, err)
		}
	}

	// Delete removes the disks with the VM.
	must(d.Delete(ctx, id))
	if _, err := os.Stat(d.DataDiskPath(id, d2.ID)); !os.IsNotExist(err) {
		t.Fatalf("disk left after Delete: %v", err)
	}
}

func containsArg(args []string, want string) bool {
	for _, a := range args {
		if a == want {
			return true
		}
	}
	return false
}
