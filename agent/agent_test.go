package agent

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"flotilla/agent/driver"
	"flotilla/agent/driver/sim"
	"flotilla/api/agentapi/wire"
	"flotilla/api/errdefs"
)

func MustSim(tb testing.TB, cfg sim.Config) *sim.Driver {
	tb.Helper()
	d, err := sim.New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	return d
}

func testConfig(tb testing.TB, cp ControlPlane, d driver.Driver, dataDir string) Config {
	var log *slog.Logger
	if os.Getenv("AGENT_TEST_LOG") != "" {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return Config{
		Name:              "n1",
		DataDir:           dataDir,
		Driver:            d,
		ControlPlane:      cp,
		MemoryMiB:         4096,
		DiskMiB:           10240,
		VCPUs:             4,
		HeartbeatInterval: 50 * time.Millisecond,
		WatchInterval:     20 * time.Millisecond,
		ResyncInterval:    200 * time.Millisecond,
		PollWait:          time.Second,
		BackoffBase:       10 * time.Millisecond,
		BackoffMax:        200 * time.Millisecond,
		Logger:            log,
	}
}

// startAgent runs an agent in the background; the returned stop cancels it
// and checks that Run returned nil promptly.
func startAgent(tb testing.TB, cfg Config) (stop func()) {
	tb.Helper()
	a, err := New(cfg)
	if err != nil {
		tb.Fatalf("New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					tb.Errorf("Run returned %v", err)
				}
			case <-time.After(3 * time.Second):
				tb.Errorf("Run did not return within 3s of cancel")
			}
		})
	}
	tb.Cleanup(stop)
	return stop
}

func TestConverge(t *testing.T) {
	cp := newFakeCP()
	d := MustSim(t, sim.Config{})
	stopped := running("b")
	stopped.DesiredState = wire.DesiredStopped
	cp.Set(running("a"), stopped, running("c", "SIM_EXIT=3"))
	startAgent(t, testConfig(t, cp, d, t.TempDir()))

	if st := waitState(t, cp, "a", driver.StateRunning, 1); st.StartedAt.IsZero() || st.ExitCode != nil {
		t.Fatalf("a: %+v", st)
	}
	waitState(t, cp, "b", driver.StateProvisioning, 1) // created, never started
	st := waitState(t, cp, "c", driver.StateStopped, 1)
	if st.ExitCode == nil || *st.ExitCode != 3 || st.FinishedAt.IsZero() {
		t.Fatalf("c: want exit code 3, got %+v", st)
	}
	time.Sleep(100 * time.Millisecond) // several watch ticks
	if n := d.Starts("c"); n != 1 {
		t.Fatalf("c exited on its own and was started %d times; want 1 (no restart policy)", n)
	}

	t.Run("StopStartDelete", func(t *testing.T) {
		cp.Update("a", func(a *wire.Assignment) { a.DesiredState = wire.DesiredStopped })
		cp.Update("b", func(a *wire.Assignment) { a.DesiredState = wire.DesiredRunning })
		cp.Update("c", func(a *wire.Assignment) { a.DesiredState = wire.DesiredDeleted })
		if st := waitState(t, cp, "a", driver.StateStopped, 2); st.ExitCode == nil || *st.ExitCode != 0 {
			t.Fatalf("a after stop: %+v", st)
		}
		waitState(t, cp, "b", driver.StateRunning, 2)
		waitState(t, cp, "c", wire.StateDeleted, 2)
		if _, err := d.Inspect(context.Background(), "c"); errdefs.CodeOf(err) != errdefs.NotFound {
			t.Fatalf("c still in the driver: %v", err)
		}
	})
	t.Run("StartAgainAfterExit", func(t *testing.T) {
		// An explicit start (new generation) runs an exited workload again.
		cp.Set(running("e", "SIM_EXIT=0"))
		waitState(t, cp, "e", driver.StateStopped, 1)
		cp.Update("e", func(a *wire.Assignment) {})
		waitFor(t, 2*time.Second, "e started twice", func() bool { return d.Starts("e") == 2 })
	})
	t.Run("Heartbeat", func(t *testing.T) {
		waitFor(t, 2*time.Second, "a heartbeat counting running instances", func() bool {
			cp.mu.Lock()
			defer cp.mu.Unlock()
			return len(cp.hbs) > 0 && cp.hbs[len(cp.hbs)-1].Running == 1 && cp.hbs[len(cp.hbs)-1].MemoryMiB == 4096
		})
	})
}

