package cloudapi_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/md5"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"
	"golang.org/x/crypto/ssh"

	"flotilla/agent"
	"flotilla/agent/driver/sim"
	"flotilla/api/agentapi"
	"flotilla/api/auth"
	"flotilla/api/cloudapi"
	"flotilla/api/service"
	"flotilla/openapi"
	"flotilla/store"
	"flotilla/store/storetest"
)

func TestMain(m *testing.M) {
	code := storetest.Main(m)
	if testing.Verbose() {
		fmt.Printf("%d responses validated against the OpenAPI documents\n", validated.Load())
		if f := flag.Lookup("test.run"); f != nil && f.Value.String() == "" {
			fmt.Println(coverageReport())
		}
	}
	os.Exit(code)
}

// validated counts the responses checked against the OpenAPI documents, and
// exercised records each operation's statuses seen, so that a run shows how
// much of the contract it covered.
var (
	validated atomic.Int64
	exercised sync.Map // operationId -> *sync.Map of status -> true
)

func recordOperation(op string, status int) {
	m, _ := exercised.LoadOrStore(op, &sync.Map{})
	m.(*sync.Map).Store(status, true)
}

// coverageReport lists the CloudAPI operations no test exercised.
func coverageReport() string {
	if cloudSpec == nil {
		return ""
	}
	var missing []string
	total := 0
	for _, item := range cloudSpec.doc.Paths.Map() {
		for _, op := range item.Operations() {
			total++
			if _, ok := exercised.Load(op.OperationID); !ok {
				missing = append(missing, op.OperationID)
			}
		}
	}
	sort.Strings(missing)
	return fmt.Sprintf("%d of %d CloudAPI operations exercised; not exercised: %v", total-len(missing), total, missing)
}

// apiSpec is a loaded OpenAPI document with its router.
type apiSpec struct {
	doc    *openapi3.T
	router routers.Router
}

var (
	specOnce           sync.Once
	cloudSpec, agentSp *apiSpec
	specErr            error
)

func loadSpec(data []byte) (*apiSpec, error) {
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromData(data)
	if err != nil {
		return nil, err
	}
	if err := doc.Validate(context.Background()); err != nil {
		return nil, fmt.Errorf("invalid document: %w", err)
	}
	router, err := legacy.NewRouter(doc)
	if err != nil {
		return nil, err
	}
	return &apiSpec{doc: doc, router: router}, nil
}

// specs loads openapi/cloudapi.yaml and openapi/agentapi.yaml once.
func specs(t testing.TB) (*apiSpec, *apiSpec) {
	t.Helper()
	specOnce.Do(func() {
		if cloudSpec, specErr = loadSpec(openapi.CloudAPI); specErr != nil {
			specErr = fmt.Errorf("openapi/cloudapi.yaml: %w", specErr)
			return
		}
		if agentSp, specErr = loadSpec(openapi.AgentAPI); specErr != nil {
			specErr = fmt.Errorf("openapi/agentapi.yaml: %w", specErr)
		}
	})
	if specErr != nil {
		t.Fatal(specErr)
	}
	return cloudSpec, agentSp
}

// validatingTransport checks every response against an OpenAPI document and
// the CloudAPI wire rules (exact Content-Length, correct Content-MD5, no 5xx,
// a JSON {code,message} on errors, no body on HEAD), failing the test on any
// mismatch.
type validatingTransport struct {
	t     testing.TB
	spec  *apiSpec
	base  http.RoundTripper
	cloud bool // CloudAPI rules on top of the document
}

func (vt *validatingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := vt.base.RoundTrip(req)
	if err != nil {
		return resp, err
	}
	body, rerr := io.ReadAll(resp.Body)
	resp.Body.Close()
	resp.Body = io.NopCloser(bytes.NewReader(body))
	if rerr != nil {
		// A streamed body cut short by the client's own cancellation.
		return resp, nil
	}
	if msg := vt.check(req, resp, body); msg != "" {
		vt.t.Errorf("%s %s -> %d: %s\nbody: %.600s", req.Method, req.URL.RequestURI(), resp.StatusCode, msg, body)
	}
	return resp, nil
}

