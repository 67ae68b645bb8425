package dockerapi

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"flotilla/agent"
	"flotilla/agent/driver/sim"
	"flotilla/api/agentapi"
	"flotilla/api/auth"
	"flotilla/api/service"
	"flotilla/oci"
	"flotilla/store"
	"flotilla/store/storetest"

	"flotilla/internal/testenv"
)

func TestMain(m *testing.M) { os.Exit(storetest.Main(m)) }

// testEnv is a control plane with one simulated node and the Docker
// endpoint on 127.0.0.1 over TLS, and two accounts with client certificates.
type testEnv struct {
	t       *testing.T
	st      *store.Store
	svc     *service.Service
	srv     *httptest.Server
	host    string // tcp://127.0.0.1:port
	caFile  string
	certDir map[string]string // login -> DOCKER_CERT_PATH
	keys    map[string]ed25519.PrivateKey
	home    string
	docker  string
}

var busyboxConfig = []byte(`{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["sh"]},"rootfs":{"type":"layers","diff_ids":["sha256:1111111111111111111111111111111111111111111111111111111111111111"]},"history":[{"created":"2024-01-01T00:00:00Z","created_by":"ADD rootfs.tar /"},{"created":"2024-01-01T00:00:01Z","created_by":"CMD [\"sh\"]","empty_layer":true}]}`)

func newTestEnv(t *testing.T) *testEnv {
	t.Helper()
	docker := testenv.NeedCommand(t, "docker", "the docker CLI")
	st := storetest.New(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	log := testLogger()
	must(t, service.EnsurePackages(ctx, st))
	must(t, service.EnsureNetworks(ctx, st))
	_, err := st.CreateImage(ctx, store.Image{Name: "busybox", Version: "1.36", OS: "linux", Type: "zone-dataset",
		Public: true, Config: busyboxConfig, SizeBytes: 4 << 20, Description: "busybox"})
	must(t, err)
	svc, err := service.New(ctx, st, log, service.PlacerOptions{})
	must(t, err)

	// One simulated node behind a real agent API.
	apiURL, tok := startAgentAPI(t, ctx, st, log, nil)
	drv, err := sim.New(sim.Config{})
	must(t, err)
	startNode(t, ctx, svc, agent.Config{Name: "sim-1", DataDir: t.TempDir(), APIURL: apiURL, JoinToken: tok,
		Address: "127.0.0.1:0", Driver: drv, MemoryMiB: 65536, DiskMiB: 1 << 20, VCPUs: 32,
		WatchInterval: 200 * time.Millisecond, Logger: log})
	return startDockerEndpoint(t, ctx, svc, log, docker, 15*time.Second)
}

func testLogger() *slog.Logger {
	if os.Getenv("DOCKERAPI_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// startAgentAPI serves the agent API (and, with blobs, its image registry)
// on 127.0.0.1 and returns its URL and a join token.
func startAgentAPI(t *testing.T, ctx context.Context, st *store.Store, log *slog.Logger, blobs oci.BlobStore) (string, string) {
	t.Helper()
	aapi := agentapi.New(st, log)
	al, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	if blobs != nil {
		aapi.SetBlobs(blobs)
		aapi.ImageRegistry = al.Addr().String()
	}
	as := &http.Server{Handler: aapi.Handler()}
	go as.Serve(al)
	go aapi.Listen(ctx)
	t.Cleanup(func() { as.Close() })
	tok := agentapi.NewToken()
	must(t, st.CreateJoinToken(ctx, agentapi.HashToken(tok), time.Now().Add(time.Hour)))
	return "http://" + al.Addr().String(), tok
}

// startNode runs an agent until the test ends and waits until its node is
// registered and in the scheduler's snapshot.
func startNode(t *testing.T, ctx context.Context, svc *service.Service, cfg agent.Config) {
	t.Helper()
	cfg.HeartbeatInterval, cfg.PollWait = time.Second, 5*time.Second
	actx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		agent.Run(actx, cfg)
	}()
	t.Cleanup(func() { cancel(); <-done })
	deadline := time.Now().Add(20 * time.Second)
	for {
		nodes, err := svc.Store.ListNodes(ctx)
		if err == nil && len(nodes) == 1 && nodes[0].State == "running" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("node %s did not register", cfg.Name)
		}
		time.Sleep(50 * time.Millisecond)
	}
	must(t, svc.Placer.Reload(ctx))
}

// startDockerEndpoint serves the Docker API over TLS with a dev CA and adds
// the accounts alice and bob with client certificates.
func startDockerEndpoint(t *testing.T, ctx context.Context, svc *service.Service, log *slog.Logger, docker string, converge time.Duration) *testEnv {
	t.Helper()
	ca, err := auth.NewDevCA(t.TempDir())
	must(t, err)
	tlsCfg, err := ca.TLSConfig()
	must(t, err)
	caPEM, err := os.ReadFile(ca.CAFile)
	must(t, err)
	api := New(svc, log, Config{Datacenter: "test-dc", CAPEM: caPEM, ConvergeTimeout: converge})
	hs := httptest.NewUnstartedServer(api.Handler())
	hs.TLS = tlsCfg
	hs.StartTLS()
	t.Cleanup(hs.Close)

	e := &testEnv{t: t, st: svc.Store, svc: svc, srv: hs, host: "tcp://" + hs.Listener.Addr().String(), caFile: ca.CAFile,
		certDir: map[string]string{}, keys: map[string]ed25519.PrivateKey{}, home: t.TempDir(), docker: docker}
	for _, login := range []string{"alice", "bob"} {
		e.addAccount(ctx, login, caPEM)
	}
	return e
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func (e *testEnv) addAccount(ctx context.Context, login string, caPEM []byte) {
	t := e.t
	acct, err := e.st.CreateAccount(ctx, store.Account{Login: login, Email: login + "@example.com"})
	must(t, err)
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	must(t, err)
	pub, err := ssh.NewPublicKey(priv.Public())
	must(t, err)
	_, err = e.st.CreateKey(ctx, store.Key{OwnerID: acct.ID, Name: "id_ed25519", FingerprintMD5: auth.FingerprintMD5(pub),
		FingerprintSHA256: ssh.FingerprintSHA256(pub), Text: strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pub)))})
	must(t, err)
	dir := t.TempDir()
	cert, err := auth.MakeClientCert(login, priv)
	must(t, err)
	keyPEM, err := auth.MarshalPrivateKey(priv)
	must(t, err)
	must(t, os.WriteFile(filepath.Join(dir, "cert.pem"), cert, 0o644))
	must(t, os.WriteFile(filepath.Join(dir, "key.pem"), keyPEM, 0o600))
	must(t, os.WriteFile(filepath.Join(dir, "ca.pem"), caPEM, 0o644))
	e.certDir[login] = dir
	e.keys[login] = priv
}

