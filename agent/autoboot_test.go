package agent

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"flotilla/agent/driver"
	"flotilla/agent/driver/sim"
)

// A node that went down with its instances (here: they were stopped behind
// the agent's back while it was away) boots the autoboot ones again when its
// agent starts, and leaves the others (Docker containers) alone.
func TestAutobootAfterNodeRestart(t *testing.T) {
	cp := newFakeCP()
	dir := t.TempDir()
	simFile := filepath.Join(dir, "sim.json")
	boot := running("vm")
	boot.Spec.Autoboot = true
	plain := running("ctr")
	cp.Set(boot, plain)
	d1 := MustSim(t, sim.Config{StateFile: simFile})
	stop := startAgent(t, testConfig(t, cp, d1, dir))
	waitState(t, cp, "vm", driver.StateRunning, 1)
	waitState(t, cp, "ctr", driver.StateRunning, 1)
	stop()

	ctx := context.Background()
	for _, id := range []string{"vm", "ctr"} {
		if err := d1.Stop(ctx, id, time.Second); err != nil {
			t.Fatal(err)
		}
	}
	d1.Flush()
	d2 := MustSim(t, sim.Config{StateFile: simFile})
	startAgent(t, testConfig(t, cp, d2, dir))
	waitFor(t, 3*time.Second, "the autoboot instance running again", func() bool {
		st, err := d2.Inspect(ctx, "vm")
		return err == nil && st.State == driver.StateRunning
	})
	time.Sleep(200 * time.Millisecond)
	if st, _ := d2.Inspect(ctx, "ctr"); st.State == driver.StateRunning {
		t.Fatalf("a container without autoboot was started again")
	}
	if n := d2.Starts("vm"); n != 2 {
		t.Fatalf("vm started %d times, want 2 (create, then autoboot once)", n)
	}
}

// After the control plane was unreachable (it may have marked the node
// offline and its instances unknown), every instance is reported again.
func TestReportsAgainAfterLostContact(t *testing.T) {
	cp := newFakeCP()
	cp.Set(running("a"), running("b"))
	d := MustSim(t, sim.Config{})
	startAgent(t, testConfig(t, cp, d, t.TempDir()))
	waitState(t, cp, "a", driver.StateRunning, 1)
	waitState(t, cp, "b", driver.StateRunning, 1)
	time.Sleep(100 * time.Millisecond)
	before := cp.Reports("a")

	cp.mu.Lock()
	cp.hbErr = errors.New("control plane down")
	cp.mu.Unlock()
	time.Sleep(150 * time.Millisecond) // a few failed heartbeats
	if n := cp.Reports("a"); n != before {
		t.Fatalf("reports sent while nothing changed: %d -> %d", before, n)
	}
	cp.mu.Lock()
	cp.hbErr = nil
	cp.mu.Unlock()
	waitFor(t, 2*time.Second, "both instances reported again", func() bool {
		return cp.Reports("a") > before && cp.Reports("b") > before
	})
}
