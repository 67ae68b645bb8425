package runc

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"flotilla/agent/driver"
	"flotilla/api/errdefs"
)

// Snapshots of a container are archives of its writable layer, kept in its
// bundle (so deleting the container deletes them):
//
//	containers/<id>/snapshots/<name>/layer.tar   the upper directory (or, for
//	                                             a copied rootfs, the rootfs)
//	containers/<id>/snapshots/<name>/info.json   snapshotInfo
//
// A snapshot is written under snapshots/.new-* and renamed into place, so a
// snapshot directory is always whole.
const (
	dirSnapshots     = "snapshots"
	fileSnapshotTar  = "layer.tar"
	fileSnapshotInfo = "info.json"
)

// snapshotInfo is a snapshot's info.json.
type snapshotInfo struct {
	Name    string    `json:"name"`
	Created time.Time `json:"created"`
	// Layer is what the archive holds: "upper" (overlayfs upper directory)
	// or "rootfs" (a copied root filesystem).
	Layer string `json:"layer"`
	Size  int64  `json:"size"`
}

var _ driver.Snapshotter = (*Driver)(nil)

// snapshotDir returns the directory of snapshot name of the container in
// bundle, after checking the name.
func snapshotDir(bundle, name string) (string, error) {
	if err := driver.CheckSnapshotName(name); err != nil {
		return "", err
	}
	return filepath.Join(bundle, dirSnapshots, name), nil
}

// writableLayer returns the directory that holds what the container wrote
// and its kind: the overlay upper directory, or the rootfs when the image
// was copied.
func writableLayer(bundle string) (string, string) {
	if _, err := os.Stat(filepath.Join(bundle, "lowers")); err == nil {
		return filepath.Join(bundle, "upper"), "upper"
	}
	return filepath.Join(bundle, dirRootfs), "rootfs"
}

// CreateSnapshot implements driver.Snapshotter: it archives the container's
// writable layer. A running container is frozen (runc pause) while the
// archive is written, so the snapshot is one moment of its filesystem.
func (d *Driver) CreateSnapshot(ctx context.Context, id, name string) (driver.SnapshotInfo, error) {
	bundle, _, err := d.loadSpec(id)
	if err != nil {
		return driver.SnapshotInfo{}, err
	}
	dir, err := snapshotDir(bundle, name)
	if err != nil {
		return driver.SnapshotInfo{}, err
	}
	if _, err := os.Stat(dir); err == nil {
		return driver.SnapshotInfo{}, errdefs.Conflictf("container %s already has a snapshot %q", id, name)
	}
	src, kind := writableLayer(bundle)
	if kind == "upper" {
		// A container never started has no upper directory yet.
		if err := os.MkdirAll(src, 0o755); err != nil {
			return driver.SnapshotInfo{}, errdefs.Wrap(errdefs.Internal, err, "create upper directory of %s", id)
		}
	}
	parent := filepath.Join(bundle, dirSnapshots)
	if err := os.MkdirAll(parent, 0o700); err != nil {
		return driver.SnapshotInfo{}, errdefs.Wrap(errdefs.Internal, err, "create snapshot directory of %s", id)
	}
	tmp, err := os.MkdirTemp(parent, ".new-")
	if err != nil {
		return driver.SnapshotInfo{}, errdefs.Wrap(errdefs.Internal, err, "create snapshot directory of %s", id)
	}
	defer os.RemoveAll(tmp) // nothing once renamed

	if _, alive := shimAlive(bundle); alive {
		if err := d.rc.Pause(ctx, id); err == nil {
			defer d.rc.Resume(context.WithoutCancel(ctx), id)
		} else {
			d.log.Warn("could not freeze the container for its snapshot; taking it live", "instance", id, "err", err)
		}
	}
	size, err := snapshotArchive(src, filepath.Join(tmp, fileSnapshotTar))
	if err != nil {
		return driver.SnapshotInfo{}, errdefs.Wrap(errdefs.Internal, err, "archive the filesystem of %s", id)
	}
	info := snapshotInfo{Name: name, Created: time.Now().UTC(), Layer: kind, Size: size}
	if err := writeJSONAtomic(filepath.Join(tmp, fileSnapshotInfo), info); err != nil {
		return driver.SnapshotInfo{}, errdefs.Wrap(errdefs.Internal, err, "write snapshot info of %s", id)
	}
	if err := os.Rename(tmp, dir); err != nil {
		return driver.SnapshotInfo{}, errdefs.Wrap(errdefs.Internal, err, "store snapshot %q of %s", name, id)
	}
	return driver.SnapshotInfo{Name: name, SizeBytes: size, Created: info.Created}, nil
}

