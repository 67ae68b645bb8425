package runc

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"flotilla/agent/driver"
	"flotilla/api/errdefs"
)

// A migration moves a container's writable layer as a snapshot archive
// (snapshot_tar.go): the export is a snapshot taken under a reserved name
// and streamed; the import is written as a snapshot and restored.
const (
	migrationOut = "migration-out"
	migrationIn  = "migration-in"
)

var _ driver.Migrator = (*Driver)(nil)

// ExportDisk implements driver.Migrator.
func (d *Driver) ExportDisk(ctx context.Context, id string) (driver.DiskArchive, error) {
	bundle, _, err := d.loadSpec(id)
	if err != nil {
		return driver.DiskArchive{}, err
	}
	d.DeleteSnapshot(ctx, id, migrationOut) // a left-over of an export cut short
	info, err := d.CreateSnapshot(ctx, id, migrationOut)
	if err != nil {
		return driver.DiskArchive{}, err
	}
	dir := filepath.Join(bundle, dirSnapshots, migrationOut)
	var si snapshotInfo
	if err := readJSON(filepath.Join(dir, fileSnapshotInfo), &si); err != nil {
		d.DeleteSnapshot(ctx, id, migrationOut)
		return driver.DiskArchive{}, errdefs.Wrap(errdefs.Internal, err, "read export of %s", id)
	}
	f, err := os.Open(filepath.Join(dir, fileSnapshotTar))
	if err != nil {
		d.DeleteSnapshot(ctx, id, migrationOut)
		return driver.DiskArchive{}, errdefs.Wrap(errdefs.Internal, err, "open export of %s", id)
	}
	return driver.DiskArchive{ReadCloser: &exportFile{File: f, done: func() {
		d.DeleteSnapshot(context.WithoutCancel(ctx), id, migrationOut)
	}}, Layer: si.Layer, Size: info.SizeBytes}, nil
}

// exportFile removes the export once read.
type exportFile struct {
	*os.File
	done func()
}

func (f *exportFile) Close() error {
	err := f.File.Close()
	f.done()
	return err
}

// ImportDisk implements driver.Migrator.
func (d *Driver) ImportDisk(ctx context.Context, id, layer string, r io.Reader) error {
	bundle, _, err := d.loadSpec(id)
	if err != nil {
		return err
	}
	if layer != "upper" && layer != "rootfs" {
		return errdefs.InvalidArgument("unknown disk layer kind %q", layer)
	}
	parent := filepath.Join(bundle, dirSnapshots)
	if err := os.MkdirAll(parent, 0o700); err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "create snapshot directory of %s", id)
	}
	tmp, err := os.MkdirTemp(parent, ".new-")
	if err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "import disk of %s", id)
	}
	defer os.RemoveAll(tmp)
	f, err := os.OpenFile(filepath.Join(tmp, fileSnapshotTar), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "import disk of %s", id)
	}
	n, err := io.Copy(f, r)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return errdefs.Wrap(errdefs.Unavailable, err, "receive the disk of %s", id)
	}
	info := snapshotInfo{Name: migrationIn, Created: time.Now().UTC(), Layer: layer, Size: n}
	if err := writeJSONAtomic(filepath.Join(tmp, fileSnapshotInfo), info); err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "import disk of %s", id)
	}
	d.DeleteSnapshot(ctx, id, migrationIn)
	if err := os.Rename(tmp, filepath.Join(parent, migrationIn)); err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "import disk of %s", id)
	}
	defer d.DeleteSnapshot(context.WithoutCancel(ctx), id, migrationIn)
	return d.RestoreSnapshot(ctx, id, migrationIn)
}

// RemoveLocal implements driver.Migrator: the bundle goes, and with it the
// container's rootfs mount if it has one; network namespaces, veths and
// cgroups, named after the container, are left alone.
func (d *Driver) RemoveLocal(ctx context.Context, id string) error {
	bundle, err := d.bundle(id)
	if err != nil {
		return err
	}
	if _, err := os.Stat(bundle); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if _, alive := shimAlive(bundle); alive {
		return errdefs.Conflictf("container %s is running on this node: it cannot be removed as moved away", id)
	}
	rootfs := filepath.Join(bundle, dirRootfs)
	for isMountPoint(rootfs) {
		if err := unix.Unmount(rootfs, unix.MNT_DETACH); err != nil {
			return errdefs.Wrap(errdefs.Internal, err, "unmount rootfs of %s", id)
		}
	}
	_, spec, _ := d.loadSpec(id)
	if err := os.RemoveAll(bundle); err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "remove container %s", id)
	}
	removeSockets(bundle)
	d.unmountShares(spec)
	return nil
}