func TestReportRepairedAfterFailure(t *testing.T) {
	cp := newFakeCP()
	var mu sync.Mutex
	failing := 2
	cp.reportErr = func(id string) error {
		mu.Lock()
		defer mu.Unlock()
		if failing > 0 {
			failing--
			return errdefs.New(errdefs.Unavailable, "control plane down")
		}
		return nil
	}
	d := MustSim(t, sim.Config{})
	cp.Set(running("a"))
	startAgent(t, testConfig(t, cp, d, t.TempDir()))
	waitState(t, cp, "a", driver.StateRunning, 1)
	if d.Starts("a") != 1 {
		t.Fatalf("retrying a report restarted the workload: Starts=%d", d.Starts("a"))
	}
}

func TestRebootOnceAcrossRestart(t *testing.T) {
	cp := newFakeCP()
	dir := t.TempDir()
	d := MustSim(t, sim.Config{})
	cp.Set(running("a"))
	stop := startAgent(t, testConfig(t, cp, d, dir))
	waitState(t, cp, "a", driver.StateRunning, 1)

	cp.Update("a", func(a *wire.Assignment) { a.RebootCount = 1 })
	waitFor(t, 2*time.Second, "reboot reported", func() bool {
		st, _ := cp.Status("a")
		return st.RebootCount == 1 && st.ObservedGeneration == 2 && st.State == driver.StateRunning
	})
	if n := d.Starts("a"); n != 2 {
		t.Fatalf("Starts after one reboot = %d, want 2", n)
	}
	stop()

	before := cp.Reports("a")
	startAgent(t, testConfig(t, cp, d, dir))
	waitFor(t, 2*time.Second, "the new agent to report", func() bool { return cp.Reports("a") > before })
	time.Sleep(100 * time.Millisecond) // watch and resync ticks
	if n := d.Starts("a"); n != 2 {
		t.Fatalf("Starts after agent restart = %d, want 2 (reboot applied exactly once)", n)
	}
	if st, _ := cp.Status("a"); st.RebootCount != 1 || st.State != driver.StateRunning {
		t.Fatalf("status after restart: %+v", st)
	}
}

func TestAdoptionOverStateFile(t *testing.T) {
	cp := newFakeCP()
	dir := t.TempDir()
	simFile := filepath.Join(dir, "sim.json")
	var as []wire.Assignment
	for i := range 50 {
		as = append(as, running(fmt.Sprintf("i%02d", i)))
	}
	cp.Set(as...)
	d1 := MustSim(t, sim.Config{StateFile: simFile})
	stop := startAgent(t, testConfig(t, cp, d1, dir))
	for _, a := range as {
		waitState(t, cp, a.ID, driver.StateRunning, 1)
	}
	stop()

	// A new driver over the same file and a new agent over the same data dir.
	d2 := MustSim(t, sim.Config{StateFile: simFile})
	if d2.Len() != 50 {
		t.Fatalf("new driver adopted %d instances, want 50", d2.Len())
	}
	before := cp.Reports("i00")
	startAgent(t, testConfig(t, cp, d2, dir))
	waitFor(t, 2*time.Second, "reports from the new agent", func() bool { return cp.Reports("i00") > before })
	time.Sleep(100 * time.Millisecond)
	for _, a := range as {
		if n := d2.Starts(a.ID); n != 1 {
			t.Fatalf("%s started %d times; adoption must not restart", a.ID, n)
		}
	}
}

func TestOrphanRemovedAfterFullSet(t *testing.T) {
	cp := newFakeCP()
	d := MustSim(t, sim.Config{})
	ctx := context.Background()
	d.Create(ctx, driver.Spec{ID: "orphan"})
	d.Start(ctx, "orphan")
	cp.Set(running("a"))
	startAgent(t, testConfig(t, cp, d, t.TempDir()))
	waitState(t, cp, "a", driver.StateRunning, 1)
	waitFor(t, 2*time.Second, "orphan removed", func() bool {
		_, err := d.Inspect(ctx, "orphan")
		return errdefs.Is(err, errdefs.NotFound)
	})
}

