package service

import (
	"context"
	"encoding/json"

	"flotilla/agent/driver"
	"flotilla/api/errdefs"
	"flotilla/store"
)

// A VM on a flexible-disk package has disks of its own choosing: its boot
// disk (when its image has one) and up to store.MaxDiskSlot data disks,
// whose sizes add up to at most the package's disk. Disks change only
// while the VM is stopped: its node applies them before it next starts.

// DiskRequest is one disk asked for at create (CloudAPI's disks[]): a size
// in MiB, or Remaining for what the package's disk leaves.
type DiskRequest struct {
	SizeMiB   int64
	Remaining bool
	Boot      *bool
}

// DiskPCISlot is the PCI slot at which a VM's node attaches its disk in
// slot: the boot disk is the first device QEMU places (0:2:0), data disks
// are at fixed slots.
func DiskPCISlot(slot int) int {
	if slot == 0 {
		return 2
	}
	return driver.DiskPCISlot(slot)
}

// MaxDisks is how many disks a VM may be created with.
const MaxDisks = store.MaxDiskSlot + 1

// imageHasDisk reports whether a VM image boots from a disk of its own
// (every VM image but a kernel-booted one, whose config says so).
func imageHasDisk(img store.Image) bool {
	var cfg struct {
		Config struct {
			Labels map[string]string `json:"Labels"`
		} `json:"config"`
	}
	if len(img.Config) > 0 && json.Unmarshal(img.Config, &cfg) == nil {
		return cfg.Config.Labels[driver.VMFormatLabel] != "kernel"
	}
	return true
}

// createDisks plans the disks of a new instance from req: none unless it
// is a VM on a flexible-disk package. A kernel-booted image has no boot
// disk, so every disk asked for is a data disk; otherwise disks[0] is the
// boot disk (by default the image's size). The sizes must add up to at
// most the package's disk; "remaining" (on one disk) takes what is left.
func createDisks(img store.Image, pkg store.Package, brand string, req []DiskRequest) ([]store.NewDisk, error) {
	if !isVM(brand) || !pkg.FlexibleDisk {
		if len(req) > 0 {
			return nil, errdefs.InvalidArgument("disks can only be given for a VM with a flexible_disk package; package %s does not have flexible_disk", pkg.Name)
		}
		return nil, nil
	}
	bootable := imageHasDisk(img)
	if len(req) == 0 && bootable {
		if img.ImageSize == nil || *img.ImageSize <= 0 {
			return nil, errdefs.InvalidArgument(`package %s has flexible_disk and image %s does not say how large its disk is: give the boot disk's size in disks (triton create --disk '{"size":MiB}')`, pkg.Name, img.Name)
		}
		req = []DiskRequest{{}}
	}
	if len(req) > MaxDisks {
		return nil, errdefs.InvalidArgument("a VM has at most %d disks, not %d", MaxDisks, len(req))
	}
	out := make([]store.NewDisk, len(req))
	remaining := -1
	var sum int64
	for i, d := range req {
		boot := bootable && i == 0
		if d.Boot != nil && *d.Boot != boot {
			switch {
			case !bootable:
				return nil, errdefs.InvalidArgument("disks[%d]: image %s boots a kernel and has no boot disk; every disk is a data disk", i, img.Name)
			case boot:
				return nil, errdefs.InvalidArgument("disks[0] is the boot disk (the image's disk); boot cannot be false there")
			default:
				return nil, errdefs.InvalidArgument("disks[%d]: only disks[0] can be the boot disk", i)
			}
		}
		switch {
		case d.Remaining:
			if remaining >= 0 {
				return nil, errdefs.InvalidArgument(`only one disk can have size "remaining"`)
			}
			remaining = i
		case d.SizeMiB > 0:
		case boot && img.ImageSize != nil && *img.ImageSize > 0:
			d.SizeMiB = *img.ImageSize
		case boot:
			return nil, errdefs.InvalidArgument("disks[0] (the boot disk) needs a size: image %s does not say how large its disk is", img.Name)
		default:
			return nil, errdefs.InvalidArgument(`disks[%d] needs a size: a positive number of MiB or "remaining"`, i)
		}
		out[i] = store.NewDisk{SizeMiB: d.SizeMiB, Boot: boot}
		sum += d.SizeMiB
	}
	if remaining >= 0 {
		left := pkg.DiskMiB - sum
		if left <= 0 {
			return nil, errdefs.InvalidArgument(`package %s has %d MiB of disk and the other disks take %d MiB: nothing remains for the disk of size "remaining"`, pkg.Name, pkg.DiskMiB, sum)
		}
		out[remaining].SizeMiB = left
		sum += left
	}
	if sum > pkg.DiskMiB {
		return nil, errdefs.InvalidArgument("the disks add up to %d MiB, more than the %d MiB of disk of package %s", sum, pkg.DiskMiB, pkg.Name)
	}
	return out, nil
}

