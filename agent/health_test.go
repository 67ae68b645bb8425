package agent

import (
	"context"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"flotilla/agent/driver"
	"flotilla/agent/driver/sim"
	"flotilla/api/agentapi/wire"
)

func TestHealthRecord(t *testing.T) {
	started := time.Now()
	probe := func(after time.Duration, code int) wire.HealthResult {
		return wire.HealthResult{Start: started.Add(after), End: started.Add(after), ExitCode: code}
	}
	type step struct {
		after  time.Duration
		code   int
		status string
		streak int
	}
	tests := []struct {
		name        string
		retries     int
		startPeriod time.Duration
		steps       []step
	}{
		{"StartingToHealthy", 3, 0, []step{
			{time.Second, 1, wire.HealthStarting, 1},
			{2 * time.Second, 0, wire.HealthHealthy, 0},
		}},
		{"UnhealthyAfterRetries", 2, 0, []step{
			{time.Second, 0, wire.HealthHealthy, 0},
			{2 * time.Second, 1, wire.HealthHealthy, 1},
			{3 * time.Second, -1, wire.HealthUnhealthy, 2},
			{4 * time.Second, 1, wire.HealthUnhealthy, 3},
			{5 * time.Second, 0, wire.HealthHealthy, 0},
		}},
		{"UnhealthyWhileStarting", 2, 0, []step{
			{time.Second, 1, wire.HealthStarting, 1},
			{2 * time.Second, 1, wire.HealthUnhealthy, 2},
		}},
		{"StartPeriodFailuresDoNotCount", 1, 5 * time.Second, []step{
			{time.Second, 1, wire.HealthStarting, 0},
			{4 * time.Second, 1, wire.HealthStarting, 0},
			{6 * time.Second, 1, wire.HealthUnhealthy, 1},
		}},
		{"StartPeriodEndsAtFirstSuccess", 1, 10 * time.Second, []step{
			{time.Second, 0, wire.HealthHealthy, 0},
			{2 * time.Second, 1, wire.HealthUnhealthy, 1},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &healthCheck{spec: driver.Healthcheck{Retries: tt.retries, StartPeriod: tt.startPeriod}, started: started,
				health: wire.Health{Status: wire.HealthStarting}}
			for i, s := range tt.steps {
				before := c.health
				changed := c.record(probe(s.after, s.code))
				if c.health.Status != s.status || c.health.FailingStreak != s.streak {
					t.Fatalf("step %d (exit %d at %v): %s streak %d, want %s streak %d", i, s.code, s.after,
						c.health.Status, c.health.FailingStreak, s.status, s.streak)
				}
				if want := before.Status != s.status || before.FailingStreak != s.streak; changed != want {
					t.Fatalf("step %d: changed = %v, want %v", i, changed, want)
				}
			}
		})
	}
	t.Run("LogKeepsLastFive", func(t *testing.T) {
		c := &healthCheck{spec: driver.Healthcheck{Retries: 3}, started: started, health: wire.Health{Status: wire.HealthStarting}}
		for i := range 8 {
			c.record(probe(time.Duration(i)*time.Second, i%2))
		}
		if n := len(c.health.Log); n != wire.HealthLogSize {
			t.Fatalf("log has %d results, want %d", n, wire.HealthLogSize)
		}
		if got := c.health.Log[0].Start; !got.Equal(started.Add(3 * time.Second)) {
			t.Fatalf("oldest result kept started at %v, want the 4th probe", got.Sub(started))
		}
	})
}

func TestProbeOutputTruncated(t *testing.T) {
	o := &probeOutput{}
	o.Write([]byte(strings.Repeat("a", wire.HealthOutputMax-1)))
	o.Write([]byte("bcd"))
	if s := o.String(); len(s) != wire.HealthOutputMax+3 || !strings.HasSuffix(s, "ab...") {
		t.Fatalf("output of %d bytes ends %q", len(s), s[len(s)-8:])
	}
}

// probeDriver is the sim driver with health probes answered by the test:
// exit code (or -2: hang until killed) and output.
type probeDriver struct {
	*sim.Driver
	mu     sync.Mutex
	code   int
	calls  int
	killed int
	cmds   [][]string
}

func (d *probeDriver) setCode(code int) {
	d.mu.Lock()
	d.code = code
	d.mu.Unlock()
}

func (d *probeDriver) counts() (calls, killed int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.calls, d.killed
}

func (d *probeDriver) Exec(ctx context.Context, id string, cfg driver.ExecConfig) (*driver.ExecProcess, error) {
	if _, err := d.Driver.Exec(ctx, id, driver.ExecConfig{Cmd: []string{"true"}}); err != nil {
		return nil, err // not running
	}
	d.mu.Lock()
	d.calls++
	d.cmds = append(d.cmds, cfg.Cmd)
	code := d.code
	d.mu.Unlock()
	outR, outW := io.Pipe()
	done := make(chan struct{})
	var once sync.Once
	exit := code
	finish := func(c int) {
		once.Do(func() {
			exit = c
			outW.Close()
			close(done)
		})
	}
	if code != -2 {
		go func() {
			io.WriteString(outW, "probe says "+strings.Join(cfg.Cmd, " ")+"\n")
			finish(code)
		}()
	}
	ep := &driver.ExecProcess{Pid: 42}
	ep.Stdout, ep.Done = outR, done
	ep.Close = func() error {
		d.mu.Lock()
		d.killed++
		d.mu.Unlock()
		finish(137)
		return nil
	}
	ep.Wait = func() (int, error) { <-done; return exit, nil }
	return ep, nil
}

