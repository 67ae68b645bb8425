package sim

import (
	"bytes"
	"context"
	"io"

	"flotilla/agent/driver"
	"flotilla/api/errdefs"
)

var _ driver.Migrator = (*Driver)(nil)

// ExportDisk implements driver.Migrator: the archive is the instance's
// simulated filesystem, whole.
func (d *Driver) ExportDisk(ctx context.Context, id string) (driver.DiskArchive, error) {
	if err := d.fail("export", id); err != nil {
		return driver.DiskArchive{}, err
	}
	var buf bytes.Buffer
	if err := d.ArchivePath(ctx, id, "/", &buf); err != nil {
		return driver.DiskArchive{}, err
	}
	return driver.DiskArchive{ReadCloser: io.NopCloser(&buf), Layer: "sim", Size: int64(buf.Len())}, nil
}

// ImportDisk implements driver.Migrator: the archive is unpacked over the
// instance's simulated filesystem.
func (d *Driver) ImportDisk(ctx context.Context, id, layer string, r io.Reader) error {
	if err := d.fail("import", id); err != nil {
		return err
	}
	if layer != "sim" {
		return errdefs.InvalidArgument("the sim driver cannot import a %q disk", layer)
	}
	st, err := d.Inspect(ctx, id)
	if err != nil {
		return err
	}
	if st.State == driver.StateRunning {
		return errdefs.Conflictf("sim: instance %s is running: stop it before importing its disk", id)
	}
	return d.ExtractArchive(ctx, id, "/", r, driver.ArchiveOptions{})
}

// RemoveLocal implements driver.Migrator: a simulated instance holds
// nothing on the host, so it is a delete of a stopped instance.
func (d *Driver) RemoveLocal(ctx context.Context, id string) error {
	st, err := d.Inspect(ctx, id)
	if errdefs.Is(err, errdefs.NotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if st.State == driver.StateRunning {
		return errdefs.Conflictf("sim: instance %s is running on this node", id)
	}
	return d.Delete(ctx, id)
}
