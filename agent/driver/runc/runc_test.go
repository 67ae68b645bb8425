package runc

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"flotilla/agent"
	"flotilla/agent/driver"
	"flotilla/agent/network"
	"flotilla/api/errdefs"
	"flotilla/oci"

	"flotilla/internal/testenv"
)

func TestMain(m *testing.M) {
	if os.Getenv("FLOTILLA_TEST_SHIM") == "1" {
		os.Exit(ShimMain(os.Args[1:]))
	}
	if os.Getenv(testPipeEnv) == "1" { // sshfs's transport (share_test.go)
		if err := agent.PipeVolumeShare(context.Background(), os.Getenv, os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

type memImages struct{ img v1.Image }

func (m memImages) Image(ctx context.Context, img driver.Image) (v1.Image, error) {
	if img.Ref != "busybox" {
		return nil, errdefs.NotFoundf("image %s not found", img.Ref)
	}
	return m.img, nil
}

var (
	imgOnce sync.Once
	busybox v1.Image
	imgErr  error
)

func needRuntime(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: container tests need root")
	}
	testenv.NeedCommand(t, "runc", "runc")
	testenv.NeedFile(t, "/bin/busybox", "busybox-static")
	imgOnce.Do(func() { busybox, imgErr = oci.BusyboxImage("/bin/busybox") })
	if imgErr != nil {
		t.Fatal(imgErr)
	}
}

func newDriver(t testing.TB, root string) *Driver {
	t.Helper()
	if root == "" {
		root = t.TempDir()
	}
	d, err := New(Config{Root: root, Images: memImages{busybox}, ShimArgs: []string{},
		ShimEnv: []string{"FLOTILLA_TEST_SHIM=1"}, LogMaxSize: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func testID(name string) string {
	return fmt.Sprintf("t%d-%s-%d", os.Getpid(), name, rand.IntN(1e6))
}

func baseSpec(id string, cmd ...string) driver.Spec {
	return driver.Spec{ID: id, Brand: driver.BrandContainer, Image: driver.Image{Ref: "busybox"},
		MemoryMiB: 64, VCPUs: 0.5, PIDsLimit: 50, Cmd: cmd}
}

// create makes and starts a container and deletes it at cleanup, checking
// nothing is left behind.
func create(t *testing.T, d *Driver, spec driver.Spec) {
	t.Helper()
	ctx := context.Background()
	if err := d.Create(ctx, spec); err != nil {
		t.Fatalf("Create: %v", err)
	}
	t.Cleanup(func() {
		if err := d.Delete(ctx, spec.ID); err != nil {
			t.Errorf("Delete: %v", err)
		}
		assertGone(t, d, spec.ID)
	})
	if err := d.Start(ctx, spec.ID); err != nil {
		b, _ := os.ReadFile(filepath.Join(d.cfg.Root, "containers", spec.ID, fileShimLog))
		t.Fatalf("Start: %v\nshim log: %s", err, b)
	}
}

func assertGone(t *testing.T, d *Driver, id string) {
	t.Helper()
	if _, err := d.Inspect(context.Background(), id); errdefs.CodeOf(err) != errdefs.NotFound {
		t.Errorf("Inspect after delete: %v, want not found", err)
	}
	if _, err := os.Stat(filepath.Join(d.cfg.Root, "containers", id)); !os.IsNotExist(err) {
		t.Errorf("bundle of %s left behind", id)
	}
	for _, ctrl := range []string{"memory", "pids", "cpu", "freezer"} {
		if _, err := os.Stat(filepath.Join("/sys/fs/cgroup", ctrl, CgroupParent, id)); err == nil {
			t.Errorf("cgroup %s/%s left behind", ctrl, id)
		}
	}
	if network.LinkExists(network.VethName(id, 0)) || network.NetNSExists(network.NetNSName(id)) {
		t.Errorf("veth or netns of %s left behind", id)
	}
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	if bytes.Contains(mi, []byte(id)) {
		t.Errorf("a mount of %s is left behind", id)
	}
}

func waitState(t *testing.T, d *Driver, id string, pred func(driver.Status) bool, timeout time.Duration) driver.Status {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		st, err := d.Inspect(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		if pred(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("container %s: state %+v did not reach the expected state in %s", id, st, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func stopped(st driver.Status) bool { return st.State == driver.StateStopped && st.ExitCode != nil }

func execOut(t *testing.T, d *Driver, id string, cmd ...string) (string, int) {
	t.Helper()
	p, err := d.Exec(context.Background(), id, driver.ExecConfig{Cmd: cmd, AttachStdout: true, AttachStderr: true})
	if err != nil {
		t.Fatalf("Exec %v: %v", cmd, err)
	}
	var out, errOut bytes.Buffer
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); io.Copy(&out, p.Stdout) }()
	go func() { defer wg.Done(); io.Copy(&errOut, p.Stderr) }()
	code, err := p.Wait()
	wg.Wait()
	if err != nil {
		t.Fatalf("Exec wait: %v", err)
	}
	return out.String() + errOut.String(), code
}

func TestLifecycleLimitsLogsExec(t *testing.T) {
	needRuntime(t)
	ctx := context.Background()
	d := newDriver(t, "")
	id := testID("life")
	spec := baseSpec(id)
	spec.Env = []string{"GREETING=hi"}
	spec.Cmd = []string{"/bin/sh", "-c", "echo out-$GREETING; echo err-line >&2; trap 'echo bye; exit 0' TERM; while :; do sleep 1 & wait; done"}
	create(t, d, spec)
	if err := d.Create(ctx, spec); err != nil {
		t.Errorf("Create of an existing container: %v", err)
	}
	st := waitState(t, d, id, func(s driver.Status) bool { return s.State == driver.StateRunning && s.Pid > 0 }, 5*time.Second)
	if err := d.Start(ctx, id); err != nil {
		t.Errorf("Start of a running container: %v", err)
	}

	if out, code := execOut(t, d, id, "cat", "/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/pids/pids.max", "/sys/fs/cgroup/cpu/cpu.cfs_quota_us"); code != 0 ||
		strings.Join(strings.Fields(out), " ") != "67108864 50 50000" {
		t.Errorf("limits inside: %q (exit %d), want 67108864 50 50000", out, code)
	}
	if out, code := execOut(t, d, id, "sh", "-c", "echo x; exit 5"); code != 5 || out != "x\n" {
		t.Errorf("exec: %q exit %d, want \"x\\n\" exit 5", out, code)
	}
	if _, code := execOut(t, d, id, "sh", "-c", "grep -q NoNewPrivs:.*1 /proc/self/status && grep -q Seccomp:.*2 /proc/self/status"); code != 0 {
		t.Errorf("exec process lacks no-new-privileges or seccomp filtering")
	}
	if out, code := execOut(t, d, id, "mount", "-t", "tmpfs", "x", "/mnt"); code == 0 {
		t.Errorf("mount inside the container succeeded: %q", out)
	}
	upd := spec
	upd.MemoryMiB, upd.PIDsLimit = 96, 70
	if err := d.Update(ctx, upd); err != nil {
		t.Fatalf("Update: %v", err)
	}
	if out, _ := execOut(t, d, id, "cat", "/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/pids/pids.max"); strings.Join(strings.Fields(out), " ") != "100663296 70" {
		t.Errorf("limits after Update: %q, want 100663296 70", out)
	}
	s, err := d.Stats(ctx, id)
	if err != nil || s.MemoryLimit != 96<<20 || s.PIDs == 0 {
		t.Errorf("Stats = %+v, %v", s, err)
	}
	titles, rows, err := d.Top(ctx, id, "")
	if err != nil || len(titles) == 0 || len(rows) == 0 {
		t.Errorf("Top = %v %v %v", titles, rows, err)
	}

	t0 := time.Now()
	if err := d.Stop(ctx, id, 10*time.Second); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if el := time.Since(t0); el > 3*time.Second {
		t.Errorf("Stop took %s although the container exits on SIGTERM", el)
	}
	st = waitState(t, d, id, stopped, 5*time.Second)
	if *st.ExitCode != 0 {
		t.Errorf("exit code after TERM = %d, want 0", *st.ExitCode)
	}
	logs := collectLogs(t, d, id, driver.LogOptions{Stdout: true, Stderr: true, Tail: -1})
	want := []string{"stdout:out-hi\n", "stderr:err-line\n", "stdout:bye\n"}
	for _, w := range want {
		if !strings.Contains(strings.Join(logs, ""), w) {
			t.Errorf("logs %q lack %q", logs, w)
		}
	}
	if got := collectLogs(t, d, id, driver.LogOptions{Stderr: true, Tail: -1}); len(got) != 1 || got[0] != "stderr:err-line\n" {
		t.Errorf("stderr-only logs = %q", got)
	}
	if got := collectLogs(t, d, id, driver.LogOptions{Stdout: true, Stderr: true, Tail: 1}); len(got) != 1 || got[0] != "stdout:bye\n" {
		t.Errorf("tail 1 = %q", got)
	}

	// Start after stop re-creates the container from the same bundle.
	if err := d.Start(ctx, id); err != nil {
		t.Fatalf("Start after Stop: %v", err)
	}
	st2 := waitState(t, d, id, func(s driver.Status) bool { return s.State == driver.StateRunning && s.Pid > 0 }, 5*time.Second)
	if st2.Pid == st.Pid {
		t.Errorf("restarted container has the old pid %d", st.Pid)
	}
	if out, _ := execOut(t, d, id, "cat", "/sys/fs/cgroup/memory/memory.limit_in_bytes"); strings.TrimSpace(out) != "100663296" {
		t.Errorf("updated memory limit lost across stop/start: %q", out)
	}
}

func collectLogs(t *testing.T, d *Driver, id string, opts driver.LogOptions) []string {
	t.Helper()
	ch := make(chan driver.LogEntry, 1000)
	if err := d.Logs(context.Background(), id, opts, ch); err != nil {
		t.Fatal(err)
	}
	close(ch)
	var out []string
	for e := range ch {
		out = append(out, e.Stream+":"+string(e.Line))
	}
	return out
}

func TestExitCodeSurvivesDriverRestart(t *testing.T) {
	needRuntime(t)
	ctx := context.Background()
	root := t.TempDir()
	d1 := newDriver(t, root)
	idRun, idExit := testID("adopt"), testID("exit")
	create(t, d1, baseSpec(idRun))
	create(t, d1, baseSpec(idExit, "/bin/sh", "-c", "sleep 0.5; exit 7"))
	st1 := waitState(t, d1, idRun, func(s driver.Status) bool { return s.State == driver.StateRunning && s.Pid > 0 }, 5*time.Second)

	// "Restart the agent": a new Driver over the same root while idExit
	// finishes with nobody watching.
	d2 := newDriver(t, root)
	st := waitState(t, d2, idExit, stopped, 5*time.Second)
	if *st.ExitCode != 7 {
		t.Errorf("exit code seen by the new driver = %d, want 7", *st.ExitCode)
	}
	st2, err := d2.Inspect(ctx, idRun)
	if err != nil || st2.State != driver.StateRunning || st2.Pid != st1.Pid {
		t.Errorf("adopted container: %+v %v, want running with pid %d", st2, err, st1.Pid)
	}
	list, err := d2.List(ctx)
	if err != nil || len(list) != 2 {
		t.Errorf("List = %+v, %v", list, err)
	}
	// A container killed by a signal reports 128+signal.
	if err := d2.Stop(ctx, idRun, 0); err != nil {
		t.Fatal(err)
	}
	if st := waitState(t, d2, idRun, stopped, 5*time.Second); *st.ExitCode != 137 {
		t.Errorf("exit code after SIGKILL = %d, want 137", *st.ExitCode)
	}
}

func TestRestartPolicy(t *testing.T) {
	needRuntime(t)
	d := newDriver(t, "")
	old := RestartBackoffMin
	_ = old
	id := testID("restart")
	spec := baseSpec(id, "/bin/sh", "-c", "exit 3")
	spec.Restart = driver.RestartPolicy{Name: "on-failure", MaximumRetryCount: 2}
	create(t, d, spec)
	st := waitState(t, d, id, stopped, 10*time.Second)
	if *st.ExitCode != 3 || st.Restarts != 2 {
		t.Errorf("after on-failure:2: exit %d restarts %d, want 3 and 2", *st.ExitCode, st.Restarts)
	}
	// "always" keeps restarting until stopped, and Stop wins.
	id2 := testID("always")
	spec2 := baseSpec(id2, "/bin/sh", "-c", "exit 0")
	spec2.Restart = driver.RestartPolicy{Name: "always"}
	create(t, d, spec2)
	waitState(t, d, id2, func(s driver.Status) bool { return s.Restarts >= 2 }, 10*time.Second)
	if err := d.Stop(context.Background(), id2, time.Second); err != nil {
		t.Fatal(err)
	}
	st = waitState(t, d, id2, stopped, 5*time.Second)
	time.Sleep(300 * time.Millisecond)
	if st2, _ := d.Inspect(context.Background(), id2); st2.State != driver.StateStopped {
		t.Errorf("a stopped container with policy always came back: %+v", st2)
	}
}

func TestShouldRestart(t *testing.T) {
	cases := []struct {
		name     string
		policy   driver.RestartPolicy
		code, n  int
		want     bool
		minDelay time.Duration
	}{
		{"NoPolicy", driver.RestartPolicy{}, 1, 0, false, 0},
		{"No", driver.RestartPolicy{Name: "no"}, 1, 0, false, 0},
		{"OnFailureSuccess", driver.RestartPolicy{Name: "on-failure"}, 0, 0, false, 0},
		{"OnFailureFailed", driver.RestartPolicy{Name: "on-failure"}, 1, 5, true, RestartBackoffMin * 32},
		{"OnFailureLimit", driver.RestartPolicy{Name: "on-failure", MaximumRetryCount: 3}, 1, 3, false, 0},
		{"Always", driver.RestartPolicy{Name: "always"}, 0, 1, true, RestartBackoffMin * 2},
		{"UnlessStoppedCapped", driver.RestartPolicy{Name: "unless-stopped"}, 0, 100, true, RestartBackoffMax},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ok, d := ShouldRestart(c.policy, c.code, c.n)
			if ok != c.want || (ok && d != c.minDelay) {
				t.Errorf("ShouldRestart = %v %s, want %v %s", ok, d, c.want, c.minDelay)
			}
		})
	}
}

func TestAttachStdin(t *testing.T) {
	needRuntime(t)
	d := newDriver(t, "")
	id := testID("attach")
	spec := baseSpec(id, "/bin/sh", "-c", "while read l; do echo got-$l; echo err-$l >&2; done")
	spec.OpenStdin = true
	create(t, d, spec)
	s, err := d.Attach(context.Background(), id, driver.AttachOptions{Stdin: true, Stdout: true, Stderr: true, Stream: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	io.WriteString(s.Stdin, "ping\n")
	// Read both streams at once: the streams share one connection.
	errc := make(chan string, 1)
	go func() {
		buf := make([]byte, 64)
		n, _ := io.ReadAtLeast(s.Stderr, buf, len("err-ping\n"))
		errc <- string(buf[:n])
	}()
	buf := make([]byte, 64)
	n, err := io.ReadAtLeast(s.Stdout, buf, len("got-ping\n"))
	if err != nil || string(buf[:n]) != "got-ping\n" {
		t.Errorf("stdout = %q, %v", buf[:n], err)
	}
	select {
	case got := <-errc:
		if got != "err-ping\n" {
			t.Errorf("stderr = %q", got)
		}
	case <-time.After(5 * time.Second):
		t.Error("no stderr output")
	}
	s.Close()
	<-s.Done
}

func TestTty(t *testing.T) {
	needRuntime(t)
	t.Run("ShortRoot", func(t *testing.T) { testTty(t, "") })
	// A data directory deep enough that the console's and attach's
	// sockets cannot live in the bundle (sun_path is 108 bytes).
	t.Run("DeepRoot", func(t *testing.T) {
		root := filepath.Join(t.TempDir(), strings.Repeat("a-deep-data-directory-", 4))
		if err := os.MkdirAll(root, 0o755); err != nil {
			t.Fatal(err)
		}
		testTty(t, root)
	})
}

func testTty(t *testing.T, root string) {
	d := newDriver(t, root)
	id := testID("tty")
	spec := baseSpec(id, "/bin/sh")
	spec.Tty, spec.OpenStdin = true, true
	create(t, d, spec)
	s, err := d.Attach(context.Background(), id, driver.AttachOptions{Stdin: true, Stdout: true, Stream: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if !s.Tty || s.Stderr != nil {
		t.Errorf("tty attach: Tty=%v Stderr=%v", s.Tty, s.Stderr)
	}
	if err := d.Resize(context.Background(), id, 33, 101); err != nil {
		t.Fatalf("Resize: %v", err)
	}
	io.WriteString(s.Stdin, "stty size; tty\n")
	var got bytes.Buffer
	deadline := time.Now().Add(5 * time.Second)
	buf := make([]byte, 256)
	for !strings.Contains(got.String(), "/dev/pts/") && time.Now().Before(deadline) {
		n, err := s.Stdout.Read(buf)
		got.Write(buf[:n])
		if err != nil {
			break
		}
	}
	if !strings.Contains(got.String(), "33 101") || !strings.Contains(got.String(), "/dev/pts/") {
		t.Errorf("tty output %q lacks the size 33 101 and a pts", got.String())
	}
	// exec with a tty.
	p, err := d.Exec(context.Background(), id, driver.ExecConfig{Cmd: []string{"tty"}, Tty: true, AttachStdout: true})
	if err != nil {
		t.Fatal(err)
	}
	out, _ := io.ReadAll(p.Stdout)
	if code, _ := p.Wait(); code != 0 || !strings.Contains(string(out), "/dev/pts/") {
		t.Errorf("exec tty: %q exit %d", out, code)
	}
}

func TestErrors(t *testing.T) {
	needRuntime(t)
	ctx := context.Background()
	d := newDriver(t, "")
	id := testID("err")
	bad := baseSpec(id)
	bad.Image.Ref = "nosuchimage"
	if err := d.Create(ctx, bad); errdefs.CodeOf(err) != errdefs.NotFound {
		t.Errorf("Create with a missing image: %v, want not found", err)
	}
	wrong := baseSpec(id)
	wrong.Image.Digest = "sha256:" + strings.Repeat("0", 64)
	if err := d.Create(ctx, wrong); errdefs.CodeOf(err) != errdefs.Invalid {
		t.Errorf("Create with a digest mismatch: %v, want invalid", err)
	}
	assertGone(t, d, id)
	if err := d.Create(ctx, baseSpec("../escape")); errdefs.CodeOf(err) != errdefs.Invalid {
		t.Errorf("Create with a path as id: %v, want invalid", err)
	}
	for name, err := range map[string]error{
		"Start":  d.Start(ctx, id),
		"Stop":   d.Stop(ctx, id, time.Second),
		"Update": d.Update(ctx, baseSpec(id)),
	} {
		if errdefs.CodeOf(err) != errdefs.NotFound {
			t.Errorf("%s of an unknown container: %v, want not found", name, err)
		}
	}
	if _, err := d.Exec(ctx, id, driver.ExecConfig{Cmd: []string{"true"}}); errdefs.CodeOf(err) != errdefs.NotFound {
		t.Errorf("Exec of an unknown container: %v", err)
	}
	if err := d.Delete(ctx, id); err != nil {
		t.Errorf("Delete of an unknown container: %v", err)
	}
	if _, err := New(Config{Root: t.TempDir(), RuncBinary: "/nonexistent/runc"}); errdefs.CodeOf(err) != errdefs.Unavailable {
		t.Errorf("New without runc: %v, want unavailable", err)
	}
	// A stopped container cannot be exec'd or attached to.
	id2 := testID("stopped")
	create(t, d, baseSpec(id2, "/bin/true"))
	waitState(t, d, id2, stopped, 5*time.Second)
	if _, err := d.Exec(ctx, id2, driver.ExecConfig{Cmd: []string{"true"}}); errdefs.CodeOf(err) != errdefs.Conflict {
		t.Errorf("Exec of a stopped container: %v, want conflict", err)
	}
	if _, err := d.Attach(ctx, id2, driver.AttachOptions{Stdout: true}); errdefs.CodeOf(err) != errdefs.Conflict {
		t.Errorf("Attach to a stopped container: %v, want conflict", err)
	}
}
