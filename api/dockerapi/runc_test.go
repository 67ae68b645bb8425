package dockerapi

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/creack/pty"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"flotilla/agent"
	"flotilla/agent/dns"
	"flotilla/agent/driver/runc"
	"flotilla/agent/firewall"
	agentnet "flotilla/agent/network"
	"flotilla/api/service"
	"flotilla/oci"
	"flotilla/store"
	"flotilla/store/storetest"

	"flotilla/internal/testenv"
)

// shimEnv makes the test binary the runc driver's per-container shim: the
// driver re-executes it with this variable set (harness_test.go owns
// TestMain; init runs before it).
const shimEnv = "FLOTILLA_DOCKERAPI_TEST_SHIM"

func init() {
	if os.Getenv(shimEnv) == "1" {
		os.Exit(runc.ShimMain(os.Args[1:]))
	}
}

// needRunc skips unless this machine can run real containers.
func needRunc(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: real containers need root (namespaces, cgroups, bridges)")
	}
	testenv.NeedCommand(t, "runc", "runc")
	testenv.NeedFile(t, "/bin/busybox", "busybox-static")
	testenv.NeedCommand(t, "docker", "the docker CLI")
}

// runcEnv is a control plane with ONE real node (the runc driver behind an
// agent serving instance streams), the image blob store shared by the
// service and the agent API's registry, and busybox:latest built from the
// host's static busybox.
type runcEnv struct {
	*testEnv
	drv  *runc.Driver
	root string // the driver's Root
	img  v1.Image
}

