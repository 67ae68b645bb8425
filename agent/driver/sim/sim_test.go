package sim

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"flotilla/agent/driver"
	"flotilla/api/errdefs"
)

func MustNew(tb testing.TB, cfg Config) *Driver {
	tb.Helper()
	d, err := New(cfg)
	if err != nil {
		tb.Fatalf("New: %v", err)
	}
	return d
}

func mustInspect(tb testing.TB, d *Driver, id string) driver.Status {
	tb.Helper()
	st, err := d.Inspect(context.Background(), id)
	if err != nil {
		tb.Fatalf("Inspect(%s): %v", id, err)
	}
	return st
}

func TestLifecycle(t *testing.T) {
	ctx := context.Background()
	d := MustNew(t, Config{})
	spec := driver.Spec{ID: "a", Brand: driver.BrandContainer}
	if err := d.Create(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if err := d.Create(ctx, spec); err != nil {
		t.Fatalf("second Create must be a no-op, got %v", err)
	}
	if st := mustInspect(t, d, "a"); st.State != driver.StateProvisioning {
		t.Fatalf("after create: state %q, want provisioning", st.State)
	}
	for range 2 { // second Start is a no-op
		if err := d.Start(ctx, "a"); err != nil {
			t.Fatal(err)
		}
	}
	st := mustInspect(t, d, "a")
	if st.State != driver.StateRunning || st.Pid == 0 || st.StartedAt.IsZero() || st.ExitCode != nil {
		t.Fatalf("after start: %+v", st)
	}
	if got := d.Starts("a"); got != 1 {
		t.Fatalf("Starts = %d, want 1", got)
	}
	if err := d.Stop(ctx, "a", time.Second); err != nil {
		t.Fatal(err)
	}
	st = mustInspect(t, d, "a")
	if st.State != driver.StateStopped || st.ExitCode == nil || *st.ExitCode != 0 || st.FinishedAt.IsZero() {
		t.Fatalf("after stop: %+v", st)
	}
	if err := d.Stop(ctx, "a", time.Second); err != nil {
		t.Fatalf("stopping a stopped instance: %v", err)
	}
	// Reboot is Stop+Start.
	if err := d.Start(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if got := d.Starts("a"); got != 2 {
		t.Fatalf("Starts after restart = %d, want 2", got)
	}
	list, err := d.List(ctx)
	if err != nil || len(list) != 1 || list[0].ID != "a" {
		t.Fatalf("List = %+v, %v", list, err)
	}
	if err := d.Delete(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if err := d.Delete(ctx, "a"); err != nil {
		t.Fatalf("deleting an unknown id must be a no-op, got %v", err)
	}
	if d.Len() != 0 {
		t.Fatalf("Len = %d after delete", d.Len())
	}
}

func TestErrors(t *testing.T) {
	ctx := context.Background()
	d := MustNew(t, Config{Brands: []string{driver.BrandContainer}})
	tests := []struct {
		name string
		call func() error
		want errdefs.Code
	}{
		{"ErrInspectNotFound", func() error { _, err := d.Inspect(ctx, "nope"); return err }, errdefs.NotFound},
		{"ErrStartNotFound", func() error { return d.Start(ctx, "nope") }, errdefs.NotFound},
		{"ErrStopNotFound", func() error { return d.Stop(ctx, "nope", 0) }, errdefs.NotFound},
		{"ErrUpdateNotFound", func() error { return d.Update(ctx, driver.Spec{ID: "nope"}) }, errdefs.NotFound},
		{"ErrNoID", func() error { return d.Create(ctx, driver.Spec{}) }, errdefs.Invalid},
		{"ErrBrand", func() error { return d.Create(ctx, driver.Spec{ID: "x", Brand: driver.BrandKVM}) }, errdefs.Invalid},
		{"ErrCreateInjected", func() error {
			return d.Create(ctx, driver.Spec{ID: "x", Env: []string{"SIM_CREATE_ERROR=image not found"}})
		}, errdefs.NotFound},
		{"ErrBadExit", func() error {
			if err := d.Create(ctx, driver.Spec{ID: "bad", Env: []string{"SIM_EXIT=abc"}}); err != nil {
				return err
			}
			return d.Start(ctx, "bad")
		}, errdefs.Invalid},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := errdefs.CodeOf(tc.call()); got != tc.want {
				t.Fatalf("code = %q, want %q", got, tc.want)
			}
		})
	}
	if d.Len() != 1 { // only "bad" was created
		t.Fatalf("Len = %d, want 1", d.Len())
	}
}

func TestExitCode(t *testing.T) {
	ctx := context.Background()
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }

	d := MustNew(t, Config{Now: clock})
	if err := d.Create(ctx, driver.Spec{ID: "e", Env: []string{"SIM_EXIT=3", "SIM_EXIT_AFTER=2s"}}); err != nil {
		t.Fatal(err)
	}
	if err := d.Start(ctx, "e"); err != nil {
		t.Fatal(err)
	}
	if st := mustInspect(t, d, "e"); st.State != driver.StateRunning || st.ExitCode != nil {
		t.Fatalf("before exit: %+v", st)
	}
	advance(3 * time.Second)
	st := mustInspect(t, d, "e")
	if st.State != driver.StateStopped || st.ExitCode == nil || *st.ExitCode != 3 {
		t.Fatalf("after exit: %+v", st)
	}
	if want := now.Add(-time.Second); !st.FinishedAt.Equal(want) {
		t.Fatalf("FinishedAt = %v, want %v", st.FinishedAt, want)
	}
	// Starting again runs it again, and it exits again.
	if err := d.Start(ctx, "e"); err != nil {
		t.Fatal(err)
	}
	if st := mustInspect(t, d, "e"); st.State != driver.StateRunning {
		t.Fatalf("restart: %+v", st)
	}
	if d.Starts("e") != 2 {
		t.Fatalf("Starts = %d", d.Starts("e"))
	}
}

