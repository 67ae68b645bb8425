package multi

import (
	"context"

	"flotilla/agent/driver"
)

var _ driver.Releaser = (*Driver)(nil)

// Release implements driver.Releaser for the part that has id; parts that
// hold nothing on the host outside their state have nothing to release.
func (d *Driver) Release(ctx context.Context, id string) error {
	p, err := d.find(ctx, id)
	if err != nil {
		return err
	}
	if r, ok := p.(driver.Releaser); ok {
		return r.Release(ctx, id)
	}
	return nil
}
