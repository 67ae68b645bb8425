package driver

import (
	"context"
	"regexp"
	"time"

	"flotilla/api/errdefs"
)

// Snapshotter is implemented by drivers that keep snapshots of an
// instance's disk on the node (a container's writable layer, a VM's disk).
// Methods return NotFound for an unknown instance.
type Snapshotter interface {
	// CreateSnapshot records the instance's disk as it is now under name.
	// A name already taken is Conflict; so is an instance whose state does
	// not allow a snapshot (a running VM). On failure nothing is left.
	CreateSnapshot(ctx context.Context, id, name string) (SnapshotInfo, error)
	// Snapshots lists the instance's snapshots on the node.
	Snapshots(ctx context.Context, id string) ([]SnapshotInfo, error)
	// RestoreSnapshot puts the instance's disk back as snapshot name has
	// it. The instance must be stopped (Conflict otherwise); an unknown
	// snapshot is NotFound.
	RestoreSnapshot(ctx context.Context, id, name string) error
	// DeleteSnapshot removes a snapshot; an unknown one is a no-op.
	DeleteSnapshot(ctx context.Context, id, name string) error
}

// SnapshotInfo describes one snapshot on a node.
type SnapshotInfo struct {
	Name      string
	SizeBytes int64
	Created   time.Time
}

var snapshotName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)

// CheckSnapshotName returns Invalid unless name is a valid snapshot name:
// 1 to 64 letters, digits, '_', '.' and '-', starting with a letter or a
// digit (it names a file or a qcow2 snapshot on the node).
func CheckSnapshotName(name string) error {
	if !snapshotName.MatchString(name) {
		return errdefs.InvalidArgument("invalid snapshot name %q: use 1 to 64 letters, digits, '_', '.' and '-', starting with a letter or a digit", name)
	}
	return nil
}