func TestDelays(t *testing.T) {
	ctx := context.Background()
	d := MustNew(t, Config{StartDelay: 30 * time.Millisecond, StopDelay: 200 * time.Millisecond})
	d.Create(ctx, driver.Spec{ID: "a"})
	t0 := time.Now()
	if err := d.Start(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if el := time.Since(t0); el < 30*time.Millisecond {
		t.Fatalf("Start took %v, want >= 30ms", el)
	}
	t0 = time.Now()
	if err := d.Stop(ctx, "a", 20*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if el := time.Since(t0); el > 150*time.Millisecond {
		t.Fatalf("Stop with 20ms grace took %v", el)
	}
	if st := mustInspect(t, d, "a"); *st.ExitCode != 137 {
		t.Fatalf("a stop cut short by the grace must look killed, exit %d", *st.ExitCode)
	}
	// A cancelled context interrupts a slow start and leaves it not running.
	d.Create(ctx, driver.Spec{ID: "b"})
	cctx, cancel := context.WithTimeout(ctx, 5*time.Millisecond)
	defer cancel()
	if err := d.Start(cctx, "b"); err == nil {
		t.Fatal("Start with expired ctx succeeded")
	}
	if st := mustInspect(t, d, "b"); st.State == driver.StateRunning {
		t.Fatal("interrupted start left the instance running")
	}
}

func TestFailInjection(t *testing.T) {
	boom := errdefs.New(errdefs.Unavailable, "disk on fire")
	d := MustNew(t, Config{Fail: func(op, id string) error {
		if op == "start" {
			return boom
		}
		return nil
	}})
	ctx := context.Background()
	if err := d.Create(ctx, driver.Spec{ID: "a"}); err != nil {
		t.Fatal(err)
	}
	if err := d.Start(ctx, "a"); !errors.Is(err, boom) {
		t.Fatalf("Start = %v, want injected error", err)
	}
	if d.Starts("a") != 0 {
		t.Fatal("failed start counted")
	}
}

func TestStateFileAdoption(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "sim.json")
	d1 := MustNew(t, Config{StateFile: path})
	for i := range 50 {
		id := fmt.Sprintf("i%02d", i)
		if err := d1.Create(ctx, driver.Spec{ID: id, MemoryMiB: 128}); err != nil {
			t.Fatal(err)
		}
		if i%2 == 0 {
			if err := d1.Start(ctx, id); err != nil {
				t.Fatal(err)
			}
		}
	}
	d1.Delete(ctx, "i49")
	// No Close: the file must already hold everything (a SIGKILLed process
	// gets no chance to flush).
	d2 := MustNew(t, Config{StateFile: path})
	if d2.Len() != 49 {
		t.Fatalf("adopted %d instances, want 49", d2.Len())
	}
	for i := range 49 {
		id := fmt.Sprintf("i%02d", i)
		st1, st2 := mustInspect(t, d1, id), mustInspect(t, d2, id)
		if st1.State != st2.State || st1.Pid != st2.Pid || !st1.StartedAt.Equal(st2.StartedAt) {
			t.Fatalf("%s: adopted %+v, was %+v", id, st2, st1)
		}
		if d1.Starts(id) != d2.Starts(id) {
			t.Fatalf("%s: Starts %d, was %d", id, d2.Starts(id), d1.Starts(id))
		}
	}
	if spec, err := d2.Spec("i00"); err != nil || spec.MemoryMiB != 128 {
		t.Fatalf("adopted spec = %+v, %v", spec, err)
	}
	// New pids do not collide with adopted ones.
	d2.Start(ctx, "i01")
	if a, b := mustInspect(t, d2, "i01").Pid, mustInspect(t, d2, "i48").Pid; a <= b {
		t.Fatalf("new pid %d not above adopted pid %d", a, b)
	}
}

func TestStateFileLazyCreate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sim.json")
	d := MustNew(t, Config{StateFile: path})
	d.Create(context.Background(), driver.Spec{ID: "a"})
	waitUntil := time.Now().Add(2 * time.Second)
	for MustNew(t, Config{StateFile: path}).Len() != 1 {
		if time.Now().After(waitUntil) {
			t.Fatal("a create never reached the state file")
		}
		time.Sleep(5 * time.Millisecond)
	}
	d.Create(context.Background(), driver.Spec{ID: "b"})
	if err := d.Flush(); err != nil {
		t.Fatal(err)
	}
	if n := MustNew(t, Config{StateFile: path}).Len(); n != 2 {
		t.Fatalf("after Flush the file holds %d instances, want 2", n)
	}
}