func newRuncEnv(t *testing.T) *runcEnv {
	t.Helper()
	needRunc(t)
	docker, _ := exec.LookPath("docker")
	st := storetest.New(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	log := testLogger()
	must(t, service.EnsurePackages(ctx, st))
	must(t, service.EnsureNetworks(ctx, st))
	// A 64 MiB size so that -m 64m gets exactly that limit.
	_, err := st.CreatePackage(ctx, store.Package{Name: "t1-tiny-64M", MemoryMiB: 64, DiskMiB: 1024, VCPUs: 1, Group: "t1", Description: "64 MiB", Active: true})
	must(t, err)
	svc, err := service.New(ctx, st, log, service.PlacerOptions{})
	must(t, err)
	blobs, err := oci.NewDirStore(t.TempDir())
	must(t, err)
	svc.SetBlobs(blobs)
	img, err := oci.BusyboxImage("/bin/busybox")
	must(t, err)
	_, err = svc.ImportImage(ctx, nil, img, service.ImageMeta{Name: "busybox", Version: "latest", Type: service.ImageTypeDocker, Public: true})
	must(t, err)

	apiURL, tok := startAgentAPI(t, ctx, st, log, blobs)
	dataDir := t.TempDir()
	images, err := agent.NewImageSource(agent.ImageSourceConfig{CacheDir: filepath.Join(dataDir, "images"), DataDir: dataDir})
	must(t, err)
	root := filepath.Join(dataDir, "runc")
	t.Cleanup(func() { unmountVolumes(t, root) })
	drv, err := runc.New(runc.Config{Root: root, Images: images, ShimArgs: []string{}, ShimEnv: []string{shimEnv + "=1"}, Logger: log})
	must(t, err)
	// The node's resolver, on the gateways of the networks it has instances on.
	resolver := dns.New(dns.Config{Logger: log})
	t.Cleanup(resolver.Close)
	// The node's firewall, a table of its own.
	fw, err := firewall.New(fmt.Sprintf("flotilla-test-%d-%d", os.Getpid(), rand.IntN(1e9)))
	must(t, err)
	t.Cleanup(func() { fw.Close() })
	startNode(t, ctx, svc, agent.Config{Name: "runc-1", Firewall: fw, DataDir: dataDir, APIURL: apiURL, JoinToken: tok,
		Address: "127.0.0.1:0", Driver: drv, MemoryMiB: 8192, DiskMiB: 1 << 18, VCPUs: 8,
		WatchInterval: 100 * time.Millisecond, StopTimeout: 5 * time.Second, Logger: log, Resolver: resolver.Feed("runc-1"),
		RouterNetNS: agentnet.RouterNetNSPath})
	e := startDockerEndpoint(t, ctx, svc, log, docker, 30*time.Second)
	re := &runcEnv{testEnv: e, drv: drv, root: root, img: img}
	// Registered last, so it runs first: remove every container while the
	// agent still runs, then check the node is clean.
	t.Cleanup(re.removeAll)
	return re
}

// removeAll removes every account's containers through the endpoint and
// waits until the driver has nothing left: no runc container, bundle or
// cgroup.
func (e *runcEnv) removeAll() {
	t := e.t
	for _, login := range []string{"alice", "bob"} {
		out, _, _ := e.run(login, "ps", "-a", "-q")
		if ids := strings.Fields(out); len(ids) > 0 {
			e.run(login, append([]string{"rm", "-f"}, ids...)...)
		}
	}
	// A delete removes the container's record before its bundle, so wait
	// for both to be gone.
	deadline := time.Now().Add(30 * time.Second)
	for {
		list, err := e.drv.List(context.Background())
		ents, _ := os.ReadDir(filepath.Join(e.root, "containers"))
		if err == nil && len(list) == 0 && len(ents) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("left on the node: containers %+v (%v), %d bundles", list, err, len(ents))
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, ctrl := range []string{"memory", "pids", "cpu", "freezer"} {
		ents, _ := os.ReadDir(filepath.Join("/sys/fs/cgroup", ctrl, runc.CgroupParent))
		for _, d := range ents {
			if d.IsDir() && !strings.HasPrefix(d.Name(), ".") {
				// Another test binary may use the same parent; only ours count.
				if _, err := os.Stat(filepath.Join(e.root, "containers", d.Name())); err == nil {
					t.Errorf("cgroup %s/%s left behind", ctrl, d.Name())
				}
			}
		}
	}
}

func TestDockerRunc(t *testing.T) {
	re := newRuncEnv(t)
	e := re.testEnv

	t.Run("RunRmEcho", func(t *testing.T) {
		e := e.with(t)
		if out := e.ok("alice", "run", "--rm", "busybox", "echo", "hi"); out != "hi\n" {
			t.Fatalf("docker run --rm busybox echo hi: %q", out)
		}
		if out := e.ok("alice", "ps", "-a", "-q"); out != "" {
			t.Fatalf("--rm left a container: %q", out)
		}
	})
	t.Run("ExitCode", func(t *testing.T) {
		e := e.with(t)
		if _, errOut, code := e.run("alice", "run", "--name", "three", "busybox", "sh", "-c", "exit 3"); code != 3 {
			t.Fatalf("exit code %d, want 3: %s", code, errOut)
		}
		if out := e.ok("alice", "inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", "three"); out != "exited 3\n" {
			t.Fatalf("inspect after exit 3: %q", out)
		}
		e.ok("alice", "rm", "three")
	})
	var xID string
	t.Run("RunDetachedLogs", func(t *testing.T) {
		e := e.with(t)
		xID = strings.TrimSpace(e.ok("alice", "run", "-d", "--name", "box", "busybox", "sh", "-c",
			"echo started; echo oops >&2; trap 'exit 0' TERM; while :; do sleep 1 & wait; done"))
		if !fullID.MatchString(xID) {
			t.Fatalf("run -d printed %q", xID)
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			out, errOut, code := e.run("alice", "logs", "box")
			if code == 0 && out == "started\n" && errOut == "oops\n" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("docker logs box: exit %d stdout %q stderr %q", code, out, errOut)
			}
			time.Sleep(100 * time.Millisecond)
		}
		if out := e.ok("alice", "ps", "--format", "{{.Names}} {{.Status}}"); !strings.HasPrefix(out, "box Up") {
			t.Fatalf("ps: %q", out)
		}
	})
	t.Run("Exec", func(t *testing.T) {
		e := e.with(t)
		if out := e.ok("alice", "exec", "box", "echo", "ok"); out != "ok\n" {
			t.Fatalf("docker exec box echo ok: %q", out)
		}
		if _, _, code := e.run("alice", "exec", "box", "sh", "-c", "exit 7"); code != 7 {
			t.Fatalf("exec exit code %d, want 7", code)
		}
		// PID 1 in its own PID namespace, the host's processes invisible.
		if out := e.ok("alice", "exec", "box", "sh", "-c", "cat /proc/1/cmdline | tr '\\0' ' '; echo; ls /proc | grep -c '^[0-9]'"); !strings.HasPrefix(out, "sh -c echo started") {
			t.Fatalf("PID 1 of the container: %q", out)
		}
	})
	t.Run("ExecTTY", func(t *testing.T) {
		e := e.with(t)
		cmd := e.cmd("alice", "exec", "-it", "box", "sh")
		f, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: 40, Cols: 120})
		must(t, err)
		defer f.Close()
		out := make(chan string, 1)
		go func() {
			var buf bytes.Buffer
			r := bufio.NewReader(f)
			b := make([]byte, 4096)
			for {
				n, err := r.Read(b)
				buf.Write(b[:n])
				if err != nil || strings.Contains(buf.String(), "answer=42") && strings.Contains(buf.String(), "size=40 120") {
					out <- buf.String()
					return
				}
			}
		}()
		io.WriteString(f, "echo answer=$((6*7)); echo size=$(stty size); tty\r")
		select {
		case got := <-out:
			if !strings.Contains(got, "answer=42") || !strings.Contains(got, "size=40 120") {
				t.Fatalf("exec -it output: %q", got)
			}
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			t.Fatal("docker exec -it: no answer through the pty")
		}
		io.WriteString(f, "exit 5\r")
		err = cmd.Wait()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 5 {
			t.Fatalf("docker exec -it exit: %v, want exit status 5", err)
		}
	})
	t.Run("MemoryLimit", func(t *testing.T) {
		e := e.with(t)
		out := e.ok("alice", "run", "--rm", "-m", "64m", "busybox", "cat", "/sys/fs/cgroup/memory/memory.limit_in_bytes")
		if out != strconv.Itoa(64<<20)+"\n" {
			t.Fatalf("memory.limit_in_bytes inside a -m 64m container: %q, want %d", out, 64<<20)
		}
	})
	t.Run("OtherAccountCannotTouch", func(t *testing.T) {
		e := e.with(t)
		if out := e.ok("bob", "ps", "-a", "-q"); out != "" {
			t.Fatalf("bob sees %q", out)
		}
		e.fails("bob", 1, "No such container: box", "exec", "box", "echo", "hacked")
		e.fails("bob", 1, "No such container: box", "logs", "box")
		e.fails("bob", 1, "No such container: box", "stop", "box")
		e.fails("bob", 1, "No such container: "+xID[:12], "kill", xID[:12])
		e.fails("bob", 0, "No such container: box", "rm", "-f", "box") // the CLI forgives NotFound with -f
		if out := e.ok("alice", "inspect", "--format", "{{.State.Status}}", "box"); out != "running\n" {
			t.Fatalf("after bob's attempts x is %q", out)
		}
		// bob's own container of the same name is his alone.
		e.ok("bob", "run", "-d", "--name", "box", "busybox")
		if out := e.ok("bob", "exec", "box", "hostname"); strings.TrimSpace(out) == xID[:12] {
			t.Fatalf("bob's exec reached alice's container")
		}
		e.ok("bob", "rm", "-f", "box")
	})
	t.Run("StopRm", func(t *testing.T) {
		e := e.with(t)
		start := time.Now()
		e.ok("alice", "stop", "box")
		if d := time.Since(start); d > 8*time.Second {
			t.Errorf("stop took %v; the trap should make it prompt", d)
		}
		if out := e.ok("alice", "inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", "box"); out != "exited 0\n" {
			t.Fatalf("after stop: %q", out)
		}
		e.ok("alice", "start", "box")
		e.ok("alice", "rm", "-f", "box")
		e.fails("alice", 1, "No such container: box", "inspect", "--type", "container", "box")
	})
	t.Run("Latency", func(t *testing.T) {
		e := e.with(t)
		const n = 20
		dockerRun := make([]time.Duration, 0, n)
		for range n {
			start := time.Now()
			e.ok("alice", "run", "--rm", "busybox", "true")
			dockerRun = append(dockerRun, time.Since(start))
		}
		bare := bareRuncRuns(t, re.img, n)
		t.Logf("docker run --rm busybox true (real CLI, TLS, control plane, agent, runc): p50 %v (min %v, max %v) over %d runs",
			p50(dockerRun), slices.Min(dockerRun), slices.Max(dockerRun), n)
		t.Logf("bare runc run of a busybox bundle (true):                                  p50 %v (min %v, max %v) over %d runs",
			p50(bare), slices.Min(bare), slices.Max(bare), n)
	})
}

