package agent

// The stream server: the agent's side of the stream API documented in
// api/agentapi/wire/streams.go. The control plane (api/nodeclient) calls it
// to reach the stdio, exit status, processes and resource usage of the
// node's instances; the Docker endpoint passes the bytes on to clients.
//
// Design:
//   - One HTTP/1.1 server per agent on Config.Address, authenticated by a
//     bearer token the agent generates once and keeps in its data dir
//     (StreamTokenFile); it reaches the control plane with the node's
//     registration, and only the control plane can read it back.
//   - Attach and exec start are HTTP upgrades: after "101 Switching
//     Protocols" the hijacked connection carries stdin one way and output
//     the other, output framed with Docker's stdcopy headers unless the
//     process has a tty, so no side re-frames anything.
//   - An attach answers 101 before the process runs (`docker run` attaches
//     before it starts the container) and then retries the driver's Attach
//     every few milliseconds until it succeeds; a run that started and ended
//     in between is answered from the logs instead, so short-lived
//     commands' output is not lost.
//   - Wait polls the driver's Inspect (the Driver interface has no exit
//     notification), quickly at first and more slowly as the run ages.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"flotilla/agent/driver"
	"flotilla/api/agentapi/wire"
	"flotilla/api/errdefs"
)

// StreamTokenFile is the name of the stream token's file in the data dir.
const StreamTokenFile = "stream-token"

// LoadStreamToken returns the stream token kept in dataDir, generating and
// saving (mode 0600) a new one the first time. It returns errdefs Internal
// when the file can be neither read nor written.
func LoadStreamToken(dataDir string) (string, error) {
	path := filepath.Join(dataDir, StreamTokenFile)
	if b, err := os.ReadFile(path); err == nil && len(strings.TrimSpace(string(b))) >= 32 {
		return strings.TrimSpace(string(b)), nil
	}
	var b [32]byte
	rand.Read(b[:])
	tok := hex.EncodeToString(b[:])
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return "", errdefs.Wrap(errdefs.Internal, err, "agent: create data dir %s", dataDir)
	}
	if err := writeFileAtomic(path, []byte(tok+"\n"), 0o600); err != nil {
		return "", errdefs.Wrap(errdefs.Internal, err, "agent: save stream token in %s", dataDir)
	}
	return tok, nil
}

// StreamServer serves the stream API for one driver. Create it with
// NewStreamServer; it is an http.Handler, and Serve runs it on a listener.
type StreamServer struct {
	drv   driver.Driver
	str   driver.Streamer    // nil when the driver has no process I/O
	stats driver.StatsReader // nil when the driver cannot sample usage
	arch  driver.Archiver    // nil when the driver cannot copy files
	token []byte
	log   *slog.Logger
	mux   *http.ServeMux

	// Spec, when set, returns the spec the agent has for an instance; the
	// server uses its Tty flag where no stream tells it.
	Spec func(id string) (driver.Spec, bool)
	// Poll is how often a waiting attach retries and a wait first looks at
	// the driver (default 10ms; waits slow down to 20 times that).
	Poll time.Duration
	// Exited, when set, is told that an instance's main process has ended
	// (seen by a wait, a stop or a kill), so that the exit is reported at
	// once rather than at the next watch.
	Exited func(id string)
	// StageDir is where disks that migrations copy to this node wait for
	// their instance (empty: the node takes no migrations).
	StageDir string
	// Migration carries out a migration's request on an instance of this
	// node: "release", "remove" or "discard" (see streams_migrate.go).
	Migration func(ctx context.Context, id, op string) error
	// VolumeRemoveWait is how long a volume removal waits for containers
	// that still mount the volume (default DefaultVolumeRemoveWait).
	VolumeRemoveWait time.Duration

	mu      sync.Mutex
	pending map[string]int // attaches waiting for their process, by instance
	execs   map[string]*execEntry
	conns   map[net.Conn]struct{} // hijacked, closed by Serve's end
	closed  bool
}

// NewStreamServer returns a server for drv that accepts requests bearing
// token. The driver's optional Streamer and StatsReader are used when it
// implements them; without them those routes answer NotImplemented.
func NewStreamServer(drv driver.Driver, token string, log *slog.Logger) *StreamServer {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &StreamServer{drv: drv, token: []byte(token), log: log, Poll: 10 * time.Millisecond,
		execs: map[string]*execEntry{}, conns: map[net.Conn]struct{}{}, pending: map[string]int{}}
	s.str, _ = drv.(driver.Streamer)
	s.stats, _ = drv.(driver.StatsReader)
	s.arch, _ = drv.(driver.Archiver)
	m := http.NewServeMux()
	p := wire.StreamPathPrefix + "/instances/{id}"
	m.HandleFunc("GET "+p+"/logs", s.handle(s.logs))
	m.HandleFunc("POST "+p+"/attach", s.handle(s.attach))
	m.HandleFunc("POST "+p+"/resize", s.handle(s.resize))
	m.HandleFunc("GET "+p+"/wait", s.handle(s.wait))
	m.HandleFunc("GET "+p+"/top", s.handle(s.top))
	m.HandleFunc("POST "+p+"/kill", s.handle(s.kill))
	m.HandleFunc("POST "+p+"/stop", s.handle(s.stop))
	m.HandleFunc("GET "+p+"/stats", s.handle(s.statsStream))
	m.HandleFunc("POST "+p+"/exec", s.handle(s.execCreate))
	m.HandleFunc("POST "+p+"/exec/{exec}/start", s.handle(s.execStart))
	m.HandleFunc("POST "+p+"/exec/{exec}/resize", s.handle(s.execResize))
	m.HandleFunc("GET "+p+"/exec/{exec}", s.handle(s.execInspect))
	m.HandleFunc("GET "+p+"/archive/stat", s.handle(s.archiveStat))
	m.HandleFunc("GET "+p+"/archive", s.handle(s.archiveGet))
	m.HandleFunc("PUT "+p+"/archive", s.handle(s.archivePut))
	s.diffRoutes(m, p)
	s.migrationRoutes(m, p)
	m.HandleFunc("POST "+wire.VolumeSharePath, s.handle(s.share))
	s.volumeRoutes(m)
	m.HandleFunc("/", s.handle(func(w http.ResponseWriter, r *http.Request) error {
		return errdefs.NotFoundf("no stream route %s %s", r.Method, r.URL.Path)
	}))
	s.mux = m
	return s
}

