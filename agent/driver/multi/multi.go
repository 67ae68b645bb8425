// Package multi combines drivers into one, so a node can run containers and
// VMs side by side (`--driver runc,qemu`): creates go to the driver that
// runs the spec's brand; other calls go to the driver that knows the id.
//
// Imports: agent/driver and api/errdefs only.
package multi

import (
	"context"
	"io"
	"strings"
	"sync"
	"time"

	"flotilla/agent/driver"
	"flotilla/api/errdefs"
)

// Driver dispatches to its parts.
type Driver struct {
	parts []driver.Driver
	mu    sync.Mutex
	owner map[string]driver.Driver // instance id -> the driver that has it
}

// New combines parts; the first that runs a brand gets its creates.
func New(parts ...driver.Driver) *Driver {
	return &Driver{parts: parts, owner: map[string]driver.Driver{}}
}

// Name joins the parts' names with commas.
func (d *Driver) Name() string {
	names := make([]string, len(d.parts))
	for i, p := range d.parts {
		names[i] = p.Name()
	}
	return strings.Join(names, ",")
}

// Brands is the union of the parts' brands.
func (d *Driver) Brands() []string {
	var out []string
	seen := map[string]bool{}
	for _, p := range d.parts {
		for _, b := range p.Brands() {
			if !seen[b] {
				seen[b] = true
				out = append(out, b)
			}
		}
	}
	return out
}

// Cgroups reports the first part that puts instances in cgroups.
func (d *Driver) Cgroups() driver.CgroupInfo {
	for _, p := range d.parts {
		if c, ok := p.(driver.CgroupReporter); ok {
			return c.Cgroups()
		}
	}
	return driver.CgroupInfo{}
}

// List merges the parts' instances and remembers which part has each.
func (d *Driver) List(ctx context.Context) ([]driver.Status, error) {
	var out []driver.Status
	for _, p := range d.parts {
		list, err := p.List(ctx)
		if err != nil {
			return nil, err
		}
		d.mu.Lock()
		for _, st := range list {
			d.owner[st.ID] = p
		}
		d.mu.Unlock()
		out = append(out, list...)
	}
	return out, nil
}

// find returns the part that has id, asking each when it is not known yet.
func (d *Driver) find(ctx context.Context, id string) (driver.Driver, error) {
	d.mu.Lock()
	p := d.owner[id]
	d.mu.Unlock()
	if p != nil {
		return p, nil
	}
	for _, p := range d.parts {
		if _, err := p.Inspect(ctx, id); err == nil {
			d.mu.Lock()
			d.owner[id] = p
			d.mu.Unlock()
			return p, nil
		}
	}
	return nil, errdefs.NotFoundf("instance %s not found on this node", id)
}

// Inspect asks the part that has id.
func (d *Driver) Inspect(ctx context.Context, id string) (driver.Status, error) {
	p, err := d.find(ctx, id)
	if err != nil {
		return driver.Status{}, err
	}
	return p.Inspect(ctx, id)
}

// Create hands the spec to the first part that runs its brand.
func (d *Driver) Create(ctx context.Context, spec driver.Spec) error {
	for _, p := range d.parts {
		for _, b := range p.Brands() {
			if b == spec.Brand {
				if err := p.Create(ctx, spec); err != nil {
					return err
				}
				d.mu.Lock()
				d.owner[spec.ID] = p
				d.mu.Unlock()
				return nil
			}
		}
	}
	return errdefs.InvalidArgument("this node runs no %s instances", spec.Brand)
}

// Start, Stop and Delete go to the part that has the instance.
func (d *Driver) Start(ctx context.Context, id string) error {
	p, err := d.find(ctx, id)
	if err != nil {
		return err
	}
	return p.Start(ctx, id)
}

func (d *Driver) Stop(ctx context.Context, id string, grace time.Duration) error {
	p, err := d.find(ctx, id)
	if err != nil {
		return err
	}
	return p.Stop(ctx, id, grace)
}

