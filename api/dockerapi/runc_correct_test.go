package dockerapi

import (
	"bytes"
	"context"
	"io"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/creack/pty"
)

// runIn runs the docker CLI as login with stdin.
func (e *testEnv) runIn(login string, stdin []byte, args ...string) (string, string, int) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.docker, args...)
	cmd.Env = []string{"HOME=" + e.home, "DOCKER_HOST=" + e.host, "DOCKER_TLS_VERIFY=1",
		"DOCKER_CERT_PATH=" + e.certDir[login], "DOCKER_CONFIG=" + filepath.Join(e.home, ".docker")}
	var out, errb bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = bytes.NewReader(stdin), &out, &errb
	err := cmd.Run()
	if ctx.Err() != nil {
		e.t.Fatalf("docker %v hung (killed after 60 s); stdout %q stderr %q", args, out.String(), errb.String())
	}
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		e.t.Fatalf("docker %v: %v", args, err)
	}
	return out.String(), errb.String(), code
}

// waitLogs waits until the container's logs contain want.
func (e *testEnv) waitLogs(login, ref, want string) string {
	e.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		out, errOut, _ := e.run(login, "logs", ref)
		if strings.Contains(out, want) {
			return out
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("logs of %s never showed %q: stdout %q stderr %q", ref, want, out, errOut)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestRuncLife runs what the docker CLI exposes of a container's
// lifecycle against a real runc node: piped stdin, exits visible as soon as
// the CLI returns, signals, stop timeouts, commands that cannot run.
func TestRuncLife(t *testing.T) {
	re := newRuncEnv(t)
	e := re.testEnv

	t.Run("StdinPiped", func(t *testing.T) {
		e := e.with(t)
		for i := range 3 {
			out, errOut, code := e.runIn("alice", []byte("a\nb\n"), "run", "-i", "--rm", "busybox", "cat")
			if code != 0 || out != "a\nb\n" {
				t.Fatalf("run %d: printf 'a\\nb\\n' | docker run -i --rm busybox cat: exit %d stdout %q stderr %q", i, code, out, errOut)
			}
		}
		big := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
		out, errOut, code := e.runIn("alice", big, "run", "-i", "--rm", "busybox", "wc", "-c")
		if code != 0 || strings.TrimSpace(out) != "1048576" {
			t.Fatalf("1 MiB through docker run -i busybox wc -c: exit %d stdout %q stderr %q", code, out, errOut)
		}
		// A process that reads little or nothing of its input must not
		// make the CLI hang on the rest.
		out, errOut, code = e.runIn("alice", big, "run", "-i", "--rm", "busybox", "head", "-c", "5")
		if code != 0 || out != "01234" {
			t.Fatalf("1 MiB into docker run -i busybox head -c 5: exit %d stdout %q stderr %q", code, out, errOut)
		}
		if _, errOut, code = e.runIn("alice", big, "run", "-i", "--rm", "busybox", "sh", "-c", "exit 2"); code != 2 {
			t.Fatalf("1 MiB into docker run -i busybox sh -c 'exit 2': exit %d stderr %q", code, errOut)
		}
	})
	t.Run("RunTTY", func(t *testing.T) {
		e := e.with(t)
		cmd := e.cmd("alice", "run", "-it", "--rm", "busybox", "sh")
		f, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: 30, Cols: 100})
		must(t, err)
		defer f.Close()
		// Typed before the shell runs: a held start loses none of it, and
		// the tty has the CLI's size from its first moment.
		io.WriteString(f, "echo answer=$((6*7)) size=$(stty size); exit 3\r")
		got := make(chan string, 1)
		go func() {
			b, _ := io.ReadAll(f)
			got <- string(b)
		}()
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 3 {
				f.Close()
				t.Fatalf("docker run -it busybox sh: %v, want exit status 3; output %q", err, <-got)
			}
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			t.Fatal("docker run -it busybox sh hung")
		}
		f.Close()
		if out := <-got; !strings.Contains(out, "answer=42 size=30 100") {
			t.Fatalf("docker run -it output: %q", out)
		}
	})
	t.Run("OutputBeforeAttachIsKept", func(t *testing.T) {
		e := e.with(t)
		out := e.ok("alice", "run", "--rm", "busybox", "sh", "-c", "seq 1 20000; echo done >&2")
		if n := strings.Count(out, "\n"); n != 20000 || !strings.HasPrefix(out, "1\n2\n") {
			t.Fatalf("docker run busybox seq 1 20000 printed %d lines (%.40q...)", n, out)
		}
	})
	t.Run("ExitVisibleAtOnce", func(t *testing.T) {
		e := e.with(t)
		for i := range 3 {
			if _, errOut, code := e.run("alice", "run", "--name", "x3", "busybox", "sh", "-c", "exit 3"); code != 3 {
				t.Fatalf("run %d: exit code %d, want 3: %s", i, code, errOut)
			}
			if out := e.ok("alice", "inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", "x3"); out != "exited 3\n" {
				t.Fatalf("run %d: inspect right after docker run returned: %q", i, out)
			}
			e.ok("alice", "rm", "x3")
		}
		id := strings.TrimSpace(e.ok("alice", "run", "-d", "busybox", "sh", "-c", "sleep 0.3; exit 4"))
		if out := e.ok("alice", "wait", id); out != "4\n" {
			t.Fatalf("docker wait: %q", out)
		}
		e.ok("alice", "rm", id)
	})
	t.Run("KillSignals", func(t *testing.T) {
		e := e.with(t)
		e.ok("alice", "run", "-d", "--name", "sig", "busybox", "sh", "-c",
			"trap 'echo got HUP' HUP; trap 'echo got USR1' USR1; trap 'echo got USR2' USR2; echo ready; while :; do sleep 1 & wait; done")
		e.waitLogs("alice", "sig", "ready")
		e.ok("alice", "kill", "-s", "HUP", "sig")
		e.waitLogs("alice", "sig", "got HUP")
		e.ok("alice", "kill", "-s", "SIGUSR1", "sig")
		e.waitLogs("alice", "sig", "got USR1")
		e.ok("alice", "kill", "-s", "12", "sig")
		e.waitLogs("alice", "sig", "got USR2")
		if out := e.ok("alice", "inspect", "-f", "{{.State.Status}}", "sig"); out != "running\n" {
			t.Fatalf("after trapped signals: %q", out)
		}
		e.fails("alice", 1, "invalid signal", "kill", "-s", "NOPE", "sig")
		e.ok("alice", "kill", "sig")
		if out := e.ok("alice", "inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", "sig"); out != "exited 137\n" {
			t.Fatalf("after docker kill (KILL): %q", out)
		}
		e.ok("alice", "rm", "sig")
	})
	t.Run("StopTimeout", func(t *testing.T) {
		e := e.with(t)
		e.ok("alice", "run", "-d", "--name", "stubborn", "busybox", "sh", "-c",
			"trap 'echo ignoring TERM' TERM; echo ready; while :; do sleep 1 & wait; done")
		e.waitLogs("alice", "stubborn", "ready")
		start := time.Now()
		e.ok("alice", "stop", "-t", "1", "stubborn")
		if d := time.Since(start); d < 900*time.Millisecond || d > 4*time.Second {
			t.Errorf("docker stop -t 1 of a process ignoring TERM took %v, want about 1 s", d)
		}
		if out := e.ok("alice", "inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", "stubborn"); out != "exited 137\n" {
			t.Fatalf("after stop -t 1: %q", out)
		}
		e.ok("alice", "start", "stubborn")
		e.waitLogs("alice", "stubborn", "TERM\nready")
		start = time.Now()
		e.ok("alice", "restart", "-t", "1", "stubborn")
		if d := time.Since(start); d < 900*time.Millisecond || d > 5*time.Second {
			t.Errorf("docker restart -t 1 of a process ignoring TERM took %v, want about 1 s", d)
		}
		if out := e.ok("alice", "inspect", "-f", "{{.State.Status}}", "stubborn"); out != "running\n" {
			t.Fatalf("after restart -t 1: %q", out)
		}
		e.ok("alice", "rm", "-f", "stubborn")

		e.ok("alice", "run", "-d", "--name", "custom", "--stop-timeout", "1", "--stop-signal", "USR1", "busybox", "sh", "-c",
			"trap 'echo got USR1' USR1; trap 'echo ignoring TERM' TERM; echo ready; while :; do sleep 1 & wait; done")
		e.waitLogs("alice", "custom", "ready")
		if out := e.ok("alice", "inspect", "-f", "{{.Config.StopSignal}} {{.Config.StopTimeout}}", "custom"); out != "USR1 1\n" {
			t.Fatalf("inspect of --stop-signal/--stop-timeout: %q", out)
		}
		start = time.Now()
		e.ok("alice", "stop", "custom")
		if d := time.Since(start); d < 900*time.Millisecond || d > 4*time.Second {
			t.Errorf("docker stop of a --stop-timeout 1 container took %v", d)
		}
		if out := e.waitLogs("alice", "custom", "got USR1"); strings.Contains(out, "ignoring TERM") {
			t.Errorf("stop sent TERM, not the --stop-signal: %q", out)
		}
		e.ok("alice", "rm", "custom")
	})
	t.Run("CommandCannotRun", func(t *testing.T) {
		e := e.with(t)
		out, errOut, code := e.run("alice", "run", "--name", "nocmd", "busybox", "nosuchcmd")
		if code != 127 || !strings.Contains(errOut, `exec: "nosuchcmd": executable file not found in $PATH`) {
			t.Fatalf("docker run busybox nosuchcmd: exit %d stdout %q stderr %q", code, out, errOut)
		}
		if out := e.ok("alice", "inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", "nocmd"); out != "created 127\n" {
			t.Fatalf("inspect of a container whose command is missing: %q", out)
		}
		e.ok("alice", "rm", "nocmd")
		out, errOut, code = e.run("alice", "run", "--rm", "busybox", "/etc/passwd")
		if code != 126 || !strings.Contains(errOut, "permission denied") {
			t.Fatalf("docker run busybox /etc/passwd: exit %d stdout %q stderr %q", code, out, errOut)
		}
	})
}

