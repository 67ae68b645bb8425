package agent

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"time"

	"flotilla/agent/driver"
	"flotilla/api/agentapi/wire"
	"flotilla/api/errdefs"
)

// healthChecks runs the Docker health checks of the node's running
// containers, one prober per container run, with dockerd's state machine:
// "starting" until the first successful probe, "healthy" after a success,
// "unhealthy" after Retries failures in a row; failures within the start
// period do not count while the container is still starting. The reconcile
// loop asks for the health of an instance as it reports it (observe), and
// is told (changed) when a probe changes its status or failing streak, so
// the control plane hears of changes, not of every probe.
type healthChecks struct {
	exec    driver.Streamer // nil: the driver cannot run probes
	changed func(id string)
	log     *slog.Logger

	base context.Context
	stop context.CancelFunc

	mu     sync.Mutex
	checks map[string]*healthCheck
}

// healthCheck is the health of one container: the run being probed (its
// start time and pid) and the check's state, guarded by healthChecks.mu.
type healthCheck struct {
	spec    driver.Healthcheck
	started time.Time
	pid     int
	cancel  context.CancelFunc // nil once the prober has stopped
	health  wire.Health
}

func newHealthChecks(drv driver.Driver, log *slog.Logger, changed func(id string)) *healthChecks {
	h := &healthChecks{changed: changed, log: log, checks: map[string]*healthCheck{}}
	h.exec, _ = drv.(driver.Streamer)
	h.base, h.stop = context.WithCancel(context.Background())
	return h
}

// observe brings the instance's prober in line with its spec and status,
// and returns the health to report: nil for a container without a health
// check (or on a driver that cannot run one). A new run of the container
// starts at "starting" with no failures (keeping the log, as dockerd does);
// a stopped one is "unhealthy", as dockerd shows it once it stops probing.
func (h *healthChecks) observe(id string, spec driver.Spec, st driver.Status) *wire.Health {
	h.mu.Lock()
	defer h.mu.Unlock()
	c := h.checks[id]
	if spec.Healthcheck == nil || len(spec.Healthcheck.Command()) == 0 || h.exec == nil {
		if c != nil {
			c.halt()
			delete(h.checks, id)
		}
		return nil
	}
	if st.State != driver.StateRunning {
		if c == nil {
			return nil
		}
		if c.cancel != nil {
			c.halt()
			c.health.Status = wire.HealthUnhealthy
		}
		return c.snapshot()
	}
	if c != nil && c.cancel != nil && c.started.Equal(st.StartedAt) && c.pid == st.Pid && sameHealthcheck(c.spec, *spec.Healthcheck) {
		return c.snapshot()
	}
	next := &healthCheck{spec: *spec.Healthcheck, started: st.StartedAt, pid: st.Pid,
		health: wire.Health{Status: wire.HealthStarting}}
	if c != nil {
		c.halt()
		next.health.Log = c.health.Log
	}
	if next.started.IsZero() {
		next.started = time.Now()
	}
	ctx, cancel := context.WithCancel(h.base)
	next.cancel = cancel
	h.checks[id] = next
	go h.run(ctx, id, next)
	return next.snapshot()
}

// drop stops probing an instance and forgets its health.
func (h *healthChecks) drop(id string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if c := h.checks[id]; c != nil {
		c.halt()
		delete(h.checks, id)
	}
}

// stopAll stops every prober (the agent is stopping).
func (h *healthChecks) stopAll() {
	h.stop()
}

func (c *healthCheck) halt() {
	if c.cancel != nil {
		c.cancel()
		c.cancel = nil
	}
}

func (c *healthCheck) snapshot() *wire.Health {
	out := c.health
	out.Log = slices.Clone(c.health.Log)
	return &out
}

func sameHealthcheck(x, y driver.Healthcheck) bool {
	return slices.Equal(x.Test, y.Test) && x.Interval == y.Interval && x.Timeout == y.Timeout &&
		x.StartPeriod == y.StartPeriod && x.StartInterval == y.StartInterval && x.Retries == y.Retries
}

