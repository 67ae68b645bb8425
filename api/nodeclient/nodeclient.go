// Package nodeclient is the control plane's client to the stream servers of
// the agents (api/agentapi/wire/streams.go documents the protocol): logs,
// attach, exec, wait, top and stats of an instance, on the node that runs it.
//
// A Node is an id, an address and a bearer token, from the nodes table
// (store.NodeStream). With UseTLS the client speaks TLS and accepts only a
// certificate the node CA signed for that node's id (wire.NodeCertName). Plain requests share one keep-alive transport, so a
// replica keeps a few warm connections per node; attach and exec start are
// HTTP/1.1 upgrades on a fresh connection each (net.Dial, a hand-written
// request, http.ReadResponse) that return the raw connection as a Stream.
// A Stream hands the bytes that arrived with the 101 over first and then
// reads the TCP connection itself, so io.Copy between two TCP connections can
// use splice(2) and never copy through user space.
//
// Imports: standard library, api/agentapi/wire and api/errdefs only.
package nodeclient

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"flotilla/api/agentapi/wire"
	"flotilla/api/errdefs"
)

// Node locates and authorizes a node's stream server.
type Node struct {
	// ID is the node's id: with TLS (UseTLS), the server's certificate must
	// name it (wire.NodeCertName).
	ID      string
	Address string // host:port
	Token   string
}

// Client calls agents' stream servers. It is safe for concurrent use.
type Client struct {
	hc     *http.Client
	dialer net.Dialer

	tlsMu sync.Mutex
	roots *x509.CertPool          // the node CA, when stream servers speak TLS
	tlsHC map[string]*http.Client // by node id: each verifies its node's name
}

// UseTLS makes the client speak TLS to stream servers and accept only
// certificates that roots signed for the node it means to reach.
func (c *Client) UseTLS(roots *x509.CertPool) {
	c.tlsMu.Lock()
	defer c.tlsMu.Unlock()
	c.roots, c.tlsHC = roots, map[string]*http.Client{}
}

// tlsConfig returns the TLS configuration for reaching n, or nil without TLS.
func (c *Client) tlsConfig(n Node) *tls.Config {
	c.tlsMu.Lock()
	defer c.tlsMu.Unlock()
	if c.roots == nil {
		return nil
	}
	return &tls.Config{RootCAs: c.roots, ServerName: wire.NodeCertName(n.ID), MinVersion: tls.VersionTLS12}
}

// httpFor returns the HTTP client and URL scheme for reaching n.
func (c *Client) httpFor(n Node) (*http.Client, string) {
	cfg := c.tlsConfig(n)
	if cfg == nil {
		return c.hc, "http://"
	}
	c.tlsMu.Lock()
	defer c.tlsMu.Unlock()
	hc, ok := c.tlsHC[n.ID]
	if !ok {
		hc = &http.Client{Transport: &http.Transport{
			DialContext:         c.dialer.DialContext,
			TLSClientConfig:     cfg,
			MaxIdleConnsPerHost: 16,
			IdleConnTimeout:     90 * time.Second,
			ForceAttemptHTTP2:   false,
		}}
		c.tlsHC[n.ID] = hc
	}
	return hc, "https://"
}

// New returns a client with its own connection pool.
func New() *Client {
	c := &Client{dialer: net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}}
	c.hc = &http.Client{Transport: &http.Transport{
		DialContext:         c.dialer.DialContext,
		MaxIdleConnsPerHost: 16,
		IdleConnTimeout:     90 * time.Second,
		ForceAttemptHTTP2:   false,
	}}
	return c
}

// Close drops idle connections.
func (c *Client) Close() {
	c.hc.CloseIdleConnections()
	c.tlsMu.Lock()
	defer c.tlsMu.Unlock()
	for _, hc := range c.tlsHC {
		hc.CloseIdleConnections()
	}
}

func (n Node) check() error {
	if n.Address == "" {
		return errdefs.New(errdefs.NotImplemented, "the node of this instance serves no process streams (its agent runs without an address)")
	}
	return nil
}

func instancePath(id string, parts ...string) string {
	p := wire.StreamPathPrefix + "/instances/" + url.PathEscape(id)
	for _, s := range parts {
		p += "/" + url.PathEscape(s)
	}
	return p
}