// TestRuncRunOpts runs the run options this cloud implements
// through the real CLI on a runc node, and the refused ones.
func TestRuncRunOpts(t *testing.T) {
	re := newRuncEnv(t)
	e := re.testEnv
	t.Run("ReadOnlyAndTmpfs", func(t *testing.T) {
		e := e.with(t)
		out, errOut, code := e.run("alice", "run", "--rm", "--read-only", "--tmpfs", "/scratch:size=1m", "busybox", "sh", "-c",
			"touch /x 2>&1 || echo rootfs-ro; touch /scratch/y && echo scratch-rw; grep ' /scratch ' /proc/mounts")
		if code != 0 || !strings.Contains(out, "rootfs-ro") || !strings.Contains(out, "scratch-rw") || !strings.Contains(out, "tmpfs /scratch tmpfs") || !strings.Contains(out, "size=1024k") {
			t.Fatalf("--read-only --tmpfs: exit %d stdout %q stderr %q", code, out, errOut)
		}
	})
	t.Run("ShmSize", func(t *testing.T) {
		e := e.with(t)
		if out := e.ok("alice", "run", "--rm", "--shm-size", "16m", "busybox", "grep", " /dev/shm ", "/proc/mounts"); !strings.Contains(out, "size=16384k") {
			t.Fatalf("--shm-size 16m: %q", out)
		}
	})
	t.Run("Ulimit", func(t *testing.T) {
		e := e.with(t)
		if out := e.ok("alice", "run", "--rm", "--ulimit", "nofile=1024:2048", "busybox", "sh", "-c", "ulimit -Sn; ulimit -Hn"); out != "1024\n2048\n" {
			t.Fatalf("--ulimit nofile=1024:2048: %q", out)
		}
	})
	t.Run("Capabilities", func(t *testing.T) {
		e := e.with(t)
		out, _, code := e.run("alice", "run", "--rm", "--cap-drop", "CHOWN", "busybox", "sh", "-c", "chown 1 /tmp && echo chowned")
		if code == 0 || strings.Contains(out, "chowned") {
			t.Fatalf("--cap-drop CHOWN still chowns: exit %d %q", code, out)
		}
		if out := e.ok("alice", "run", "--rm", "--cap-add", "SYS_NICE", "busybox", "grep", "CapEff", "/proc/self/status"); !strings.Contains(out, "CapEff:\t00000000a88425fb") {
			t.Fatalf("--cap-add SYS_NICE: %q", out)
		}
		e.fails("alice", 125, "capability SYS_ADMIN cannot be added", "run", "--rm", "--cap-add", "SYS_ADMIN", "busybox", "true")
	})
	t.Run("Refused", func(t *testing.T) {
		e := e.with(t)
		e.fails("alice", 125, "--init is not supported", "run", "--rm", "--init", "busybox", "true")
		e.fails("alice", 125, `platform "linux/arm64" is not supported`, "run", "--rm", "--platform", "linux/arm64", "busybox", "true")
		e.ok("alice", "run", "--rm", "--platform", "linux/amd64", "busybox", "true")
	})
}

