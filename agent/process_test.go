package agent

import (
	"context"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"flotilla/agent/driver"
	"flotilla/agent/driver/sim"
	"flotilla/api/agentapi/wire"
)

// TestHelperAgentProcess is not a test: it is the agent process that
// TestKillAndRestartProcess starts (and SIGKILLs) as a child.
func TestHelperAgentProcess(t *testing.T) {
	if os.Getenv("FLOTILLA_AGENT_HELPER") != "1" {
		return
	}
	dir := os.Getenv("FLOTILLA_AGENT_DATA")
	d, err := sim.New(sim.Config{StateFile: filepath.Join(dir, "sim.json")})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	err = Run(ctx, Config{
		Name:              "proc",
		DataDir:           dir,
		APIURL:            os.Getenv("FLOTILLA_AGENT_API"),
		JoinToken:         os.Getenv("FLOTILLA_JOIN_TOKEN"),
		Driver:            d,
		MemoryMiB:         1024,
		DiskMiB:           1024,
		VCPUs:             1,
		HeartbeatInterval: 100 * time.Millisecond,
		WatchInterval:     50 * time.Millisecond,
		PollWait:          2 * time.Second,
		Logger:            helperLogger(),
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(0)
}

func helperLogger() *slog.Logger {
	if os.Getenv("AGENT_TEST_LOG") == "" {
		return nil
	}
	return slog.New(slog.NewTextHandler(os.Stderr, nil))
}

func startHelper(t *testing.T, url, dir string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperAgentProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(),
		"FLOTILLA_AGENT_HELPER=1",
		"FLOTILLA_AGENT_DATA="+dir,
		"FLOTILLA_AGENT_API="+url,
		"FLOTILLA_JOIN_TOKEN=join",
	)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start agent process: %v", err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	return cmd
}

// TestKillAndRestartProcess SIGKILLs an agent process and starts a new one
// over the same data dir and sim state file: nothing is restarted, and a
// reboot applied before the kill is not applied again.
func TestKillAndRestartProcess(t *testing.T) {
	if os.Getenv("FLOTILLA_AGENT_HELPER") == "1" {
		return
	}
	cp := newFakeCP()
	srv := httptest.NewServer(newFakeServer(cp, "join"))
	t.Cleanup(srv.Close) // after the helpers are killed: Close waits for their long polls
	dir := t.TempDir()
	var as []wire.Assignment
	for i := range 20 {
		as = append(as, running(fmt.Sprintf("p%02d", i)))
	}
	exited := running("exits", "SIM_EXIT=3")
	cp.Set(append(as, exited)...)

	first := startHelper(t, srv.URL, dir)
	for _, a := range as {
		waitState(t, cp, a.ID, driver.StateRunning, 1)
	}
	waitState(t, cp, "exits", driver.StateStopped, 1)
	cp.Update("p00", func(a *wire.Assignment) { a.RebootCount = 1 })
	waitFor(t, 5*time.Second, "reboot of p00 reported", func() bool {
		st, _ := cp.Status("p00")
		return st.RebootCount == 1 && st.State == driver.StateRunning
	})
	if err := first.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	first.Wait()

	before := map[string]int{}
	startedAt := map[string]time.Time{}
	for _, a := range append(as, exited) {
		before[a.ID] = cp.Reports(a.ID)
		st, _ := cp.Status(a.ID)
		startedAt[a.ID] = st.StartedAt
	}
	startHelper(t, srv.URL, dir)
	waitFor(t, 10*time.Second, "every instance reported by the new process", func() bool {
		for id, n := range before {
			if cp.Reports(id) <= n {
				return false
			}
		}
		return true
	})
	time.Sleep(200 * time.Millisecond) // a few watch ticks of the new process

	d, err := sim.New(sim.Config{StateFile: filepath.Join(dir, "sim.json")})
	if err != nil {
		t.Fatal(err)
	}
	for id, t0 := range startedAt {
		if st, _ := cp.Status(id); !st.StartedAt.Equal(t0) {
			t.Errorf("%s: started at %v before the kill, %v after: it was restarted", id, t0, st.StartedAt)
		}
	}
	for _, a := range as[1:] {
		if n := d.Starts(a.ID); n != 1 {
			t.Errorf("%s started %d times across the agent's SIGKILL and restart, want 1", a.ID, n)
		}
	}
	if n := d.Starts("p00"); n != 2 {
		t.Errorf("p00 started %d times, want 2 (one reboot, applied once)", n)
	}
	if n := d.Starts("exits"); n != 1 {
		t.Errorf("an exited instance was started %d times, want 1", n)
	}
	if st, _ := cp.Status("exits"); st.State != driver.StateStopped || st.ExitCode == nil || *st.ExitCode != 3 {
		t.Errorf("exits: %+v", st)
	}
}
