package qemu

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"flotilla/agent/driver"
	"flotilla/api/errdefs"
	"flotilla/internal/testenv"
)

// qemuIO runs qemu-io commands on a qcow2 image and reports whether they
// succeeded (a read -P fails when the data differs).
func qemuIO(t *testing.T, disk string, cmds ...string) bool {
	t.Helper()
	args := []string{"-f", "qcow2"}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	out, err := exec.Command("qemu-io", append(args, disk)...).CombinedOutput()
	if strings.Contains(string(out), "Pattern verification failed") {
		return false
	}
	if err != nil {
		t.Fatalf("qemu-io %v: %v\n%s", cmds, err, out)
	}
	return true
}

// TestSnapshotsRevertTheDisk takes qcow2 snapshots of a VM's disk (the
// overlay Create makes over a disk-format image), refused while QEMU runs
// it, and reverts to them.
func TestSnapshotsRevertTheDisk(t *testing.T) {
	needQEMU(t)
	testenv.NeedCommand(t, "qemu-io", "qemu-utils")
	base := filepath.Join(t.TempDir(), "base.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", base, "16M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v\n%s", err, out)
	}
	img, err := NewVMImage(VMFiles{Disk: base})
	if err != nil {
		t.Fatal(err)
	}
	d := newTestDriver(t, memImages{"disk": img})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	id := "vm-snap"
	must(d.Create(ctx, driver.Spec{ID: id, Brand: driver.BrandBhyve, Image: driver.Image{ID: "disk"}, MemoryMiB: 64, DiskMiB: 16}))
	t.Cleanup(func() { d.Delete(context.Background(), id) })
	disk := filepath.Join(d.dir(id), FileDisk)

	// QEMU has the disk open (the blank disk boots nothing, but QEMU runs).
	must(d.Start(ctx, id))
	if _, err := d.CreateSnapshot(ctx, id, "one"); !errdefs.Is(err, errdefs.Conflict) {
		t.Fatalf("snapshot of a running VM: %v, want Conflict", err)
	}
	if list, err := d.Snapshots(ctx, id); err != nil || len(list) != 0 {
		t.Fatalf("Snapshots of a running VM = %+v, %v", list, err)
	}
	must(d.Stop(ctx, id, time.Second))

	if !qemuIO(t, disk, "write -P 0xaa 0 64k") {
		t.Fatal("qemu-io write failed")
	}
	info, err := d.CreateSnapshot(ctx, id, "one")
	must(err)
	if info.Name != "one" || info.Created.IsZero() {
		t.Fatalf("CreateSnapshot = %+v", info)
	}
	if _, err := d.CreateSnapshot(ctx, id, "one"); !errdefs.Is(err, errdefs.Conflict) {
		t.Fatalf("a second snapshot one: %v, want Conflict", err)
	}
	qemuIO(t, disk, "write -P 0xbb 0 64k")
	if !qemuIO(t, disk, "read -P 0xbb 0 64k") {
		t.Fatal("the write after the snapshot is not on the disk")
	}
	if err := d.RestoreSnapshot(ctx, id, "nope"); !errdefs.Is(err, errdefs.NotFound) {
		t.Fatalf("restore of an unknown snapshot: %v, want NotFound", err)
	}
	must(d.RestoreSnapshot(ctx, id, "one"))
	if !qemuIO(t, disk, "read -P 0xaa 0 64k") {
		t.Fatal("the disk does not read as at the snapshot after RestoreSnapshot")
	}
	list, err := d.Snapshots(ctx, id)
	if err != nil || len(list) != 1 || list[0].Name != "one" {
		t.Fatalf("Snapshots = %+v, %v", list, err)
	}
	// The VM still boots from its disk after all this.
	must(d.Start(ctx, id))
	if err := d.DeleteSnapshot(ctx, id, "one"); !errdefs.Is(err, errdefs.Conflict) {
		t.Fatalf("deleting a snapshot of a running VM: %v, want Conflict", err)
	}
	must(d.Stop(ctx, id, time.Second))
	must(d.DeleteSnapshot(ctx, id, "one"))
	must(d.DeleteSnapshot(ctx, id, "one"))
	if list, err := d.Snapshots(ctx, id); err != nil || len(list) != 0 {
		t.Fatalf("Snapshots after delete = %+v, %v", list, err)
	}

	// A VM booted from a kernel has no disk to snapshot.
	kid := "vm-kernel"
	must(os.MkdirAll(d.dir(kid), 0o755))
	must(d.saveState(instanceState{Spec: driver.Spec{ID: kid, Brand: driver.BrandBhyve}, Format: FormatKernel}))
	if _, err := d.CreateSnapshot(ctx, kid, "one"); !errdefs.Is(err, errdefs.Invalid) {
		t.Fatalf("snapshot of a kernel VM: %v, want Invalid", err)
	}
	if _, err := d.CreateSnapshot(ctx, "vm-none", "one"); !errdefs.Is(err, errdefs.NotFound) {
		t.Fatalf("snapshot of an unknown VM: %v, want NotFound", err)
	}
}
