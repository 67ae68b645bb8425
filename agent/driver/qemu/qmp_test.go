package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"flotilla/api/errdefs"

	"flotilla/internal/testenv"
)

func TestParseQMPMessage(t *testing.T) {
	tests := []struct {
		name, line, kind string
		wantErr          bool
	}{
		{"Greeting", `{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}}, "capabilities": ["oob"]}}`, "greeting", false},
		{"Reply", `{"return": {}, "id": "flotilla-1"}`, "reply", false},
		{"ErrorReply", `{"error": {"class": "GenericError", "desc": "nope"}, "id": "x"}`, "reply", false},
		{"Event", `{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "POWERDOWN"}`, "event", false},
		{"ErrEmpty", ``, "", true},
		{"ErrNotObject", `[1,2]`, "", true},
		{"ErrUnknownKind", `{"foo": 1}`, "", true},
		{"ErrTruncated", `{"return": `, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := parseQMPMessage([]byte(tt.line))
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, want error %v", err, tt.wantErr)
			}
			if err != nil {
				if errdefs.CodeOf(err) != errdefs.Invalid {
					t.Errorf("code = %s, want invalid", errdefs.CodeOf(err))
				}
				return
			}
			if m.kind() != tt.kind {
				t.Errorf("kind = %q, want %q", m.kind(), tt.kind)
			}
		})
	}
}

func FuzzParseQMPMessage(f *testing.F) {
	for _, s := range []string{
		`{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}}}}`,
		`{"return": {"status": "running", "running": true}, "id": "flotilla-3"}`,
		`{"error": {"class": "CommandNotFound", "desc": "x"}}`,
		`{"event": "SHUTDOWN", "data": {"guest": true}, "timestamp": {"seconds": 5, "microseconds": 9}}`,
		`{}`, `null`, `{"return": null}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		m, err := parseQMPMessage(line)
		if err == nil && m.kind() == "" {
			t.Fatalf("accepted a message of no kind: %q", line)
		}
		if err != nil && errdefs.CodeOf(err) != errdefs.Invalid {
			t.Fatalf("error code %s, want invalid", errdefs.CodeOf(err))
		}
	})
}

// fakeQMP serves one QMP session on a net.Pipe: it sends an event before
// every reply, which is the interleaving that deadlocks naive clients.
func fakeQMP(t *testing.T, conn net.Conn, extraEvents int) {
	t.Helper()
	go func() {
		defer conn.Close()
		w := json.NewEncoder(conn)
		w.Encode(map[string]any{"QMP": map[string]any{"version": map[string]any{"qemu": map[string]int{"major": 7, "minor": 2, "micro": 0}}}})
		r := bufio.NewScanner(conn)
		for r.Scan() {
			var req struct {
				Execute string          `json:"execute"`
				ID      json.RawMessage `json:"id"`
			}
			if err := json.Unmarshal(r.Bytes(), &req); err != nil {
				return
			}
			for i := 0; i < extraEvents; i++ {
				w.Encode(map[string]any{"event": "TICK", "data": map[string]int{"n": i}, "timestamp": map[string]int{"seconds": 1, "microseconds": 0}})
			}
			switch req.Execute {
			case "query-status":
				w.Encode(map[string]any{"return": map[string]any{"status": "paused", "running": false}, "id": req.ID})
			case "bogus":
				w.Encode(map[string]any{"error": map[string]string{"class": "CommandNotFound", "desc": "The command bogus has not been found"}, "id": req.ID})
			case "quit":
				w.Encode(map[string]any{"return": map[string]any{}, "id": req.ID})
				return
			default:
				w.Encode(map[string]any{"return": map[string]any{}, "id": req.ID})
			}
		}
	}()
}

func TestQMPEventsDoNotBlockReplies(t *testing.T) {
	client, server := net.Pipe()
	// More events per reply than the buffer holds, and nobody reads Events:
	// replies must still arrive.
	fakeQMP(t, server, eventBuffer+10)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	q, err := newQMP(ctx, client)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if q.Version().String() != "7.2.0" {
		t.Errorf("version = %s", q.Version())
	}
	for i := 0; i < 3; i++ {
		st, err := q.QueryStatus(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st.Status != "paused" || st.Running {
			t.Errorf("status = %+v", st)
		}
	}
	_, err = q.Execute(ctx, "bogus", nil)
	if errdefs.CodeOf(err) != errdefs.Invalid || !strings.Contains(err.Error(), "has not been found") {
		t.Errorf("bogus: err = %v", err)
	}
	if n := len(q.Events()); n != eventBuffer {
		t.Errorf("buffered events = %d, want %d (oldest dropped)", n, eventBuffer)
	}
	if err := q.Quit(ctx); err != nil {
		t.Fatalf("quit: %v", err)
	}
	select {
	case <-q.Done():
	case <-ctx.Done():
		t.Fatal("connection did not end after quit")
	}
	if _, err := q.QueryStatus(ctx); errdefs.CodeOf(err) != errdefs.Unavailable {
		t.Errorf("after close: err = %v, want unavailable", err)
	}
}

func TestDialQMPNobodyListening(t *testing.T) {
	_, err := DialQMP(context.Background(), filepath.Join(t.TempDir(), "none.sock"))
	if errdefs.CodeOf(err) != errdefs.Unavailable {
		t.Fatalf("err = %v, want unavailable", err)
	}
}

// needQEMU skips when qemu-system-x86_64 is not installed.
func needQEMU(t testing.TB) {
	t.Helper()
	testenv.NeedCommand(t, "qemu-system-x86_64", "qemu-system-x86")
	testenv.NeedCommand(t, "qemu-img", "qemu-utils")
}

func TestQMPRealQEMU(t *testing.T) {
	needQEMU(t)
	dir := t.TempDir()
	sock := filepath.Join(dir, "qmp.sock")
	pidfile := filepath.Join(dir, "qemu.pid")
	cmd := exec.Command("qemu-system-x86_64", "-S", "-nodefaults", "-display", "none", "-accel", "tcg",
		"-m", "32", "-qmp", "unix:"+sock+",server=on,wait=off", "-pidfile", pidfile, "-daemonize")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("qemu: %v: %s", err, out)
	}
	pid, err := readPidfile(pidfile)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGKILL) })

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	q, err := DialQMP(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if q.Version().Major < 5 {
		t.Errorf("version %s", q.Version())
	}
	st, err := q.QueryStatus(ctx)
	if err != nil || st.Status != "prelaunch" {
		t.Fatalf("status = %+v, %v; want prelaunch", st, err)
	}
	if err := q.Cont(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := q.WaitEvent(ctx, "RESUME"); err != nil {
		t.Fatal(err)
	}
	if st, err := q.QueryStatus(ctx); err != nil || !st.Running {
		t.Fatalf("after cont: %+v, %v", st, err)
	}
	if err := q.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := q.WaitEvent(ctx, "STOP"); err != nil {
		t.Fatal(err)
	}
	if st, err := q.QueryStatus(ctx); err != nil || st.Status != "paused" {
		t.Fatalf("after stop: %+v, %v", st, err)
	}
	if _, err := q.Execute(ctx, "no-such-command", nil); errdefs.CodeOf(err) != errdefs.Invalid {
		t.Errorf("unknown command: %v", err)
	}
	// Powerdown on a paused VM without a guest is accepted; then quit.
	if err := q.SystemPowerdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := q.Quit(ctx); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for processAlive(pid) {
		if time.Now().After(deadline) {
			t.Fatal("qemu still running after quit")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := os.Stat(pidfile); !os.IsNotExist(err) {
		t.Errorf("pidfile left after quit: %v", err)
	}
}