func (d *Driver) Delete(ctx context.Context, id string) error {
	p, err := d.find(ctx, id)
	if errdefs.Is(err, errdefs.NotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := p.Delete(ctx, id); err != nil {
		return err
	}
	d.mu.Lock()
	delete(d.owner, id)
	d.mu.Unlock()
	return nil
}

// Update resizes through the part, when it can.
func (d *Driver) Update(ctx context.Context, spec driver.Spec) error {
	p, err := d.find(ctx, spec.ID)
	if err != nil {
		return err
	}
	u, ok := p.(driver.Updater)
	if !ok {
		return errdefs.New(errdefs.NotImplemented, "the %s driver cannot resize instances", p.Name())
	}
	return u.Update(ctx, spec)
}

// Part returns the part that has id (for streams), or nil.
func (d *Driver) Part(ctx context.Context, id string) driver.Driver {
	p, _ := d.find(ctx, id)
	return p
}

func (d *Driver) streamer(ctx context.Context, id string) (driver.Streamer, error) {
	p, err := d.find(ctx, id)
	if err != nil {
		return nil, err
	}
	s, ok := p.(driver.Streamer)
	if !ok {
		return nil, errdefs.New(errdefs.NotImplemented, "the %s driver has no process streams", p.Name())
	}
	return s, nil
}

// Logs, Attach, Resize, Exec and Top forward to the part's Streamer.
func (d *Driver) Logs(ctx context.Context, id string, opts driver.LogOptions, out chan<- driver.LogEntry) error {
	s, err := d.streamer(ctx, id)
	if err != nil {
		return err
	}
	return s.Logs(ctx, id, opts, out)
}

func (d *Driver) Attach(ctx context.Context, id string, opts driver.AttachOptions) (*driver.Streams, error) {
	s, err := d.streamer(ctx, id)
	if err != nil {
		return nil, err
	}
	return s.Attach(ctx, id, opts)
}

func (d *Driver) Resize(ctx context.Context, id string, h, w uint16) error {
	s, err := d.streamer(ctx, id)
	if err != nil {
		return err
	}
	return s.Resize(ctx, id, h, w)
}

func (d *Driver) Exec(ctx context.Context, id string, cfg driver.ExecConfig) (*driver.ExecProcess, error) {
	s, err := d.streamer(ctx, id)
	if err != nil {
		return nil, err
	}
	return s.Exec(ctx, id, cfg)
}

func (d *Driver) Top(ctx context.Context, id string, psArgs string) ([]string, [][]string, error) {
	s, err := d.streamer(ctx, id)
	if err != nil {
		return nil, nil, err
	}
	return s.Top(ctx, id, psArgs)
}

// Stats forwards to the part's StatsReader.
func (d *Driver) Stats(ctx context.Context, id string) (driver.Stats, error) {
	p, err := d.find(ctx, id)
	if err != nil {
		return driver.Stats{}, err
	}
	r, ok := p.(driver.StatsReader)
	if !ok {
		return driver.Stats{}, errdefs.New(errdefs.NotImplemented, "the %s driver has no statistics", p.Name())
	}
	return r.Stats(ctx, id)
}

func (d *Driver) archiver(ctx context.Context, id string) (driver.Archiver, error) {
	p, err := d.find(ctx, id)
	if err != nil {
		return nil, err
	}
	a, ok := p.(driver.Archiver)
	if !ok {
		return nil, errdefs.New(errdefs.NotImplemented, "the %s driver cannot copy files", p.Name())
	}
	return a, nil
}

// StatPath, ArchivePath and ExtractArchive forward to the part's Archiver.
func (d *Driver) StatPath(ctx context.Context, id, path string) (driver.PathStat, error) {
	a, err := d.archiver(ctx, id)
	if err != nil {
		return driver.PathStat{}, err
	}
	return a.StatPath(ctx, id, path)
}

func (d *Driver) ArchivePath(ctx context.Context, id, path string, w io.Writer) error {
	a, err := d.archiver(ctx, id)
	if err != nil {
		return err
	}
	return a.ArchivePath(ctx, id, path, w)
}

func (d *Driver) ExtractArchive(ctx context.Context, id, dir string, r io.Reader, opts driver.ArchiveOptions) error {
	a, err := d.archiver(ctx, id)
	if err != nil {
		return err
	}
	return a.ExtractArchive(ctx, id, dir, r, opts)
}

// HostInterfaces merges the names of every part that connects NICs: which
// part runs an instance may not be known before it is created, and a name
// that matches no interface costs nothing.
func (d *Driver) HostInterfaces(id string, nics []driver.NICRef) [][]string {
	out := make([][]string, len(nics))
	for _, p := range d.parts {
		if h, ok := p.(driver.HostInterfacer); ok {
			for i, names := range h.HostInterfaces(id, nics) {
				if i < len(out) {
					out[i] = append(out[i], names...)
				}
			}
		}
	}
	return out
}