// TestRuncPrune runs docker system df, the prunes and the
// event stream of what they and the lifecycle commands did, through the
// real CLI against a runc node.
func TestRuncPrune(t *testing.T) {
	re := newRuncEnv(t)
	e := re.testEnv
	start := time.Now().Add(-time.Second).Unix()

	gone := strings.TrimSpace(e.ok("alice", "create", "--name", "gone", "busybox", "true"))
	e.ok("alice", "start", "-a", "gone")
	e.ok("alice", "run", "-d", "--name", "keep", "busybox", "sh", "-c", "trap 'echo hup' HUP; while :; do sleep 1 & wait; done")
	e.ok("bob", "run", "--name", "bobs", "busybox", "true")

	df := e.ok("alice", "system", "df", "--format", "{{.Type}} {{.TotalCount}} {{.Active}}")
	for _, want := range []string{"Images 1 1\n", "Containers 2 1\n", "Local Volumes 0 0\n", "Build Cache 0 0\n"} {
		if !strings.Contains(df, want) {
			t.Fatalf("docker system df: %q, want a line %q", df, want)
		}
	}
	if out := e.ok("alice", "system", "df", "-v"); !strings.Contains(out, "gone") || !strings.Contains(out, "busybox") {
		t.Fatalf("docker system df -v: %q", out)
	}

	out := e.ok("alice", "container", "prune", "-f")
	if !strings.Contains(out, gone) || strings.Contains(out, "keep") {
		t.Fatalf("docker container prune -f: %q, want only %s", out, gone)
	}
	if out := e.ok("alice", "ps", "-a", "--format", "{{.Names}}"); out != "keep\n" {
		t.Fatalf("after container prune: %q", out)
	}
	if out := e.ok("bob", "ps", "-a", "--format", "{{.Names}}"); out != "bobs\n" {
		t.Fatalf("alice's prune touched bob's containers: %q", out)
	}

	// An image of alice's own, tagged and unused: image prune keeps it
	// (not dangling), image prune -a removes it; the shared busybox stays.
	dir := t.TempDir()
	tarPath := filepath.Join(dir, "rootfs.tar")
	cmd := exec.Command("tar", "-cf", tarPath, "-C", dir, ".")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("tar: %v %s", err, b)
	}
	e.ok("alice", "import", tarPath, "mine:1")
	e.ok("alice", "tag", "mine:1", "mine:2")
	if out := e.ok("alice", "image", "prune", "-f"); strings.Contains(out, "mine") {
		t.Fatalf("docker image prune -f removed a tagged image: %q", out)
	}
	if out := e.ok("bob", "image", "prune", "-a", "-f"); strings.Contains(out, "mine") {
		t.Fatalf("bob pruned alice's image: %q", out)
	}
	out = e.ok("alice", "image", "prune", "-a", "-f")
	if !strings.Contains(out, "untagged: mine:1") || !strings.Contains(out, "deleted: sha256:") {
		t.Fatalf("docker image prune -a -f: %q", out)
	}
	if out := e.ok("alice", "images", "--format", "{{.Repository}}"); out != "busybox\n" {
		t.Fatalf("images after prune -a: %q", out)
	}

	e.ok("alice", "network", "create", "pnet")
	e.ok("alice", "network", "create", "rmnet")
	e.ok("alice", "network", "rm", "rmnet")
	if out := e.ok("alice", "network", "prune", "-f"); !strings.Contains(out, "pnet") {
		t.Fatalf("docker network prune -f: %q", out)
	}
	e.ok("alice", "volume", "prune", "-f")
	e.ok("alice", "run", "--name", "sysprune", "busybox", "true")
	if out := e.ok("alice", "system", "prune", "-f"); !strings.Contains(out, "Deleted Containers:") {
		t.Fatalf("docker system prune -f: %q", out)
	}
	if out := e.ok("alice", "ps", "-a", "--format", "{{.Names}}"); out != "keep\n" {
		t.Fatalf("after system prune: %q", out)
	}

	e.ok("alice", "kill", "-s", "HUP", "keep")
	e.ok("alice", "stop", "-t", "0", "keep")
	until := time.Now().Add(time.Second).Unix()
	time.Sleep(1100 * time.Millisecond)
	evs := e.ok("alice", "events", "--since", strconv.FormatInt(start, 10), "--until", strconv.FormatInt(until, 10),
		"--format", "{{.Type}} {{.Action}} {{.Actor.Attributes.name}} {{.Actor.Attributes.signal}}")
	for _, want := range []string{"container create gone", "container attach gone", "container start gone", "container die gone",
		"container destroy gone", "image tag mine:2", "image untag mine:1", "image delete sha256:", "network destroy pnet",
		"network create pnet", "network create rmnet", "network destroy rmnet",
		"container kill keep 1", "container die keep", "container stop keep"} {
		if !strings.Contains(evs, want) {
			t.Errorf("docker events: no %q in\n%s", want, evs)
		}
	}
	if n := strings.Count(evs, "container die gone"); n != 1 {
		t.Errorf("docker events: %d die events of gone, want 1:\n%s", n, evs)
	}
	if strings.Contains(evs, "bobs") {
		t.Errorf("alice's events show bob's container:\n%s", evs)
	}
}
