// Package sim is a simulated driver.Driver: instances live in memory, follow
// the same create/start/stop/delete state machine as a real driver, and
// optionally survive the process through a JSON state file. It is what scale
// tests, laptops without runc, and API tests use.
//
// Workload behaviour is steered through the spec's environment (the one
// convention, so that it works the same from docker run -e, triton create
// metadata or a Go test):
//
//	SIM_EXIT=<code>          the workload exits with <code> after it starts
//	SIM_EXIT_AFTER=<dur>     ... that long after it starts (Go duration, default 0)
//	SIM_CREATE_ERROR=<text>  Create fails with errdefs NotFound and <text>
//	                         (a missing image, say)
//	SIM_START_ERROR=<text>   Start fails with errdefs Internal and <text>
//
// With a state file, Start, Stop, Delete and Update return once their change
// is on disk (group commit: concurrent changes share one write); a Create is
// written within 20ms.
//
// A workload without SIM_EXIT runs until it is stopped. Stop is a clean
// shutdown: exit code 0. Exits are computed lazily from timestamps when the
// instance is looked at, so an idle instance costs no goroutine and no timer.
//
// Imports: standard library, agent/driver and api/errdefs only.
package sim

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"flotilla/agent/driver"
	"flotilla/api/errdefs"
	"flotilla/internal/atomicfile"
)

// Config configures a simulated driver. The zero value is a working driver
// with no latency, all brands and no persistence.
type Config struct {
	// StartDelay and StopDelay are how long Start and Stop take.
	StartDelay time.Duration
	StopDelay  time.Duration
	// Brands is what the driver claims to run; empty means all known brands.
	Brands []string
	// StateFile, when set, makes the driver persistent: every change is
	// written there (JSON, atomic rename) before the call that made it
	// returns, and a new driver over the same file adopts the instances
	// with their states and start counts. Concurrent changes share one write.
	StateFile string
	// Fail, when set, is called before each operation ("create", "start",
	// "stop", "delete", "update", "inspect", "list") with the instance id
	// ("" for list); a non-nil result is returned as the operation's error
	// without changing anything. Failure injection for tests.
	Fail func(op, id string) error
	// Now replaces time.Now (tests).
	Now func() time.Time
}

// instance is one simulated workload. All fields are guarded by Driver.mu.
type instance struct {
	Spec       driver.Spec `json:"spec"`
	State      string      `json:"state"` // provisioning (created), running, stopped
	ExitCode   *int        `json:"exit_code,omitempty"`
	Pid        int         `json:"pid,omitempty"`
	StartedAt  time.Time   `json:"started_at,omitzero"`
	FinishedAt time.Time   `json:"finished_at,omitzero"`
	// ExitAt is when a running workload with SIM_EXIT exits on its own.
	ExitAt   time.Time `json:"exit_at,omitzero"`
	Starts   int       `json:"starts"`
	Restarts int       `json:"restarts"`
	// Snapshots are the instance's snapshots, by name: records only.
	Snapshots map[string]driver.SnapshotInfo `json:"snapshots,omitempty"`
}

// stateFile is the persisted form of a driver.
type stateFile struct {
	NextPid   int                  `json:"next_pid"`
	Instances map[string]*instance `json:"instances"`
}

// Driver is the simulated driver. It is safe for concurrent use.
type Driver struct {
	cfg    Config
	brands []string

	mu        sync.Mutex
	instances map[string]*instance
	nextPid   int
	seq       uint64 // increments on every change; guarded by mu
	// encoded caches each instance's JSON for the state file, so that a
	// save re-encodes only what changed since the last one.
	encoded map[string][]byte
	flushAt *time.Timer // pending write of lazy changes

	save saver
}

var (
	_ driver.Driver  = (*Driver)(nil)
	_ driver.Updater = (*Driver)(nil)
)

