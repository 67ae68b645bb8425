package multi

import (
	"context"
	"errors"

	"flotilla/agent/driver"
	"flotilla/api/errdefs"
)

var (
	_ driver.VolumeSharer  = (*Driver)(nil)
	_ driver.VolumeRemover = (*Driver)(nil)
	_ driver.ShareUpdater  = (*Driver)(nil)
)

// VolumeDir implements driver.VolumeSharer with the first part that keeps
// volumes (volumes are containers' storage).
func (d *Driver) VolumeDir(ctx context.Context, id string, sizeMiB int64) (string, error) {
	for _, p := range d.parts {
		if s, ok := p.(driver.VolumeSharer); ok {
			return s.VolumeDir(ctx, id, sizeMiB)
		}
	}
	return "", errdefs.New(errdefs.NotImplemented, "no driver of this node keeps volumes")
}

// RemoveVolume implements driver.VolumeRemover on every part that keeps
// volumes.
func (d *Driver) RemoveVolume(ctx context.Context, id string) error {
	found := false
	var errs []error
	for _, p := range d.parts {
		if r, ok := p.(driver.VolumeRemover); ok {
			found = true
			errs = append(errs, r.RemoveVolume(ctx, id))
		}
	}
	if !found {
		return errdefs.New(errdefs.NotImplemented, "no driver of this node keeps volumes")
	}
	return errors.Join(errs...)
}

// ReleaseVolumes implements driver.VolumeRemover on every part that keeps
// volumes.
func (d *Driver) ReleaseVolumes(ctx context.Context) error {
	var errs []error
	for _, p := range d.parts {
		if r, ok := p.(driver.VolumeRemover); ok {
			errs = append(errs, r.ReleaseVolumes(ctx))
		}
	}
	return errors.Join(errs...)
}

// UpdateShares implements driver.ShareUpdater for the part that has id.
func (d *Driver) UpdateShares(ctx context.Context, id string, vols []driver.VolumeMount) error {
	p, err := d.find(ctx, id)
	if err != nil {
		return err
	}
	if s, ok := p.(driver.ShareUpdater); ok {
		return s.UpdateShares(ctx, id, vols)
	}
	return nil
}
