package qemu

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"flotilla/agent/driver"
	"flotilla/agent/network"
	"flotilla/api/errdefs"

	"flotilla/internal/testenv"
)

// memImages is an in-memory driver.ImageSource keyed by image id.
type memImages map[string]v1.Image

func (m memImages) Image(_ context.Context, img driver.Image) (v1.Image, error) {
	if i, ok := m[img.ID]; ok {
		return i, nil
	}
	return nil, errdefs.NotFoundf("image %s not found", img.ID)
}

// testCacheDir keeps the kernel between test runs: $FLOTILLA_VM_CACHE or a
// fixed directory under the system temp dir.
func testCacheDir() string {
	if d := os.Getenv("FLOTILLA_VM_CACHE"); d != "" {
		return d
	}
	return filepath.Join(os.TempDir(), "flotilla-vm-cache")
}

var (
	tinyOnce sync.Once
	tiny     TinyImage
	tinyErr  error
)

// needTiny skips unless the machine can boot VMs (root, qemu) and returns
// the tiny image.
func needTiny(t testing.TB) TinyImage {
	t.Helper()
	needQEMU(t)
	if os.Geteuid() != 0 {
		t.Skip("VM tests need root (taps, /dev/kvm probe)")
	}
	tinyOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		tiny, tinyErr = BuildTinyImage(ctx, testCacheDir())
	})
	if tinyErr != nil {
		if errdefs.CodeOf(tinyErr) == errdefs.Unavailable {
			testenv.Need(t, false, fmt.Sprintf("the tiny VM image (%v)", tinyErr))
		}
		t.Fatal(tinyErr)
	}
	return tiny
}

