package agent

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"flotilla/api/agentapi/wire"
	"flotilla/api/errdefs"
	"flotilla/internal/atomicfile"
)

// ControlPlane is what the agent needs from the control plane. Client
// implements it over the agent API; tests and in-process setups may supply
// their own.
type ControlPlane interface {
	// Register makes sure the node is registered and returns its id.
	Register(ctx context.Context, req wire.RegisterRequest) (nodeID string, err error)
	// Heartbeat reports that the node is alive.
	Heartbeat(ctx context.Context, hb wire.Heartbeat) error
	// Assignments returns the assignments changed after revision since (all
	// of them, Full, for since 0), waiting up to wait for a change.
	Assignments(ctx context.Context, since int64, wait time.Duration) (wire.Assignments, error)
	// ReportStatus reports the observed status of one instance.
	ReportStatus(ctx context.Context, id string, st wire.InstanceStatus) error
}

// ClientConfig configures a Client.
type ClientConfig struct {
	// BaseURL is the agent API's root, e.g. "https://cp.example:8443"
	// (the routes' /agent/v1 prefix is added by the client).
	BaseURL string
	// JoinToken authorizes registration. It may be empty when DataDir
	// already holds a credential.
	JoinToken string
	// DataDir holds node.json, the node's id and credential (mode 0600).
	DataDir string
	// HTTPClient defaults to a client with keep-alive connections sized for
	// concurrent status reports.
	HTTPClient *http.Client
	Logger     *slog.Logger
	// Attempts is how many times a call is tried when the network fails or
	// the server answers 5xx or 429 (default 5). All agent API calls are
	// idempotent.
	Attempts int
	// RetryBase and RetryMax bound the jittered exponential backoff between
	// attempts (defaults 100ms and 5s).
	RetryBase, RetryMax time.Duration
	// RequestTimeout bounds each request (default 15s); a long poll gets
	// its wait on top.
	RequestTimeout time.Duration
}

// nodeFile is the content of DataDir/node.json.
type nodeFile struct {
	Name       string `json:"name"`
	NodeID     string `json:"node_id"`
	Credential string `json:"credential"`
	APIURL     string `json:"api_url"`
}

// Client is the HTTP client of the agent API. It is safe for concurrent use.
type Client struct {
	cfg  ClientConfig
	base *url.URL
	http *http.Client
	log  *slog.Logger

	mu      sync.Mutex
	node    nodeFile
	lastReq *wire.RegisterRequest // to register again when the credential is rejected
}

var _ ControlPlane = (*Client)(nil)

// NodeFileName is the name of the credential file in the data dir.
const NodeFileName = "node.json"

// NewClient returns a client for the agent API at cfg.BaseURL. It loads a
// credential saved in cfg.DataDir by an earlier run, if any. It returns
// errdefs Invalid for a bad URL or an unreadable credential file.
func NewClient(cfg ClientConfig) (*Client, error) {
	if cfg.BaseURL == "" {
		return nil, errdefs.InvalidArgument("agent: no agent API URL (set FLOTILLA_AGENT_API)")
	}
	u, err := url.Parse(strings.TrimRight(cfg.BaseURL, "/"))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, errdefs.InvalidArgument("agent: agent API URL %q is not an http(s) URL", cfg.BaseURL)
	}
	if cfg.DataDir == "" {
		return nil, errdefs.InvalidArgument("agent: no data dir for the node credential")
	}
	if cfg.Attempts <= 0 {
		cfg.Attempts = 5
	}
	if cfg.RetryBase <= 0 {
		cfg.RetryBase = 100 * time.Millisecond
	}
	if cfg.RetryMax <= 0 {
		cfg.RetryMax = 5 * time.Second
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = 15 * time.Second
	}
	c := &Client{cfg: cfg, base: u, http: cfg.HTTPClient, log: cfg.Logger}
	if c.http == nil {
		c.http = NewHTTPClient()
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	b, err := os.ReadFile(filepath.Join(cfg.DataDir, NodeFileName))
	switch {
	case err == nil:
		if err := json.Unmarshal(b, &c.node); err != nil {
			return nil, errdefs.Wrap(errdefs.Invalid, err, "agent: %s is corrupt; remove it to register again", filepath.Join(cfg.DataDir, NodeFileName))
		}
	case !os.IsNotExist(err):
		return nil, errdefs.Wrap(errdefs.Invalid, err, "agent: read node credential")
	}
	return c, nil
}

