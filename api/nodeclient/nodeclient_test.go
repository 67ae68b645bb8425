package nodeclient_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net"
	"net/http/httptest"
	"testing"
	"time"

	"flotilla/agent"
	"flotilla/agent/driver"
	"flotilla/agent/driver/sim"
	"flotilla/api/agentapi/wire"
	"flotilla/api/errdefs"
	"flotilla/api/nodeclient"
)

const token = "0123456789abcdef0123456789abcdef"

func setup(t *testing.T) (*sim.Driver, nodeclient.Node, *nodeclient.Client) {
	t.Helper()
	d, err := sim.New(sim.Config{})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(agent.NewStreamServer(d, token, nil))
	t.Cleanup(srv.Close)
	c := nodeclient.New()
	t.Cleanup(c.Close)
	return d, nodeclient.Node{Address: srv.Listener.Addr().String(), Token: token}, c
}

func run(t *testing.T, d *sim.Driver, id string, start bool, env ...string) {
	t.Helper()
	ctx := context.Background()
	if err := d.Create(ctx, driver.Spec{ID: id, Cmd: []string{"echo", "hi"}, Env: env, OpenStdin: true, MemoryMiB: 32}); err != nil {
		t.Fatal(err)
	}
	if start {
		if err := d.Start(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
}

func frames(t *testing.T, r io.Reader) (string, string) {
	t.Helper()
	var o, e bytes.Buffer
	var h [8]byte
	for {
		if _, err := io.ReadFull(r, h[:]); err != nil {
			return o.String(), e.String()
		}
		w := &o
		if h[0] == 2 {
			w = &e
		}
		io.CopyN(w, r, int64(binary.BigEndian.Uint32(h[4:])))
	}
}

func TestLogsAndErrors(t *testing.T) {
	d, n, c := setup(t)
	ctx := context.Background()
	run(t, d, "a", true, "SIM_STDERR=err")
	rc, err := c.Logs(ctx, n, "a", nodeclient.LogsQuery{Stdout: true, Stderr: true, Tail: -1})
	if err != nil {
		t.Fatal(err)
	}
	o, e := frames(t, rc)
	rc.Close()
	if o != "hi\n" || e != "err\n" {
		t.Fatalf("logs %q %q", o, e)
	}
	t.Run("ErrNotFound", func(t *testing.T) {
		if _, err := c.Logs(ctx, n, "nope", nodeclient.LogsQuery{Tail: -1}); !errdefs.Is(err, errdefs.NotFound) {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("ErrUnauthorized", func(t *testing.T) {
		bad := nodeclient.Node{Address: n.Address, Token: "x"}
		if _, err := c.Top(ctx, bad, "a", ""); !errdefs.Is(err, errdefs.Unauthorized) {
			t.Fatalf("got %v", err)
		}
		if _, err := c.Attach(ctx, bad, "a", nodeclient.AttachOptions{Stdout: true}); !errdefs.Is(err, errdefs.Unauthorized) {
			t.Fatalf("upgrade: got %v", err)
		}
	})
	t.Run("ErrNoAddress", func(t *testing.T) {
		if _, err := c.Top(ctx, nodeclient.Node{}, "a", ""); !errdefs.Is(err, errdefs.NotImplemented) {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("ErrUnreachable", func(t *testing.T) {
		ln, _ := net.Listen("tcp", "127.0.0.1:0")
		addr := ln.Addr().String()
		ln.Close()
		if _, err := c.Wait(ctx, nodeclient.Node{Address: addr, Token: token}, "a", "not-running"); !errdefs.Is(err, errdefs.Unavailable) {
			t.Fatalf("got %v", err)
		}
	})
}

func TestAttachWaitExec(t *testing.T) {
	d, n, c := setup(t)
	ctx := context.Background()
	run(t, d, "b", false, "SIM_EXIT=4", "SIM_EXIT_AFTER=50ms")
	s, err := c.Attach(ctx, n, "b", nodeclient.AttachOptions{Stdout: true, Stderr: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	waited := make(chan wire.WaitResult, 1)
	go func() {
		res, err := c.Wait(ctx, n, "b", "next-exit")
		if err != nil {
			t.Error(err)
		}
		waited <- res
	}()
	time.Sleep(20 * time.Millisecond)
	d.Start(ctx, "b")
	if o, _ := frames(t, s); o != "hi\n" {
		t.Fatalf("attach: %q", o)
	}
	if res := <-waited; res.StatusCode != 4 {
		t.Fatalf("wait: %+v", res)
	}

	run(t, d, "c", true)
	eid, err := c.ExecCreate(ctx, n, "c", wire.ExecCreate{Cmd: []string{"cat"}, AttachStdin: true, AttachStdout: true})
	if err != nil {
		t.Fatal(err)
	}
	es, err := c.ExecStart(ctx, n, "c", eid, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(es, "over the wire")
	es.CloseWrite()
	var out bytes.Buffer
	o, _ := frames(t, io.TeeReader(es, &out))
	if o != "over the wire" {
		t.Fatalf("exec: %q", o)
	}
	info, err := c.ExecInspect(ctx, n, "c", eid)
	if err != nil || info.ExitCode == nil || *info.ExitCode != 0 || info.Running {
		t.Fatalf("inspect: %+v %v", info, err)
	}
	if _, err := c.ExecStart(ctx, n, "c", eid, 0, 0); !errdefs.Is(err, errdefs.Conflict) {
		t.Fatalf("second start: %v", err)
	}
	top, err := c.Top(ctx, n, "c", "")
	if err != nil || len(top.Processes) != 1 {
		t.Fatalf("top: %+v %v", top, err)
	}
	st, err := c.Stats(ctx, n, "c", false, 0)
	if err != nil {
		t.Fatal(err)
	}
	smp, err := st.Next()
	st.Close()
	if err != nil || smp.MemoryLimit != 32<<20 {
		t.Fatalf("stats: %+v %v", smp, err)
	}
}

// BenchmarkAttachEcho measures a round trip through an attach: a byte to
// stdin, its echo from stdout (sim "cat"), node client to agent directly.
func BenchmarkAttachEcho(b *testing.B) {
	d, _ := sim.New(sim.Config{})
	srv := httptest.NewServer(agent.NewStreamServer(d, token, nil))
	defer srv.Close()
	c := nodeclient.New()
	n := nodeclient.Node{Address: srv.Listener.Addr().String(), Token: token}
	ctx := context.Background()
	d.Create(ctx, driver.Spec{ID: "e", Cmd: []string{"sh"}, OpenStdin: true, Tty: true})
	d.Start(ctx, "e")
	s, err := c.Attach(ctx, n, "e", nodeclient.AttachOptions{Stdin: true, Stdout: true})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	buf := make([]byte, 1)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		s.Write([]byte{'x'})
		if _, err := io.ReadFull(s, buf); err != nil {
			b.Fatal(err)
		}
	}
}