// ServeHTTP checks the bearer token and dispatches.
func (s *StreamServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if id, ok := shareRoute(r); ok {
		if !s.shareAuthorized(r, id) {
			writeStreamError(w, errdefs.New(errdefs.Unauthorized, "a volume share needs the volume's share token"))
			return
		}
		s.mux.ServeHTTP(w, r)
		return
	}
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || subtle.ConstantTimeCompare([]byte(tok), s.token) != 1 {
		writeStreamError(w, errdefs.New(errdefs.Unauthorized, "the stream API needs the node's stream token"))
		return
	}
	s.mux.ServeHTTP(w, r)
}

// Serve serves on ln until ctx ends, then closes the listener and every
// connection, hijacked ones included. It returns nil after ctx ends.
func (s *StreamServer) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second,
		BaseContext: func(net.Listener) context.Context { return ctx }}
	done := make(chan struct{})
	go func() {
		defer close(done)
		<-ctx.Done()
		srv.Close()
		s.mu.Lock()
		s.closed = true
		for c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
	}()
	err := srv.Serve(ln)
	<-done
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// listenStreams opens the stream server's listener on cfg.Address and sets
// the token to register with. A port of 0 is replaced by the one chosen, so
// that the address the control plane learns is reachable. Connections wait
// in the listener until serveStreams, after registration.
func (a *Agent) listenStreams() (net.Listener, error) {
	token, err := LoadStreamToken(a.cfg.DataDir)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", a.cfg.Address)
	if err != nil {
		return nil, errdefs.Wrap(errdefs.Unavailable, err, "agent: listen for streams on %s", a.cfg.Address)
	}
	if host, port, _ := net.SplitHostPort(a.cfg.Address); port == "0" {
		_, real, _ := net.SplitHostPort(ln.Addr().String())
		a.cfg.Address = net.JoinHostPort(host, real)
	}
	a.mu.Lock()
	a.streamToken, a.streamAddr = token, a.cfg.Address
	a.mu.Unlock()
	return ln, nil
}

// serveStreams serves the stream API on ln, in TLS with the node's
// certificate (streamTLS). Plain HTTP is refused off loopback. It takes
// ownership of ln.
func (a *Agent) serveStreams(ctx context.Context, ln net.Listener, nodeID string) (stop func(), err error) {
	tlsCfg, err := a.streamTLS(ctx, nodeID)
	if err != nil {
		ln.Close()
		return nil, err
	}
	if tlsCfg != nil {
		ln = tls.NewListener(ln, tlsCfg)
	} else if !IsLoopback(a.cfg.Address) {
		ln.Close()
		return nil, errdefs.New(errdefs.Invalid, "agent: the stream server on %s would serve plain HTTP off loopback, and the control plane "+
			"signs no node certificate: run the control plane with its node CA (flotilla serve keeps one in DATA/node-ca), "+
			"or serve streams on loopback (--stream-address 127.0.0.1:PORT)", a.cfg.Address)
	}
	srv := NewStreamServer(a.drv, a.streamToken, a.log)
	srv.Spec = func(id string) (driver.Spec, bool) {
		a.mu.Lock()
		defer a.mu.Unlock()
		x, ok := a.desired[id]
		return x.Spec, ok
	}
	// An exit seen by a stream is synced (and reported) now: `docker run`
	// returns at the exit, and `docker rm` right after must find it.
	srv.Exited = func(id string) { a.q.AddNow(id) }
	srv.StageDir = a.stageDir()
	srv.Migration = a.migrationOp
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(sctx, ln); err != nil {
			a.log.Error("stream server failed", "err", err)
		}
	}()
	a.mu.Lock()
	a.streams = srv
	a.mu.Unlock()
	a.log.Info("serving instance streams", "address", a.cfg.Address, "tls", tlsCfg != nil)
	return func() { cancel(); <-done }, nil
}

// Stream server certificate files in the data dir: the key (0600) and the
// certificate the control plane signed for it.
const (
	StreamCertFile = "stream-cert.pem"
	StreamKeyFile  = "stream-key.pem"
	// StreamCAFile is the node CA's certificate, which other nodes' stream
	// servers present (their volume shares).
	StreamCAFile = "stream-ca.pem"
)

// streamCertRenewal is how long before expiry the agent asks for a new
// stream server certificate.
const streamCertRenewal = 30 * 24 * time.Hour

// certifier is a ControlPlane that signs stream server certificates
// (Client does).
type certifier interface {
	NodeCertificate(ctx context.Context, publicKeyPEM string) (wire.CertificateResponse, error)
}