func TestFailingCreateReportsFailed(t *testing.T) {
	cp := newFakeCP()
	var mu sync.Mutex
	var tries []time.Time
	d := MustSim(t, sim.Config{Fail: func(op, id string) error {
		if op == "create" && id == "bad" {
			mu.Lock()
			tries = append(tries, time.Now())
			mu.Unlock()
		}
		return nil
	}})
	cp.Set(running("bad", "SIM_CREATE_ERROR=image 1234 not found"))
	cfg := testConfig(t, cp, d, t.TempDir())
	cfg.BackoffBase = 30 * time.Millisecond
	startAgent(t, cfg)
	st := waitState(t, cp, "bad", driver.StateFailed, 1)
	if st.Error == "" {
		t.Fatal("failed status has no error")
	}
	t.Logf("failed status error: %q", st.Error)
	time.Sleep(300 * time.Millisecond) // resyncs must not retry the same generation
	mu.Lock()
	n := len(tries)
	gaps := []time.Duration{tries[1].Sub(tries[0]), tries[2].Sub(tries[1])}
	mu.Unlock()
	if n != 3 {
		t.Fatalf("create tried %d times, want 3 (FailAfter)", n)
	}
	if gaps[0] < 30*time.Millisecond || gaps[1] < 60*time.Millisecond {
		t.Fatalf("retries not backed off exponentially: gaps %v", gaps)
	}

	// A new generation with a good spec gets fresh tries and runs.
	cp.Update("bad", func(a *wire.Assignment) { a.Spec.Env = nil })
	waitState(t, cp, "bad", driver.StateRunning, 2)
}

func TestTransientStartErrorRetried(t *testing.T) {
	cp := newFakeCP()
	var mu sync.Mutex
	fails := 1
	d := MustSim(t, sim.Config{Fail: func(op, id string) error {
		mu.Lock()
		defer mu.Unlock()
		if op == "start" && fails > 0 {
			fails--
			return errdefs.New(errdefs.Unavailable, "runtime busy")
		}
		return nil
	}})
	cp.Set(running("a"))
	startAgent(t, testConfig(t, cp, d, t.TempDir()))
	waitState(t, cp, "a", driver.StateRunning, 1)
	if d.Starts("a") != 1 {
		t.Fatalf("Starts = %d", d.Starts("a"))
	}
}

func TestRestartPolicy(t *testing.T) {
	cp := newFakeCP()
	d := MustSim(t, sim.Config{})
	a := running("a", "SIM_EXIT=1")
	a.Spec.Restart = driver.RestartPolicy{Name: "on-failure", MaximumRetryCount: 2}
	cp.Set(a)
	startAgent(t, testConfig(t, cp, d, t.TempDir()))
	waitFor(t, 3*time.Second, "two restarts reported", func() bool {
		st, _ := cp.Status("a")
		return st.Restarts == 2 && st.State == driver.StateStopped
	})
	time.Sleep(300 * time.Millisecond)
	if n := d.Starts("a"); n != 3 {
		t.Fatalf("Starts = %d, want 3 (1 + MaximumRetryCount)", n)
	}
}

func TestResize(t *testing.T) {
	cp := newFakeCP()
	d := MustSim(t, sim.Config{})
	cp.Set(running("a"))
	startAgent(t, testConfig(t, cp, d, t.TempDir()))
	waitState(t, cp, "a", driver.StateRunning, 1)
	cp.Update("a", func(a *wire.Assignment) { a.Spec.MemoryMiB = 512 })
	waitState(t, cp, "a", driver.StateRunning, 2)
	spec, err := d.Spec("a")
	if err != nil || spec.MemoryMiB != 512 {
		t.Fatalf("spec after resize: %+v, %v", spec, err)
	}
	if d.Starts("a") != 1 {
		t.Fatal("resize restarted the workload")
	}
}

func TestConfigErrors(t *testing.T) {
	d := MustSim(t, sim.Config{})
	tests := []struct {
		name string
		cfg  Config
	}{
		{"ErrNoDriver", Config{DataDir: t.TempDir(), ControlPlane: newFakeCP()}},
		{"ErrNoDataDir", Config{Driver: d, ControlPlane: newFakeCP()}},
		{"ErrNoAPIURL", Config{Driver: d, DataDir: t.TempDir()}},
		{"ErrBadAPIURL", Config{Driver: d, DataDir: t.TempDir(), APIURL: "ftp://x"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := New(tc.cfg); errdefs.CodeOf(err) != errdefs.Invalid {
				t.Fatalf("New = %v, want an invalid error", err)
			}
		})
	}
}

func TestDetectCapacity(t *testing.T) {
	cfg := Config{Driver: MustSim(t, sim.Config{}), DataDir: t.TempDir(), ControlPlane: newFakeCP()}
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if a.cfg.MemoryMiB <= 0 || a.cfg.DiskMiB <= 0 || a.cfg.VCPUs < 1 {
		t.Fatalf("detected capacity: memory %d MiB, disk %d MiB, vcpus %g", a.cfg.MemoryMiB, a.cfg.DiskMiB, a.cfg.VCPUs)
	}
	t.Logf("detected: memory %d MiB, disk %d MiB, vcpus %g", a.cfg.MemoryMiB, a.cfg.DiskMiB, a.cfg.VCPUs)
}