// do sends a plain request and returns the response when it is a success;
// otherwise the agent's error as an *errdefs.Error.
func (c *Client) do(ctx context.Context, n Node, method, path string, q url.Values, body any) (*http.Response, error) {
	if err := n.check(); err != nil {
		return nil, err
	}
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, errdefs.Wrap(errdefs.Internal, err, "encode request")
		}
		rd = bytes.NewReader(b)
	}
	hc, scheme := c.httpFor(n)
	u := scheme + n.Address + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return nil, errdefs.Wrap(errdefs.Internal, err, "build request to node %s", n.Address)
	}
	req.Header.Set("Authorization", "Bearer "+n.Token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := hc.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, errdefs.Wrap(errdefs.Unavailable, err, "request to the node cancelled")
		}
		return nil, errdefs.Wrap(errdefs.Unavailable, err, "cannot reach the node's stream server at %s", n.Address)
	}
	if resp.StatusCode >= 300 {
		defer resp.Body.Close()
		return nil, decodeError(resp)
	}
	return resp, nil
}

func (c *Client) doJSON(ctx context.Context, n Node, method, path string, q url.Values, body, out any) error {
	resp, err := c.do(ctx, n, method, path, q, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		io.Copy(io.Discard, resp.Body)
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return errdefs.Wrap(errdefs.Unavailable, err, "bad answer from the node")
	}
	return nil
}

// decodeError turns an agent's {"code","message"} into an *errdefs.Error.
func decodeError(resp *http.Response) error {
	var e struct{ Code, Message string }
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if json.Unmarshal(b, &e) == nil && e.Code != "" {
		return errdefs.New(errdefs.Code(e.Code), "%s", e.Message)
	}
	code := errdefs.CodeForStatus(resp.StatusCode)
	return errdefs.Wrap(code, fmt.Errorf("%s: %s", resp.Status, bytes.TrimSpace(b)), "the node answered %s", resp.Status)
}

// LogsQuery selects log lines.
type LogsQuery struct {
	Stdout, Stderr bool
	Follow         bool
	Timestamps     bool
	// Raw asks for bare lines instead of stdcopy frames (for a tty).
	Raw          bool
	Since, Until time.Time
	Tail         int // <0 = all
}

func streamTime(t time.Time) string {
	return strconv.FormatInt(t.Unix(), 10) + "." + fmt.Sprintf("%09d", t.Nanosecond())
}

// Logs opens an instance's log stream (framed unless q.Raw). The caller
// closes it; with Follow it ends when the process has exited.
func (c *Client) Logs(ctx context.Context, n Node, id string, q LogsQuery) (io.ReadCloser, error) {
	v := url.Values{}
	set := func(k string, b bool) {
		if b {
			v.Set(k, "1")
		}
	}
	set("stdout", q.Stdout)
	set("stderr", q.Stderr)
	set("follow", q.Follow)
	set("timestamps", q.Timestamps)
	set("raw", q.Raw)
	if !q.Since.IsZero() {
		v.Set("since", streamTime(q.Since))
	}
	if !q.Until.IsZero() {
		v.Set("until", streamTime(q.Until))
	}
	if q.Tail >= 0 {
		v.Set("tail", strconv.Itoa(q.Tail))
	}
	resp, err := c.do(ctx, n, http.MethodGet, instancePath(id, "logs"), v, nil)
	if err != nil {
		return nil, err
	}
	return resp.Body, nil
}

// Stream is an upgraded connection to a process's stdio: writes are its
// stdin, CloseWrite closes stdin, reads are its output (stdcopy frames
// without a tty, raw with one) until the process is done.
type Stream struct {
	conn     net.Conn
	buffered []byte // what arrived with the 101
}

// Read reads output.
func (s *Stream) Read(p []byte) (int, error) {
	if len(s.buffered) > 0 {
		n := copy(p, s.buffered)
		s.buffered = s.buffered[n:]
		return n, nil
	}
	return s.conn.Read(p)
}

// WriteTo copies the output to w, letting w read the connection directly
// (splice between TCP connections).
func (s *Stream) WriteTo(w io.Writer) (int64, error) {
	var total int64
	if len(s.buffered) > 0 {
		n, err := w.Write(s.buffered)
		total += int64(n)
		s.buffered = nil
		if err != nil {
			return total, err
		}
	}
	n, err := io.Copy(w, s.conn)
	return total + n, err
}

// Write writes stdin.
func (s *Stream) Write(p []byte) (int, error) { return s.conn.Write(p) }

// ReadFrom copies r to stdin (splice when r is a TCP connection).
func (s *Stream) ReadFrom(r io.Reader) (int64, error) { return io.Copy(s.conn, r) }