// streamTLS returns the stream server's TLS configuration: the certificate
// kept in the data dir while it names this node and is not about to expire,
// otherwise a new key and a certificate the control plane signs for it. It
// returns nil (plain HTTP) when the control plane signs no certificates.
func (a *Agent) streamTLS(ctx context.Context, nodeID string) (*tls.Config, error) {
	certFile, keyFile := filepath.Join(a.cfg.DataDir, StreamCertFile), filepath.Join(a.cfg.DataDir, StreamKeyFile)
	cfg := func(pair tls.Certificate) *tls.Config {
		return &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}
	}
	if pair, err := tls.LoadX509KeyPair(certFile, keyFile); err == nil && pair.Leaf != nil &&
		slices.Contains(pair.Leaf.DNSNames, wire.NodeCertName(nodeID)) && time.Until(pair.Leaf.NotAfter) > streamCertRenewal {
		return cfg(pair), nil
	}
	c, ok := a.cp.(certifier)
	if !ok {
		return nil, nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, errdefs.Wrap(errdefs.Internal, err, "agent: generate the stream server key")
	}
	pubDER, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
	resp, err := c.NodeCertificate(ctx, string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})))
	if errdefs.Is(err, errdefs.NotImplemented) {
		return nil, nil
	}
	if err != nil {
		return nil, errdefs.Wrap(errdefs.CodeOf(err), err, "agent: get a stream server certificate")
	}
	keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	pair, err := tls.X509KeyPair([]byte(resp.Certificate), keyPEM)
	if err != nil {
		return nil, errdefs.Wrap(errdefs.Internal, err, "agent: the control plane's stream server certificate does not fit its key")
	}
	if err := writeFileAtomic(keyFile, keyPEM, 0o600); err != nil {
		return nil, errdefs.Wrap(errdefs.Internal, err, "agent: save %s", keyFile)
	}
	if err := writeFileAtomic(certFile, []byte(resp.Certificate), 0o644); err != nil {
		return nil, errdefs.Wrap(errdefs.Internal, err, "agent: save %s", certFile)
	}
	if resp.CA != "" {
		caFile := filepath.Join(a.cfg.DataDir, StreamCAFile)
		if err := writeFileAtomic(caFile, []byte(resp.CA), 0o644); err != nil {
			return nil, errdefs.Wrap(errdefs.Internal, err, "agent: save %s", caFile)
		}
	}
	return cfg(pair), nil
}

// IsLoopback reports whether addr (host:port) is on a loopback interface.
func IsLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// StreamAddress returns the address the agent serves streams on (with the
// chosen port when Config.Address asked for port 0), once Run has started.
func (a *Agent) StreamAddress() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.streamAddr
}

func (s *StreamServer) handle(fn func(w http.ResponseWriter, r *http.Request) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if err := fn(w, r); err != nil {
			if errdefs.CodeOf(err) == errdefs.Internal {
				s.log.Error("stream request failed", "method", r.Method, "path", r.URL.Path, "err", err)
			}
			writeStreamError(w, err)
		}
	}
}

func writeStreamError(w http.ResponseWriter, err error) {
	code := errdefs.CodeOf(err)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(errdefs.HTTPStatus(code))
	json.NewEncoder(w).Encode(map[string]string{"code": string(code), "message": errdefs.MessageOf(err)})
}

func (s *StreamServer) streamer() (driver.Streamer, error) {
	if s.str == nil {
		return nil, errdefs.New(errdefs.NotImplemented, "the %s driver has no process streams", s.drv.Name())
	}
	return s.str, nil
}

func (s *StreamServer) tty(id string) bool {
	if s.Spec == nil {
		return false
	}
	sp, _ := s.Spec(id)
	return sp.Tty
}

func flag(r *http.Request, name string) bool {
	switch strings.ToLower(r.URL.Query().Get(name)) {
	case "1", "true", "yes":
		return true
	}
	return false
}

// ParseStreamTime parses a since/until value: Unix seconds with an
// optional fraction ("1700000000.5"), or RFC 3339. Empty is the zero time.
func ParseStreamTime(v string) (time.Time, error) {
	if v == "" {
		return time.Time{}, nil
	}
	sec, frac, _ := strings.Cut(v, ".")
	if n, err := strconv.ParseInt(sec, 10, 64); err == nil {
		var ns int64
		if frac != "" {
			if len(frac) > 9 {
				frac = frac[:9]
			}
			f, err := strconv.ParseInt(frac+strings.Repeat("0", 9-len(frac)), 10, 64)
			if err != nil {
				return time.Time{}, errdefs.InvalidArgument("bad time %q", v)
			}
			ns = f
		}
		return time.Unix(n, ns), nil
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		return time.Time{}, errdefs.InvalidArgument("bad time %q: want Unix seconds or RFC 3339", v)
	}
	return t, nil
}

func sizeParams(r *http.Request) (h, w uint16, ok bool, err error) {
	q := r.URL.Query()
	if q.Get("h") == "" && q.Get("w") == "" {
		return 0, 0, false, nil
	}
	hh, err1 := strconv.ParseUint(q.Get("h"), 10, 16)
	ww, err2 := strconv.ParseUint(q.Get("w"), 10, 16)
	if err1 != nil || err2 != nil {
		return 0, 0, false, errdefs.InvalidArgument("h and w must be numbers of rows and columns")
	}
	return uint16(hh), uint16(ww), true, nil
}

// resizeParams reads the h and w a resize request must carry.
func resizeParams(r *http.Request) (h, w uint16, err error) {
	h, w, ok, err := sizeParams(r)
	if err == nil && !ok {
		err = errdefs.InvalidArgument("resize needs h and w")
	}
	return h, w, err
}

// AppendFrame appends a stdcopy frame (stream 1 stdout, 2 stderr, 3 an
// error) holding the concatenation of parts to buf.
func AppendFrame(buf []byte, stream byte, parts ...[]byte) []byte {
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	buf = append(buf, stream, 0, 0, 0, 0, 0, 0, 0)
	binary.BigEndian.PutUint32(buf[len(buf)-4:], uint32(n))
	for _, p := range parts {
		buf = append(buf, p...)
	}
	return buf
}