func (vt *validatingTransport) check(req *http.Request, resp *http.Response, body []byte) string {
	validated.Add(1)
	if resp.StatusCode >= 500 {
		return "server error"
	}
	if req.Method == http.MethodHead && len(body) > 0 {
		return "HEAD response has a body"
	}
	if cl := resp.Header.Get("Content-Length"); cl != "" && req.Method != http.MethodHead && resp.StatusCode != http.StatusSwitchingProtocols {
		if n, err := strconv.Atoi(cl); err != nil || n != len(body) {
			return fmt.Sprintf("Content-Length %q but the body has %d bytes", cl, len(body))
		}
	}
	if vt.cloud {
		if md := resp.Header.Get("Content-MD5"); md != "" && req.Method != http.MethodHead {
			sum := md5.Sum(body)
			if want := base64.StdEncoding.EncodeToString(sum[:]); md != want {
				return fmt.Sprintf("Content-MD5 %s, body's is %s", md, want)
			}
		}
		if resp.StatusCode >= 400 && resp.StatusCode != http.StatusGone && req.Method != http.MethodHead {
			var e struct{ Code, Message string }
			if err := json.Unmarshal(body, &e); err != nil || e.Code == "" || e.Message == "" {
				return "error without a JSON {code,message} body"
			}
		}
		for _, h := range []string{"Server", "Request-Id", "Response-Time", "Access-Control-Allow-Origin"} {
			if resp.Header.Get(h) == "" {
				return "no " + h + " header"
			}
		}
	}
	if req.Method == http.MethodOptions {
		// CORS preflight: answered for every path before routing.
		return ""
	}
	route, params, err := vt.spec.router.FindRoute(req)
	if err != nil {
		// Only unknown routes may be missing from the document.
		if resp.StatusCode != http.StatusNotFound && resp.StatusCode != http.StatusMethodNotAllowed {
			return "route not in the OpenAPI document: " + err.Error()
		}
		if req.Method == http.MethodHead {
			return ""
		}
		var v any
		if err := json.Unmarshal(body, &v); err != nil {
			return "404 body is not JSON"
		}
		if err := vt.spec.doc.Components.Schemas["Error"].Value.VisitJSON(v); err != nil {
			return "404 body does not match Error: " + err.Error()
		}
		return ""
	}
	recordOperation(route.Operation.OperationID, resp.StatusCode)
	in := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route},
		Status:                 resp.StatusCode,
		Header:                 resp.Header,
		Body:                   io.NopCloser(bytes.NewReader(body)),
		Options:                &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true},
	}
	if req.Method == http.MethodHead {
		// kin-openapi skips HEAD; check the documented headers ourselves.
		ref := route.Operation.Responses.Status(resp.StatusCode)
		if ref == nil {
			ref = route.Operation.Responses.Default()
		}
		if ref == nil {
			return "status not in the OpenAPI document"
		}
		for name, h := range ref.Value.Headers {
			if h.Value.Required && resp.Header.Get(name) == "" {
				return "HEAD response lacks required header " + name
			}
		}
		return ""
	}
	if err := openapi3filter.ValidateResponse(context.Background(), in); err != nil {
		return "does not match the OpenAPI document: " + err.Error()
	}
	return ""
}

// testKeys are generated once per test binary: RSA generation is slow.
type testKeys struct {
	ed25519, rsa, ecdsa, bob, ops, spare crypto.Signer
}

var (
	keysOnce sync.Once
	keys     testKeys
)

func sharedKeys(t testing.TB) testKeys {
	keysOnce.Do(func() {
		gen := func(kind string) crypto.Signer {
			switch kind {
			case "rsa":
				k, err := rsa.GenerateKey(rand.Reader, 2048)
				if err != nil {
					panic(err)
				}
				return k
			case "ecdsa":
				k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
				if err != nil {
					panic(err)
				}
				return k
			}
			_, k, err := ed25519.GenerateKey(rand.Reader)
			if err != nil {
				panic(err)
			}
			return k
		}
		keys = testKeys{ed25519: gen("ed25519"), rsa: gen("rsa"), ecdsa: gen("ecdsa"), bob: gen("ed25519"),
			ops: gen("ed25519"), spare: gen("ed25519")}
	})
	return keys
}

// authorizedKey renders a private key's public half as an OpenSSH line.
func authorizedKey(t testing.TB, k crypto.Signer, comment string) string {
	t.Helper()
	pub, err := ssh.NewPublicKey(k.Public())
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pub))) + " " + comment
}

// env is a CloudAPI server on a fresh database with three accounts: alice
// (keys id_ed25519, id_rsa, id_ecdsa), bob (one key) and ops (an operator).
type env struct {
	t      testing.TB
	ctx    context.Context
	st     *store.Store
	svc    *service.Service
	srv    *httptest.Server
	client *http.Client
	keys   testKeys

	alice, bob, ops store.Account
	image           store.Image
	signer          *auth.Signer // alice's ed25519 key
}

type envOptions struct {
	RateLimit float64
	Burst     int
	CNS       service.CNSZone
}

