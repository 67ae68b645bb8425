package agentapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"flotilla/api/agentapi"
	"flotilla/api/agentapi/wire"
	"flotilla/store"
	"flotilla/store/storetest"
)

type joinEnv struct {
	st  *store.Store
	url string
}

func newJoinEnv(t *testing.T) joinEnv {
	t.Helper()
	st := storetest.New(t)
	srv := httptest.NewServer(agentapi.New(st, slog.New(slog.DiscardHandler)).Handler())
	t.Cleanup(srv.Close)
	return joinEnv{st: st, url: srv.URL}
}

// token mints a join token valid for ttl (negative: already expired).
func (e joinEnv) token(t *testing.T, ttl time.Duration) string {
	t.Helper()
	tok := agentapi.NewToken()
	if err := e.st.CreateJoinToken(context.Background(), agentapi.HashToken(tok), time.Now().Add(ttl)); err != nil {
		t.Fatal(err)
	}
	return tok
}

// post sends a request with a bearer token and returns the status and body.
func (e joinEnv) post(t *testing.T, method, path, bearer string, body any) (int, []byte) {
	t.Helper()
	b, _ := json.Marshal(body)
	req, _ := http.NewRequest(method, e.url+path, bytes.NewReader(b))
	req.Header.Set("Authorization", "Bearer "+bearer)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out bytes.Buffer
	out.ReadFrom(resp.Body)
	return resp.StatusCode, out.Bytes()
}

func (e joinEnv) register(t *testing.T, tok string, req wire.RegisterRequest) (int, wire.RegisterResponse, string) {
	t.Helper()
	if req.MemoryMiB == 0 {
		req.MemoryMiB, req.DiskMiB, req.VCPUs = 1024, 1024, 1
	}
	code, b := e.post(t, http.MethodPost, "/agent/v1/nodes/register", tok, req)
	var resp wire.RegisterResponse
	if code == http.StatusOK {
		if err := json.Unmarshal(b, &resp); err != nil {
			t.Fatal(err)
		}
	}
	return code, resp, string(b)
}

func (e joinEnv) heartbeat(t *testing.T, nodeID, cred string) int {
	t.Helper()
	code, _ := e.post(t, http.MethodPost, "/agent/v1/nodes/"+nodeID+"/heartbeat", cred, wire.Heartbeat{MemoryMiB: 1024, DiskMiB: 1024, VCPUs: 1})
	return code
}

// TestJoinTokenSingleUse: a join token registers one node once; a second
// registration with it (another node, or the same one) is refused.
func TestJoinTokenSingleUse(t *testing.T) {
	e := newJoinEnv(t)
	tok := e.token(t, time.Hour)
	if code, _, body := e.register(t, tok, wire.RegisterRequest{Name: "first"}); code != http.StatusOK {
		t.Fatalf("first registration: %d %s", code, body)
	}
	code, _, body := e.register(t, tok, wire.RegisterRequest{Name: "second"})
	if code != http.StatusUnauthorized || !strings.Contains(body, "already used") || !strings.Contains(body, "flotilla admin node join-token") {
		t.Fatalf("second registration with the same token: %d %s, want 401 telling to mint a new token", code, body)
	}
	if _, err := e.st.GetNode(context.Background(), "second"); err == nil {
		t.Fatal("a node was registered with a used token")
	}
}

// TestJoinTokenExpires: an expired token registers nothing.
func TestJoinTokenExpires(t *testing.T) {
	e := newJoinEnv(t)
	tok := e.token(t, -time.Second)
	if code, _, body := e.register(t, tok, wire.RegisterRequest{Name: "late"}); code != http.StatusUnauthorized {
		t.Fatalf("registration with an expired token: %d %s, want 401", code, body)
	}
}

// TestNodeTakeover: an agent with a fresh join token registers the name of
// an existing node, hoping to get its credential and its assignments (other
// tenants' environment, user-scripts and keys) sent to its own address.
func TestNodeTakeover(t *testing.T) {
	e := newJoinEnv(t)
	ctx := context.Background()
	code, victim, body := e.register(t, e.token(t, time.Hour), wire.RegisterRequest{Name: "cn-1", Address: "10.0.0.1:7070"})
	if code != http.StatusOK {
		t.Fatalf("victim registration: %d %s", code, body)
	}

	t.Run("ErrRefusedWithoutProof", func(t *testing.T) {
		tok := e.token(t, time.Hour)
		code, _, body := e.register(t, tok, wire.RegisterRequest{Name: "cn-1", Address: "10.6.6.6:7070"})
		if code != http.StatusConflict || !strings.Contains(body, "flotilla admin node approve cn-1") {
			t.Fatalf("takeover registration: %d %s, want 409 naming `flotilla admin node approve cn-1`", code, body)
		}
		n, err := e.st.GetNode(ctx, "cn-1")
		if err != nil {
			t.Fatal(err)
		}
		if n.Address != "10.0.0.1:7070" {
			t.Errorf("the refused registration changed the node's address to %s", n.Address)
		}
		if code := e.heartbeat(t, victim.NodeID, victim.Credential); code != http.StatusNoContent {
			t.Errorf("the victim's credential stopped working: heartbeat %d", code)
		}
		// A refused registration does not use the token up.
		if code, _, body := e.register(t, tok, wire.RegisterRequest{Name: "cn-2"}); code != http.StatusOK {
			t.Errorf("the token of a refused registration no longer works: %d %s", code, body)
		}
	})

	t.Run("ErrWrongProof", func(t *testing.T) {
		code, _, body := e.register(t, e.token(t, time.Hour), wire.RegisterRequest{Name: "cn-1", CurrentCredential: agentapi.NewToken()})
		if code != http.StatusConflict {
			t.Fatalf("registration with a wrong credential: %d %s, want 409", code, body)
		}
	})

	t.Run("OKWithCurrentCredential", func(t *testing.T) {
		code, again, body := e.register(t, e.token(t, time.Hour), wire.RegisterRequest{Name: "cn-1", Address: "10.0.0.2:7070", CurrentCredential: victim.Credential})
		if code != http.StatusOK || again.NodeID != victim.NodeID {
			t.Fatalf("registration with the current credential: %d %s", code, body)
		}
		if code := e.heartbeat(t, victim.NodeID, victim.Credential); code != http.StatusUnauthorized {
			t.Errorf("the replaced credential still works: heartbeat %d", code)
		}
		victim = again
	})

	t.Run("OKApprovedByOperator", func(t *testing.T) {
		if _, err := e.st.ApproveNodeReregistration(ctx, "cn-1", time.Minute); err != nil {
			t.Fatal(err)
		}
		code, again, body := e.register(t, e.token(t, time.Hour), wire.RegisterRequest{Name: "cn-1", Address: "10.0.0.3:7070"})
		if code != http.StatusOK || again.NodeID != victim.NodeID {
			t.Fatalf("approved registration: %d %s", code, body)
		}
		if code := e.heartbeat(t, victim.NodeID, victim.Credential); code != http.StatusUnauthorized {
			t.Errorf("the replaced credential still works: heartbeat %d", code)
		}
		// The approval was for one registration.
		if code, _, body := e.register(t, e.token(t, time.Hour), wire.RegisterRequest{Name: "cn-1"}); code != http.StatusConflict {
			t.Errorf("second registration on one approval: %d %s, want 409", code, body)
		}
	})
}