// logTimeFormat is Docker's fixed-width RFC 3339 (nanoseconds always shown).
const logTimeFormat = "2006-01-02T15:04:05.000000000Z07:00"

// logs streams log lines, framed unless raw.
func (s *StreamServer) logs(w http.ResponseWriter, r *http.Request) error {
	str, err := s.streamer()
	if err != nil {
		return err
	}
	id := r.PathValue("id")
	q := r.URL.Query()
	opts := driver.LogOptions{Stdout: flag(r, "stdout"), Stderr: flag(r, "stderr"), Follow: flag(r, "follow"),
		Timestamps: flag(r, "timestamps"), Tail: -1}
	if !opts.Stdout && !opts.Stderr {
		opts.Stdout, opts.Stderr = true, true
	}
	if opts.Since, err = ParseStreamTime(q.Get("since")); err != nil {
		return err
	}
	if opts.Until, err = ParseStreamTime(q.Get("until")); err != nil {
		return err
	}
	if t := q.Get("tail"); t != "" && t != "all" {
		n, err := strconv.Atoi(t)
		if err != nil {
			return errdefs.InvalidArgument("tail must be a number or \"all\"")
		}
		opts.Tail = max(n, 0)
	}
	if _, err := s.drv.Inspect(r.Context(), id); err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	rc.Flush()
	return s.copyLogs(r.Context(), str, id, opts, flag(r, "raw"), w, func() error { return rc.Flush() })
}

// copyLogs runs the driver's Logs and writes its lines to out, framed
// unless raw, flushing whenever no line is pending. A failure after the
// first byte is sent as a stream-3 frame (Docker's "error from daemon").
func (s *StreamServer) copyLogs(ctx context.Context, str driver.Streamer, id string, opts driver.LogOptions, raw bool, out io.Writer, flush func() error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch := make(chan driver.LogEntry, 64)
	errc := make(chan error, 1)
	go func() {
		errc <- str.Logs(ctx, id, opts, ch)
		close(ch)
	}()
	buf := make([]byte, 0, 32<<10)
	var ts []byte
	for e := range ch {
		if opts.Timestamps {
			ts = e.Time.UTC().AppendFormat(ts[:0], logTimeFormat)
			ts = append(ts, ' ')
		}
		if raw {
			buf = append(append(buf, ts...), e.Line...)
		} else {
			var stream byte = 1
			if e.Stream == "stderr" {
				stream = 2
			}
			buf = AppendFrame(buf, stream, ts, e.Line)
		}
		if len(ch) == 0 || len(buf) > 16<<10 {
			if _, err := out.Write(buf); err != nil {
				cancel()
				for range ch {
				}
				<-errc
				return nil // the reader went away
			}
			buf = buf[:0]
			if flush != nil && len(ch) == 0 {
				flush()
			}
		}
	}
	if err := <-errc; err != nil && ctx.Err() == nil {
		if !raw {
			buf = AppendFrame(buf, 3, []byte(errdefs.MessageOf(err)))
		}
		s.log.Warn("logs failed", "instance", id, "err", err)
	}
	if len(buf) > 0 {
		out.Write(buf)
	}
	return nil
}

// upgrade hijacks the connection and answers 101. The returned reader
// yields what the client sent after its request, then reads the connection
// itself (not through net/http's reader, whose EOF would cancel the
// request's context at the client's half-close).
func (s *StreamServer) upgrade(w http.ResponseWriter, r *http.Request) (net.Conn, io.Reader, error) {
	if !strings.EqualFold(r.Header.Get("Upgrade"), "tcp") || !headerHas(r.Header, "Connection", "upgrade") {
		return nil, nil, errdefs.InvalidArgument("this route needs an upgrade: send Connection: Upgrade and Upgrade: tcp")
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return nil, nil, errdefs.Wrap(errdefs.Internal, err, "hijack the connection")
	}
	if _, err := conn.Write([]byte("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n")); err != nil {
		conn.Close()
		return nil, nil, nil
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		conn.Close()
		return nil, nil, nil
	}
	s.conns[conn] = struct{}{}
	s.mu.Unlock()
	var in io.Reader = conn
	if n := brw.Reader.Buffered(); n > 0 {
		early, _ := brw.Reader.Peek(n)
		in = io.MultiReader(bytes.NewReader(bytes.Clone(early)), conn)
	}
	return conn, in, nil
}

func (s *StreamServer) release(conn net.Conn) {
	conn.Close()
	s.mu.Lock()
	delete(s.conns, conn)
	s.mu.Unlock()
}

func headerHas(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for _, f := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(f), token) {
				return true
			}
		}
	}
	return false
}

// clientInput reads the caller's side of an upgraded connection. With
// stdin its bytes go to the returned pipe and its half-close closes the
// pipe. A half-close is normal even without stdin (the docker CLI always
// sends one), so only a read error means the caller is gone and calls
// cancel; a caller that closed entirely is noticed when output to it fails.
func clientInput(br io.Reader, stdin bool, cancel func()) *io.PipeReader {
	if !stdin {
		go func() {
			if _, err := io.Copy(io.Discard, br); err != nil {
				cancel()
			}
		}()
		return nil
	}
	pr, pw := io.Pipe()
	go func() {
		_, err := io.Copy(pw, br)
		pw.CloseWithError(err) // nil: EOF, the caller's half-close
		if err != nil {
			cancel()
		}
	}()
	return pr
}

