package agent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"flotilla/agent/driver"
	"flotilla/agent/driver/sim"
	"flotilla/api/agentapi/wire"
)

const testToken = "0123456789abcdef0123456789abcdef"

// streamEnv is a stream server over a sim driver.
type streamEnv struct {
	d   *sim.Driver
	srv *httptest.Server
	url string
}

func newStreamEnv(t *testing.T) *streamEnv {
	t.Helper()
	d := MustSim(t, sim.Config{})
	ss := NewStreamServer(d, testToken, nil)
	ss.Spec = func(id string) (driver.Spec, bool) {
		sp, err := d.Spec(id)
		return sp, err == nil
	}
	srv := httptest.NewServer(ss)
	t.Cleanup(srv.Close)
	return &streamEnv{d: d, srv: srv, url: srv.URL + wire.StreamPathPrefix}
}

func (e *streamEnv) create(t *testing.T, id string, start bool, env ...string) {
	t.Helper()
	ctx := context.Background()
	spec := driver.Spec{ID: id, Cmd: []string{"echo", "hello", id}, Env: env, OpenStdin: true, MemoryMiB: 64}
	for _, v := range env {
		if v == "TTY=1" {
			spec.Tty = true
		}
	}
	if err := e.d.Create(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if start {
		if err := e.d.Start(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
}

func (e *streamEnv) get(t *testing.T, path string) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest("GET", e.url+path, nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func (e *streamEnv) post(t *testing.T, path string, body any) (int, []byte) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest("POST", e.url+path, rd)
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// upgrade opens an upgraded stream.
func (e *streamEnv) upgrade(t *testing.T, path string) (*net.TCPConn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", e.srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	fmt.Fprintf(c, "POST %s%s HTTP/1.1\r\nHost: agent\r\nAuthorization: Bearer %s\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n",
		wire.StreamPathPrefix, path, testToken)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("upgrade %s: %d %s", path, resp.StatusCode, b)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	return c.(*net.TCPConn), br
}

// demux reads stdcopy frames until EOF.
func demux(t *testing.T, r io.Reader) (stdout, stderr string) {
	t.Helper()
	var o, e bytes.Buffer
	var h [8]byte
	for {
		if _, err := io.ReadFull(r, h[:]); err != nil {
			if err != io.EOF {
				t.Fatalf("reading frames: %v (so far %q / %q)", err, o.String(), e.String())
			}
			return o.String(), e.String()
		}
		n := binary.BigEndian.Uint32(h[4:])
		w := &o
		switch h[0] {
		case 2:
			w = &e
		case 3:
			b := make([]byte, n)
			io.ReadFull(r, b)
			t.Fatalf("error frame: %s", b)
		}
		if _, err := io.CopyN(w, r, int64(n)); err != nil {
			t.Fatal(err)
		}
	}
}

func TestStreamAuth(t *testing.T) {
	e := newStreamEnv(t)
	e.create(t, "a", true)
	req, _ := http.NewRequest("GET", e.url+"/instances/a/logs", nil)
	req.Header.Set("Authorization", "Bearer wrong")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("wrong token: %d, want 401", resp.StatusCode)
	}
	if code, _ := e.get(t, "/instances/a/logs"); code != 200 {
		t.Fatalf("right token: %d", code)
	}
	if code, b := e.get(t, "/instances/nope/logs"); code != 404 || !strings.Contains(string(b), `"code":"not_found"`) {
		t.Fatalf("unknown instance: %d %s", code, b)
	}
}

func TestLoadStreamToken(t *testing.T) {
	dir := t.TempDir()
	a, err := LoadStreamToken(dir)
	if err != nil || len(a) != 64 {
		t.Fatalf("first: %q %v", a, err)
	}
	b, _ := LoadStreamToken(dir)
	if a != b {
		t.Fatalf("token changed across loads: %q then %q", a, b)
	}
	if fi, _ := os.Stat(filepath.Join(dir, StreamTokenFile)); fi.Mode().Perm() != 0o600 {
		t.Fatalf("token file mode %v", fi.Mode())
	}
}

func TestStreamLogs(t *testing.T) {
	e := newStreamEnv(t)
	e.create(t, "a", true, "SIM_STDERR=oops")
	code, body := e.get(t, "/instances/a/logs?stdout=1&stderr=1")
	if code != 200 {
		t.Fatalf("logs: %d %s", code, body)
	}
	out, errs := demux(t, bytes.NewReader(body))
	if out != "hello a\n" || errs != "oops\n" {
		t.Fatalf("logs: stdout %q stderr %q", out, errs)
	}
	t.Run("OnlyStderrRaw", func(t *testing.T) {
		_, body := e.get(t, "/instances/a/logs?stderr=1&raw=1")
		if string(body) != "oops\n" {
			t.Fatalf("raw stderr: %q", body)
		}
	})
	t.Run("Timestamps", func(t *testing.T) {
		_, body := e.get(t, "/instances/a/logs?stdout=1&timestamps=1&raw=1")
		ts, rest, _ := strings.Cut(string(body), " ")
		if _, err := time.Parse(time.RFC3339Nano, ts); err != nil || rest != "hello a\n" {
			t.Fatalf("timestamped line %q: %v", body, err)
		}
	})
	t.Run("TailZero", func(t *testing.T) {
		if _, body := e.get(t, "/instances/a/logs?tail=0"); len(body) != 0 {
			t.Fatalf("tail=0 gave %q", body)
		}
	})
	t.Run("FollowEndsAtExit", func(t *testing.T) {
		e.create(t, "f", true, "SIM_EXIT=0", "SIM_EXIT_AFTER=150ms")
		start := time.Now()
		_, body := e.get(t, "/instances/f/logs?follow=1")
		if out, _ := demux(t, bytes.NewReader(body)); out != "hello f\n" {
			t.Fatalf("follow: %q", out)
		}
		if d := time.Since(start); d < 100*time.Millisecond || d > 2*time.Second {
			t.Fatalf("follow returned after %v; want at the exit (~150ms)", d)
		}
	})
}

func TestStreamAttachBeforeStart(t *testing.T) {
	e := newStreamEnv(t)
	t.Run("Live", func(t *testing.T) {
		e.create(t, "a", false, "SIM_EXIT=3", "SIM_EXIT_AFTER=100ms", "SIM_STDERR=warn")
		c, br := e.upgrade(t, "/instances/a/attach?stdout=1&stderr=1")
		type res struct{ out, errs string }
		got := make(chan res, 1)
		go func() { o, er := demux(t, br); got <- res{o, er} }()
		waitc := make(chan []byte, 1)
		go func() { _, b := e.get(t, "/instances/a/wait?condition=next-exit"); waitc <- b }()
		time.Sleep(30 * time.Millisecond) // the attach and the wait are waiting
		if err := e.d.Start(context.Background(), "a"); err != nil {
			t.Fatal(err)
		}
		r := <-got
		if r.out != "hello a\n" || r.errs != "warn\n" {
			t.Fatalf("attach: %q / %q", r.out, r.errs)
		}
		var w wire.WaitResult
		if err := json.Unmarshal(<-waitc, &w); err != nil || w.StatusCode != 3 {
			t.Fatalf("wait: %+v %v", w, err)
		}
		c.Close()
	})
	t.Run("BeforeCreateMissedRun", func(t *testing.T) {
		// The instance does not exist yet, then runs and exits in no time:
		// its output comes from the logs.
		_, br := e.upgrade(t, "/instances/b/attach?stdout=1")
		time.Sleep(20 * time.Millisecond)
		e.create(t, "b", true, "SIM_EXIT=0")
		if out, _ := demux(t, br); out != "hello b\n" {
			t.Fatalf("attach: %q", out)
		}
	})
}

func TestStreamAttachStdin(t *testing.T) {
	e := newStreamEnv(t)
	e.create(t, "c", true)
	c, br := e.upgrade(t, "/instances/c/attach?stdin=1&stdout=1&stderr=1")
	io.WriteString(c, "ping\n")
	var h [8]byte
	if _, err := io.ReadFull(br, h[:]); err != nil {
		t.Fatal(err)
	}
	line := make([]byte, binary.BigEndian.Uint32(h[4:]))
	io.ReadFull(br, line)
	if h[0] != 1 || string(line) != "ping\n" {
		t.Fatalf("echo: stream %d %q", h[0], line)
	}
	c.CloseWrite() // stdin EOF does not end the attach
	time.Sleep(20 * time.Millisecond)
	if err := e.d.Stop(context.Background(), "c", time.Second); err != nil {
		t.Fatal(err)
	}
	if out, _ := demux(t, br); out != "" {
		t.Fatalf("after stop: %q", out)
	}
}

func TestStreamAttachTTY(t *testing.T) {
	e := newStreamEnv(t)
	e.create(t, "t", true, "TTY=1")
	c, br := e.upgrade(t, "/instances/t/attach?stdin=1&stdout=1&stderr=1")
	io.WriteString(c, "ls\n")
	buf := make([]byte, 4)
	if _, err := io.ReadFull(br, buf); err != nil || string(buf) != "ls\r\n" {
		t.Fatalf("tty echo: %q %v", buf, err)
	}
	if code, b := e.post(t, "/instances/t/resize?h=40&w=120", nil); code != 204 {
		t.Fatalf("resize: %d %s", code, b)
	}
	if h, w := e.d.TTYSize("t"); h != 40 || w != 120 {
		t.Fatalf("size %dx%d", h, w)
	}
}

func TestStreamWait(t *testing.T) {
	e := newStreamEnv(t)
	e.create(t, "s", true, "SIM_EXIT=5")
	time.Sleep(5 * time.Millisecond)
	_, b := e.get(t, "/instances/s/wait?condition=not-running")
	if string(b) != "{\"StatusCode\":5}\n" {
		t.Fatalf("not-running on an exited instance: %s", b)
	}
	e.create(t, "r", true)
	go func() {
		time.Sleep(50 * time.Millisecond)
		e.d.Stop(context.Background(), "r", time.Second)
	}()
	start := time.Now()
	_, b = e.get(t, "/instances/r/wait")
	if string(b) != "{\"StatusCode\":0}\n" || time.Since(start) < 40*time.Millisecond {
		t.Fatalf("wait on a running instance: %s after %v", b, time.Since(start))
	}
	if code, _ := e.get(t, "/instances/r/wait?condition=bogus"); code != 400 {
		t.Fatalf("bad condition: %d", code)
	}
}

func TestStreamExec(t *testing.T) {
	e := newStreamEnv(t)
	e.create(t, "x", true)
	create := func(cfg wire.ExecCreate) string {
		code, b := e.post(t, "/instances/x/exec", cfg)
		var c wire.ExecCreated
		if code != 201 || json.Unmarshal(b, &c) != nil || c.ID == "" {
			t.Fatalf("exec create: %d %s", code, b)
		}
		return c.ID
	}
	inspect := func(id string) wire.ExecInfo {
		_, b := e.get(t, "/instances/x/exec/"+id)
		var info wire.ExecInfo
		json.Unmarshal(b, &info)
		return info
	}
	t.Run("CatStdin", func(t *testing.T) {
		id := create(wire.ExecCreate{Cmd: []string{"cat"}, AttachStdin: true, AttachStdout: true, AttachStderr: true})
		c, br := e.upgrade(t, "/instances/x/exec/"+id+"/start")
		io.WriteString(c, "abc")
		c.CloseWrite()
		if out, _ := demux(t, br); out != "abc" {
			t.Fatalf("cat: %q", out)
		}
		if info := inspect(id); info.Running || info.ExitCode == nil || *info.ExitCode != 0 {
			t.Fatalf("inspect: %+v, exit %v", info, *info.ExitCode)
		}
		if code, _ := e.post(t, "/instances/x/exec/"+id+"/start?detach=1", nil); code != 409 {
			t.Fatalf("second start: %d, want 409", code)
		}
	})
	t.Run("ExitCode", func(t *testing.T) {
		id := create(wire.ExecCreate{Cmd: []string{"sh", "-c", "exit 7"}, AttachStdout: true})
		_, br := e.upgrade(t, "/instances/x/exec/"+id+"/start")
		demux(t, br)
		if info := inspect(id); info.ExitCode == nil || *info.ExitCode != 7 {
			t.Fatalf("inspect: %+v", info)
		}
	})
	t.Run("Detached", func(t *testing.T) {
		id := create(wire.ExecCreate{Cmd: []string{"echo", "bg"}, AttachStdout: true})
		if code, b := e.post(t, "/instances/x/exec/"+id+"/start?detach=1", nil); code != 204 {
			t.Fatalf("detached start: %d %s", code, b)
		}
		deadline := time.Now().Add(2 * time.Second)
		for inspect(id).ExitCode == nil && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		if info := inspect(id); info.ExitCode == nil || *info.ExitCode != 0 {
			t.Fatalf("detached: %+v", info)
		}
	})
	t.Run("ErrNotRunning", func(t *testing.T) {
		e.create(t, "stopped", false)
		if code, b := e.post(t, "/instances/stopped/exec", wire.ExecCreate{Cmd: []string{"true"}}); code != 409 {
			t.Fatalf("exec in a created instance: %d %s", code, b)
		}
	})
	t.Run("ErrOtherInstance", func(t *testing.T) {
		id := create(wire.ExecCreate{Cmd: []string{"true"}})
		e.create(t, "y", true)
		if code, _ := e.get(t, "/instances/y/exec/"+id); code != 404 {
			t.Fatalf("exec of x through y: %d", code)
		}
	})
}

func TestStreamTopStats(t *testing.T) {
	e := newStreamEnv(t)
	e.create(t, "p", true)
	_, b := e.get(t, "/instances/p/top")
	var top wire.TopResult
	if err := json.Unmarshal(b, &top); err != nil || len(top.Processes) != 1 || top.Titles[1] != "PID" {
		t.Fatalf("top: %s", b)
	}
	req, _ := http.NewRequest("GET", e.url+"/instances/p/stats?stream=1&interval=100ms", nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	dec := json.NewDecoder(resp.Body)
	var s1, s2 wire.StatsSample
	if err := dec.Decode(&s1); err != nil {
		t.Fatal(err)
	}
	if err := dec.Decode(&s2); err != nil {
		t.Fatal(err)
	}
	if s2.CPUUsageNs <= s1.CPUUsageNs || s1.MemoryLimit != 64<<20 || s1.OnlineCPUs < 1 || s2.SystemCPUNs < s1.SystemCPUNs {
		t.Fatalf("samples: %+v then %+v", s1, s2)
	}
}

// regCP records the registration.
type regCP struct {
	*fakeCP
	mu  sync.Mutex
	req wire.RegisterRequest
}

func (r *regCP) Register(ctx context.Context, req wire.RegisterRequest) (string, error) {
	r.mu.Lock()
	r.req = req
	r.mu.Unlock()
	return r.fakeCP.Register(ctx, req)
}

func TestAgentServesStreams(t *testing.T) {
	cp := &regCP{fakeCP: newFakeCP()}
	d := MustSim(t, sim.Config{})
	dir := t.TempDir()
	cfg := testConfig(t, cp, d, dir)
	cfg.Address = "127.0.0.1:0"
	cp.Set(running("a"))
	startAgent(t, cfg)
	waitState(t, cp.fakeCP, "a", driver.StateRunning, 1)
	cp.mu.Lock()
	req := cp.req
	cp.mu.Unlock()
	tok, _ := LoadStreamToken(dir)
	if req.StreamToken != tok || strings.HasSuffix(req.Address, ":0") || !strings.HasPrefix(req.Address, "127.0.0.1:") {
		t.Fatalf("registered address %q token %q (file has %q)", req.Address, req.StreamToken, tok)
	}
	hreq, _ := http.NewRequest("GET", "http://"+req.Address+wire.StreamPathPrefix+"/instances/a/top", nil)
	hreq.Header.Set("Authorization", "Bearer "+tok)
	resp, err := http.DefaultClient.Do(hreq)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("top through the agent: %d", resp.StatusCode)
	}
}

func TestStreamPendingAttachesAndExited(t *testing.T) {
	d := MustSim(t, sim.Config{})
	ss := NewStreamServer(d, testToken, nil)
	exited := make(chan string, 4)
	ss.Exited = func(id string) { exited <- id }
	srv := httptest.NewServer(ss)
	t.Cleanup(srv.Close)
	e := &streamEnv{d: d, srv: srv, url: srv.URL + wire.StreamPathPrefix}
	// Attached before the instance exists on the node: pending until it runs.
	_, br := e.upgrade(t, "/instances/p/attach?stdout=1")
	waitFor(t, 5*time.Second, "the attach to be pending", func() bool { return ss.PendingAttaches("p") == 1 })
	e.create(t, "p", true, "SIM_EXIT=0", "SIM_EXIT_AFTER=300ms")
	waitFor(t, 5*time.Second, "the attach to join", func() bool { return ss.PendingAttaches("p") == 0 })
	if code, b := e.get(t, "/instances/p/wait?condition=not-running"); code != 200 {
		t.Fatalf("wait: %d %s", code, b)
	}
	select {
	case id := <-exited:
		if id != "p" {
			t.Fatalf("Exited(%q), want p", id)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a wait that saw the exit did not call Exited")
	}
	demux(t, br)
}

func TestStreamKillStop(t *testing.T) {
	e := newStreamEnv(t)
	e.create(t, "k", true)
	// The sim driver delivers no signals: the control plane falls back to
	// a plain stop when it is told so.
	if code, b := e.post(t, "/instances/k/kill?signal=1", nil); code != http.StatusNotImplemented {
		t.Fatalf("kill on sim: %d %s", code, b)
	}
	if code, b := e.post(t, "/instances/k/stop?t=1s", nil); code != http.StatusNotImplemented {
		t.Fatalf("stop on sim: %d %s", code, b)
	}
}

// TestStreamWaitAfter: a next-exit wait that arrives after the run it is
// for has started and ended (the docker CLI starts once the wait's headers
// are back) answers at once when the caller says which run it saw last.
func TestStreamWaitAfter(t *testing.T) {
	e := newStreamEnv(t)
	e.create(t, "w", true, "SIM_EXIT=4")
	waitFor(t, 5*time.Second, "the run to end", func() bool {
		st, err := e.d.Inspect(context.Background(), "w")
		return err == nil && st.State == driver.StateStopped
	})
	start := time.Now()
	code, b := e.get(t, "/instances/w/wait?condition=next-exit&after=0")
	if code != 200 || string(b) != "{\"StatusCode\":4}\n" || time.Since(start) > 2*time.Second {
		t.Fatalf("next-exit after=0 on a run that ended: %d %s after %v", code, b, time.Since(start))
	}
	if code, _ := e.get(t, "/instances/w/wait?condition=next-exit&after=bogus"); code != 400 {
		t.Fatalf("bad after: %d", code)
	}
}