func waitHealth(t *testing.T, cp *fakeCP, id, status string, cond func(*wire.Health) bool) *wire.Health {
	t.Helper()
	var h *wire.Health
	waitFor(t, 5*time.Second, id+" to report health "+status, func() bool {
		st, _ := cp.Status(id)
		h = st.Health
		return h != nil && h.Status == status && (cond == nil || cond(h))
	})
	return h
}

func TestHealthProbes(t *testing.T) {
	cp := newFakeCP()
	d := &probeDriver{Driver: MustSim(t, sim.Config{})}
	a := running("a")
	a.Spec.Healthcheck = &driver.Healthcheck{Test: []string{"CMD-SHELL", "test -f /ok"}, Interval: 20 * time.Millisecond,
		Timeout: 100 * time.Millisecond, StartInterval: 10 * time.Millisecond, Retries: 2}
	d.setCode(1)
	cp.Set(a, running("plain"))
	startAgent(t, testConfig(t, cp, d, t.TempDir()))

	h := waitHealth(t, cp, "a", wire.HealthUnhealthy, nil)
	if h.FailingStreak < 2 || len(h.Log) == 0 || h.Log[0].ExitCode != 1 || h.Log[0].Output != "probe says /bin/sh -c test -f /ok\n" {
		t.Fatalf("unhealthy: %+v", h)
	}
	if st, _ := cp.Status("plain"); st.Health != nil {
		t.Fatalf("a container without a health check reports health %+v", st.Health)
	}

	t.Run("Healthy", func(t *testing.T) {
		d.setCode(0)
		h := waitHealth(t, cp, "a", wire.HealthHealthy, nil)
		if h.FailingStreak != 0 || h.Log[len(h.Log)-1].ExitCode != 0 || h.Log[len(h.Log)-1].End.Before(h.Log[len(h.Log)-1].Start) {
			t.Fatalf("healthy: %+v", h)
		}
		// Probes that change nothing are not reported.
		n := cp.Reports("a")
		calls, _ := d.counts()
		waitFor(t, 2*time.Second, "more probes", func() bool { c, _ := d.counts(); return c >= calls+5 })
		if m := cp.Reports("a"); m > n+1 {
			t.Fatalf("%d reports during 5 unchanged probes", m-n)
		}
	})
	t.Run("TimeoutKillsAndFails", func(t *testing.T) {
		_, killed := d.counts()
		d.setCode(-2)
		h := waitHealth(t, cp, "a", wire.HealthUnhealthy, nil)
		last := h.Log[len(h.Log)-1]
		if last.ExitCode != -1 || last.Output != "Health check exceeded timeout (100ms)" || last.End.Sub(last.Start) < 100*time.Millisecond {
			t.Fatalf("timed out probe: %+v", last)
		}
		if _, k := d.counts(); k < killed+2 {
			t.Fatalf("%d probes killed, want 2 or more", k-killed)
		}
	})
	t.Run("StopsWithTheContainer", func(t *testing.T) {
		d.setCode(0)
		waitHealth(t, cp, "a", wire.HealthHealthy, nil)
		cp.Update("a", func(a *wire.Assignment) { a.DesiredState = wire.DesiredStopped })
		st := waitState(t, cp, "a", driver.StateStopped, 2)
		if st.Health == nil || st.Health.Status != wire.HealthUnhealthy {
			t.Fatalf("stopped container's health: %+v", st.Health)
		}
		calls, _ := d.counts()
		time.Sleep(150 * time.Millisecond)
		if c, _ := d.counts(); c != calls {
			t.Fatalf("%d probes of a stopped container", c-calls)
		}
	})
	t.Run("RestartBeginsStarting", func(t *testing.T) {
		d.setCode(-2) // the first probe hangs: the run is seen starting
		cp.Update("a", func(a *wire.Assignment) { a.DesiredState = wire.DesiredRunning })
		st := waitState(t, cp, "a", driver.StateRunning, 3)
		if st.Health == nil || st.Health.Status != wire.HealthStarting || st.Health.FailingStreak > 1 || len(st.Health.Log) == 0 {
			t.Fatalf("restarted container's health: %+v (the log of the last run is kept)", st.Health)
		}
		d.setCode(0)
		waitHealth(t, cp, "a", wire.HealthHealthy, nil)
	})
	t.Run("DeleteForgets", func(t *testing.T) {
		cp.Update("a", func(a *wire.Assignment) { a.DesiredState = wire.DesiredDeleted })
		waitState(t, cp, "a", wire.StateDeleted, 4)
		calls, _ := d.counts()
		time.Sleep(100 * time.Millisecond)
		if c, _ := d.counts(); c != calls {
			t.Fatalf("%d probes of a deleted container", c-calls)
		}
	})
}