// attach joins the caller to an instance's stdio.
func (s *StreamServer) attach(w http.ResponseWriter, r *http.Request) error {
	str, err := s.streamer()
	if err != nil {
		return err
	}
	id := r.PathValue("id")
	opts := driver.AttachOptions{Stdin: flag(r, "stdin"), Stdout: flag(r, "stdout"), Stderr: flag(r, "stderr"), Stream: true}
	st0, err0 := s.drv.Inspect(r.Context(), id)
	requested := time.Now()
	// Counted before the 101: the caller starts the instance only after
	// it, and a start holds the run for the attaches it finds pending.
	s.mu.Lock()
	s.pending[id]++
	s.mu.Unlock()
	joined := sync.OnceFunc(func() {
		s.mu.Lock()
		if s.pending[id]--; s.pending[id] <= 0 {
			delete(s.pending, id)
		}
		s.mu.Unlock()
	})
	defer joined()
	conn, br, err := s.upgrade(w, r)
	if err != nil || conn == nil {
		return err
	}
	defer s.release(conn)
	// The stream ends with the connection (closed by the caller, or by
	// Serve at shutdown), noticed by clientInput.
	ctx, cancel := context.WithCancel(context.WithoutCancel(r.Context()))
	defer cancel()
	stdin := clientInput(br, opts.Stdin, cancel)

	streams, missed, err := s.waitAttach(ctx, str, id, opts, st0, err0)
	joined()
	if err != nil {
		if ctx.Err() == nil && !s.tty(id) {
			conn.Write(AppendFrame(nil, 3, []byte(errdefs.MessageOf(err))))
		}
		return nil
	}
	if missed {
		// The run began and ended before we could join it: its output is
		// in the logs.
		since := time.Time{}
		if err0 == nil && !st0.StartedAt.IsZero() {
			since = requested
		}
		s.copyLogs(ctx, str, id, driver.LogOptions{Stdout: opts.Stdout, Stderr: opts.Stderr, Since: since, Tail: -1},
			s.tty(id), conn, nil)
		return nil
	}
	defer streams.Close()
	go func() {
		<-ctx.Done()
		streams.Close()
	}()
	if stdin != nil {
		if streams.Stdin != nil {
			go func() {
				io.Copy(streams.Stdin, stdin)
				streams.Stdin.Close()
			}()
		} else {
			go io.Copy(io.Discard, stdin)
		}
	}
	pumpOutput(conn, &streams.Streams)
	return nil
}

// PendingAttaches returns how many attaches to instance id are waiting for
// its process to run.
func (s *StreamServer) PendingAttaches(id string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pending[id]
}

func (s *StreamServer) exited(id string) {
	if s.Exited != nil {
		s.Exited(id)
	}
}

func (s *StreamServer) signaler() (driver.Signaler, error) {
	sg, ok := s.drv.(driver.Signaler)
	if !ok {
		return nil, errdefs.New(errdefs.NotImplemented, "the %s driver cannot deliver signals", s.drv.Name())
	}
	return sg, nil
}

func signalParam(r *http.Request) (int, error) {
	v := r.URL.Query().Get("signal")
	if v == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 || n > 64 {
		return 0, errdefs.InvalidArgument("signal must be a Linux signal number, not %q", v)
	}
	return n, nil
}

