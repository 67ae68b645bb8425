package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// lockedBuffer is a bytes.Buffer safe for a process's writes and our reads.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestDevLogJSON: with --log-json every line `flotilla dev` writes to
// stderr is a JSON object, including what is logged through slog's default
// logger (image seeding on a first start) and the access log.
func TestDevLogJSON(t *testing.T) {
	requireCloud(t)
	data := filepath.Join(t.TempDir(), "data")
	cmd := exec.Command(bin, "dev", "--data", data, "--driver", "sim", "--key", keyFile, "--login", "jsonlog",
		"--cloudapi-addr", "127.0.0.1:0", "--log-json", "--verbose")
	cmd.Env = devProcEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var stderr lockedBuffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if strings.Contains(sc.Text(), "ready") {
				ready <- sc.Text()
			}
		}
		exited <- cmd.Wait()
	}()
	t.Cleanup(func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) })
	select {
	case <-ready:
	case err := <-exited:
		t.Fatalf("flotilla dev exited (%v) before it was ready; stderr:\n%s", err, stderr.String())
	case <-time.After(120 * time.Second):
		t.Fatalf("flotilla dev not ready after 120 s; stderr:\n%s", stderr.String())
	}
	env, err := ReadEnvFile(filepath.Join(data, "env.sh"))
	if err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{"/--ping", "/no/such/route", "/metrics"} {
		resp, err := http.Get(env["TRITON_URL"] + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(60 * time.Second):
		t.Fatal("flotilla dev did not stop within 60 s of SIGTERM")
	}
	lines := strings.Split(strings.TrimRight(stderr.String(), "\n"), "\n")
	msgs := map[string]int{}
	for _, l := range lines {
		var rec map[string]any
		if err := json.Unmarshal([]byte(l), &rec); err != nil {
			t.Errorf("stderr line is not JSON: %q", l)
			continue
		}
		msg, _ := rec["msg"].(string)
		msgs[msg]++
	}
	// "image recorded" comes through slog's default logger; "request" is
	// the CloudAPI access log.
	for _, want := range []string{"image recorded", "request"} {
		if msgs[want] == 0 {
			t.Errorf("no %q line on stderr; messages seen: %v", want, msgs)
		}
	}
}
