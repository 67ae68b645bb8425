package agent

import (
	"context"
	"fmt"
	"net/http/httptest"
	"testing"
	"time"

	"flotilla/agent/driver"
	"flotilla/agent/driver/sim"
	"flotilla/api/agentapi/wire"
)

// convergeOnce runs a fresh agent against n new assignments and returns how
// long it took until every instance was reported running.
func convergeOnce(tb testing.TB, n int, overHTTP bool, simCfg sim.Config) time.Duration {
	tb.Helper()
	cp := newFakeCP()
	as := make([]wire.Assignment, n)
	for i := range as {
		as[i] = running(fmt.Sprintf("inst-%05d", i))
	}
	cp.Set(as...)
	dir := tb.TempDir()
	d := MustSim(tb, simCfg)
	cfg := testConfig(tb, cp, d, dir)
	cfg.WatchInterval, cfg.ResyncInterval = time.Minute, time.Minute
	if overHTTP {
		srv := httptest.NewServer(newFakeServer(cp, "join"))
		tb.Cleanup(srv.Close)
		cfg.ControlPlane, cfg.APIURL, cfg.JoinToken = nil, srv.URL, "join"
	}
	a, err := New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	t0 := time.Now()
	go func() { done <- a.Run(ctx) }()
	deadline := t0.Add(30 * time.Second)
	for {
		cp.mu.Lock()
		ok := 0
		for _, st := range cp.statuses {
			if st.State == driver.StateRunning {
				ok++
			}
		}
		cp.mu.Unlock()
		if ok == n {
			break
		}
		if time.Now().After(deadline) {
			tb.Fatalf("only %d of %d running after 30s", ok, n)
		}
		time.Sleep(200 * time.Microsecond)
	}
	el := time.Since(t0)
	cancel()
	if err := <-done; err != nil {
		tb.Fatal(err)
	}
	for _, x := range as {
		if d.Starts(x.ID) != 1 {
			tb.Fatalf("%s started %d times", x.ID, d.Starts(x.ID))
		}
	}
	return el
}

func TestConverge1000(t *testing.T) {
	el := convergeOnce(t, 1000, false, sim.Config{})
	t.Logf("1000 assignments converged in %v (in-memory control plane)", el)
}

func BenchmarkConverge1000(b *testing.B) {
	for _, bc := range []struct {
		name string
		http bool
		sim  func(b *testing.B) sim.Config
	}{
		{"InMemory", false, func(*testing.B) sim.Config { return sim.Config{} }},
		{"HTTP", true, func(*testing.B) sim.Config { return sim.Config{} }},
		{"HTTPSimStateFile", true, func(b *testing.B) sim.Config { return sim.Config{StateFile: b.TempDir() + "/sim.json"} }},
	} {
		b.Run(bc.name, func(b *testing.B) {
			var total time.Duration
			for b.Loop() {
				total += convergeOnce(b, 1000, bc.http, bc.sim(b))
			}
			b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms/1000-instances")
		})
	}
}

// TestManyAgentsInOneProcess runs 200 agents side by side, as
// `flotilla dev --nodes N` and the scale benchmarks do.
func TestManyAgentsInOneProcess(t *testing.T) {
	const agents, per = 200, 5
	cps := make([]*fakeCP, agents)
	drivers := make([]*sim.Driver, agents)
	t0 := time.Now()
	for i := range agents {
		cps[i] = newFakeCP()
		for j := range per {
			cps[i].Set(running(fmt.Sprintf("a%d-%d", i, j)))
		}
		drivers[i] = MustSim(t, sim.Config{})
		cfg := testConfig(t, cps[i], drivers[i], t.TempDir())
		cfg.Name = fmt.Sprintf("node%d", i)
		cfg.Workers = 2
		startAgent(t, cfg)
	}
	for i := range agents {
		for j := range per {
			waitState(t, cps[i], fmt.Sprintf("a%d-%d", i, j), driver.StateRunning, 1)
		}
	}
	t.Logf("%d agents x %d instances converged in %v", agents, per, time.Since(t0))
}