// CloseWrite half-closes the connection: the process sees stdin end.
func (s *Stream) CloseWrite() error {
	if cw, ok := s.conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// Close closes the connection.
func (s *Stream) Close() error { return s.conn.Close() }

// Conn returns the underlying connection (deadlines, addresses).
func (s *Stream) Conn() net.Conn { return s.conn }

// upgrade opens a connection and upgrades it with a POST of path.
func (c *Client) upgrade(ctx context.Context, n Node, path string, q url.Values) (*Stream, error) {
	if err := n.check(); err != nil {
		return nil, err
	}
	conn, err := c.dialer.DialContext(ctx, "tcp", n.Address)
	if err != nil {
		return nil, errdefs.Wrap(errdefs.Unavailable, err, "cannot reach the node's stream server at %s", n.Address)
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
	}
	// Until the 101 has arrived, the request's context bounds the dance.
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	defer stop()
	if cfg := c.tlsConfig(n); cfg != nil {
		tc := tls.Client(conn, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			conn.Close()
			return nil, errdefs.Wrap(errdefs.Unavailable, err, "TLS with the node's stream server at %s", n.Address)
		}
		conn = tc
	}
	target := path
	if len(q) > 0 {
		target += "?" + q.Encode()
	}
	req := "POST " + target + " HTTP/1.1\r\nHost: " + n.Address + "\r\nAuthorization: Bearer " + n.Token +
		"\r\nConnection: Upgrade\r\nUpgrade: tcp\r\nContent-Length: 0\r\n\r\n"
	if _, err := io.WriteString(conn, req); err != nil {
		conn.Close()
		return nil, errdefs.Wrap(errdefs.Unavailable, err, "send upgrade to %s", n.Address)
	}
	br := bufio.NewReaderSize(conn, 4096)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		conn.Close()
		return nil, errdefs.Wrap(errdefs.Unavailable, err, "read upgrade answer from %s", n.Address)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		err := decodeError(resp)
		conn.Close()
		return nil, err
	}
	if !stop() {
		conn.Close()
		return nil, errdefs.Wrap(errdefs.Unavailable, ctx.Err(), "upgrade cancelled")
	}
	conn.SetDeadline(time.Time{})
	s := &Stream{conn: conn}
	if k := br.Buffered(); k > 0 {
		b, _ := br.Peek(k)
		s.buffered = bytes.Clone(b)
	}
	return s, nil
}

// AttachOptions select the streams of an attach.
type AttachOptions struct {
	Stdin, Stdout, Stderr bool
}

func flags(kv ...any) url.Values {
	v := url.Values{}
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i+1].(bool) {
			v.Set(kv[i].(string), "1")
		}
	}
	return v
}

// Attach joins an instance's stdio. It returns as soon as the agent has
// upgraded (before the process runs, if it has not started yet).
func (c *Client) Attach(ctx context.Context, n Node, id string, o AttachOptions) (*Stream, error) {
	return c.upgrade(ctx, n, instancePath(id, "attach"), flags("stdin", o.Stdin, "stdout", o.Stdout, "stderr", o.Stderr))
}

func sizeQuery(h, w uint16) url.Values {
	return url.Values{"h": {strconv.Itoa(int(h))}, "w": {strconv.Itoa(int(w))}}
}

// Resize sets an instance's tty size.
func (c *Client) Resize(ctx context.Context, n Node, id string, h, w uint16) error {
	return c.doJSON(ctx, n, http.MethodPost, instancePath(id, "resize"), sizeQuery(h, w), nil, nil)
}

// Wait blocks until the instance's main process meets condition
// ("not-running" or "next-exit") and returns its exit.
func (c *Client) Wait(ctx context.Context, n Node, id, condition string) (wire.WaitResult, error) {
	return c.WaitAfter(ctx, n, id, condition, time.Time{})
}

// WaitAfter is Wait for next-exit where the caller knows the start of the
// run it has seen last (zero: none): a run that started after it and has
// already ended answers at once, so a start that overtakes the wait (the
// docker CLI starts once the wait's headers are back) is not missed.
func (c *Client) WaitAfter(ctx context.Context, n Node, id, condition string, lastStart time.Time) (wire.WaitResult, error) {
	var res wire.WaitResult
	q := url.Values{"condition": {condition}}
	if condition == "next-exit" {
		q.Set("after", "0")
		if !lastStart.IsZero() {
			q.Set("after", streamTime(lastStart))
		}
	}
	err := c.doJSON(ctx, n, http.MethodGet, instancePath(id, "wait"), q, nil, &res)
	return res, err
}

