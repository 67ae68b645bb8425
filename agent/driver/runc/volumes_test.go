package runc

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"flotilla/agent/driver"
	"flotilla/api/errdefs"
)

func volumeID() string {
	var b [16]byte
	rand.Read(b[:])
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// needLoop skips unless this machine can loop-mount ext4 images.
func needLoop(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: loop mounts need root")
	}
	var v volumes
	if err := v.canLoopMount(); err != nil {
		t.Skipf("skipping: %v", err)
	}
}

// unmountVolumesAtCleanup unmounts, at the end of the test, whatever is
// still mounted under root's volumes (a failed test's), so that the
// temporary directory can go.
func unmountVolumesAtCleanup(t testing.TB, root string) {
	t.Cleanup(func() {
		ents, _ := os.ReadDir(filepath.Join(root, "volumes"))
		for _, e := range ents {
			data := filepath.Join(root, "volumes", e.Name(), volumeData)
			for i := 0; i < 4; i++ {
				if ok, _ := mountedAt(data); !ok {
					break
				}
				unix.Unmount(data, unix.MNT_DETACH)
			}
		}
	})
}

// loopBackingFiles lists the files the node's loop devices are attached to.
func loopBackingFiles(t testing.TB) string {
	t.Helper()
	out, err := exec.Command("losetup", "--list", "--noheadings", "--output", "BACK-FILE").CombinedOutput()
	if err != nil {
		t.Fatalf("losetup --list: %v: %s", err, out)
	}
	return string(out)
}

