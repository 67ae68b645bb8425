package multi

import (
	"context"

	"flotilla/agent/driver"
	"flotilla/api/errdefs"
)

var _ driver.Snapshotter = (*Driver)(nil)

// snapshotter returns the part that has id as a Snapshotter, or Invalid
// when that part keeps no snapshots.
func (d *Driver) snapshotter(ctx context.Context, id string) (driver.Snapshotter, error) {
	p, err := d.find(ctx, id)
	if err != nil {
		return nil, err
	}
	s, ok := p.(driver.Snapshotter)
	if !ok {
		return nil, errdefs.InvalidArgument("the %s driver cannot take snapshots", p.Name())
	}
	return s, nil
}

// CreateSnapshot asks the part that has id.
func (d *Driver) CreateSnapshot(ctx context.Context, id, name string) (driver.SnapshotInfo, error) {
	s, err := d.snapshotter(ctx, id)
	if err != nil {
		return driver.SnapshotInfo{}, err
	}
	return s.CreateSnapshot(ctx, id, name)
}

// Snapshots asks the part that has id.
func (d *Driver) Snapshots(ctx context.Context, id string) ([]driver.SnapshotInfo, error) {
	s, err := d.snapshotter(ctx, id)
	if err != nil {
		if errdefs.Is(err, errdefs.Invalid) {
			return nil, nil
		}
		return nil, err
	}
	return s.Snapshots(ctx, id)
}

// RestoreSnapshot asks the part that has id.
func (d *Driver) RestoreSnapshot(ctx context.Context, id, name string) error {
	s, err := d.snapshotter(ctx, id)
	if err != nil {
		return err
	}
	return s.RestoreSnapshot(ctx, id, name)
}

// DeleteSnapshot asks the part that has id.
func (d *Driver) DeleteSnapshot(ctx context.Context, id, name string) error {
	s, err := d.snapshotter(ctx, id)
	if err != nil {
		if errdefs.Is(err, errdefs.Invalid) {
			return nil
		}
		return err
	}
	return s.DeleteSnapshot(ctx, id, name)
}
