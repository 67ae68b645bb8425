package agent

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"flotilla/agent/driver"
	"flotilla/agent/driver/sim"
	"flotilla/api/agentapi/wire"
	"flotilla/api/errdefs"
)

func MustClient(tb testing.TB, url, token, dir string) *Client {
	tb.Helper()
	c, err := NewClient(ClientConfig{BaseURL: url, JoinToken: token, DataDir: dir, RetryBase: time.Millisecond, RetryMax: 10 * time.Millisecond})
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

func TestClientRegisterAndCredentialFile(t *testing.T) {
	cp := newFakeCP()
	srv := httptest.NewServer(newFakeServer(cp, "join"))
	defer srv.Close()
	dir := t.TempDir()
	ctx := context.Background()

	c := MustClient(t, srv.URL, "join", dir)
	id, err := c.Register(ctx, wire.RegisterRequest{Name: "n1"})
	if err != nil || id != "node-n1" {
		t.Fatalf("Register = %q, %v", id, err)
	}
	fi, err := os.Stat(filepath.Join(dir, NodeFileName))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("node.json mode %v, want 0600", fi.Mode().Perm())
	}
	var nf nodeFile
	b, _ := os.ReadFile(filepath.Join(dir, NodeFileName))
	if err := json.Unmarshal(b, &nf); err != nil || nf.NodeID != "node-n1" || nf.Credential == "" {
		t.Fatalf("node.json = %s (%v)", b, err)
	}

	// A new client over the same dir reuses the credential without a join token.
	c2 := MustClient(t, srv.URL, "", dir)
	if id, err := c2.Register(ctx, wire.RegisterRequest{Name: "n1"}); err != nil || id != "node-n1" {
		t.Fatalf("Register from saved credential = %q, %v", id, err)
	}
	if err := c2.Heartbeat(ctx, wire.Heartbeat{MemoryMiB: 1}); err != nil {
		t.Fatalf("Heartbeat: %v", err)
	}
	if cp.regs != 1 {
		t.Fatalf("registered %d times, want 1", cp.regs)
	}
}

