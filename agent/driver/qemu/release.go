package qemu

import (
	"context"

	"flotilla/agent/driver"
	"flotilla/api/errdefs"
)

var _ driver.Releaser = (*Driver)(nil)

// Release implements driver.Releaser: it removes a stopped VM's taps and
// keeps its disks and state; Start creates the taps again.
func (d *Driver) Release(ctx context.Context, id string) error {
	st, err := d.loadState(id)
	if err != nil {
		return err
	}
	if d.pid(id) != 0 {
		return errdefs.Conflictf("VM %s is running; stop it before releasing it", id)
	}
	return d.removeTaps(id, len(st.Spec.NICs))
}