// run runs the docker CLI as login and returns stdout, stderr and the exit code.
func (e *testEnv) run(login string, args ...string) (string, string, int) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.docker, args...)
	cmd.Env = []string{"HOME=" + e.home, "PATH=" + os.Getenv("PATH"), "DOCKER_HOST=" + e.host, "DOCKER_TLS_VERIFY=1",
		"DOCKER_CERT_PATH=" + e.certDir[login], "DOCKER_CONFIG=" + filepath.Join(e.home, ".docker")}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		e.t.Fatalf("docker %v: %v", args, err)
	}
	return out.String(), errb.String(), code
}

// ok runs the docker CLI and fails the test unless it exits 0.
func (e *testEnv) ok(login string, args ...string) string {
	e.t.Helper()
	out, errOut, code := e.run(login, args...)
	if code != 0 {
		e.t.Fatalf("docker %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

// fails runs the docker CLI, expects exit code want and stderr containing msg.
func (e *testEnv) fails(login string, want int, msg string, args ...string) {
	e.t.Helper()
	out, errOut, code := e.run(login, args...)
	if code != want || !strings.Contains(errOut, msg) {
		e.t.Fatalf("docker %s: exit %d (want %d)\nstdout: %s\nstderr: %s\nwant stderr containing %q", strings.Join(args, " "), code, want, out, errOut, msg)
	}
}

// client returns an HTTPS client presenting login's certificate ("" = none).
func (e *testEnv) client(login string) *http.Client {
	pool := x509.NewCertPool()
	b, _ := os.ReadFile(e.caFile)
	pool.AppendCertsFromPEM(b)
	cfg := &tls.Config{RootCAs: pool}
	if login != "" {
		pair, err := tls.LoadX509KeyPair(filepath.Join(e.certDir[login], "cert.pem"), filepath.Join(e.certDir[login], "key.pem"))
		must(e.t, err)
		cfg.Certificates = []tls.Certificate{pair}
	}
	return &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
}

// with returns e reporting to t (a subtest).
func (e *testEnv) with(t *testing.T) *testEnv {
	c := *e
	c.t = t
	return &c
}
