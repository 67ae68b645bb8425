package dockerapi

import (
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/creack/pty"
)

// TestDockerStreams drives the process streams with the docker CLI against
// the simulated node (whose workloads print their command, "echo" style,
// and exit with SIM_EXIT).
func TestDockerStreams(t *testing.T) {
	e := newTestEnv(t)

	t.Run("RunRmPrints", func(t *testing.T) {
		start := time.Now()
		out, errOut, code := e.run("alice", "run", "--rm", "-e", "SIM_EXIT=0", "busybox:1.36", "echo", "hi")
		if code != 0 || out != "hi\n" {
			t.Fatalf("docker run --rm: exit %d, stdout %q, stderr %q", code, out, errOut)
		}
		t.Logf("docker run --rm busybox echo hi: %v", time.Since(start))
		if ps := e.ok("alice", "ps", "-a", "-q"); strings.TrimSpace(ps) != "" {
			// Removal may trail the wait's answer by the node's report.
			deadline := time.Now().Add(5 * time.Second)
			for strings.TrimSpace(ps) != "" && time.Now().Before(deadline) {
				time.Sleep(100 * time.Millisecond)
				ps = e.ok("alice", "ps", "-a", "-q")
			}
			if strings.TrimSpace(ps) != "" {
				t.Fatalf("--rm container left behind: %q", ps)
			}
		}
	})
	t.Run("RunExitCode", func(t *testing.T) {
		out, errOut, code := e.run("alice", "run", "--name", "three", "-e", "SIM_EXIT=3", "-e", "SIM_STDERR=oops",
			"busybox:1.36", "sh", "-c", "exit 3")
		if code != 3 || out != "sh -c exit 3\n" || errOut != "oops\n" {
			t.Fatalf("docker run: exit %d (want 3), stdout %q, stderr %q", code, out, errOut)
		}
	})
	t.Run("Logs", func(t *testing.T) {
		out, errOut, code := e.run("alice", "logs", "three")
		if code != 0 || out != "sh -c exit 3\n" || errOut != "oops\n" {
			t.Fatalf("docker logs: exit %d, stdout %q, stderr %q", code, out, errOut)
		}
		out = e.ok("alice", "logs", "-t", "three")
		if ts, rest, _ := strings.Cut(out, " "); rest != "sh -c exit 3\n" || len(ts) < 20 {
			t.Fatalf("docker logs -t: %q", out)
		}
	})
	t.Run("WaitAfterExit", func(t *testing.T) {
		if out := e.ok("alice", "wait", "three"); out != "3\n" {
			t.Fatalf("docker wait: %q", out)
		}
	})
	t.Run("Exec", func(t *testing.T) {
		e.ok("alice", "run", "-d", "--name", "svc", "busybox:1.36", "sleep", "1000")
		if out := e.ok("alice", "exec", "svc", "echo", "inside"); out != "inside\n" {
			t.Fatalf("docker exec: %q", out)
		}
		if _, _, code := e.run("alice", "exec", "svc", "sh", "-c", "exit 7"); code != 7 {
			t.Fatalf("docker exec exit code %d, want 7", code)
		}
		cmd := e.cmd("alice", "exec", "-i", "svc", "cat")
		cmd.Stdin = strings.NewReader("piped\n")
		if out, err := cmd.Output(); err != nil || string(out) != "piped\n" {
			t.Fatalf("docker exec -i cat: %q %v", out, err)
		}
		if out, _, code := e.run("bob", "exec", "svc", "echo", "x"); code == 0 {
			t.Fatalf("bob exec'd in alice's container: %q", out)
		}
	})
	t.Run("TopStats", func(t *testing.T) {
		if out := e.ok("alice", "top", "svc"); !strings.Contains(out, "sleep 1000") {
			t.Fatalf("docker top: %q", out)
		}
		out := e.ok("alice", "stats", "--no-stream", "--format", "{{.Name}} {{.MemUsage}}", "svc")
		if !strings.HasPrefix(out, "svc ") || !strings.Contains(out, "MiB") {
			t.Fatalf("docker stats: %q", out)
		}
	})
	t.Run("RunInteractiveTTY", func(t *testing.T) {
		cmd := e.cmd("alice", "run", "-it", "--rm", "busybox:1.36", "sh")
		ptmx, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: 30, Cols: 100})
		if err != nil {
			t.Fatal(err)
		}
		defer ptmx.Close()
		got := make(chan string, 1)
		var buf bytes.Buffer
		go func() {
			b := make([]byte, 1024)
			for {
				n, err := ptmx.Read(b)
				buf.Write(b[:n])
				if strings.Contains(buf.String(), "typed-line") {
					got <- buf.String()
					return
				}
				if err != nil {
					got <- buf.String()
					return
				}
			}
		}()
		// The sim echoes stdin (cat-like) through the tty.
		time.Sleep(500 * time.Millisecond)
		io.WriteString(ptmx, "typed-line\r")
		select {
		case out := <-got:
			if !strings.Contains(out, "typed-line") {
				t.Fatalf("tty output: %q", out)
			}
		case <-time.After(15 * time.Second):
			t.Fatalf("no echo through the tty; got %q", buf.String())
		}
		// Detach (Ctrl-P Ctrl-Q) and stop it, then the CLI exits.
		ptmx.Write([]byte{0x10, 0x11})
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			cmd.Process.Kill()
			t.Fatalf("docker run -it did not return after detach")
		}
	})
}

// cmd is a docker CLI command as login, not started.
func (e *testEnv) cmd(login string, args ...string) *exec.Cmd {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	e.t.Cleanup(cancel)
	c := exec.CommandContext(ctx, e.docker, args...)
	c.Env = []string{"HOME=" + e.home, "PATH=" + os.Getenv("PATH"), "DOCKER_HOST=" + e.host, "DOCKER_TLS_VERIFY=1",
		"DOCKER_CERT_PATH=" + e.certDir[login], "DOCKER_CONFIG=" + filepath.Join(e.home, ".docker"), "TERM=xterm"}
	return c
}