// TestVolumeQuota: a volume with a size is a filesystem of that size on the
// node: writing past it fails with ENOSPC, the mount shows the size, two
// containers starting at once with it share one mount, it keeps its data
// when its containers are deleted and is mounted again when the node lost
// its mounts (a reboot). RemoveVolume refuses while a container mounts it,
// then leaves neither directory nor loop device.
func TestVolumeQuota(t *testing.T) {
	needRuntime(t)
	needLoop(t)
	ctx := context.Background()
	d := newDriver(t, "")
	unmountVolumesAtCleanup(t, d.cfg.Root)
	vol := volumeID()
	dir := filepath.Join(d.cfg.Root, "volumes", vol)
	data, img := filepath.Join(dir, volumeData), filepath.Join(dir, volumeImage)
	withVolume := func(id string) driver.Spec {
		spec := baseSpec(id, "sleep", "1000")
		spec.Options.Volumes = []driver.VolumeMount{{Volume: vol, Destination: "/data", SizeMiB: 16}}
		return spec
	}

	// Two containers starting at once with a new volume: one image, one mount.
	a, b := testID("vola"), testID("volb")
	var wg sync.WaitGroup
	for _, id := range []string{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t0 := time.Now()
			if err := d.Create(ctx, withVolume(id)); err != nil {
				t.Errorf("Create %s: %v", id, err)
			}
			t.Logf("Create with the volume took %s", time.Since(t0))
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	for _, id := range []string{a, b} {
		create(t, d, withVolume(id)) // a no-op Create, then Start; deleted at cleanup
	}
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	if n := strings.Count(string(mi), " "+data+" "); n != 1 {
		t.Fatalf("%d mounts on %s, want 1", n, data)
	}
	if out, code := execOut(t, d, a, "ls", "-A", "/data"); code != 0 || out != "" {
		t.Errorf("a new volume holds %q (exit %d), want nothing", out, code)
	}
	out, _ := execOut(t, d, a, "df", "-k", "/data")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	fields := strings.Fields(lines[len(lines)-1])
	if kb, err := strconv.Atoi(fields[1]); err != nil || kb < 12<<10 || kb > 16<<10 {
		t.Errorf("df of a 16 MiB volume: %q", out)
	}
	if out, code := execOut(t, d, a, "sh", "-c", "echo kept > /data/keep && dd if=/dev/zero of=/data/f bs=1M count=40"); code == 0 || !strings.Contains(out, "No space left on device") {
		t.Errorf("writing 40 MiB to a 16 MiB volume: exit %d, %q", code, out)
	}
	// The other container sees the same filesystem.
	if out, _ := execOut(t, d, b, "cat", "/data/keep"); out != "kept\n" {
		t.Errorf("second container reads %q", out)
	}
	execOut(t, d, b, "rm", "/data/f")
	var st unix.Stat_t
	if err := unix.Stat(img, &st); err != nil || st.Size != 16<<20 {
		t.Errorf("image %s: size %d, %v", img, st.Size, err)
	}

	if err := d.RemoveVolume(ctx, vol); errdefs.CodeOf(err) != errdefs.Conflict {
		t.Fatalf("RemoveVolume while mounted by containers: %v, want Conflict", err)
	}
	for _, id := range []string{a, b} {
		if err := d.Delete(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := os.ReadFile(filepath.Join(data, "keep")); err != nil || string(got) != "kept\n" {
		t.Fatalf("volume after its containers' deletion: %q, %v", got, err)
	}

	// A reboot takes the mount away; the next start brings it back.
	must(t, unix.Unmount(data, 0))
	c := testID("volc")
	create(t, d, withVolume(c))
	if out, _ := execOut(t, d, c, "cat", "/data/keep"); out != "kept\n" {
		t.Errorf("after a remount the container reads %q", out)
	}
	// Releasing keeps what a running container uses mounted.
	must(t, d.ReleaseVolumes(ctx))
	if ok, _ := mountedAt(data); !ok {
		t.Fatalf("ReleaseVolumes unmounted a volume a running container uses")
	}
	must(t, d.Stop(ctx, c, 0))
	if err := d.RemoveVolume(ctx, vol); errdefs.CodeOf(err) != errdefs.Conflict {
		t.Fatalf("RemoveVolume while mounted by a stopped container: %v, want Conflict", err)
	}
	if err := d.Delete(ctx, c); err != nil {
		t.Fatal(err)
	}
	must(t, d.ReleaseVolumes(ctx))
	if ok, _ := mountedAt(data); ok {
		t.Fatalf("ReleaseVolumes left an unused volume mounted")
	}
	if _, err := d.VolumeDir(ctx, vol, 16); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(filepath.Join(data, "keep")); err != nil || string(got) != "kept\n" {
		t.Fatalf("volume mounted again after ReleaseVolumes: %q, %v", got, err)
	}
	if !strings.Contains(loopBackingFiles(t), img) {
		t.Fatalf("no loop device on %s before RemoveVolume", img)
	}
	if err := d.RemoveVolume(ctx, vol); err != nil {
		t.Fatalf("RemoveVolume: %v", err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s left behind: %v", dir, err)
	}
	for i := 0; strings.Contains(loopBackingFiles(t), img); i++ {
		if i == 50 {
			t.Fatalf("a loop device still points at %s:\n%s", img, loopBackingFiles(t))
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := d.RemoveVolume(ctx, vol); err != nil {
		t.Errorf("RemoveVolume of a removed volume: %v", err)
	}
}

// TestVolumeDirPlain: volumes without a size, volumes made before sizes
// were enforced and every volume of a node that cannot loop-mount are
// plain directories.
func TestVolumeDirPlain(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root")
	}
	ctx := context.Background()
	root := t.TempDir()
	var logs bytes.Buffer
	d := &Driver{cfg: Config{Root: root}, log: slog.New(slog.NewTextHandler(&logs, nil))}
	unmountVolumesAtCleanup(t, root)
	plain := func(t *testing.T, id string, sizeMiB int64) {
		t.Helper()
		data, err := d.VolumeDir(ctx, id, sizeMiB)
		if err != nil {
			t.Fatal(err)
		}
		if ok, _ := mountedAt(data); ok {
			t.Errorf("%s is mounted", data)
		}
		if _, err := os.Stat(filepath.Join(filepath.Dir(data), volumeImage)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("volume %s has an image: %v", id, err)
		}
		if fi, err := os.Stat(data); err != nil || !fi.IsDir() {
			t.Errorf("volume %s has no directory: %v", id, err)
		}
	}
	t.Run("NoSize", func(t *testing.T) { plain(t, volumeID(), 0) })
	t.Run("Older", func(t *testing.T) {
		id := volumeID()
		data := filepath.Join(root, "volumes", id, volumeData)
		must(t, os.MkdirAll(data, 0o755))
		must(t, os.WriteFile(filepath.Join(data, "old"), []byte("x"), 0o644))
		plain(t, id, 16)
		if _, err := os.Stat(filepath.Join(data, "old")); err != nil {
			t.Errorf("older volume's file: %v", err)
		}
	})
	t.Run("ErrInvalid", func(t *testing.T) {
		if _, err := d.VolumeDir(ctx, "../x", 16); errdefs.CodeOf(err) != errdefs.Invalid {
			t.Errorf("bad id: %v", err)
		}
		if _, err := d.VolumeDir(ctx, volumeID(), -1); errdefs.CodeOf(err) != errdefs.Invalid {
			t.Errorf("negative size: %v", err)
		}
		if err := d.RemoveVolume(ctx, "../x"); errdefs.CodeOf(err) != errdefs.Invalid {
			t.Errorf("RemoveVolume of a bad id: %v", err)
		}
	})
	t.Run("NoLoopDevices", func(t *testing.T) {
		d.vols.probe.Do(func() {})
		d.vols.cannotLoopMount(errors.New("no loop devices here"))
		plain(t, volumeID(), 16)
		plain(t, volumeID(), 32)
		if n := strings.Count(logs.String(), "volume sizes are not enforced"); n != 1 {
			t.Errorf("%d warnings, want 1:\n%s", n, logs.String())
		}
	})
}

// BenchmarkVolumeDir measures the first use of a 10 GiB volume on a node
// (sparse image, mkfs.ext4, loop mount) and its removal (unmount, loop
// device, directory), and reports the p50 of each.
func BenchmarkVolumeDir(b *testing.B) {
	needLoop(b)
	ctx := context.Background()
	root := b.TempDir()
	d := &Driver{cfg: Config{Root: root}, log: slog.New(slog.DiscardHandler)}
	unmountVolumesAtCleanup(b, root)
	var made, removed []time.Duration
	for i := 0; i < b.N; i++ {
		id := volumeID()
		t0 := time.Now()
		if _, err := d.VolumeDir(ctx, id, 10240); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if err := d.RemoveVolume(ctx, id); err != nil {
			b.Fatal(err)
		}
		made, removed = append(made, t1.Sub(t0)), append(removed, time.Since(t1))
	}
	b.ReportMetric(float64(p50(made).Microseconds())/1000, "make-p50-ms")
	b.ReportMetric(float64(p50(removed).Microseconds())/1000, "remove-p50-ms")
}