// diskQuota returns how much disk the VM's package gives it and how much
// its disks (all but skip, and those being deleted) use.
// DiskSpace returns the disk a flexible-disk VM's package gives it and
// what its disks use of it (GetMachine's free_space is the difference).
func DiskSpace(in store.Instance, disks []store.Disk) (quota, used int64) {
	return diskQuota(in, disks, "")
}

func diskQuota(in store.Instance, disks []store.Disk, skip string) (quota, used int64) {
	for _, d := range disks {
		if d.ID != skip && d.Pending != store.DiskDelete {
			used += d.SizeMiB
		}
	}
	return in.DiskMiB, used
}

// diskChangeAllowed refuses a disk change on an instance that cannot take
// it: a container (it has no disks), a VM without a flexible-disk package,
// or a VM not stopped.
func (s *Service) diskChangeAllowed(ctx context.Context, in store.Instance, what string) error {
	if err := s.disksAllowed(ctx, in, true); err != nil {
		return err
	}
	if in.State != "stopped" || in.DesiredState != "stopped" {
		state := in.State
		if in.State == "stopped" {
			state = "starting"
		}
		return errdefs.Conflictf("VM %s is %s: stop it before %s (a VM's disks change only while it is stopped)", in.ID, state, what)
	}
	return nil
}

// disksAllowed refuses the disk routes for an instance that has no disks
// to show (a container) and, when change is set, for a VM whose package
// does not have flexible_disk.
func (s *Service) disksAllowed(ctx context.Context, in store.Instance, change bool) error {
	if !isVM(in.Brand) {
		return errdefs.Conflictf("instance %s is a container: containers have no disks (disks belong to VMs with a flexible_disk package)", in.ID)
	}
	if !change {
		return nil
	}
	if in.PackageID == nil {
		return errdefs.Conflictf("VM %s has no package: its disks cannot be changed", in.ID)
	}
	pkg, err := s.Store.GetPackage(ctx, *in.PackageID)
	if err != nil {
		return err
	}
	if !pkg.FlexibleDisk {
		return errdefs.Conflictf("VM %s has package %s, which does not have flexible_disk: its disks cannot be changed (resize it to a flexible_disk package first)", in.ID, pkg.Name)
	}
	return nil
}

// CheckDisksVisible refuses the disk routes of an instance without disks.
func (s *Service) CheckDisksVisible(ctx context.Context, in store.Instance) error {
	return s.disksAllowed(ctx, in, false)
}

// AddDisk gives a stopped flexible-disk VM a data disk of sizeMiB, or of
// what its package's disk leaves when remaining is set. It answers at
// once: the disk is "creating" until the VM's node has made it.
func (s *Service) AddDisk(ctx context.Context, c Caller, id string, sizeMiB int64, remaining bool) (store.Disk, error) {
	if !remaining && sizeMiB <= 0 {
		return store.Disk{}, errdefs.InvalidArgument(`size must be a positive number of MiB or "remaining"`)
	}
	cur, err := s.Store.GetInstance(ctx, c.AccountID, id)
	if err != nil {
		return store.Disk{}, err
	}
	if err := s.diskChangeAllowed(ctx, cur, "adding a disk"); err != nil {
		return store.Disk{}, err
	}
	return s.Store.AddDisk(ctx, c.AccountID, id, c.Audit(), func(in store.Instance, disks []store.Disk, _ store.Disk) (int64, error) {
		if err := s.recheck(cur, in, "adding a disk"); err != nil {
			return 0, err
		}
		quota, used := diskQuota(in, disks, "")
		left := quota - used
		if remaining {
			if left <= 0 {
				return 0, errdefs.Conflictf("package %s gives VM %s %d MiB of disk and its disks use all of it: nothing remains for a new disk", in.PackageName, in.ID, quota)
			}
			return left, nil
		}
		if sizeMiB > left {
			return 0, errdefs.Conflictf("package %s gives VM %s %d MiB of disk and its disks use %d MiB: only %d MiB remain, not the %d MiB asked for (ask for at most that, or \"remaining\")",
				in.PackageName, in.ID, quota, used, left, sizeMiB)
		}
		return sizeMiB, nil
	})
}

// recheck repeats, under the instance's lock, the checks made on cur
// before it: its state or package may have changed in between.
func (s *Service) recheck(cur, in store.Instance, what string) error {
	if in.State != "stopped" || in.DesiredState != "stopped" {
		return errdefs.Conflictf("VM %s is %s: stop it before %s (a VM's disks change only while it is stopped)", in.ID, in.State, what)
	}
	samePackage := (in.PackageID == nil) == (cur.PackageID == nil) && (in.PackageID == nil || *in.PackageID == *cur.PackageID)
	if !samePackage {
		return errdefs.Conflictf("VM %s changed package meanwhile: try again", in.ID)
	}
	return nil
}