// waitConsole waits until the console log holds want at least n times.
func waitConsole(t testing.TB, path, want string, n int, timeout time.Duration) []byte {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		b, _ := os.ReadFile(path)
		if bytes.Count(b, []byte(want)) >= n {
			return b
		}
		if time.Now().After(deadline) {
			t.Fatalf("console %s: %q not seen %d times within %s; console:\n%s", path, want, n, timeout, b)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// testBridge is a bridge on a private 10.214.x.0/24 test subnet.
type testBridge struct {
	name, gw string
	third    int
}

func newTestBridge(t *testing.T) testBridge {
	t.Helper()
	third := 10 + rand.IntN(240)
	b := testBridge{name: network.BridgeName(fmt.Sprintf("qemu-test-%d-%d", os.Getpid(), third)),
		gw: fmt.Sprintf("10.214.%d.1", third), third: third}
	if err := network.EnsureBridge(b.name, b.gw+"/24"); err != nil {
		t.Fatalf("EnsureBridge: %v", err)
	}
	t.Cleanup(func() {
		if err := network.DeleteBridge(b.name); err != nil {
			t.Errorf("DeleteBridge: %v", err)
		}
	})
	return b
}

func newTestDriver(t testing.TB, images memImages) *Driver {
	t.Helper()
	d, err := New(Config{Root: t.TempDir(), Images: images, Accel: AccelTCG})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestVMLifecycle(t *testing.T) {
	ti := needTiny(t)
	br := newTestBridge(t)
	images := memImages{"tiny": ti.Image}
	d := newTestDriver(t, images)
	ctx, cancel := context.WithTimeout(context.Background(), 80*time.Second)
	defer cancel()

	id := fmt.Sprintf("vm-%d", rand.IntN(1e6))
	ip := fmt.Sprintf("10.214.%d.10", br.third)
	spec := driver.Spec{
		ID: id, Name: "tiny1", Brand: driver.BrandKVM, Image: driver.Image{ID: "tiny"}, MemoryMiB: 192, VCPUs: 1,
		Metadata: map[string]string{
			"root_authorized_keys": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFlotillaTestKey test@flotilla",
			"user-script":          "echo hello from user-script",
			"color":                "blue",
		},
		NICs: []driver.NIC{{MAC: "90:B8:D0:01:02:03", IP: ip, PrefixLen: 24, Gateway: br.gw, Bridge: br.name, Primary: true}},
	}
	if err := d.Create(ctx, spec); err != nil {
		t.Fatalf("Create: %v", err)
	}
	if err := d.Create(ctx, spec); err != nil {
		t.Fatalf("Create again (no-op): %v", err)
	}
	tap := network.TapName(id, 0)
	if !network.LinkExists(tap) {
		t.Fatalf("tap %s not created", tap)
	}
	if s, err := d.Inspect(ctx, id); err != nil || s.State != driver.StateStopped {
		t.Fatalf("after create: %+v, %v", s, err)
	}

	start := time.Now()
	if err := d.Start(ctx, id); err != nil {
		t.Fatalf("Start: %v", err)
	}
	s, err := d.Inspect(ctx, id)
	if err != nil || s.State != driver.StateRunning || s.Pid == 0 {
		t.Fatalf("after start: %+v, %v", s, err)
	}
	if err := d.Start(ctx, id); err != nil {
		t.Fatalf("Start again (no-op): %v", err)
	}
	// QEMU runs confined: its own unprivileged user, no capabilities, a
	// seccomp filter.
	if status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", s.Pid)); err != nil {
		t.Error(err)
	} else {
		uid := GuestUID(id)
		for _, want := range []string{fmt.Sprintf("Uid:\t%d\t%d\t%d\t%d\n", uid, uid, uid, uid), "CapEff:\t0000000000000000\n", "Seccomp:\t2\n"} {
			if !strings.Contains(string(status), want) {
				t.Errorf("QEMU's /proc status lacks %q:\n%s", want, status)
			}
		}
	}
	console := d.ConsoleLogPath(id)
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(console)
			t.Logf("console:\n%s", b)
		}
	})
	out := waitConsole(t, console, TinyMarkerReady, 1, 40*time.Second)
	t.Logf("create->ready marker: %s", time.Since(start).Round(time.Millisecond))
	for _, want := range []string{
		TinyMarkerInit,
		TinyMetaPrefix + "root_authorized_keys=ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFlotillaTestKey test@flotilla",
		TinyMetaPrefix + "color=blue",
		TinyNetPrefix + "eth0 " + ip + "/24 gw=" + br.gw,
	} {
		if !bytes.Contains(out, []byte(want)) {
			t.Errorf("console lacks %q:\n%s", want, out)
		}
	}
	waitConsole(t, console, "FLOTILLA-USER: hello from user-script", 1, 10*time.Second)

	// The host reaches the guest over the bridge.
	var pingErr error
	for i := 0; i < 20; i++ {
		out, err := exec.CommandContext(ctx, "busybox", "ping", "-c", "1", "-W", "1", ip).CombinedOutput()
		if pingErr = err; err == nil {
			break
		}
		pingErr = fmt.Errorf("%v: %s", err, out)
		time.Sleep(200 * time.Millisecond)
	}
	if pingErr != nil {
		t.Errorf("ping %s: %v", ip, pingErr)
	}

	// A restarted agent adopts the running VM without rebooting it.
	d2 := newAdopter(t, d)
	list, err := d2.List(ctx)
	if err != nil || len(list) != 1 || list[0].ID != id || list[0].State != driver.StateRunning || list[0].Pid != s.Pid {
		t.Fatalf("adopting List = %+v, %v; want %s running as pid %d", list, err, id, s.Pid)
	}
	t.Logf("adopted: %+v", list)
	if err := d2.Update(ctx, spec); errdefs.CodeOf(err) != errdefs.Conflict {
		t.Errorf("Update while running: %v, want conflict", err)
	}

	// Nothing pressed the button yet: the guest must still be up.
	if b, _ := os.ReadFile(console); bytes.Contains(b, []byte(TinyPowerButton)) {
		t.Fatalf("the guest powered off before anyone pressed its power button:\n%s", b)
	}

	// Stop goes through the guest's ACPI power button.
	t0 := time.Now()
	if err := d2.Stop(ctx, id, 20*time.Second); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	t.Logf("ACPI stop took %s", time.Since(t0).Round(time.Millisecond))
	if b, _ := os.ReadFile(console); !bytes.Contains(b, []byte(TinyPowerButton)) {
		t.Errorf("guest never saw the power button:\n%s", b)
	}
	if processAlive(s.Pid) {
		t.Errorf("qemu pid %d alive after Stop", s.Pid)
	}
	if s, err := d2.Inspect(ctx, id); err != nil || s.State != driver.StateStopped || s.Pid != 0 {
		t.Fatalf("after stop: %+v, %v", s, err)
	}

	// Resize while stopped, then start again: the console log is appended.
	spec.MemoryMiB = 224
	if err := d2.Update(ctx, spec); err != nil {
		t.Fatalf("Update: %v", err)
	}
	if err := d2.Start(ctx, id); err != nil {
		t.Fatalf("restart: %v", err)
	}
	waitConsole(t, console, TinyMarkerReady, 2, 40*time.Second)
	s2, _ := d2.Inspect(ctx, id)
	if cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", s2.Pid)); !bytes.Contains(cmd, []byte("\x00-m\x00224\x00")) {
		t.Errorf("restarted qemu does not have the new memory size: %q", cmd)
	}

	// Delete removes everything.
	dir := d2.dir(id)
	if err := d2.Delete(ctx, id); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if processAlive(s2.Pid) {
		t.Errorf("qemu pid %d alive after Delete", s2.Pid)
	}
	if network.LinkExists(tap) {
		t.Errorf("tap %s left after Delete", tap)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("instance dir %s left after Delete: %v", dir, err)
	}
	if _, err := d2.Inspect(ctx, id); errdefs.CodeOf(err) != errdefs.NotFound {
		t.Errorf("Inspect after Delete: %v, want not_found", err)
	}
	if err := d2.Delete(ctx, id); err != nil {
		t.Errorf("Delete again: %v", err)
	}
	if list, err := d2.List(ctx); err != nil || len(list) != 0 {
		t.Errorf("List after Delete: %+v, %v", list, err)
	}
}