// kill delivers a signal to the main process. When it ends the process,
// the exit is reported at once.
func (s *StreamServer) kill(w http.ResponseWriter, r *http.Request) error {
	sg, err := s.signaler()
	if err != nil {
		return err
	}
	id := r.PathValue("id")
	sig, err := signalParam(r)
	if err != nil {
		return err
	}
	if sig == 0 {
		return errdefs.InvalidArgument("kill needs a signal")
	}
	if err := sg.Signal(r.Context(), id, sig, flag(r, "stop")); err != nil {
		return err
	}
	go func() {
		// Report the exit as soon as the signal has ended the process.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for ctx.Err() == nil {
			if st, err := s.drv.Inspect(ctx, id); err != nil || st.State != driver.StateRunning {
				s.exited(id)
				return
			}
			time.Sleep(s.Poll)
		}
	}()
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// stop stops the main process with a signal and a grace before SIGKILL,
// answering when it has ended.
func (s *StreamServer) stop(w http.ResponseWriter, r *http.Request) error {
	sg, err := s.signaler()
	if err != nil {
		return err
	}
	id := r.PathValue("id")
	sig, err := signalParam(r)
	if err != nil {
		return err
	}
	grace := 10 * time.Second
	if v := r.URL.Query().Get("t"); v != "" {
		if grace, err = time.ParseDuration(v); err != nil || grace < 0 {
			return errdefs.InvalidArgument("t must be a duration such as 10s, not %q", v)
		}
	}
	err = sg.StopSignal(r.Context(), id, sig, grace)
	s.exited(id)
	if err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// attached is a driver attach; Streams is copied so that Close is safe to
// call twice.
type attached struct {
	driver.Streams
	once sync.Once
}

func (a *attached) Close() {
	a.once.Do(func() {
		if a.Streams.Close != nil {
			a.Streams.Close()
		}
	})
}

// waitAttach calls the driver's Attach until it succeeds. It reports missed
// when a run of the instance started after st0 and has already ended.
func (s *StreamServer) waitAttach(ctx context.Context, str driver.Streamer, id string, opts driver.AttachOptions,
	st0 driver.Status, err0 error) (*attached, bool, error) {
	began := time.Now()
	for {
		st, err := str.Attach(ctx, id, opts)
		if err == nil {
			return &attached{Streams: *st}, false, nil
		}
		if c := errdefs.CodeOf(err); c != errdefs.NotFound && c != errdefs.Conflict {
			return nil, false, err
		}
		cur, err := s.drv.Inspect(ctx, id)
		if errdefs.Is(err, errdefs.NotFound) && err0 == nil {
			return nil, false, errdefs.NotFoundf("instance %s was removed", id)
		}
		if err == nil && cur.State != driver.StateRunning &&
			!cur.StartedAt.IsZero() && (err0 != nil || !cur.StartedAt.Equal(st0.StartedAt) || st0.State == driver.StateRunning) {
			return nil, true, nil
		}
		// A caller that is gone is only noticed when it was not sending
		// stdin; back off so that such a wait costs little.
		d := s.Poll
		if age := time.Since(began); age > time.Minute {
			d = time.Second
		} else if age > 2*time.Second {
			d = 10 * s.Poll
		}
		select {
		case <-ctx.Done():
			return nil, false, ctx.Err()
		case <-time.After(d):
		}
	}
}

// pumpOutput copies a process's output to conn, framed unless it has a
// tty, until both streams end.
func pumpOutput(conn net.Conn, st *driver.Streams) {
	if st.Tty {
		if st.Stdout != nil {
			io.Copy(conn, st.Stdout)
		}
		return
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	pump := func(stream byte, r io.Reader) {
		defer wg.Done()
		buf := make([]byte, 8+32<<10)
		for {
			n, err := r.Read(buf[8:])
			if n > 0 {
				buf[0] = stream
				binary.BigEndian.PutUint32(buf[4:8], uint32(n))
				mu.Lock()
				_, werr := conn.Write(buf[:8+n])
				mu.Unlock()
				if werr != nil {
					io.Copy(io.Discard, r) // keep the process from blocking on a full pipe
					return
				}
			}
			if err != nil {
				return
			}
		}
	}
	if st.Stdout != nil {
		wg.Add(1)
		go pump(1, st.Stdout)
	}
	if st.Stderr != nil {
		wg.Add(1)
		go pump(2, st.Stderr)
	}
	wg.Wait()
}

func (s *StreamServer) resize(w http.ResponseWriter, r *http.Request) error {
	str, err := s.streamer()
	if err != nil {
		return err
	}
	h, wd, err := resizeParams(r)
	if err != nil {
		return err
	}
	if err := str.Resize(r.Context(), r.PathValue("id"), h, wd); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// wait answers when the instance's main process meets the condition.
func (s *StreamServer) wait(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	cond := r.URL.Query().Get("condition")
	switch cond {
	case "", "not-running", "next-exit":
	default:
		return errdefs.InvalidArgument("condition must be not-running or next-exit")
	}
	var after *time.Time
	if v := r.URL.Query().Get("after"); v != "" && cond == "next-exit" {
		t, err := ParseStreamTime(v)
		if err != nil {
			return err
		}
		after = &t
	}
	res, err := s.waitExit(r.Context(), id, cond == "next-exit", after)
	if err != nil {
		return err
	}
	s.exited(id)
	w.Header().Set("Content-Type", "application/json")
	return json.NewEncoder(w).Encode(res)
}

// waitExit polls the driver until the main process is not running (or,
// with next, until a run that is current or starts later has ended). An
// instance the driver does not know yet may be on its way (created by the
// control plane, not yet by this agent); one that disappears after being
// seen answers NotFound.
func (s *StreamServer) waitExit(ctx context.Context, id string, next bool, after *time.Time) (wire.WaitResult, error) {
	st0, err0 := s.drv.Inspect(ctx, id)
	seen := err0 == nil
	if err0 != nil && !errdefs.Is(err0, errdefs.NotFound) {
		return wire.WaitResult{}, err0
	}
	if !next && (err0 != nil || st0.State != driver.StateRunning) {
		return result(st0), nil
	}
	if next && after != nil && err0 == nil && st0.State != driver.StateRunning && st0.State != driver.StateProvisioning &&
		!st0.StartedAt.IsZero() && st0.StartedAt.Truncate(time.Microsecond).After(*after) {
		// The run the caller waits for started and ended before we looked.
		return result(st0), nil
	}
	began := time.Now()
	for {
		d := s.Poll
		if age := time.Since(began); age > 5*time.Second {
			d *= 20
		} else if age > time.Second {
			d *= 5
		}
		select {
		case <-ctx.Done():
			return wire.WaitResult{}, errdefs.Wrap(errdefs.Unavailable, ctx.Err(), "wait for %s was cancelled", id)
		case <-time.After(d):
		}
		cur, err := s.drv.Inspect(ctx, id)
		if errdefs.Is(err, errdefs.NotFound) {
			if seen {
				return wire.WaitResult{}, errdefs.NotFoundf("instance %s was removed from the node", id)
			}
			continue
		}
		if err != nil {
			return wire.WaitResult{}, err
		}
		if !seen {
			seen, st0 = true, driver.Status{State: driver.StateProvisioning}
		}
		if cur.State == driver.StateRunning {
			if st0.State == driver.StateRunning && !cur.StartedAt.Equal(st0.StartedAt) {
				return result(cur), nil // restarted: the run we waited for ended
			}
			continue
		}
		if !next || st0.State == driver.StateRunning || !cur.StartedAt.Equal(st0.StartedAt) {
			return result(cur), nil
		}
	}
}

func result(st driver.Status) wire.WaitResult {
	res := wire.WaitResult{Error: st.Error}
	if st.ExitCode != nil {
		res.StatusCode = *st.ExitCode
	}
	return res
}

func (s *StreamServer) top(w http.ResponseWriter, r *http.Request) error {
	str, err := s.streamer()
	if err != nil {
		return err
	}
	titles, rows, err := str.Top(r.Context(), r.PathValue("id"), r.URL.Query().Get("ps_args"))
	if err != nil {
		return err
	}
	if rows == nil {
		rows = [][]string{}
	}
	w.Header().Set("Content-Type", "application/json")
	return json.NewEncoder(w).Encode(wire.TopResult{Titles: titles, Processes: rows})
}

// statsStream writes one sample, or with stream=1 one per interval
// (default 1s, at least 100ms) until the caller goes away.
func (s *StreamServer) statsStream(w http.ResponseWriter, r *http.Request) error {
	if s.stats == nil {
		return errdefs.New(errdefs.NotImplemented, "the %s driver cannot sample resource usage", s.drv.Name())
	}
	id := r.PathValue("id")
	interval := time.Second
	if v := r.URL.Query().Get("interval"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			return errdefs.InvalidArgument("interval must be a duration like 1s")
		}
		interval = max(d, 100*time.Millisecond)
	}
	sample := func() (wire.StatsSample, error) {
		st, err := s.stats.Stats(r.Context(), id)
		if err != nil {
			return wire.StatsSample{}, err
		}
		return wire.StatsSample{Time: st.Time, CPUUsageNs: st.CPUUsageNs, SystemCPUNs: systemCPUNs(),
			OnlineCPUs: runtime.NumCPU(), MemoryBytes: st.MemoryBytes, MemoryLimit: st.MemoryLimit, PIDs: st.PIDs}, nil
	}
	first, err := sample()
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	rc := http.NewResponseController(w)
	if err := enc.Encode(first); err != nil || !flag(r, "stream") {
		return nil
	}
	rc.Flush()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-r.Context().Done():
			return nil
		case <-t.C:
		}
		smp, err := sample()
		if err != nil {
			return nil // stopped: end the stream
		}
		if enc.Encode(smp) != nil || rc.Flush() != nil {
			return nil
		}
	}
}