func p50(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// bareRuncRuns times `runc run` of a bundle of img running true, n times:
// the floor that docker run through the cloud is compared with.
func bareRuncRuns(t *testing.T, img v1.Image, n int) []time.Duration {
	t.Helper()
	dir := t.TempDir()
	bundle, state := filepath.Join(dir, "bundle"), filepath.Join(dir, "state")
	must(t, os.MkdirAll(filepath.Join(bundle, "rootfs"), 0o755))
	must(t, oci.UnpackImage(context.Background(), img, filepath.Join(bundle, "rootfs")))
	if out, err := exec.Command("runc", "spec", "--bundle", bundle).CombinedOutput(); err != nil {
		t.Fatalf("runc spec: %v: %s", err, out)
	}
	raw, err := os.ReadFile(filepath.Join(bundle, "config.json"))
	must(t, err)
	var spec map[string]any
	must(t, json.Unmarshal(raw, &spec))
	proc := spec["process"].(map[string]any)
	proc["terminal"] = false
	proc["args"] = []string{"/bin/true"}
	raw, err = json.Marshal(spec)
	must(t, err)
	must(t, os.WriteFile(filepath.Join(bundle, "config.json"), raw, 0o644))
	out := make([]time.Duration, 0, n)
	for i := range n {
		id := "flotilla-bare-" + strconv.Itoa(os.Getpid()) + "-" + strconv.Itoa(i)
		start := time.Now()
		cmd := exec.Command("runc", "--root", state, "run", "--bundle", bundle, id)
		if b, err := cmd.CombinedOutput(); err != nil {
			exec.Command("runc", "--root", state, "delete", "-f", id).Run()
			t.Fatalf("runc run: %v: %s", err, b)
		}
		out = append(out, time.Since(start))
	}
	return out
}