// newAdopter is a fresh driver on d's Root, as after an agent restart.
func newAdopter(t testing.TB, d *Driver) *Driver {
	t.Helper()
	cfg := d.cfg
	d2, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return d2
}

// TestStopAndDeleteRunning: a guest that does not answer the power button
// is made to quit after the grace period; Delete of a running VM kills it.
func TestStopAndDeleteRunning(t *testing.T) {
	ti := needTiny(t)
	d := newTestDriver(t, memImages{"tiny": ti.Image})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	spec := driver.Spec{ID: "vm-grace", Brand: driver.BrandBhyve, Image: driver.Image{ID: "tiny"}, MemoryMiB: 128}
	if err := d.Create(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if err := d.Start(ctx, spec.ID); err != nil {
		t.Fatal(err)
	}
	s, _ := d.Inspect(ctx, spec.ID)
	// Grace 0: no power button, straight to quit.
	t0 := time.Now()
	if err := d.Stop(ctx, spec.ID, 0); err != nil {
		t.Fatal(err)
	}
	if time.Since(t0) > 5*time.Second || processAlive(s.Pid) {
		t.Errorf("Stop(grace 0) took %s, pid alive %v", time.Since(t0), processAlive(s.Pid))
	}
	if err := d.Stop(ctx, spec.ID, time.Second); err != nil {
		t.Errorf("Stop of a stopped VM: %v", err)
	}
	// Right after start the guest has no power-button listener yet: the
	// press is lost and Stop must fall back to quit after the grace period.
	if err := d.Start(ctx, spec.ID); err != nil {
		t.Fatal(err)
	}
	s, _ = d.Inspect(ctx, spec.ID)
	t0 = time.Now()
	if err := d.Stop(ctx, spec.ID, time.Second); err != nil {
		t.Fatal(err)
	}
	if time.Since(t0) > 5*time.Second || processAlive(s.Pid) {
		t.Errorf("Stop(grace 1s) of a booting VM took %s, pid alive %v", time.Since(t0), processAlive(s.Pid))
	}
	if err := d.Start(ctx, spec.ID); err != nil {
		t.Fatal(err)
	}
	s, _ = d.Inspect(ctx, spec.ID)
	if err := d.Delete(ctx, spec.ID); err != nil {
		t.Fatal(err)
	}
	if processAlive(s.Pid) {
		t.Errorf("pid %d alive after Delete", s.Pid)
	}
	left, _ := filepath.Glob(filepath.Join(d.cfg.Root, "instances", "*"))
	if len(left) != 0 {
		t.Errorf("left behind: %v", left)
	}
}

func TestProbeKVM(t *testing.T) {
	ti := needTiny(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	t0 := time.Now()
	a := ProbeKVM(ctx, ti.Kernel.Vmlinuz, "")
	took := time.Since(t0)
	t.Logf("ProbeKVM = %s in %s", a, took.Round(time.Millisecond))
	if a != AccelKVM && a != AccelTCG {
		t.Fatalf("ProbeKVM = %q", a)
	}
	if _, err := os.Stat("/dev/kvm"); err != nil && a != AccelTCG {
		t.Errorf("no /dev/kvm but probe says %s", a)
	}
	t1 := time.Now()
	if b := ProbeKVM(ctx, ti.Kernel.Vmlinuz, ""); b != a || time.Since(t1) > 50*time.Millisecond {
		t.Errorf("second probe = %s in %s; want cached %s", b, time.Since(t1), a)
	}
}

// BenchmarkCreateToRunning measures Create+Start until the tiny image's
// ready marker is on the console, under TCG, and reports the median.
func BenchmarkCreateToRunning(b *testing.B) {
	ti := needTiny(b)
	d := newTestDriver(b, memImages{"tiny": ti.Image})
	ctx := context.Background()
	var times []time.Duration
	for i := 0; i < b.N; i++ {
		id := fmt.Sprintf("bench-%d", i)
		t0 := time.Now()
		if err := d.Create(ctx, driver.Spec{ID: id, Brand: driver.BrandKVM, Image: driver.Image{ID: "tiny"}, MemoryMiB: 128}); err != nil {
			b.Fatal(err)
		}
		if err := d.Start(ctx, id); err != nil {
			b.Fatal(err)
		}
		waitConsole(b, d.ConsoleLogPath(id), TinyMarkerReady, 1, 60*time.Second)
		times = append(times, time.Since(t0))
		b.StopTimer()
		if err := d.Delete(ctx, id); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
	b.ReportMetric(float64(times[len(times)/2].Milliseconds()), "p50-ms")
	b.ReportMetric(float64(times[len(times)-1].Milliseconds()), "max-ms")
	b.ReportMetric(0, "ns/op")
	_ = strings.TrimSpace
}
