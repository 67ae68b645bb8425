package qemu

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"flotilla/agent/driver"
	"flotilla/api/errdefs"
)

// A VM's data disks (driver.Spec.Disks) are qcow2 files disk-<id>.qcow2 in
// its directory, made, resized and removed with qemu-img while QEMU is not
// running, and attached at start as virtio-blk devices at fixed PCI slots
// (driver.DiskPCISlot of the disk's slot), so a disk keeps its place in the
// guest whatever is added or removed around it. Each carries its id
// (without dashes, cut to virtio's 20 bytes) as its serial.
const (
	dataDiskPrefix = "disk-"
	dataDiskSuffix = ".qcow2"
)

// DiskSerial is the serial a guest reads for the data disk id
// (/sys/block/vdX/serial).
func DiskSerial(id string) string {
	s := strings.ReplaceAll(id, "-", "")
	if len(s) > 20 {
		s = s[:20]
	}
	return s
}

func (d *Driver) dataDiskPath(id, diskID string) string {
	return filepath.Join(d.dir(id), dataDiskPrefix+diskID+dataDiskSuffix)
}

// DataDiskPath is the file of instance id's data disk diskID.
func (d *Driver) DataDiskPath(id, diskID string) string { return d.dataDiskPath(id, diskID) }

func checkDisks(disks []driver.Disk) error {
	seen := map[int]bool{}
	for _, dk := range disks {
		switch {
		case !validID.MatchString(dk.ID):
			return errdefs.InvalidArgument("disk id %q: use letters, digits, '.', '_' and '-'", dk.ID)
		case dk.Slot < 1 || dk.Slot > 7 || seen[dk.Slot]:
			return errdefs.InvalidArgument("disk %s: slot %d is not a free data disk slot (1 to 7)", dk.ID, dk.Slot)
		case dk.SizeMiB <= 0:
			return errdefs.InvalidArgument("disk %s: size %d MiB must be positive", dk.ID, dk.SizeMiB)
		}
		seen[dk.Slot] = true
	}
	return nil
}

// syncDisks makes the data disk files of the stopped VM in dir match
// disks: it creates the missing ones, resizes those of another size (a
// shrink too: the control plane allows one only when asked to) and
// removes the files of disks no longer wanted.
func (d *Driver) syncDisks(ctx context.Context, id string, disks []driver.Disk) error {
	if err := checkDisks(disks); err != nil {
		return err
	}
	want := map[string]bool{}
	for _, dk := range disks {
		want[dataDiskPrefix+dk.ID+dataDiskSuffix] = true
		path := d.dataDiskPath(id, dk.ID)
		size := dk.SizeMiB * mib
		if _, err := os.Stat(path); os.IsNotExist(err) {
			tmp := path + ".new"
			os.Remove(tmp)
			if err := d.qemuImg(ctx, "create", "-q", "-f", "qcow2", tmp, fmt.Sprint(size)); err != nil {
				os.Remove(tmp)
				return errdefs.Wrap(errdefs.Internal, err, "create disk %s of VM %s", dk.ID, id)
			}
			if err := os.Rename(tmp, path); err != nil {
				os.Remove(tmp)
				return errdefs.Wrap(errdefs.Internal, err, "create disk %s of VM %s", dk.ID, id)
			}
			d.log.Info("data disk created", "instance", id, "disk", dk.ID, "mib", dk.SizeMiB)
			continue
		}
		info, err := d.diskInfo(ctx, path)
		if err != nil {
			return err
		}
		switch {
		case info.VirtualSize < size:
			err = d.qemuImg(ctx, "resize", "-q", path, fmt.Sprint(size))
		case info.VirtualSize > size:
			err = d.qemuImg(ctx, "resize", "-q", "--shrink", path, fmt.Sprint(size))
		default:
			continue
		}
		if err != nil {
			return errdefs.Wrap(errdefs.Internal, err, "resize disk %s of VM %s to %d MiB", dk.ID, id, dk.SizeMiB)
		}
		d.log.Info("data disk resized", "instance", id, "disk", dk.ID, "from_mib", info.VirtualSize/mib, "mib", dk.SizeMiB)
	}
	files, err := filepath.Glob(filepath.Join(d.dir(id), dataDiskPrefix+"*"+dataDiskSuffix))
	if err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "list disks of VM %s", id)
	}
	for _, f := range files {
		if want[filepath.Base(f)] {
			continue
		}
		if err := os.Remove(f); err != nil && !os.IsNotExist(err) {
			return errdefs.Wrap(errdefs.Internal, err, "remove disk %s", f)
		}
		d.log.Info("data disk removed", "instance", id, "file", filepath.Base(f))
	}
	return nil
}

// qemuImg runs qemu-img with args, with its complaint in the error.
func (d *Driver) qemuImg(ctx context.Context, args ...string) error {
	out, err := exec.CommandContext(ctx, d.cfg.QEMUImg, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("qemu-img %s: %v: %s", args[0], err, strings.TrimSpace(string(out)))
	}
	return nil
}

// dataDiskArgs attaches the VM's data disks.
func (d *Driver) dataDiskArgs(st instanceState) []string {
	esc := func(p string) string { return strings.ReplaceAll(p, ",", ",,") }
	var args []string
	for _, dk := range st.Spec.Disks {
		args = append(args,
			"-drive", fmt.Sprintf("if=none,id=data%d,format=qcow2,discard=unmap,file=%s", dk.Slot, esc(d.dataDiskPath(st.Spec.ID, dk.ID))),
			"-device", fmt.Sprintf("virtio-blk-pci,drive=data%d,serial=%s,addr=0x%x", dk.Slot, DiskSerial(dk.ID), driver.DiskPCISlot(dk.Slot)))
	}
	return args
}