// systemCPUNs is the node's total CPU time from /proc/stat, in nanoseconds
// (0 where there is no /proc).
func systemCPUNs() uint64 {
	f, err := os.Open("/proc/stat")
	if err != nil {
		return 0
	}
	defer f.Close()
	line, _ := bufio.NewReader(f).ReadString('\n')
	fields := strings.Fields(line)
	if len(fields) < 2 || fields[0] != "cpu" {
		return 0
	}
	var ticks uint64
	for _, v := range fields[1:] {
		n, _ := strconv.ParseUint(v, 10, 64)
		ticks += n
	}
	return ticks * (1e9 / 100) // USER_HZ is 100 on Linux
}

// execEntry is one exec, from create until a while after it ended.
type execEntry struct {
	id, instance string
	cfg          wire.ExecCreate

	mu       sync.Mutex
	started  bool
	running  bool
	exitCode *int
	pid      int
	proc     *driver.ExecProcess
	ended    time.Time
}

func (e *execEntry) info() wire.ExecInfo {
	e.mu.Lock()
	defer e.mu.Unlock()
	return wire.ExecInfo{ID: e.id, InstanceID: e.instance, Config: e.cfg, Running: e.running, Started: e.started,
		ExitCode: e.exitCode, Pid: e.pid}
}

// execRetention is how long an ended exec can still be inspected.
const execRetention = 10 * time.Minute

func (s *StreamServer) execCreate(w http.ResponseWriter, r *http.Request) error {
	if _, err := s.streamer(); err != nil {
		return err
	}
	id := r.PathValue("id")
	var cfg wire.ExecCreate
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&cfg); err != nil {
		return errdefs.Wrap(errdefs.Invalid, err, "invalid exec JSON")
	}
	if len(cfg.Cmd) == 0 {
		return errdefs.InvalidArgument("exec needs a command")
	}
	st, err := s.drv.Inspect(r.Context(), id)
	if err != nil {
		return err
	}
	if st.State != driver.StateRunning {
		return errdefs.Conflictf("container %s is not running", id)
	}
	var b [16]byte
	rand.Read(b[:])
	e := &execEntry{id: hex.EncodeToString(b[:]), instance: id, cfg: cfg}
	s.mu.Lock()
	now := time.Now()
	for k, x := range s.execs {
		x.mu.Lock()
		old := !x.ended.IsZero() && now.Sub(x.ended) > execRetention
		x.mu.Unlock()
		if old {
			delete(s.execs, k)
		}
	}
	s.execs[e.id] = e
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	return json.NewEncoder(w).Encode(wire.ExecCreated{ID: e.id})
}

func (s *StreamServer) execOf(r *http.Request) (*execEntry, error) {
	s.mu.Lock()
	e := s.execs[r.PathValue("exec")]
	s.mu.Unlock()
	if e == nil || e.instance != r.PathValue("id") {
		return nil, errdefs.NotFoundf("no such exec instance: %s", r.PathValue("exec"))
	}
	return e, nil
}

