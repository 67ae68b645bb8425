package sim

import (
	"context"
	"slices"
	"strings"

	"flotilla/agent/driver"
	"flotilla/api/errdefs"
)

var _ driver.Snapshotter = (*Driver)(nil)

// CreateSnapshot records a snapshot of the instance (there is no disk to
// copy). A name already taken is Conflict.
func (d *Driver) CreateSnapshot(ctx context.Context, id, name string) (driver.SnapshotInfo, error) {
	if err := driver.CheckSnapshotName(name); err != nil {
		return driver.SnapshotInfo{}, err
	}
	if err := d.fail("snapshot", id); err != nil {
		return driver.SnapshotInfo{}, err
	}
	d.mu.Lock()
	in, err := d.get(id)
	if err != nil {
		d.mu.Unlock()
		return driver.SnapshotInfo{}, err
	}
	if _, ok := in.Snapshots[name]; ok {
		d.mu.Unlock()
		return driver.SnapshotInfo{}, errdefs.Conflictf("sim: instance %s already has a snapshot %q", id, name)
	}
	if in.Snapshots == nil {
		in.Snapshots = map[string]driver.SnapshotInfo{}
	}
	info := driver.SnapshotInfo{Name: name, Created: d.cfg.Now().UTC()}
	in.Snapshots[name] = info
	return info, d.changed(id)
}

// Snapshots lists the instance's snapshots by name.
func (d *Driver) Snapshots(ctx context.Context, id string) ([]driver.SnapshotInfo, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	in, err := d.get(id)
	if err != nil {
		return nil, err
	}
	out := make([]driver.SnapshotInfo, 0, len(in.Snapshots))
	for _, s := range in.Snapshots {
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b driver.SnapshotInfo) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// RestoreSnapshot succeeds for a known snapshot of a stopped instance;
// a running one is Conflict, an unknown snapshot NotFound.
func (d *Driver) RestoreSnapshot(ctx context.Context, id, name string) error {
	if err := d.fail("restore", id); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	in, err := d.get(id)
	if err != nil {
		return err
	}
	if in.runningAt(d.cfg.Now()) {
		return errdefs.Conflictf("sim: instance %s runs: stop it before restoring a snapshot", id)
	}
	if _, ok := in.Snapshots[name]; !ok {
		return errdefs.NotFoundf("sim: instance %s has no snapshot %q", id, name)
	}
	return nil
}

// DeleteSnapshot forgets a snapshot; an unknown one is a no-op.
func (d *Driver) DeleteSnapshot(ctx context.Context, id, name string) error {
	if err := d.fail("delete_snapshot", id); err != nil {
		return err
	}
	d.mu.Lock()
	in, err := d.get(id)
	if err != nil {
		d.mu.Unlock()
		return err
	}
	if _, ok := in.Snapshots[name]; !ok {
		d.mu.Unlock()
		return nil
	}
	delete(in.Snapshots, name)
	return d.changed(id)
}