func newEnv(t testing.TB, opts ...envOptions) *env {
	t.Helper()
	var o envOptions
	if len(opts) > 0 {
		o = opts[0]
	}
	cloud, _ := specs(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	st := storetest.New(t)
	log := slog.New(slog.DiscardHandler)
	svc, err := service.New(ctx, st, log, service.PlacerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, ctx: ctx, st: st, svc: svc, keys: sharedKeys(t)}
	e.srv = httptest.NewServer(nil)
	e.srv.Config.Handler = cloudapi.New(svc, log, cloudapi.Config{Datacenter: "test-1", URL: e.srv.URL,
		RateLimit: o.RateLimit, Burst: o.Burst, CNS: o.CNS}).Handler()
	t.Cleanup(e.srv.Close)
	e.client = &http.Client{
		Transport:     &validatingTransport{t: t, spec: cloud, base: http.DefaultTransport, cloud: true},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Timeout:       30 * time.Second,
	}

	if err := service.EnsurePackages(ctx, st); err != nil {
		t.Fatal(err)
	}
	if err := service.EnsureNetworks(ctx, st); err != nil {
		t.Fatal(err)
	}
	e.alice = e.account("alice", false, map[string]crypto.Signer{"id_ed25519": e.keys.ed25519, "id_rsa": e.keys.rsa, "id_ecdsa": e.keys.ecdsa})
	e.bob = e.account("bob", false, map[string]crypto.Signer{"id_bob": e.keys.bob})
	e.ops = e.account("ops", true, map[string]crypto.Signer{"id_ops": e.keys.ops})
	e.image, err = st.CreateImage(ctx, store.Image{Name: "base-64", Version: "24.4.0", OS: "smartos",
		Type: "zone-dataset", Public: true, Description: "A SmartOS base image", SizeBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	e.signer = e.newSigner("alice", e.keys.ed25519)
	return e
}

func (e *env) account(login string, operator bool, keys map[string]crypto.Signer) store.Account {
	e.t.Helper()
	a, err := e.st.CreateAccount(e.ctx, store.Account{Login: login, Email: login + "@example.com", Operator: operator,
		FirstName: strings.ToUpper(login[:1]) + login[1:], LastName: "Example"})
	if err != nil {
		e.t.Fatal(err)
	}
	for name, k := range keys {
		pk, err := auth.ParsePublicKey(authorizedKey(e.t, k, login+"@test"))
		if err != nil {
			e.t.Fatal(err)
		}
		if _, err := e.st.CreateKey(e.ctx, store.Key{OwnerID: a.ID, Name: name, FingerprintMD5: pk.MD5,
			FingerprintSHA256: pk.SHA256, Text: pk.OpenSSH}); err != nil {
			e.t.Fatal(err)
		}
	}
	return a
}

func (e *env) newSigner(login string, k crypto.Signer, opts ...auth.SignerOption) *auth.Signer {
	e.t.Helper()
	s, err := auth.NewSigner(login, "", k, opts...)
	if err != nil {
		e.t.Fatal(err)
	}
	return s
}

// startAgent runs a real agent with the simulated driver against an agent
// API server on the same database, registered with a join token, so that
// instances reach "running". Its traffic is checked against agentapi.yaml.
// It returns the agent's driver.
func (e *env) startAgent() *sim.Driver {
	e.t.Helper()
	return e.startNamedAgent("cn-1", false)
}

// startNamedAgent starts an agent like startAgent's, named name; with
// streams it serves the stream API on loopback (logs, archives, migrations).
// It returns the agent's driver, which fails the operations fail fails.
func (e *env) startNamedAgent(name string, streams bool, fail ...func(op, id string) error) *sim.Driver {
	e.t.Helper()
	_, agentSpec := specs(e.t)
	log := slog.New(slog.DiscardHandler)
	// Made before the agent's stop is registered, so removed after it: the
	// agent writes there until it stops.
	dataDir := e.t.TempDir()
	aapi := agentapi.New(e.st, log)
	asrv := httptest.NewServer(aapi.Handler())
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); aapi.Listen(ctx) }()
	e.t.Cleanup(func() { cancel(); wg.Wait(); asrv.Close() })

	tok := agentapi.NewToken()
	if err := e.st.CreateJoinToken(e.ctx, agentapi.HashToken(tok), time.Now().Add(time.Hour)); err != nil {
		e.t.Fatal(err)
	}
	scfg := sim.Config{StartDelay: 20 * time.Millisecond, StopDelay: 20 * time.Millisecond}
	if len(fail) > 0 {
		scfg.Fail = fail[0]
	}
	drv, err := sim.New(scfg)
	if err != nil {
		e.t.Fatal(err)
	}
	cfg := agent.Config{Name: name, DataDir: dataDir, APIURL: asrv.URL, JoinToken: tok, Driver: drv,
		MemoryMiB: 64 << 10, DiskMiB: 4 << 20, VCPUs: 32, HeartbeatInterval: time.Second, Logger: log,
		WatchInterval: 200 * time.Millisecond, PollWait: 10 * time.Second, StopTimeout: time.Second,
		HTTPClient: &http.Client{Transport: &validatingTransport{t: e.t, spec: agentSpec, base: http.DefaultTransport}}}
	if streams {
		// Its stream server asks for a certificate this control plane
		// does not sign (501, plain HTTP on loopback follows): not checked.
		cfg.Address, cfg.HTTPClient = "127.0.0.1:0", nil
	}
	go func() {
		defer wg.Done()
		if err := agent.Run(ctx, cfg); err != nil && ctx.Err() == nil {
			e.t.Errorf("agent: %v", err)
		}
	}()
	deadline := time.Now().Add(15 * time.Second)
	for {
		nodes, err := e.st.ListNodes(e.ctx)
		if err != nil {
			e.t.Fatal(err)
		}
		found := false
		for _, n := range nodes {
			found = found || n.Name == name && (!streams || n.Address != "")
		}
		if found {
			break
		}
		if time.Now().After(deadline) {
			e.t.Fatal("the agent did not register")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := e.svc.Placer.Reload(e.ctx); err != nil {
		e.t.Fatal(err)
	}
	return drv
}

// request describes one CloudAPI call.
type request struct {
	method, path string
	body         any               // marshalled as JSON unless []byte or string
	header       map[string]string // set before signing
	signer       *auth.Signer      // nil: the env's signer
	unsigned     bool
}

// do sends r and returns the response with its body read.
func (e *env) do(r request) (*http.Response, []byte) {
	e.t.Helper()
	var body io.Reader
	switch b := r.body.(type) {
	case nil:
	case []byte:
		body = bytes.NewReader(b)
	case string:
		body = strings.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			e.t.Fatal(err)
		}
		body = bytes.NewReader(j)
	}
	req, err := http.NewRequestWithContext(e.ctx, r.method, e.srv.URL+r.path, body)
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range r.header {
		req.Header.Set(k, v)
	}
	if !r.unsigned {
		s := r.signer
		if s == nil {
			s = e.signer
		}
		if err := s.Sign(req); err != nil {
			e.t.Fatal(err)
		}
	}
	resp, err := e.client.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", r.method, r.path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return resp, b
}

// get, post, put and del are shorthands for alice's requests.
func (e *env) get(path string) (*http.Response, []byte) {
	e.t.Helper()
	return e.do(request{method: "GET", path: path})
}

func (e *env) post(path string, body any) (*http.Response, []byte) {
	e.t.Helper()
	return e.do(request{method: "POST", path: path, body: body})
}

// decode unmarshals b into a value of type T, failing the test otherwise.
func decode[T any](t testing.TB, b []byte) T {
	t.Helper()
	var v T
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("decoding %.300s: %v", b, err)
	}
	return v
}

// wantStatus fails unless resp has the status.
func wantStatus(t testing.TB, resp *http.Response, body []byte, status int) {
	t.Helper()
	if resp.StatusCode != status {
		t.Fatalf("%s %s: status %d, want %d; body %.500s", resp.Request.Method, resp.Request.URL.RequestURI(),
			resp.StatusCode, status, body)
	}
}

// wantError fails unless resp is status with exactly {code,message}.
func wantError(t testing.TB, resp *http.Response, body []byte, status int, code, message string) {
	t.Helper()
	wantStatus(t, resp, body, status)
	var got map[string]any
	if err := json.Unmarshal(body, &got); err != nil {
		t.Fatalf("error body %q is not JSON: %v", body, err)
	}
	want := map[string]any{"code": code, "message": message}
	if len(got) != 2 || got["code"] != want["code"] || got["message"] != want["message"] {
		t.Errorf("%s %s: error body %s, want %v", resp.Request.Method, resp.Request.URL.RequestURI(), body, want)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("error Content-Type %q", ct)
	}
}

// createMachine makes a machine for alice and returns its JSON.
func (e *env) createMachine(name string, extra map[string]any) map[string]any {
	e.t.Helper()
	body := map[string]any{"name": name, "image": e.image.ID, "package": "g1-nano-256M"}
	for k, v := range extra {
		body[k] = v
	}
	resp, b := e.post("/alice/machines", body)
	wantStatus(e.t, resp, b, http.StatusCreated)
	return decode[map[string]any](e.t, b)
}

// waitState polls GetMachine until the machine's state is want.
func (e *env) waitState(id, want string) map[string]any {
	e.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	var last map[string]any
	for time.Now().Before(deadline) {
		resp, b := e.get("/alice/machines/" + id)
		if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusGone {
			e.t.Fatalf("GetMachine: %d %s", resp.StatusCode, b)
		}
		last = decode[map[string]any](e.t, b)
		if last["state"] == want {
			return last
		}
		time.Sleep(50 * time.Millisecond)
	}
	e.t.Fatalf("machine %s stayed %v, want %s", id, last["state"], want)
	return nil
}