// ResizeDisk sets a disk of a stopped flexible-disk VM to sizeMiB; a
// smaller size is refused unless allowShrink (data past it is lost), and
// the boot disk never shrinks. The disk is "resizing" until the VM's node
// has resized it.
func (s *Service) ResizeDisk(ctx context.Context, c Caller, id, diskID string, sizeMiB int64, allowShrink bool) (store.Disk, error) {
	if sizeMiB <= 0 {
		return store.Disk{}, errdefs.InvalidArgument("size must be a positive number of MiB")
	}
	cur, err := s.Store.GetInstance(ctx, c.AccountID, id)
	if err != nil {
		return store.Disk{}, err
	}
	if err := s.disksAllowed(ctx, cur, false); err != nil {
		return store.Disk{}, err
	}
	if _, err := s.Store.GetDisk(ctx, c.AccountID, cur.ID, diskID); err != nil {
		return store.Disk{}, err
	}
	if err := s.diskChangeAllowed(ctx, cur, "resizing a disk"); err != nil {
		return store.Disk{}, err
	}
	return s.Store.ResizeDisk(ctx, c.AccountID, id, diskID, c.Audit(), func(in store.Instance, disks []store.Disk, d store.Disk) (int64, error) {
		if err := s.recheck(cur, in, "resizing a disk"); err != nil {
			return 0, err
		}
		if sizeMiB < d.SizeMiB {
			if d.Boot {
				return 0, errdefs.Conflictf("disk %s is the boot disk of VM %s: it cannot shrink (%d MiB now, %d MiB asked for)", d.ID, in.ID, d.SizeMiB, sizeMiB)
			}
			if !allowShrink {
				return 0, errdefs.Conflictf("shrinking disk %s from %d MiB to %d MiB would lose the data past %d MiB: set dangerous_allow_shrink to do it anyway", d.ID, d.SizeMiB, sizeMiB, sizeMiB)
			}
		}
		quota, used := diskQuota(in, disks, d.ID)
		if used+sizeMiB > quota {
			return 0, errdefs.Conflictf("package %s gives VM %s %d MiB of disk and its other disks use %d MiB: disk %s can be at most %d MiB, not %d MiB",
				in.PackageName, in.ID, quota, used, d.ID, quota-used, sizeMiB)
		}
		return sizeMiB, nil
	})
}

// DeleteDisk removes a data disk of a stopped flexible-disk VM; the boot
// disk cannot go. The disk is "deleting" until the VM's node removed it.
func (s *Service) DeleteDisk(ctx context.Context, c Caller, id, diskID string) error {
	cur, err := s.Store.GetInstance(ctx, c.AccountID, id)
	if err != nil {
		return err
	}
	if err := s.disksAllowed(ctx, cur, false); err != nil {
		return err
	}
	d, err := s.Store.GetDisk(ctx, c.AccountID, cur.ID, diskID)
	if err != nil {
		return err
	}
	if d.Boot {
		return errdefs.Conflictf("disk %s is the boot disk of VM %s: it cannot be deleted", d.ID, cur.ID)
	}
	if err := s.diskChangeAllowed(ctx, cur, "deleting a disk"); err != nil {
		return err
	}
	return s.Store.DeleteDisk(ctx, c.AccountID, id, diskID, c.Audit(), func(in store.Instance, d store.Disk) error {
		if d.Boot {
			return errdefs.Conflictf("disk %s is the boot disk of VM %s: it cannot be deleted", d.ID, in.ID)
		}
		return s.recheck(cur, in, "deleting a disk")
	})
}

// checkResizeDisks refuses a package change that would leave a VM's disks
// without room: the new package must have flexible_disk and at least as
// much disk as they use.
func (s *Service) checkResizeDisks(ctx context.Context, c Caller, in store.Instance, pkg store.Package) error {
	disks, err := s.Store.ListDisks(ctx, c.AccountID, in.ID)
	if err != nil || len(disks) == 0 {
		return err
	}
	_, used := diskQuota(in, disks, "")
	if !pkg.FlexibleDisk {
		return errdefs.InvalidArgument("VM %s has disks of its own (%d MiB): package %s does not have flexible_disk", in.ID, used, pkg.Name)
	}
	if used > pkg.DiskMiB {
		return errdefs.InvalidArgument("VM %s's disks use %d MiB, more than the %d MiB of disk of package %s: shrink or delete disks first", in.ID, used, pkg.DiskMiB, pkg.Name)
	}
	return nil
}