// NewHTTPClient returns an HTTP client whose transport keeps enough idle
// connections per host for an agent's concurrent reports.
func NewHTTPClient() *http.Client { return NewHTTPClientTLS(nil) }

// NewHTTPClientTLS is NewHTTPClient trusting roots (nil: the system's) for
// an agent API served in TLS.
func NewHTTPClientTLS(roots *x509.CertPool) *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConns = 256
	t.MaxIdleConnsPerHost = 64
	if roots != nil {
		t.TLSClientConfig = &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	}
	return &http.Client{Transport: t}
}

// LoadRootCAs reads a PEM file of CA certificates, such as the control
// plane's node CA (DATA/node-ca/ca.pem). It returns Invalid when the file
// is unreadable or holds no certificate.
func LoadRootCAs(file string) (*x509.CertPool, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, errdefs.Wrap(errdefs.Invalid, err, "agent: read the CA file %s", file)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, errdefs.InvalidArgument("agent: %s holds no PEM certificate", file)
	}
	return pool, nil
}

// NodeID returns the node's id, or "" before registration.
func (c *Client) NodeID() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.node.NodeID
}

// Register registers the node unless DataDir holds a credential for a node
// of the same name, and saves the credential. It returns errdefs
// Unauthorized when the join token is rejected, Invalid when there is
// neither a saved credential nor a join token.
func (c *Client) Register(ctx context.Context, req wire.RegisterRequest) (string, error) {
	c.mu.Lock()
	c.lastReq = &req
	node := c.node
	c.mu.Unlock()
	if node.Credential != "" && node.NodeID != "" && node.Name == req.Name {
		c.dropJoinToken()
		return node.NodeID, nil
	}
	return c.register(ctx, "")
}

// dropJoinToken forgets the join token once the node holds a credential:
// a token is good for one registration, and an agent that keeps none cannot
// leak it.
func (c *Client) dropJoinToken() {
	c.cfg.JoinToken = ""
}

// register registers with the join token and saves the new credential. If
// stale is not empty and the credential has changed since the caller saw it
// (another goroutine registered again meanwhile), it does nothing.
func (c *Client) register(ctx context.Context, stale string) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock() // serializes re-registrations
	if stale != "" && c.node.Credential != stale {
		return c.node.NodeID, nil
	}
	if c.lastReq == nil {
		return "", errdefs.New(errdefs.Unauthorized, "agent: node credential rejected and the node was never registered in this process")
	}
	if c.cfg.JoinToken == "" {
		if stale != "" {
			return "", errdefs.New(errdefs.Unauthorized, "agent: the control plane rejected node %s's credential (revoked?): "+
				"mint a token with `flotilla admin node join-token`, let the node register again with `flotilla admin node approve %s`, "+
				"and restart the agent with FLOTILLA_JOIN_TOKEN set", c.node.NodeID, c.lastReq.Name)
		}
		return "", errdefs.New(errdefs.Unauthorized, "agent: no usable node credential in %s and no join token to register with (set FLOTILLA_JOIN_TOKEN to a token from `flotilla admin node join-token`)", c.cfg.DataDir)
	}
	req := *c.lastReq
	req.CurrentCredential = c.node.Credential
	var resp wire.RegisterResponse
	err := c.do(ctx, http.MethodPost, "/agent/v1/nodes/register", nil, c.cfg.JoinToken, &req, &resp, 0)
	if errdefs.Is(err, errdefs.Unauthorized) || errdefs.Is(err, errdefs.Forbidden) {
		return "", errdefs.Wrap(errdefs.Unauthorized, err, "agent: the control plane at %s rejected the join token (check FLOTILLA_JOIN_TOKEN): %s", c.base, errdefs.MessageOf(err))
	}
	if err != nil {
		return "", err
	}
	c.dropJoinToken()
	if resp.NodeID == "" || resp.Credential == "" {
		return "", errdefs.New(errdefs.Internal, "agent: register answered without node id or credential")
	}
	node := nodeFile{Name: c.lastReq.Name, NodeID: resp.NodeID, Credential: resp.Credential, APIURL: c.base.String()}
	b, _ := json.MarshalIndent(node, "", "  ")
	if err := writeFileAtomic(filepath.Join(c.cfg.DataDir, NodeFileName), b, 0o600); err != nil {
		return "", errdefs.Wrap(errdefs.Internal, err, "agent: save node credential in %s", c.cfg.DataDir)
	}
	c.node = node
	c.log.Info("node registered", "node", node.NodeID, "name", node.Name)
	return node.NodeID, nil
}