// run probes one container run until ctx ends: after each interval, a
// probe; a result that changes the status or the failing streak is
// announced. A container found not running is announced too, so that the
// reconcile loop looks at it (and stops this prober).
func (h *healthChecks) run(ctx context.Context, id string, c *healthCheck) {
	for {
		h.mu.Lock()
		wait := c.interval(time.Now())
		h.mu.Unlock()
		if !sleepCtx(ctx, wait) {
			return
		}
		res, ran := h.probe(ctx, id, c.spec)
		if ctx.Err() != nil {
			return
		}
		changed := !ran
		if ran {
			h.mu.Lock()
			if h.checks[id] != c || c.cancel == nil {
				h.mu.Unlock()
				return
			}
			changed = c.record(res)
			h.mu.Unlock()
		}
		if changed {
			h.changed(id)
		}
	}
}

// interval is the wait before the next probe: the start interval while
// the container is starting within its start period, else the interval.
func (c *healthCheck) interval(now time.Time) time.Duration {
	if now.Sub(c.started) < c.spec.StartPeriod && c.health.Status == wire.HealthStarting {
		return c.spec.StartInterval
	}
	return c.spec.Interval
}

// record applies a probe's result to the state and says whether the
// status or the failing streak changed.
func (c *healthCheck) record(r wire.HealthResult) bool {
	h := &c.health
	status, streak := h.Status, h.FailingStreak
	h.Log = append(h.Log, r)
	if n := len(h.Log); n > wire.HealthLogSize {
		h.Log = slices.Clone(h.Log[n-wire.HealthLogSize:])
	}
	switch {
	case r.ExitCode == 0:
		h.Status, h.FailingStreak = wire.HealthHealthy, 0
	case h.Status == wire.HealthStarting && r.Start.Sub(c.started) < c.spec.StartPeriod:
		// Still coming up: failures do not count yet.
	default:
		h.FailingStreak++
		if h.FailingStreak >= max(c.spec.Retries, 1) {
			h.Status = wire.HealthUnhealthy
		}
	}
	return h.Status != status || h.FailingStreak != streak
}

// probe runs the check once in the container through the driver's exec.
// A probe that outlives the timeout is killed and fails with exit code -1,
// as one that cannot be run does. It returns false, with no result, when
// the container is not running or ctx ended.
func (h *healthChecks) probe(ctx context.Context, id string, spec driver.Healthcheck) (wire.HealthResult, bool) {
	res := wire.HealthResult{Start: time.Now(), ExitCode: -1}
	pctx, cancel := context.WithTimeout(ctx, spec.Timeout)
	defer cancel()
	proc, err := h.exec.Exec(pctx, id, driver.ExecConfig{Cmd: spec.Command(), AttachStdout: true, AttachStderr: true})
	if errdefs.Is(err, errdefs.Conflict) || ctx.Err() != nil {
		return res, false
	}
	if err != nil {
		res.End, res.Output = time.Now(), err.Error()
		return res, true
	}
	out := &probeOutput{}
	var copies sync.WaitGroup
	for _, r := range []io.Reader{proc.Stdout, proc.Stderr} {
		if r != nil {
			copies.Go(func() { io.Copy(out, r) })
		}
	}
	select {
	case <-proc.Done:
	case <-pctx.Done():
		proc.Close()
		if ctx.Err() != nil {
			return res, false
		}
		res.End = time.Now()
		res.Output = fmt.Sprintf("Health check exceeded timeout (%v)", spec.Timeout)
		return res, true
	}
	code, err := proc.Wait()
	res.End = time.Now()
	if err != nil {
		res.Output = err.Error()
		return res, true
	}
	// The output is complete once the process's pipes close; a process it
	// left behind holding them must not hold the probe up.
	copied := make(chan struct{})
	go func() { copies.Wait(); close(copied) }()
	select {
	case <-copied:
	case <-time.After(100 * time.Millisecond):
	}
	res.ExitCode, res.Output = code, out.String()
	return res, true
}

// probeOutput keeps the first HealthOutputMax bytes of a probe's stdout
// and stderr, marking a cut with "...", as dockerd does.
type probeOutput struct {
	mu  sync.Mutex
	buf bytes.Buffer
	cut bool
}

func (o *probeOutput) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	keep := min(wire.HealthOutputMax-o.buf.Len(), len(p))
	o.buf.Write(p[:keep])
	if keep < len(p) {
		o.cut = true
	}
	return len(p), nil
}

func (o *probeOutput) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.cut {
		return o.buf.String() + "..."
	}
	return o.buf.String()
}