// Kill delivers signal sig (a Linux signal number) to an instance's main
// process; with stop the instance is marked stopped first, so that its
// restart policy leaves it stopped. Conflict when it is not running.
func (c *Client) Kill(ctx context.Context, n Node, id string, sig int, stop bool) error {
	q := flags("stop", stop)
	q.Set("signal", strconv.Itoa(sig))
	return c.doJSON(ctx, n, http.MethodPost, instancePath(id, "kill"), q, nil, nil)
}

// Stop stops an instance's main process: signal sig (0: its stop signal),
// then SIGKILL after grace. It returns when the process has ended.
func (c *Client) Stop(ctx context.Context, n Node, id string, sig int, grace time.Duration) error {
	q := url.Values{"signal": {strconv.Itoa(sig)}, "t": {strconv.FormatInt(int64(grace/time.Millisecond), 10) + "ms"}}
	return c.doJSON(ctx, n, http.MethodPost, instancePath(id, "stop"), q, nil, nil)
}

// Top lists an instance's processes.
func (c *Client) Top(ctx context.Context, n Node, id, psArgs string) (wire.TopResult, error) {
	var q url.Values
	if psArgs != "" {
		q = url.Values{"ps_args": {psArgs}}
	}
	var res wire.TopResult
	err := c.doJSON(ctx, n, http.MethodGet, instancePath(id, "top"), q, nil, &res)
	return res, err
}

// StatsStream reads samples; Close ends it.
type StatsStream struct {
	body io.ReadCloser
	dec  *json.Decoder
}

// Next returns the next sample, or io.EOF at the end of the stream.
func (s *StatsStream) Next() (wire.StatsSample, error) {
	var smp wire.StatsSample
	err := s.dec.Decode(&smp)
	return smp, err
}

// Close ends the stream.
func (s *StatsStream) Close() error { return s.body.Close() }

// Stats opens an instance's resource usage samples: one, or with stream
// one per interval.
func (c *Client) Stats(ctx context.Context, n Node, id string, stream bool, interval time.Duration) (*StatsStream, error) {
	q := url.Values{}
	if stream {
		q.Set("stream", "1")
	}
	if interval > 0 {
		q.Set("interval", interval.String())
	}
	resp, err := c.do(ctx, n, http.MethodGet, instancePath(id, "stats"), q, nil)
	if err != nil {
		return nil, err
	}
	return &StatsStream{body: resp.Body, dec: json.NewDecoder(resp.Body)}, nil
}

// ExecCreate prepares a process in a running instance and returns the
// agent's id for it.
func (c *Client) ExecCreate(ctx context.Context, n Node, id string, cfg wire.ExecCreate) (string, error) {
	var res wire.ExecCreated
	if err := c.doJSON(ctx, n, http.MethodPost, instancePath(id, "exec"), nil, cfg, &res); err != nil {
		return "", err
	}
	return res.ID, nil
}

// ExecStart starts an exec attached; h and w, when not zero, size its tty
// first. The stream ends once the exit code can be read with ExecInspect.
func (c *Client) ExecStart(ctx context.Context, n Node, id, execID string, h, w uint16) (*Stream, error) {
	var q url.Values
	if h > 0 && w > 0 {
		q = sizeQuery(h, w)
	}
	return c.upgrade(ctx, n, instancePath(id, "exec", execID, "start"), q)
}

// ExecStartDetached starts an exec without I/O.
func (c *Client) ExecStartDetached(ctx context.Context, n Node, id, execID string) error {
	return c.doJSON(ctx, n, http.MethodPost, instancePath(id, "exec", execID, "start"), url.Values{"detach": {"1"}}, nil, nil)
}

// ExecResize sets an exec's tty size.
func (c *Client) ExecResize(ctx context.Context, n Node, id, execID string, h, w uint16) error {
	return c.doJSON(ctx, n, http.MethodPost, instancePath(id, "exec", execID, "resize"), sizeQuery(h, w), nil, nil)
}

// ExecInspect returns the state of an exec.
func (c *Client) ExecInspect(ctx context.Context, n Node, id, execID string) (wire.ExecInfo, error) {
	var res wire.ExecInfo
	err := c.doJSON(ctx, n, http.MethodGet, instancePath(id, "exec", execID), nil, nil, &res)
	return res, err
}
