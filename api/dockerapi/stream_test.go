package dockerapi

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/creack/pty"

	"flotilla/api/nodeclient"
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
		cmd := e.cmd("alice", "run", "-it", "--rm", "--name", "ttyrun", "busybox:1.36", "sh")
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
		// The sim echoes stdin (cat-like) through the tty. Type only once
		// the container runs: the CLI has put the terminal in raw mode
		// before it starts it, and a cooked terminal would echo the line
		// itself and swallow the detach keys (^Q is XON).
		deadline := time.Now().Add(15 * time.Second)
		for {
			if out, _, _ := e.run("alice", "ps", "-q", "--filter", "name=ttyrun"); strings.TrimSpace(out) != "" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("docker run -it: the container never ran")
			}
			time.Sleep(50 * time.Millisecond)
		}
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

// TestAttachLatency measures what the proxy adds to an interactive stream:
// the round trip of one keystroke echoed by a tty (the sim echoes stdin),
// through the Docker endpoint (TLS, proxy, agent) and straight to the agent
// (node client). It logs the medians; it asserts only that echoes arrive.
func TestAttachLatency(t *testing.T) {
	e := newTestEnv(t)
	id := strings.TrimSpace(e.ok("alice", "run", "-d", "-i", "-t", "--name", "echo", "busybox:1.36", "sh"))
	ctx := context.Background()
	in, err := e.st.GetInstance(ctx, mustAccount(t, e, "alice"), id[:8]+"-"+id[8:12]+"-"+id[12:16]+"-"+id[16:20]+"-"+id[20:32])
	must(t, err)
	node, err := (&Server{store: e.st}).nodeOf(ctx, in)
	must(t, err)

	const rounds = 300
	measure := func(rw io.ReadWriter) time.Duration {
		buf := make([]byte, 1)
		ds := make([]time.Duration, 0, rounds)
		for i := 0; i < rounds; i++ {
			start := time.Now()
			if _, err := rw.Write([]byte{'x'}); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(rw, buf); err != nil || buf[0] != 'x' {
				t.Fatalf("echo %q: %v", buf, err)
			}
			ds = append(ds, time.Since(start))
		}
		slices.Sort(ds)
		return ds[len(ds)/2]
	}

	direct, err := nodes.Attach(ctx, node, in.ID, nodeclient.AttachOptions{Stdin: true, Stdout: true})
	must(t, err)
	defer direct.Close()
	dMedian := measure(direct)

	pool := x509.NewCertPool()
	b, _ := os.ReadFile(e.caFile)
	pool.AppendCertsFromPEM(b)
	pair, err := tls.LoadX509KeyPair(filepath.Join(e.certDir["alice"], "cert.pem"), filepath.Join(e.certDir["alice"], "key.pem"))
	must(t, err)
	conn, err := tls.Dial("tcp", e.srv.Listener.Addr().String(), &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{pair}})
	must(t, err)
	defer conn.Close()
	fmt.Fprintf(conn, "POST /v1.50/containers/%s/attach?stdin=1&stdout=1&stream=1 HTTP/1.1\r\nHost: docker\r\nConnection: Upgrade\r\nUpgrade: tcp\r\nContent-Type: text/plain\r\n\r\n", id)
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	must(t, err)
	if resp.StatusCode != http.StatusSwitchingProtocols || resp.Header.Get("Content-Type") != "application/vnd.docker.raw-stream" {
		t.Fatalf("attach answered %d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	pMedian := measure(struct {
		io.Reader
		io.Writer
	}{br, conn})
	t.Logf("keystroke echo round trip, median of %d: straight to the agent %v, through the Docker endpoint (TLS + proxy) %v; the proxy adds %v",
		rounds, dMedian, pMedian, pMedian-dMedian)
}

func mustAccount(t *testing.T, e *testEnv, login string) string {
	a, err := e.st.AccountByLogin(context.Background(), login)
	must(t, err)
	return a.ID
}