// New returns a simulated driver. With cfg.StateFile set it adopts the
// instances saved there; a missing file is an empty driver, an unreadable or
// corrupt one is an error.
func New(cfg Config) (*Driver, error) {
	d := &Driver{cfg: cfg, instances: map[string]*instance{}, nextPid: 1000, encoded: map[string][]byte{}}
	d.brands = slices.Clone(cfg.Brands)
	if len(d.brands) == 0 {
		d.brands = []string{driver.BrandContainer, driver.BrandLX, driver.BrandBhyve, driver.BrandKVM}
	}
	if d.cfg.Now == nil {
		d.cfg.Now = time.Now
	}
	d.save.cond = sync.NewCond(&d.save.mu)
	if cfg.StateFile != "" {
		if err := d.load(); err != nil {
			return nil, err
		}
	}
	return d, nil
}

func (d *Driver) load() error {
	b, err := os.ReadFile(d.cfg.StateFile)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "sim: read state file %s", d.cfg.StateFile)
	}
	var sf stateFile
	if err := json.Unmarshal(b, &sf); err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "sim: state file %s is corrupt; remove it to start empty", d.cfg.StateFile)
	}
	for id, in := range sf.Instances {
		if in == nil {
			continue
		}
		d.instances[id] = in
		if d.encoded[id], err = json.Marshal(in); err != nil {
			return errdefs.Wrap(errdefs.Internal, err, "sim: encode instance %s", id)
		}
	}
	if sf.NextPid > d.nextPid {
		d.nextPid = sf.NextPid
	}
	return nil
}

// Name returns "sim".
func (d *Driver) Name() string { return "sim" }

// Brands returns the brands the driver was configured with.
func (d *Driver) Brands() []string { return slices.Clone(d.brands) }

// Starts returns how many times the instance has been started (0 for an
// unknown id). Tests use it to prove a workload was not restarted.
func (d *Driver) Starts(id string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	if in := d.instances[id]; in != nil {
		return in.Starts
	}
	return 0
}

// Len returns the number of instances the driver holds.
func (d *Driver) Len() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.instances)
}

// List returns the status of every instance.
func (d *Driver) List(ctx context.Context) ([]driver.Status, error) {
	if err := d.fail("list", ""); err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	now := d.cfg.Now()
	out := make([]driver.Status, 0, len(d.instances))
	for id, in := range d.instances {
		out = append(out, in.status(id, now))
	}
	slices.SortFunc(out, func(a, b driver.Status) int { return strings.Compare(a.ID, b.ID) })
	return out, nil
}

