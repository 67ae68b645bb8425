package multi

import (
	"context"
	"io"

	"flotilla/agent/driver"
	"flotilla/api/errdefs"
)

var _ driver.Migrator = (*Driver)(nil)

// migrator returns the part that has id as a Migrator, or Invalid when that
// part cannot move its instances.
func (d *Driver) migrator(ctx context.Context, id string) (driver.Migrator, error) {
	p, err := d.find(ctx, id)
	if err != nil {
		return nil, err
	}
	m, ok := p.(driver.Migrator)
	if !ok {
		return nil, errdefs.InvalidArgument("the %s driver cannot move instances to another node", p.Name())
	}
	return m, nil
}

// ExportDisk asks the part that has id.
func (d *Driver) ExportDisk(ctx context.Context, id string) (driver.DiskArchive, error) {
	m, err := d.migrator(ctx, id)
	if err != nil {
		return driver.DiskArchive{}, err
	}
	return m.ExportDisk(ctx, id)
}

// ImportDisk asks the part that has id.
func (d *Driver) ImportDisk(ctx context.Context, id, layer string, r io.Reader) error {
	m, err := d.migrator(ctx, id)
	if err != nil {
		return err
	}
	return m.ImportDisk(ctx, id, layer, r)
}

// RemoveLocal asks the part that has id; an unknown id is a no-op.
func (d *Driver) RemoveLocal(ctx context.Context, id string) error {
	m, err := d.migrator(ctx, id)
	if errdefs.Is(err, errdefs.NotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := m.RemoveLocal(ctx, id); err != nil {
		return err
	}
	d.mu.Lock()
	delete(d.owner, id)
	d.mu.Unlock()
	return nil
}