func TestStateFileCorrupt(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sim.json")
	os.WriteFile(path, []byte("{not json"), 0o600)
	if _, err := New(Config{StateFile: path}); err == nil {
		t.Fatal("New over a corrupt state file succeeded")
	}
}

// TestConcurrentSaves checks that concurrent changes are all on disk and
// that group commit writes fewer files than there were changes.
func TestConcurrentSaves(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "sim.json")
	d := MustNew(t, Config{StateFile: path})
	const n = 400
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 8 {
				id := fmt.Sprintf("c%03d", i)
				if err := d.Create(ctx, driver.Spec{ID: id}); err != nil {
					t.Error(err)
					return
				}
				if err := d.Start(ctx, id); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	d2 := MustNew(t, Config{StateFile: path})
	if d2.Len() != n {
		t.Fatalf("on disk: %d instances, want %d", d2.Len(), n)
	}
	for i := range n {
		if d2.Starts(fmt.Sprintf("c%03d", i)) != 1 {
			t.Fatalf("c%03d not started on disk", i)
		}
	}
}

func TestManyDrivers(t *testing.T) {
	ctx := context.Background()
	drivers := make([]*Driver, 2000)
	for i := range drivers {
		drivers[i] = MustNew(t, Config{})
		for j := range 5 {
			id := fmt.Sprintf("n%d-%d", i, j)
			drivers[i].Create(ctx, driver.Spec{ID: id})
			drivers[i].Start(ctx, id)
		}
	}
	for i, d := range drivers {
		if d.Len() != 5 {
			t.Fatalf("driver %d has %d instances", i, d.Len())
		}
	}
}

func BenchmarkCreateStart(b *testing.B) {
	ctx := context.Background()
	d := MustNew(b, Config{})
	for i := 0; b.Loop(); i++ {
		id := fmt.Sprint(i)
		d.Create(ctx, driver.Spec{ID: id})
		d.Start(ctx, id)
	}
}

func BenchmarkCreateStartStateFile(b *testing.B) {
	ctx := context.Background()
	d := MustNew(b, Config{StateFile: filepath.Join(b.TempDir(), "s.json")})
	b.SetParallelism(8)
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			i++
			id := fmt.Sprintf("%p-%d", pb, i)
			d.Create(ctx, driver.Spec{ID: id})
			d.Start(ctx, id)
		}
	})
}
