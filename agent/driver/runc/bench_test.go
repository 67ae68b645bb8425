package runc

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"testing"
	"time"
)

func p50(d []time.Duration) time.Duration {
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	return d[len(d)/2]
}

// BenchmarkCreateToRunning measures Create+Start through the driver (image
// layers cached, overlay rootfs, shim) against a bare `runc run --detach` of
// the same bundle, and reports the p50 of each.
func BenchmarkCreateToRunning(b *testing.B) {
	needRuntime(b)
	ctx := context.Background()
	d := newDriver(b, "")
	warm := baseSpec(testID("benchwarm"))
	if err := d.Create(ctx, warm); err != nil {
		b.Fatal(err)
	}
	defer d.Delete(ctx, warm.ID)

	b.Run("driver", func(b *testing.B) {
		var times []time.Duration
		for i := 0; i < b.N; i++ {
			id := testID(fmt.Sprintf("bench%d", i))
			t0 := time.Now()
			if err := d.Create(ctx, baseSpec(id)); err != nil {
				b.Fatal(err)
			}
			if err := d.Start(ctx, id); err != nil {
				b.Fatal(err)
			}
			times = append(times, time.Since(t0))
			b.StopTimer()
			if err := d.Delete(ctx, id); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
		b.ReportMetric(float64(p50(times).Microseconds())/1000, "p50-ms")
	})
	b.Run("bare-runc", func(b *testing.B) {
		bundle := filepath.Join(d.cfg.Root, "containers", warm.ID)
		devnull, _ := os.Open(os.DevNull)
		defer devnull.Close()
		var times []time.Duration
		for i := 0; i < b.N; i++ {
			id := testID(fmt.Sprintf("bare%d", i))
			t0 := time.Now()
			cmd := exec.Command("runc", "--root", d.rc.Root, "run", "--detach", "--bundle", bundle, id)
			cmd.Stdin, cmd.Stdout, cmd.Stderr = devnull, devnull, devnull
			if err := cmd.Run(); err != nil {
				b.Fatalf("runc run: %v", err)
			}
			times = append(times, time.Since(t0))
			b.StopTimer()
			exec.Command("runc", "--root", d.rc.Root, "delete", "--force", id).Run()
			b.StartTimer()
		}
		b.ReportMetric(float64(p50(times).Microseconds())/1000, "p50-ms")
	})
}

// TestRootfsOverlayVsCopy reports how long making a rootfs takes each way
// (the figure behind the overlay default) and checks both give the same tree.
func TestRootfsOverlayVsCopy(t *testing.T) {
	needRuntime(t)
	ctx := context.Background()
	for _, copyRootfs := range []bool{false, true} {
		d := newDriver(t, "")
		d.cfg.CopyRootfs = copyRootfs
		warm := baseSpec(testID("warm"))
		if err := d.Create(ctx, warm); err != nil {
			t.Fatal(err)
		}
		id := testID("fs")
		t0 := time.Now()
		if err := d.Create(ctx, baseSpec(id)); err != nil {
			t.Fatal(err)
		}
		el := time.Since(t0)
		bundle := filepath.Join(d.cfg.Root, "containers", id)
		_, lowerErr := os.Stat(filepath.Join(bundle, "lowers"))
		if target, err := os.Readlink(filepath.Join(bundle, "rootfs/bin/sh")); err != nil || target != "/bin/busybox" {
			t.Errorf("copy=%v: rootfs/bin/sh -> %q %v", copyRootfs, target, err)
		}
		if (lowerErr == nil) == copyRootfs {
			t.Errorf("copy=%v but overlay=%v", copyRootfs, lowerErr == nil)
		}
		t.Logf("CopyRootfs=%v: Create with cached image took %s", copyRootfs, el)
		for _, x := range []string{id, warm.ID} {
			if err := d.Delete(ctx, x); err != nil {
				t.Fatal(err)
			}
			assertGone(t, d, x)
		}
	}
}