// Heartbeat sends a heartbeat.
func (c *Client) Heartbeat(ctx context.Context, hb wire.Heartbeat) error {
	return c.nodeCall(ctx, http.MethodPost, func(node string) string {
		return "/agent/v1/nodes/" + url.PathEscape(node) + "/heartbeat"
	}, nil, hb, nil, 0)
}

// NodeCertificate asks the control plane to sign the node's stream server
// certificate for a PEM public key. It returns errdefs NotImplemented when
// the control plane signs none.
func (c *Client) NodeCertificate(ctx context.Context, publicKeyPEM string) (wire.CertificateResponse, error) {
	var out wire.CertificateResponse
	err := c.nodeCall(ctx, http.MethodPost, func(node string) string {
		return "/agent/v1/nodes/" + url.PathEscape(node) + "/certificate"
	}, nil, wire.CertificateRequest{PublicKey: publicKeyPEM}, &out, 0)
	return out, err
}

// Assignments long-polls the node's assignments.
func (c *Client) Assignments(ctx context.Context, since int64, wait time.Duration) (wire.Assignments, error) {
	q := url.Values{}
	q.Set("since", strconv.FormatInt(since, 10))
	q.Set("wait", strconv.Itoa(int(wait/time.Second)))
	var out wire.Assignments
	err := c.nodeCall(ctx, http.MethodGet, func(node string) string {
		return "/agent/v1/nodes/" + url.PathEscape(node) + "/assignments"
	}, q, nil, &out, wait)
	return out, err
}

// Names long-polls the table of names the node's resolver answers.
func (c *Client) Names(ctx context.Context, since string, wait time.Duration) (wire.Names, error) {
	q := url.Values{}
	q.Set("since", since)
	q.Set("wait", strconv.Itoa(int(wait/time.Second)))
	var out wire.Names
	err := c.nodeCall(ctx, http.MethodGet, func(node string) string {
		return "/agent/v1/nodes/" + url.PathEscape(node) + "/names"
	}, q, nil, &out, wait)
	return out, err
}

// Firewall long-polls the node's resolved firewall.
func (c *Client) Firewall(ctx context.Context, since string, wait time.Duration) (wire.Firewall, error) {
	q := url.Values{}
	q.Set("since", since)
	q.Set("wait", strconv.Itoa(int(wait/time.Second)))
	var out wire.Firewall
	err := c.nodeCall(ctx, http.MethodGet, func(node string) string {
		return "/agent/v1/nodes/" + url.PathEscape(node) + "/firewall"
	}, q, nil, &out, wait)
	return out, err
}

// ReportStatus reports one instance's status. It returns errdefs NotFound
// when the instance is not assigned to this node.
func (c *Client) ReportStatus(ctx context.Context, id string, st wire.InstanceStatus) error {
	return c.nodeCall(ctx, http.MethodPut, func(string) string {
		return "/agent/v1/instances/" + url.PathEscape(id) + "/status"
	}, nil, st, nil, 0)
}

// nodeCall makes a call with the node credential; when the credential is
// rejected (401) it registers again with the join token and retries once.
func (c *Client) nodeCall(ctx context.Context, method string, path func(node string) string, q url.Values, in, out any, wait time.Duration) error {
	for try := 0; ; try++ {
		c.mu.Lock()
		node := c.node
		c.mu.Unlock()
		if node.Credential == "" {
			return errdefs.New(errdefs.Unauthorized, "agent: node is not registered")
		}
		err := c.do(ctx, method, path(node.NodeID), q, node.Credential, in, out, wait)
		if !errdefs.Is(err, errdefs.Unauthorized) || try > 0 {
			return err
		}
		c.log.Warn("node credential rejected; registering again", "node", node.NodeID, "err", err)
		if _, rerr := c.register(ctx, node.Credential); rerr != nil {
			return rerr
		}
	}
}