func TestClientErrors(t *testing.T) {
	cp := newFakeCP()
	srv := httptest.NewServer(newFakeServer(cp, "join"))
	defer srv.Close()
	ctx := context.Background()

	t.Run("ErrJoinTokenRejected", func(t *testing.T) {
		c := MustClient(t, srv.URL, "wrong", t.TempDir())
		_, err := c.Register(ctx, wire.RegisterRequest{Name: "n1"})
		if errdefs.CodeOf(err) != errdefs.Unauthorized || !strings.Contains(err.Error(), "FLOTILLA_JOIN_TOKEN") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("ErrNoCredentialNoToken", func(t *testing.T) {
		c := MustClient(t, srv.URL, "", t.TempDir())
		_, err := c.Register(ctx, wire.RegisterRequest{Name: "n1"})
		if errdefs.CodeOf(err) != errdefs.Unauthorized {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("ErrForbiddenOtherNode", func(t *testing.T) {
		dir := t.TempDir()
		c := MustClient(t, srv.URL, "join", dir)
		if _, err := c.Register(ctx, wire.RegisterRequest{Name: "n1"}); err != nil {
			t.Fatal(err)
		}
		c.mu.Lock()
		c.node.NodeID = "node-other"
		c.mu.Unlock()
		if err := c.Heartbeat(ctx, wire.Heartbeat{}); errdefs.CodeOf(err) != errdefs.Forbidden {
			t.Fatalf("err = %v, want forbidden", err)
		}
	})
	t.Run("ErrReportNotFound", func(t *testing.T) {
		c := MustClient(t, srv.URL, "join", t.TempDir())
		c.Register(ctx, wire.RegisterRequest{Name: "n1"})
		if err := c.ReportStatus(ctx, "nope", wire.InstanceStatus{}); errdefs.CodeOf(err) != errdefs.NotFound {
			t.Fatalf("err = %v, want not found", err)
		}
	})
	t.Run("ErrUnreachable", func(t *testing.T) {
		dead := httptest.NewServer(http.NotFoundHandler())
		url := dead.URL
		dead.Close()
		c := MustClient(t, url, "join", t.TempDir())
		_, err := c.Register(ctx, wire.RegisterRequest{Name: "n1"})
		if errdefs.CodeOf(err) != errdefs.Unavailable {
			t.Fatalf("err = %v, want unavailable", err)
		}
	})
}

// TestClientDropsJoinToken: the join token is good for one registration;
// the client forgets it once the node has a credential, a restart uses the
// saved credential, and a revoked credential is not silently replaced.
func TestClientDropsJoinToken(t *testing.T) {
	cp := newFakeCP()
	fs := newFakeServer(cp, "join")
	srv := httptest.NewServer(fs)
	defer srv.Close()
	ctx := context.Background()
	dir := t.TempDir()
	c := MustClient(t, srv.URL, "join", dir)
	if _, err := c.Register(ctx, wire.RegisterRequest{Name: "n1"}); err != nil {
		t.Fatal(err)
	}
	if c.cfg.JoinToken != "" {
		t.Error("the client kept the join token after registering")
	}
	b, err := os.ReadFile(filepath.Join(dir, NodeFileName))
	if err != nil || strings.Contains(string(b), "join") {
		t.Errorf("node.json holds the join token or is missing: %v %s", err, b)
	}
	restarted := MustClient(t, srv.URL, "", dir)
	if _, err := restarted.Register(ctx, wire.RegisterRequest{Name: "n1"}); err != nil {
		t.Fatalf("restart without a token: %v", err)
	}
	if err := restarted.Heartbeat(ctx, wire.Heartbeat{}); err != nil {
		t.Fatalf("heartbeat with the saved credential: %v", err)
	}
	fs.mu.Lock()
	clear(fs.creds) // the control plane revoked the credential
	fs.mu.Unlock()
	err = c.Heartbeat(ctx, wire.Heartbeat{})
	if errdefs.CodeOf(err) != errdefs.Unauthorized || !strings.Contains(err.Error(), "flotilla admin node approve n1") {
		t.Fatalf("Heartbeat after revocation: %v, want Unauthorized naming `flotilla admin node approve n1`", err)
	}
	if cp.regs != 1 {
		t.Fatalf("registrations = %d, want 1", cp.regs)
	}
}

func TestClientRetries503(t *testing.T) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := calls.Add(1)
		if n <= 2 {
			w.WriteHeader(http.StatusServiceUnavailable)
			w.Write([]byte(`{"code":"unavailable","message":"database restarting"}`))
			return
		}
		json.NewEncoder(w).Encode(wire.RegisterResponse{NodeID: "x", Credential: "c"})
	}))
	defer srv.Close()
	c := MustClient(t, srv.URL, "join", t.TempDir())
	if _, err := c.Register(context.Background(), wire.RegisterRequest{Name: "n1"}); err != nil {
		t.Fatalf("Register: %v", err)
	}
	if calls.Load() != 3 {
		t.Fatalf("calls = %d, want 3", calls.Load())
	}

	t.Run("ErrGivesUp", func(t *testing.T) {
		calls.Store(-100)
		c := MustClient(t, srv.URL, "join", t.TempDir())
		_, err := c.Register(context.Background(), wire.RegisterRequest{Name: "n1"})
		if errdefs.CodeOf(err) != errdefs.Unavailable || !strings.Contains(err.Error(), "database restarting") {
			t.Fatalf("err = %v", err)
		}
		if got := calls.Load() + 100; got != 5 {
			t.Fatalf("attempts = %d, want 5", got)
		}
	})
}

func TestClientLongPoll(t *testing.T) {
	cp := newFakeCP()
	srv := httptest.NewServer(newFakeServer(cp, "join"))
	defer srv.Close()
	ctx := context.Background()
	c := MustClient(t, srv.URL, "join", t.TempDir())
	c.Register(ctx, wire.RegisterRequest{Name: "n1"})
	cp.Set(running("a"))

	as, err := c.Assignments(ctx, 0, time.Second)
	if err != nil || !as.Full || len(as.Assignments) != 1 || as.Revision != 1 {
		t.Fatalf("full poll = %+v, %v", as, err)
	}
	// Nothing changes: the poll waits its full second and returns empty.
	t0 := time.Now()
	as, err = c.Assignments(ctx, as.Revision, time.Second)
	if el := time.Since(t0); err != nil || len(as.Assignments) != 0 || as.Revision != 1 || el < 900*time.Millisecond {
		t.Fatalf("idle poll = %+v, %v after %v", as, err, el)
	}
	// A change wakes a waiting poll.
	go func() { time.Sleep(50 * time.Millisecond); cp.Set(running("b")) }()
	t0 = time.Now()
	as, err = c.Assignments(ctx, 1, 5*time.Second)
	if err != nil || len(as.Assignments) != 1 || as.Assignments[0].ID != "b" || time.Since(t0) > 2*time.Second {
		t.Fatalf("woken poll = %+v, %v after %v", as, err, time.Since(t0))
	}
	// Cancelling the context ends a poll at once.
	cctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	t0 = time.Now()
	if _, err := c.Assignments(cctx, as.Revision, 10*time.Second); err == nil || time.Since(t0) > time.Second {
		t.Fatalf("cancelled poll: %v after %v", err, time.Since(t0))
	}
}

// TestAgentOverHTTP runs the whole agent against the HTTP fake.
func TestAgentOverHTTP(t *testing.T) {
	cp := newFakeCP()
	srv := httptest.NewServer(newFakeServer(cp, "join"))
	defer srv.Close()
	d := MustSim(t, sim.Config{})
	cfg := testConfig(t, nil, d, t.TempDir())
	cfg.ControlPlane = nil
	cfg.APIURL, cfg.JoinToken = srv.URL, "join"
	cp.Set(running("a"), running("b", "SIM_EXIT=7"))
	stop := startAgent(t, cfg)
	waitState(t, cp, "a", driver.StateRunning, 1)
	if st := waitState(t, cp, "b", driver.StateStopped, 1); *st.ExitCode != 7 {
		t.Fatalf("b: %+v", st)
	}
	cp.Update("a", func(a *wire.Assignment) { a.DesiredState = wire.DesiredDeleted })
	waitState(t, cp, "a", wire.StateDeleted, 2)
	t0 := time.Now()
	stop() // with a long poll in flight
	if el := time.Since(t0); el > time.Second {
		t.Fatalf("stop took %v", el)
	}
}