// Inspect returns the status of one instance, or errdefs NotFound.
func (d *Driver) Inspect(ctx context.Context, id string) (driver.Status, error) {
	if err := d.fail("inspect", id); err != nil {
		return driver.Status{}, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	in, err := d.get(id)
	if err != nil {
		return driver.Status{}, err
	}
	return in.status(id, d.cfg.Now()), nil
}

// Create records a new instance in state provisioning. Creating an existing
// id is a no-op. It returns errdefs Invalid for a spec without id or with a
// brand the driver does not run, and errdefs NotFound when the spec asks for
// SIM_CREATE_ERROR.
func (d *Driver) Create(ctx context.Context, spec driver.Spec) error {
	if spec.ID == "" {
		return errdefs.InvalidArgument("sim: spec has no instance id")
	}
	if spec.Brand != "" && !slices.Contains(d.brands, spec.Brand) {
		return errdefs.InvalidArgument("sim: brand %q is not run by this driver (brands: %s)", spec.Brand, strings.Join(d.brands, ", "))
	}
	if err := d.fail("create", spec.ID); err != nil {
		return err
	}
	if msg, ok := envValue(spec.Env, "SIM_CREATE_ERROR"); ok {
		return errdefs.NotFoundf("sim: create %s: %s", spec.ID, msg)
	}
	d.mu.Lock()
	if _, ok := d.instances[spec.ID]; ok {
		d.mu.Unlock()
		return nil
	}
	d.instances[spec.ID] = &instance{Spec: cloneSpec(spec), State: driver.StateProvisioning}
	// A created instance lost in a crash is created again by its agent, so
	// the write of a create may wait for the next one.
	return d.changedLazily(spec.ID)
}

// Start starts a created or stopped instance after StartDelay. Starting a
// running instance is a no-op.
func (d *Driver) Start(ctx context.Context, id string) error {
	if err := d.fail("start", id); err != nil {
		return err
	}
	d.mu.Lock()
	in, err := d.get(id)
	if err != nil {
		d.mu.Unlock()
		return err
	}
	if in.runningAt(d.cfg.Now()) {
		d.mu.Unlock()
		return nil
	}
	spec := in.Spec
	d.mu.Unlock()

	if msg, ok := envValue(spec.Env, "SIM_START_ERROR"); ok {
		return errdefs.New(errdefs.Internal, "sim: start %s: %s", id, msg)
	}
	exitCode, exitAfter, err := exitPlan(spec.Env)
	if err != nil {
		return err
	}
	if err := sleep(ctx, d.cfg.StartDelay); err != nil {
		return err
	}

	d.mu.Lock()
	in, err = d.get(id) // deleted meanwhile?
	if err != nil {
		d.mu.Unlock()
		return err
	}
	now := d.cfg.Now()
	if in.runningAt(now) {
		d.mu.Unlock()
		return nil
	}
	d.nextPid++
	in.State = driver.StateRunning
	in.Pid = d.nextPid
	in.StartedAt = now
	in.FinishedAt = time.Time{}
	in.ExitCode = nil
	in.ExitAt = time.Time{}
	in.Starts++
	if exitCode != nil {
		in.ExitAt = now.Add(exitAfter)
		in.ExitCode = exitCode // revealed by status only once ExitAt has passed
	}
	return d.changed(id)
}

// Stop stops a running instance after StopDelay (bounded by grace: the
// simulated workload is "killed" when the grace runs out). Stopping an
// instance that is not running is a no-op.
func (d *Driver) Stop(ctx context.Context, id string, grace time.Duration) error {
	if err := d.fail("stop", id); err != nil {
		return err
	}
	d.mu.Lock()
	in, err := d.get(id)
	if err != nil {
		d.mu.Unlock()
		return err
	}
	if !in.runningAt(d.cfg.Now()) {
		in.settle(d.cfg.Now())
		d.mu.Unlock()
		return nil
	}
	d.mu.Unlock()

	delay, code := d.cfg.StopDelay, 0
	if grace > 0 && delay > grace {
		delay, code = grace, 137 // killed
	}
	if err := sleep(ctx, delay); err != nil {
		return err
	}

	d.mu.Lock()
	in, err = d.get(id)
	if err != nil {
		d.mu.Unlock()
		return err
	}
	now := d.cfg.Now()
	if !in.runningAt(now) {
		in.settle(now)
		d.mu.Unlock()
		return nil
	}
	in.State = driver.StateStopped
	in.Pid = 0
	in.FinishedAt = now
	in.ExitAt = time.Time{}
	in.ExitCode = &code
	return d.changed(id)
}

// Delete removes an instance, stopping it first if it runs (without delay).
// Deleting an unknown id is a no-op.
func (d *Driver) Delete(ctx context.Context, id string) error {
	if err := d.fail("delete", id); err != nil {
		return err
	}
	d.mu.Lock()
	if _, ok := d.instances[id]; !ok {
		d.mu.Unlock()
		return nil
	}
	delete(d.instances, id)
	return d.changed(id)
}

// Update changes the resources and data disks of an existing instance.
func (d *Driver) Update(ctx context.Context, spec driver.Spec) error {
	if err := d.fail("update", spec.ID); err != nil {
		return err
	}
	d.mu.Lock()
	in, err := d.get(spec.ID)
	if err != nil {
		d.mu.Unlock()
		return err
	}
	in.Spec.MemoryMiB = spec.MemoryMiB
	in.Spec.DiskMiB = spec.DiskMiB
	in.Spec.VCPUs = spec.VCPUs
	in.Spec.CPUShares = spec.CPUShares
	in.Spec.PIDsLimit = spec.PIDsLimit
	in.Spec.Disks = slices.Clone(spec.Disks)
	return d.changed(spec.ID)
}

// Spec returns the spec an instance was created with (after updates).
func (d *Driver) Spec(id string) (driver.Spec, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	in, err := d.get(id)
	if err != nil {
		return driver.Spec{}, err
	}
	return cloneSpec(in.Spec), nil
}

// get returns the instance or errdefs NotFound. d.mu must be held.
func (d *Driver) get(id string) (*instance, error) {
	in, ok := d.instances[id]
	if !ok {
		return nil, errdefs.NotFoundf("sim: no instance %s on this node", id)
	}
	return in, nil
}

func (d *Driver) fail(op, id string) error {
	if d.cfg.Fail == nil {
		return nil
	}
	return d.cfg.Fail(op, id)
}

// changed records a change of instance id; it must be called with d.mu
// held and releases it. With a state file it returns once the change is on
// disk.
func (d *Driver) changed(id string) error {
	seq, err := d.record(id)
	d.mu.Unlock()
	if err != nil || d.cfg.StateFile == "" {
		return err
	}
	return d.save.wait(seq, d.snapshot, d.cfg.StateFile)
}

// changedLazily is changed without waiting: the change is written within
// 20ms, or earlier by another change's write.
func (d *Driver) changedLazily(id string) error {
	defer d.mu.Unlock()
	if _, err := d.record(id); err != nil || d.cfg.StateFile == "" {
		return err
	}
	if d.flushAt == nil {
		d.flushAt = time.AfterFunc(20*time.Millisecond, func() {
			d.mu.Lock()
			d.flushAt = nil
			seq := d.seq
			d.mu.Unlock()
			d.save.wait(seq, d.snapshot, d.cfg.StateFile) // a failure shows in the next durable change
		})
	}
	return nil
}

// Flush writes every change made so far to the state file (a no-op
// without one).
func (d *Driver) Flush() error {
	if d.cfg.StateFile == "" {
		return nil
	}
	d.mu.Lock()
	seq := d.seq
	d.mu.Unlock()
	return d.save.wait(seq, d.snapshot, d.cfg.StateFile)
}

// record counts a change of id and caches its encoding. d.mu must be held.
func (d *Driver) record(id string) (uint64, error) {
	d.seq++
	if d.cfg.StateFile == "" {
		return d.seq, nil
	}
	if in, ok := d.instances[id]; ok {
		b, err := json.Marshal(in)
		if err != nil {
			return 0, errdefs.Wrap(errdefs.Internal, err, "sim: encode instance %s", id)
		}
		d.encoded[id] = b
	} else {
		delete(d.encoded, id)
	}
	return d.seq, nil
}

// snapshot assembles the state file from the cached per-instance JSON and
// returns it with the change sequence it covers.
func (d *Driver) snapshot() ([]byte, uint64, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	size := 64
	for id, b := range d.encoded {
		size += len(id) + len(b) + 8
	}
	buf := make([]byte, 0, size)
	buf = fmt.Appendf(buf, `{"next_pid":%d,"instances":{`, d.nextPid)
	first := true
	for id, b := range d.encoded {
		if !first {
			buf = append(buf, ',')
		}
		first = false
		key, _ := json.Marshal(id) // a string always encodes
		buf = append(buf, key...)
		buf = append(buf, ':')
		buf = append(buf, b...)
	}
	buf = append(buf, "}}"...)
	return buf, d.seq, nil
}

// runningAt reports whether the workload runs at now (it may have exited on
// its own since it was last looked at).
func (in *instance) runningAt(now time.Time) bool {
	return in.State == driver.StateRunning && (in.ExitAt.IsZero() || now.Before(in.ExitAt))
}

// settle turns a running instance whose planned exit has passed into a
// stopped one.
func (in *instance) settle(now time.Time) {
	if in.State == driver.StateRunning && !in.runningAt(now) {
		in.State = driver.StateStopped
		in.Pid = 0
		in.FinishedAt = in.ExitAt
		in.ExitAt = time.Time{}
	}
}

func (in *instance) status(id string, now time.Time) driver.Status {
	st := driver.Status{
		ID:        id,
		State:     in.State,
		Pid:       in.Pid,
		StartedAt: in.StartedAt,
		Restarts:  in.Restarts,
	}
	switch {
	case in.State == driver.StateRunning && !in.runningAt(now):
		st.State = driver.StateStopped
		st.Pid = 0
		st.FinishedAt = in.ExitAt
		st.ExitCode = copyInt(in.ExitCode)
	case in.State == driver.StateRunning:
		// The planned exit code stays hidden until the exit happens.
	default:
		st.FinishedAt = in.FinishedAt
		st.ExitCode = copyInt(in.ExitCode)
	}
	return st
}

// exitPlan reads SIM_EXIT and SIM_EXIT_AFTER.
func exitPlan(env []string) (*int, time.Duration, error) {
	v, ok := envValue(env, "SIM_EXIT")
	if !ok {
		return nil, 0, nil
	}
	code, err := strconv.Atoi(v)
	if err != nil || code < 0 || code > 255 {
		return nil, 0, errdefs.InvalidArgument("sim: SIM_EXIT=%q is not an exit code 0-255", v)
	}
	var after time.Duration
	if v, ok := envValue(env, "SIM_EXIT_AFTER"); ok {
		after, err = time.ParseDuration(v)
		if err != nil || after < 0 {
			return nil, 0, errdefs.InvalidArgument("sim: SIM_EXIT_AFTER=%q is not a duration like 2s", v)
		}
	}
	return &code, after, nil
}

func envValue(env []string, key string) (string, bool) {
	for i := len(env) - 1; i >= 0; i-- {
		if k, v, ok := strings.Cut(env[i], "="); ok && k == key {
			return v, true
		}
	}
	return "", false
}

func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return errdefs.Wrap(errdefs.Unavailable, ctx.Err(), "sim: interrupted")
	}
}

