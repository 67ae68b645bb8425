package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"flotilla/api/auth"
	"flotilla/api/service"
	"flotilla/store"
)

// busyboxID is the image every cluster here offers (the dev cloud's id).
const busyboxID = "b0c1d2e3-0000-4000-8000-000000000001"

// serveCluster is `flotilla serve` as a child process on its own database in
// the dev cloud's PostgreSQL, with agents as separate processes.
type serveCluster struct {
	t                    *testing.T
	dir                  string
	db                   string
	cloudAddr, agentAddr string // fixed across restarts, so agents find it again
	serve                *Proc
	token                string
	api                  *apiClient
	ownerID              string
}

// freeAddr returns a 127.0.0.1 address with a port free right now.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// newServeCluster creates database name (dropping an old one), starts
// serve on it, and seeds packages, networks, the busybox image, the account
// e2e with the dev key, and a join token.
func newServeCluster(t *testing.T, name string) *serveCluster {
	t.Helper()
	requireCloud(t)
	c := &serveCluster{t: t, dir: filepath.Join(tmp, name), cloudAddr: freeAddr(t), agentAddr: freeAddr(t)}
	if err := os.MkdirAll(c.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(devEnv["FLOTILLA_DB"])
	if err != nil {
		t.Fatal(err)
	}
	u.Path = "/postgres"
	ctx := ctxTimeout(t, 30*time.Second)
	conn, err := pgx.Connect(ctx, u.String())
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{"DROP DATABASE IF EXISTS " + pgx.Identifier{name}.Sanitize() + " WITH (FORCE)", "CREATE DATABASE " + pgx.Identifier{name}.Sanitize()} {
		if _, err := conn.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	conn.Close(ctx)
	u.Path = "/" + name
	c.db = u.String()

	c.startServe()
	t.Cleanup(func() { c.serve.Stop(10 * time.Second) })

	st, err := store.Open(ctx, c.db)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := service.EnsurePackages(ctx, st); err != nil {
		t.Fatal(err)
	}
	if err := service.EnsureNetworks(ctx, st); err != nil {
		t.Fatal(err)
	}
	if _, err := st.CreateImage(ctx, store.Image{ID: busyboxID, Name: "busybox", Version: "1.36", OS: "linux",
		Type: "zone-dataset", Public: true}); err != nil {
		t.Fatal(err)
	}
	c.admin("account", "create", "e2e", "--key", keyFile)
	acct, err := st.AccountByLogin(ctx, "e2e")
	if err != nil {
		t.Fatal(err)
	}
	c.ownerID = acct.ID
	c.token = strings.TrimSpace(c.admin("node", "join-token"))
	if len(c.token) < 16 || strings.ContainsAny(c.token, " \n") {
		t.Fatalf("join-token printed %q", c.token)
	}
	c.api = newAPIClient(t, "http://"+c.cloudAddr, "e2e")
	return c
}

// startServe starts (or restarts) serve on the cluster's fixed addresses.
func (c *serveCluster) startServe() {
	c.t.Helper()
	start := time.Now()
	p, err := StartProc("flotilla serve", c.dir, baseEnv(), filepath.Join(c.dir, "serve.log"), bin, "serve",
		"--db", c.db, "--cloudapi-addr", c.cloudAddr, "--agentapi-addr", c.agentAddr, "--offline-grace", "5s",
		"--data", filepath.Join(c.dir, "serve"), "--quiet")
	if err != nil {
		c.t.Fatal(err)
	}
	if _, err := p.WaitLine("flotilla serve ready", 30*time.Second); err != nil {
		p.Kill()
		c.t.Fatal(err)
	}
	c.serve = p
	c.t.Logf("flotilla serve ready in %s", time.Since(start).Round(time.Millisecond))
}

// admin runs `flotilla admin ... --db` against the cluster's database.
func (c *serveCluster) admin(args ...string) string {
	c.t.Helper()
	out, err := exec.Command(bin, append(append([]string{"admin"}, args...), "--db", c.db)...).CombinedOutput()
	if err != nil {
		c.t.Fatalf("flotilla admin %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// agentDir is where agent name keeps its state (sim-state.json among it).
func (c *serveCluster) agentDir(name string) string { return filepath.Join(c.dir, "agents", name) }

// startAgent starts `flotilla agent` with the sim driver and waits until
// its node is up. The agent is killed at the end of the test.
func (c *serveCluster) startAgent(name string, memoryMiB, diskMiB int64, cpus int) *Proc {
	c.t.Helper()
	// A join token registers one node once: mint one for each agent (an
	// agent restarted on its data dir uses its saved credential instead).
	token := strings.TrimSpace(c.admin("node", "join-token"))
	env := append(baseEnv(), "FLOTILLA_AGENT_API=http://"+c.agentAddr, "FLOTILLA_JOIN_TOKEN="+token)
	p, err := StartProc("flotilla agent "+name, c.dir, env, filepath.Join(c.dir, "agent-"+name+".log"), bin, "agent",
		"--name", name, "--driver", "sim", "--data", c.agentDir(name), "--memory", fmt.Sprint(memoryMiB),
		"--disk", fmt.Sprint(diskMiB), "--cpus", fmt.Sprint(cpus))
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { p.Kill() })
	deadline := time.Now().Add(20 * time.Second)
	for {
		var up bool
		queryRow(c.t, c.db, `SELECT EXISTS (SELECT 1 FROM nodes WHERE name = $1 AND state = 'running'
			AND last_heartbeat > now() - interval '5 seconds')`, []any{name}, &up)
		if up {
			return p
		}
		if p.Exited() || time.Now().After(deadline) {
			c.t.Fatalf("agent %s did not come up within 20 s; output:\n%s", name, p.Output())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// apiClient calls CloudAPI with HTTP signatures from the dev key.
type apiClient struct {
	base, login string
	signer      *auth.Signer
	hc          *http.Client
}

func newAPIClient(t *testing.T, base, login string) *apiClient {
	t.Helper()
	pem, err := os.ReadFile(filepath.Join(home, ".ssh", "id_ed25519"))
	if err != nil {
		t.Fatal(err)
	}
	key, err := auth.LoadPrivateKey(pem)
	if err != nil {
		t.Fatal(err)
	}
	s, err := auth.NewSigner(login, "", key)
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{MaxIdleConns: 1000, MaxIdleConnsPerHost: 1000, IdleConnTimeout: 30 * time.Second}
	return &apiClient{base: base, login: login, signer: s, hc: &http.Client{Transport: tr, Timeout: 30 * time.Second}}
}

// do sends a signed request to /LOGIN+path and returns the status and body.
func (c *apiClient) do(ctx context.Context, method, path string, body any, hdr http.Header) (int, []byte, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+"/"+c.login+path, rd)
	if err != nil {
		return 0, nil, err
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if err := c.signer.Sign(req); err != nil {
		return 0, nil, err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// machine is the part of a CloudAPI machine these tests look at.
type machine struct {
	ID, Name, State, Package string
	Memory                   int64
	ComputeNode              string `json:"compute_node"`
}

// getMachine is GET /machines/:id; deleted machines (410) are returned too.
func (c *apiClient) getMachine(ctx context.Context, id string) (machine, error) {
	status, body, err := c.do(ctx, "GET", "/machines/"+id, nil, nil)
	if err != nil {
		return machine{}, err
	}
	if status != 200 && status != 410 {
		return machine{}, fmt.Errorf("GET /machines/%s: %d %s", id, status, body)
	}
	var m machine
	return m, json.Unmarshal(body, &m)
}

// waitStates polls the machines until each is in want, and returns how long
// that took; it fails the test after within.
func (c *apiClient) waitStates(t *testing.T, ids []string, want string, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	ctx := ctxTimeout(t, within+5*time.Second)
	last := map[string]string{}
	for {
		done := true
		for _, id := range ids {
			m, err := c.getMachine(ctx, id)
			if err != nil {
				last[id] = err.Error()
				done = false
				continue
			}
			last[id] = m.State
			if m.State != want {
				done = false
			}
		}
		if done {
			return time.Since(start)
		}
		if time.Since(start) > within {
			t.Fatalf("machines not %s within %s: %v", want, within, last)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
