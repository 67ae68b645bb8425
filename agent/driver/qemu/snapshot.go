package qemu

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"flotilla/agent/driver"
	"flotilla/api/errdefs"
)

// A VM's snapshots are qcow2 internal snapshots of its disk.qcow2, taken,
// applied and deleted with qemu-img while QEMU is not running (qemu-img
// cannot write an image QEMU has open, and a live snapshot would need the
// guest's memory too). Each is tagged snapshotTagPrefix+name, so that no
// name is ever read as a snapshot id by qemu-img.
const snapshotTagPrefix = "snap-"

var _ driver.Snapshotter = (*Driver)(nil)

// snapshotDisk returns the VM's disk for a snapshot operation: NotFound for
// an unknown VM, Invalid for a VM booted from a kernel (it has no disk),
// Conflict for a running one when stopped is needed.
func (d *Driver) snapshotDisk(id string, stopped bool) (string, error) {
	st, err := d.loadState(id)
	if err != nil {
		return "", err
	}
	if st.Format != FormatDisk {
		return "", errdefs.InvalidArgument("VM %s boots a kernel image and has no disk to snapshot", id)
	}
	if stopped && d.pid(id) > 0 {
		return "", errdefs.Conflictf("VM %s is running: stop it first (its disk is snapshotted only while QEMU has it closed)", id)
	}
	return filepath.Join(d.dir(id), FileDisk), nil
}

// qcow2Snapshots lists the internal snapshots of a disk (readable while
// QEMU runs: -U shares the image).
func (d *Driver) qcow2Snapshots(ctx context.Context, disk string) ([]driver.SnapshotInfo, error) {
	out, err := exec.CommandContext(ctx, d.cfg.QEMUImg, "info", "-U", "--output=json", disk).Output()
	if err != nil {
		return nil, errdefs.Wrap(errdefs.Internal, cmdErr(err), "qemu-img info %s", disk)
	}
	var info struct {
		Snapshots []struct {
			Name     string `json:"name"`
			DateSec  int64  `json:"date-sec"`
			DateNsec int64  `json:"date-nsec"`
			VMSize   int64  `json:"vm-state-size"`
		} `json:"snapshots"`
	}
	if err := json.Unmarshal(out, &info); err != nil {
		return nil, errdefs.Wrap(errdefs.Internal, err, "qemu-img info %s: unreadable output", disk)
	}
	var list []driver.SnapshotInfo
	for _, s := range info.Snapshots {
		name, ok := strings.CutPrefix(s.Name, snapshotTagPrefix)
		if !ok {
			continue
		}
		list = append(list, driver.SnapshotInfo{Name: name, SizeBytes: s.VMSize, Created: time.Unix(s.DateSec, s.DateNsec).UTC()})
	}
	return list, nil
}

func hasSnapshot(list []driver.SnapshotInfo, name string) (driver.SnapshotInfo, bool) {
	for _, s := range list {
		if s.Name == name {
			return s, true
		}
	}
	return driver.SnapshotInfo{}, false
}

// qemuImgSnapshot runs `qemu-img snapshot <op> <tag> <disk>`.
func (d *Driver) qemuImgSnapshot(ctx context.Context, op, name, disk string) error {
	out, err := exec.CommandContext(ctx, d.cfg.QEMUImg, "snapshot", op, snapshotTagPrefix+name, disk).CombinedOutput()
	if err != nil {
		return errdefs.Wrap(errdefs.Internal, fmt.Errorf("%v: %s", err, strings.TrimSpace(string(out))),
			"qemu-img snapshot %s %s", op, snapshotTagPrefix+name)
	}
	return nil
}

// CreateSnapshot implements driver.Snapshotter: a qcow2 internal snapshot
// of the stopped VM's disk. A running VM is Conflict, a VM without a disk
// Invalid, a name taken Conflict.
func (d *Driver) CreateSnapshot(ctx context.Context, id, name string) (driver.SnapshotInfo, error) {
	if err := driver.CheckSnapshotName(name); err != nil {
		return driver.SnapshotInfo{}, err
	}
	disk, err := d.snapshotDisk(id, true)
	if err != nil {
		return driver.SnapshotInfo{}, err
	}
	list, err := d.qcow2Snapshots(ctx, disk)
	if err != nil {
		return driver.SnapshotInfo{}, err
	}
	if _, ok := hasSnapshot(list, name); ok {
		return driver.SnapshotInfo{}, errdefs.Conflictf("VM %s already has a snapshot %q", id, name)
	}
	if err := d.qemuImgSnapshot(ctx, "-c", name, disk); err != nil {
		return driver.SnapshotInfo{}, err
	}
	if list, err = d.qcow2Snapshots(ctx, disk); err != nil {
		return driver.SnapshotInfo{}, err
	}
	info, ok := hasSnapshot(list, name)
	if !ok {
		return driver.SnapshotInfo{}, errdefs.New(errdefs.Internal, "qemu-img made no snapshot %q of VM %s", name, id)
	}
	return info, nil
}

// Snapshots implements driver.Snapshotter; a VM without a disk has none.
func (d *Driver) Snapshots(ctx context.Context, id string) ([]driver.SnapshotInfo, error) {
	disk, err := d.snapshotDisk(id, false)
	if errdefs.Is(err, errdefs.Invalid) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return d.qcow2Snapshots(ctx, disk)
}

// RestoreSnapshot implements driver.Snapshotter: the stopped VM's disk
// reverts to the snapshot (qemu-img snapshot -a).
func (d *Driver) RestoreSnapshot(ctx context.Context, id, name string) error {
	if err := driver.CheckSnapshotName(name); err != nil {
		return errdefs.NotFoundf("VM %s has no snapshot %q", id, name)
	}
	disk, err := d.snapshotDisk(id, true)
	if err != nil {
		return err
	}
	list, err := d.qcow2Snapshots(ctx, disk)
	if err != nil {
		return err
	}
	if _, ok := hasSnapshot(list, name); !ok {
		return errdefs.NotFoundf("VM %s has no snapshot %q on this node", id, name)
	}
	return d.qemuImgSnapshot(ctx, "-a", name, disk)
}

// DeleteSnapshot implements driver.Snapshotter; the VM must be stopped
// (Conflict otherwise) unless it has no such snapshot.
func (d *Driver) DeleteSnapshot(ctx context.Context, id, name string) error {
	if driver.CheckSnapshotName(name) != nil {
		return nil
	}
	disk, err := d.snapshotDisk(id, false)
	if errdefs.Is(err, errdefs.Invalid) {
		return nil
	}
	if err != nil {
		return err
	}
	list, err := d.qcow2Snapshots(ctx, disk)
	if err != nil {
		return err
	}
	if _, ok := hasSnapshot(list, name); !ok {
		return nil
	}
	if _, err := d.snapshotDisk(id, true); err != nil {
		return err
	}
	return d.qemuImgSnapshot(ctx, "-d", name, disk)
}