func copyInt(p *int) *int {
	if p == nil {
		return nil
	}
	v := *p
	return &v
}

func cloneSpec(s driver.Spec) driver.Spec {
	s.Entrypoint = slices.Clone(s.Entrypoint)
	s.Cmd = slices.Clone(s.Cmd)
	s.Env = slices.Clone(s.Env)
	s.NICs = slices.Clone(s.NICs)
	s.Disks = slices.Clone(s.Disks)
	if s.Labels != nil {
		m := make(map[string]string, len(s.Labels))
		for k, v := range s.Labels {
			m[k] = v
		}
		s.Labels = m
	}
	if s.Metadata != nil {
		m := make(map[string]string, len(s.Metadata))
		for k, v := range s.Metadata {
			m[k] = v
		}
		s.Metadata = m
	}
	return s
}

// saver writes snapshots with group commit: a caller waits until a write
// that covers its change has finished; whoever finds no write in progress
// performs one for everybody waiting.
type saver struct {
	mu      sync.Mutex
	cond    *sync.Cond
	saved   uint64 // highest change sequence on disk
	writing bool
}

func (s *saver) wait(seq uint64, snapshot func() ([]byte, uint64, error), path string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		if s.saved >= seq {
			return nil
		}
		if s.writing {
			s.cond.Wait()
			continue
		}
		s.writing = true
		s.mu.Unlock()
		b, covered, err := snapshot()
		if err == nil {
			err = writeAtomic(path, b)
		}
		s.mu.Lock()
		s.writing = false
		s.cond.Broadcast()
		if err != nil {
			return errdefs.Wrap(errdefs.Internal, err, "sim: save state file %s", path)
		}
		if covered > s.saved {
			s.saved = covered
		}
	}
}

// writeAtomic writes b to path so that a reader (or a process killed
// mid-write) never sees a partial file.
func writeAtomic(path string, b []byte) error {
	return atomicfile.WriteFile(path, b, 0o600, atomicfile.Options{})
}