// Snapshots implements driver.Snapshotter.
func (d *Driver) Snapshots(ctx context.Context, id string) ([]driver.SnapshotInfo, error) {
	bundle, _, err := d.loadSpec(id)
	if err != nil {
		return nil, err
	}
	ents, err := os.ReadDir(filepath.Join(bundle, dirSnapshots))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, errdefs.Wrap(errdefs.Internal, err, "list snapshots of %s", id)
	}
	var out []driver.SnapshotInfo
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".") || !e.IsDir() {
			continue
		}
		var info snapshotInfo
		if err := readJSON(filepath.Join(bundle, dirSnapshots, e.Name(), fileSnapshotInfo), &info); err != nil {
			continue
		}
		out = append(out, driver.SnapshotInfo{Name: e.Name(), SizeBytes: info.Size, Created: info.Created})
	}
	slices.SortFunc(out, func(a, b driver.SnapshotInfo) int { return a.Created.Compare(b.Created) })
	return out, nil
}

// RestoreSnapshot implements driver.Snapshotter: the container's writable
// layer is replaced by the snapshot's (unpacked beside it first, then
// swapped in), and its rootfs mounted again. The container must be stopped.
func (d *Driver) RestoreSnapshot(ctx context.Context, id, name string) error {
	bundle, _, err := d.loadSpec(id)
	if err != nil {
		return err
	}
	dir, err := snapshotDir(bundle, name)
	if err != nil {
		return err
	}
	var info snapshotInfo
	if err := readJSON(filepath.Join(dir, fileSnapshotInfo), &info); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return errdefs.NotFoundf("container %s has no snapshot %q on this node", id, name)
		}
		return errdefs.Wrap(errdefs.Internal, err, "read snapshot %q of %s", name, id)
	}
	if _, alive := shimAlive(bundle); alive {
		return errdefs.Conflictf("container %s is running: stop it before restoring a snapshot", id)
	}
	dst, kind := writableLayer(bundle)
	if kind != info.Layer {
		return errdefs.InvalidArgument("snapshot %q of %s holds a %s, but the container's filesystem is now a %s", name, id, info.Layer, kind)
	}
	tmp, err := os.MkdirTemp(bundle, ".restore-")
	if err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "restore snapshot %q of %s", name, id)
	}
	defer os.RemoveAll(tmp)
	if err := snapshotExtract(filepath.Join(dir, fileSnapshotTar), tmp); err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "unpack snapshot %q of %s", name, id)
	}
	rootfs := filepath.Join(bundle, dirRootfs)
	if isMountPoint(rootfs) {
		if err := unix.Unmount(rootfs, 0); err != nil {
			if err := unix.Unmount(rootfs, unix.MNT_DETACH); err != nil {
				return errdefs.Wrap(errdefs.Internal, err, "unmount rootfs of %s", id)
			}
		}
	}
	old := dst + fmt.Sprintf(".old-%d", time.Now().UnixNano())
	if err := os.Rename(dst, old); err != nil && !errors.Is(err, os.ErrNotExist) {
		return errdefs.Wrap(errdefs.Internal, err, "set aside the filesystem of %s", id)
	}
	if err := os.Rename(tmp, dst); err != nil {
		os.Rename(old, dst)
		return errdefs.Wrap(errdefs.Internal, err, "put snapshot %q of %s in place", name, id)
	}
	os.RemoveAll(old)
	if kind == "upper" {
		// The work directory belongs to the old upper directory.
		work := filepath.Join(bundle, "work")
		if err := os.RemoveAll(work); err != nil {
			return errdefs.Wrap(errdefs.Internal, err, "clear overlay work directory of %s", id)
		}
		if err := mountOverlay(bundle); err != nil {
			return errdefs.Wrap(errdefs.Internal, err, "mount rootfs of %s", id)
		}
	}
	return nil
}

// DeleteSnapshot implements driver.Snapshotter.
func (d *Driver) DeleteSnapshot(ctx context.Context, id, name string) error {
	bundle, _, err := d.loadSpec(id)
	if err != nil {
		return err
	}
	dir, err := snapshotDir(bundle, name)
	if err != nil {
		return err
	}
	// Renamed away first, so a half-removed snapshot is never listed.
	gone := filepath.Join(bundle, dirSnapshots, fmt.Sprintf(".del-%s-%d", name, time.Now().UnixNano()))
	if err := os.Rename(dir, gone); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return errdefs.Wrap(errdefs.Internal, err, "delete snapshot %q of %s", name, id)
	}
	if err := os.RemoveAll(gone); err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "delete snapshot %q of %s", name, id)
	}
	return nil
}