// execStart runs the exec: over an upgraded connection, or detached.
func (s *StreamServer) execStart(w http.ResponseWriter, r *http.Request) error {
	str, err := s.streamer()
	if err != nil {
		return err
	}
	e, err := s.execOf(r)
	if err != nil {
		return err
	}
	h, wd, sized, err := sizeParams(r)
	if err != nil {
		return err
	}
	detach := flag(r, "detach")
	e.mu.Lock()
	if e.started {
		e.mu.Unlock()
		return errdefs.Conflictf("exec %s has already been started", e.id)
	}
	e.started = true
	e.mu.Unlock()
	cfg := driver.ExecConfig{Cmd: e.cfg.Cmd, Env: e.cfg.Env, User: e.cfg.User, WorkingDir: e.cfg.WorkingDir, Tty: e.cfg.Tty,
		AttachStdin: e.cfg.AttachStdin, AttachStdout: e.cfg.AttachStdout, AttachStderr: e.cfg.AttachStderr}
	if detach {
		cfg.AttachStdin, cfg.AttachStdout, cfg.AttachStderr = false, false, false
	} else if !strings.EqualFold(r.Header.Get("Upgrade"), "tcp") {
		e.mu.Lock()
		e.started = false
		e.mu.Unlock()
		return errdefs.InvalidArgument("exec start needs an upgrade (Connection: Upgrade, Upgrade: tcp) or detach=1")
	}
	// The process outlives this request when detached.
	proc, err := str.Exec(context.WithoutCancel(r.Context()), e.instance, cfg)
	if err != nil {
		e.mu.Lock()
		e.started = false
		e.mu.Unlock()
		return err
	}
	e.mu.Lock()
	e.running, e.pid, e.proc = true, proc.Pid, proc
	e.mu.Unlock()
	if sized && cfg.Tty && proc.Resize != nil {
		proc.Resize(h, wd)
	}
	finish := func() {
		code, werr := proc.Wait()
		if werr != nil {
			code = 126
		}
		e.mu.Lock()
		e.running, e.exitCode, e.ended = false, &code, time.Now()
		e.mu.Unlock()
	}
	if detach {
		go func() {
			if proc.Stdout != nil {
				go io.Copy(io.Discard, proc.Stdout)
			}
			if proc.Stderr != nil {
				go io.Copy(io.Discard, proc.Stderr)
			}
			finish()
		}()
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
	conn, br, err := s.upgrade(w, r)
	if err != nil || conn == nil {
		proc.Close()
		finish()
		return err
	}
	defer s.release(conn)
	ctx, cancel := context.WithCancel(context.WithoutCancel(r.Context()))
	defer cancel()
	stdin := clientInput(br, cfg.AttachStdin, cancel)
	if stdin != nil {
		go func() {
			if proc.Stdin != nil {
				io.Copy(proc.Stdin, stdin)
				proc.Stdin.Close()
			} else {
				io.Copy(io.Discard, stdin)
			}
		}()
	}
	go func() {
		select {
		case <-ctx.Done():
			proc.Close() // the caller went away: kill the process
		case <-proc.Done:
		}
	}()
	out := make(chan struct{})
	go func() {
		defer close(out)
		pumpOutput(conn, &proc.Streams)
	}()
	<-proc.Done
	// Output may trail the exit by a little; then the exit code must be
	// readable before the caller sees the end of the stream.
	select {
	case <-out:
	case <-time.After(2 * time.Second):
	}
	finish()
	return nil
}

func (s *StreamServer) execResize(w http.ResponseWriter, r *http.Request) error {
	e, err := s.execOf(r)
	if err != nil {
		return err
	}
	h, wd, err := resizeParams(r)
	if err != nil {
		return err
	}
	e.mu.Lock()
	proc := e.proc
	e.mu.Unlock()
	if proc == nil || proc.Resize == nil {
		return errdefs.Conflictf("exec %s is not running", e.id)
	}
	if err := proc.Resize(h, wd); err != nil {
		return errdefs.Wrap(errdefs.Conflict, err, "resize exec %s", e.id)
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *StreamServer) execInspect(w http.ResponseWriter, r *http.Request) error {
	e, err := s.execOf(r)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	return json.NewEncoder(w).Encode(e.info())
}

func (s *StreamServer) archiver() (driver.Archiver, error) {
	if s.arch == nil {
		return nil, errdefs.New(errdefs.NotImplemented, "the %s driver cannot copy files", s.drv.Name())
	}
	return s.arch, nil
}

func archivePath(r *http.Request) (string, error) {
	p := r.URL.Query().Get("path")
	if p == "" || !strings.HasPrefix(p, "/") {
		return "", errdefs.InvalidArgument("path must be an absolute path in the instance")
	}
	return p, nil
}

func wirePathStat(st driver.PathStat) wire.PathStat {
	return wire.PathStat{Name: st.Name, Size: st.Size, Mode: uint32(st.Mode), Mtime: st.Mtime, LinkTarget: st.LinkTarget}
}

func (s *StreamServer) archiveStat(w http.ResponseWriter, r *http.Request) error {
	a, err := s.archiver()
	if err != nil {
		return err
	}
	p, err := archivePath(r)
	if err != nil {
		return err
	}
	st, err := a.StatPath(r.Context(), r.PathValue("id"), p)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	return json.NewEncoder(w).Encode(wirePathStat(st))
}

// archiveGet streams a tar of the path. Once the 200 is out, a failure
// aborts the connection: the caller must not take a cut tar for a whole one.
func (s *StreamServer) archiveGet(w http.ResponseWriter, r *http.Request) error {
	a, err := s.archiver()
	if err != nil {
		return err
	}
	p, err := archivePath(r)
	if err != nil {
		return err
	}
	id := r.PathValue("id")
	st, err := a.StatPath(r.Context(), id, p)
	if err != nil {
		return err
	}
	b, _ := json.Marshal(wirePathStat(st))
	w.Header().Set(wire.StreamPathStatHeader, string(b))
	w.Header().Set("Content-Type", "application/x-tar")
	cw := &countingWriter{w: w}
	if err := a.ArchivePath(r.Context(), id, p, cw); err != nil {
		if cw.n == 0 {
			w.Header().Del(wire.StreamPathStatHeader)
			return err
		}
		s.log.Warn("archive cut short", "instance", id, "path", p, "err", err)
		panic(http.ErrAbortHandler)
	}
	return nil
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

func (s *StreamServer) archivePut(w http.ResponseWriter, r *http.Request) error {
	a, err := s.archiver()
	if err != nil {
		return err
	}
	p, err := archivePath(r)
	if err != nil {
		return err
	}
	opts := driver.ArchiveOptions{NoOverwriteDirNonDir: flag(r, "noOverwriteDirNonDir")}
	if err := a.ExtractArchive(r.Context(), r.PathValue("id"), p, r.Body, opts); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}
