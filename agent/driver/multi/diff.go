package multi

import (
	"context"
	"io"

	"flotilla/agent/driver"
	"flotilla/api/errdefs"
)

var _ driver.Differ = (*Driver)(nil)

func (d *Driver) differ(ctx context.Context, id string) (driver.Differ, error) {
	p, err := d.find(ctx, id)
	if err != nil {
		return nil, err
	}
	df, ok := p.(driver.Differ)
	if !ok {
		return nil, errdefs.New(errdefs.NotImplemented, "the %s driver keeps no record of an instance's changes to its image", p.Name())
	}
	return df, nil
}

// Changes, ExportFilesystem and ExportChanges forward to the part's Differ.
func (d *Driver) Changes(ctx context.Context, id string) ([]driver.Change, error) {
	df, err := d.differ(ctx, id)
	if err != nil {
		return nil, err
	}
	return df.Changes(ctx, id)
}

func (d *Driver) ExportFilesystem(ctx context.Context, id string, w io.Writer) error {
	df, err := d.differ(ctx, id)
	if err != nil {
		return err
	}
	return df.ExportFilesystem(ctx, id, w)
}

func (d *Driver) ExportChanges(ctx context.Context, id string, w io.Writer) error {
	df, err := d.differ(ctx, id)
	if err != nil {
		return err
	}
	return df.ExportChanges(ctx, id, w)
}
