package agentapi_test

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"flotilla/agent"
	"flotilla/agent/driver/sim"
	"flotilla/api/agentapi"
	"flotilla/api/agentapi/wire"
	"flotilla/api/auth"
	"flotilla/api/errdefs"
	"flotilla/api/nodeclient"
	"flotilla/store"
	"flotilla/store/storetest"
)

// startTLSAgentAPI serves the agent API in TLS with a node CA that also
// signs stream server certificates (withCA false: it signs none).
func startTLSAgentAPI(t *testing.T, st *store.Store, withCA bool) (*httptest.Server, *auth.DevCA) {
	t.Helper()
	ca, err := auth.NewDevCA(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	s := agentapi.New(st, slog.New(slog.DiscardHandler))
	if withCA {
		s.SetNodeCA(ca)
	}
	srv := httptest.NewUnstartedServer(s.Handler())
	if srv.TLS, err = ca.TLSConfig(); err != nil {
		t.Fatal(err)
	}
	srv.TLS.ClientAuth = tls.NoClientCert
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv, ca
}

func mintToken(t *testing.T, st *store.Store) string {
	t.Helper()
	tok := agentapi.NewToken()
	if err := st.CreateJoinToken(context.Background(), agentapi.HashToken(tok), time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	return tok
}

func simAgentConfig(t *testing.T, url, token, address string, hc *http.Client) agent.Config {
	t.Helper()
	drv, err := sim.New(sim.Config{})
	if err != nil {
		t.Fatal(err)
	}
	return agent.Config{Name: "tls-node", DataDir: t.TempDir(), APIURL: url, JoinToken: token, Driver: drv, Address: address,
		HTTPClient: hc, MemoryMiB: 1024, DiskMiB: 1024, VCPUs: 1, HeartbeatInterval: time.Second, PollWait: time.Second,
		Logger: slog.New(slog.DiscardHandler)}
}

// TestNodeStreamsTLS: the agent API is served in TLS, the agent gets its
// stream server's certificate from the control plane at registration, and
// the control plane reaches the stream server in TLS only, checking that
// the certificate names the node it means to reach.
func TestNodeStreamsTLS(t *testing.T) {
	st := storetest.New(t)
	srv, ca := startTLSAgentAPI(t, st, true)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	t.Run("ErrAgentAPIUntrusted", func(t *testing.T) {
		c, err := agent.NewClient(agent.ClientConfig{BaseURL: srv.URL, JoinToken: mintToken(t, st), DataDir: t.TempDir(), Attempts: 1})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Register(ctx, wire.RegisterRequest{Name: "untrusting"}); err == nil || !strings.Contains(err.Error(), "certificate") {
			t.Fatalf("register against a CA the agent does not trust: %v, want a certificate error", err)
		}
	})

	a, err := agent.New(simAgentConfig(t, srv.URL, mintToken(t, st), "127.0.0.1:0", agent.NewHTTPClientTLS(ca.CertPool())))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	deadline := time.Now().Add(15 * time.Second)
	for a.NodeID() == "" {
		if time.Now().After(deadline) {
			t.Fatal("the agent did not register")
		}
		select {
		case err := <-done:
			t.Fatalf("agent stopped: %v", err)
		case <-time.After(20 * time.Millisecond):
		}
	}
	ns, err := st.NodeStream(ctx, a.NodeID())
	if err != nil {
		t.Fatal(err)
	}
	node := nodeclient.Node{ID: ns.NodeID, Address: ns.Address, Token: ns.Token}
	// wait asks the agent about an instance it does not run: an answer
	// (nil, or the agent's NotFound) means the request got through TLS and
	// the token check.
	wait := func(c *nodeclient.Client, n nodeclient.Node) error {
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		for {
			_, err := c.Wait(ctx, n, "00000000-0000-4000-8000-000000000000", "not-running")
			if errdefs.Is(err, errdefs.Unavailable) && strings.Contains(err.Error(), "refused") && ctx.Err() == nil {
				time.Sleep(20 * time.Millisecond) // the stream server starts after registration
				continue
			}
			return err
		}
	}

	t.Run("OK", func(t *testing.T) {
		c := nodeclient.New()
		defer c.Close()
		c.UseTLS(ca.CertPool())
		if err := wait(c, node); err != nil && !errdefs.Is(err, errdefs.NotFound) {
			t.Fatalf("wait over TLS: %v, want the agent's answer", err)
		}
		s, err := c.Attach(ctx, node, "00000000-0000-4000-8000-000000000000", nodeclient.AttachOptions{Stdout: true})
		if err == nil {
			s.Close()
		}
		if err != nil && !errdefs.Is(err, errdefs.NotFound) {
			t.Fatalf("attach (an upgraded connection) over TLS: %v, want the agent's answer", err)
		}
	})
	t.Run("ErrPlainHTTP", func(t *testing.T) {
		c := nodeclient.New()
		defer c.Close()
		if err := wait(c, node); err == nil || errdefs.Is(err, errdefs.NotFound) {
			t.Fatalf("plain HTTP to the stream server: %v, want a failure", err)
		}
	})
	t.Run("ErrAnotherNodesName", func(t *testing.T) {
		c := nodeclient.New()
		defer c.Close()
		c.UseTLS(ca.CertPool())
		other := node
		other.ID = "11111111-1111-4111-8111-111111111111"
		if err := wait(c, other); err == nil || !strings.Contains(err.Error(), "certificate") {
			t.Fatalf("stream server reached as another node: %v, want a certificate error", err)
		}
	})
	t.Run("ErrAnotherCA", func(t *testing.T) {
		other, err := auth.NewDevCA(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		c := nodeclient.New()
		defer c.Close()
		c.UseTLS(other.CertPool())
		if err := wait(c, node); err == nil || !strings.Contains(err.Error(), "certificate") {
			t.Fatalf("stream server with a CA the control plane does not trust: %v, want a certificate error", err)
		}
	})
}

// TestNodeStreamsPlainOffLoopback: an agent whose control plane signs no
// certificate does not serve its streams in plain HTTP off loopback.
func TestNodeStreamsPlainOffLoopback(t *testing.T) {
	st := storetest.New(t)
	srv, ca := startTLSAgentAPI(t, st, false)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := agent.Run(ctx, simAgentConfig(t, srv.URL, mintToken(t, st), "0.0.0.0:0", agent.NewHTTPClientTLS(ca.CertPool())))
	if err == nil || !strings.Contains(err.Error(), "off loopback") {
		t.Fatalf("agent serving streams on 0.0.0.0 without a certificate: %v, want a refusal", err)
	}
}