// apiError is the agent API's error body.
type apiError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// do performs one call with retries on network errors, 5xx and 429.
func (c *Client) do(ctx context.Context, method, path string, q url.Values, token string, in, out any, wait time.Duration) error {
	var body []byte
	if in != nil {
		var err error
		if body, err = json.Marshal(in); err != nil {
			return errdefs.Wrap(errdefs.Internal, err, "agent: encode %s %s", method, path)
		}
	}
	u := *c.base
	u.Path = c.base.Path + path
	u.RawQuery = q.Encode()
	var err error
	for attempt := 1; ; attempt++ {
		var retryAfter time.Duration
		retryAfter, err = c.once(ctx, method, u.String(), token, body, out, wait)
		if err == nil || !retryable(err) || attempt >= c.cfg.Attempts || ctx.Err() != nil {
			break
		}
		d := c.backoff(attempt)
		if retryAfter > d {
			d = min(retryAfter, c.cfg.RetryMax)
		}
		c.log.Debug("agent API call failed; retrying", "method", method, "path", path, "attempt", attempt, "in", d, "err", err)
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return errdefs.Wrap(errdefs.Unavailable, ctx.Err(), "agent: %s %s: gave up: %v", method, path, err)
		case <-t.C:
		}
	}
	return err
}

// backoff returns a full-jitter exponential delay for the given attempt (1-based).
func (c *Client) backoff(attempt int) time.Duration {
	d := c.cfg.RetryBase << min(attempt-1, 20)
	if d <= 0 || d > c.cfg.RetryMax {
		d = c.cfg.RetryMax
	}
	return d/2 + rand.N(d/2+1)
}

// once performs a single request. It returns the server's Retry-After, if any.
func (c *Client) once(ctx context.Context, method, u, token string, body []byte, out any, wait time.Duration) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.RequestTimeout+wait)
	defer cancel()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return 0, errdefs.Wrap(errdefs.Internal, err, "agent: build request %s %s", method, u)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, &netError{errdefs.Wrap(errdefs.Unavailable, err, "agent: %s %s: control plane unreachable", method, u)}
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		if out == nil || resp.StatusCode == http.StatusNoContent {
			io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16)) // keep the connection reusable
			return 0, nil
		}
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			return 0, &netError{errdefs.Wrap(errdefs.Unavailable, err, "agent: %s %s: bad response body", method, u)}
		}
		return 0, nil
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	var ae apiError
	msg := strings.TrimSpace(string(b))
	if json.Unmarshal(b, &ae) == nil && ae.Message != "" {
		msg = ae.Message
	}
	if len(msg) > 300 {
		msg = msg[:300] + "..."
	}
	code := codeForStatus(resp.StatusCode)
	e := errdefs.New(code, "agent: %s %s: %s: %s", method, req.URL.Path, resp.Status, msg)
	var retryAfter time.Duration
	if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s > 0 {
		retryAfter = time.Duration(s) * time.Second
	}
	if resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests {
		return retryAfter, &netError{e}
	}
	return 0, e
}

// netError marks an error as worth retrying (network failure, 5xx, 429).
type netError struct{ err *errdefs.Error }

func (e *netError) Error() string { return e.err.Error() }
func (e *netError) Unwrap() error { return e.err }

func retryable(err error) bool {
	var ne *netError
	if !errors.As(err, &ne) {
		return false
	}
	// A request cut short by its caller's context is not retried.
	return !errors.Is(err, context.Canceled)
}

func codeForStatus(status int) errdefs.Code {
	switch status {
	case http.StatusBadRequest, http.StatusUnprocessableEntity:
		return errdefs.Invalid
	case http.StatusUnauthorized:
		return errdefs.Unauthorized
	case http.StatusForbidden:
		return errdefs.Forbidden
	case http.StatusNotFound:
		return errdefs.NotFound
	case http.StatusConflict:
		return errdefs.Conflict
	case http.StatusGone:
		return errdefs.Gone
	case http.StatusTooManyRequests:
		return errdefs.TooManyRequests
	case http.StatusNotImplemented:
		return errdefs.NotImplemented
	}
	if status >= 500 {
		return errdefs.Unavailable
	}
	return errdefs.Internal
}

// writeFileAtomic writes b to path through a rename, never leaving it torn.
func writeFileAtomic(path string, b []byte, perm os.FileMode) error {
	return atomicfile.WriteFile(path, b, perm, atomicfile.Options{})
}
