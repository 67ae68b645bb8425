// Package cloudapi serves Triton's CloudAPI: the REST API the `triton` CLI,
// the triton-go SDK and portals speak. One file per resource; each decodes,
// calls the service layer or the store, and encodes.
//
// Imports: api/service, api/auth, api/httpx, api/errdefs, store, scheduler.
// Never api/dockerapi.
package cloudapi

import (
	"context"
	"crypto/md5"
	"encoding/base64"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"flotilla/api/auth"
	"flotilla/api/errdefs"
	"flotilla/api/httpx"
	"flotilla/api/service"
	"flotilla/store"
)

// ServerVersion is what the Server header says.
const ServerVersion = "cloudapi/9.20.0"

// Config describes this datacenter to clients.
type Config struct {
	Datacenter string // e.g. "flotilla-1"
	URL        string // this CloudAPI's public URL
	DockerURL  string // tcp://host:port of the Docker endpoint, "" if none
	// RateLimit is requests per second per account (0 = unlimited); Burst the bucket size.
	RateLimit float64
	Burst     int
	// CNS, when its Suffix is set, is the zone of the CNS server: GetMachine
	// lists the instance's names in it (dns_names), as Triton does.
	CNS service.CNSZone
}

// Server is the CloudAPI HTTP server.
type Server struct {
	store   *store.Store
	svc     *service.Service
	log     *slog.Logger
	cfg     Config
	limiter *auth.Limiter
	keys    keyCache
	now     func() time.Time
}

// New returns a CloudAPI server.
func New(svc *service.Service, log *slog.Logger, cfg Config) *Server {
	if cfg.Datacenter == "" {
		cfg.Datacenter = "flotilla-1"
	}
	s := &Server{store: svc.Store, svc: svc, log: log, cfg: cfg, now: time.Now}
	if cfg.RateLimit > 0 {
		burst := cfg.Burst
		if burst <= 0 {
			burst = int(cfg.RateLimit * 2)
		}
		s.limiter = auth.NewLimiter(cfg.RateLimit, burst)
	}
	return s
}

// maxBody is CloudAPI's body limit (restify maxBodySize).
const maxBody = 100000

// Handler returns the router with every CloudAPI route.
func (s *Server) Handler() http.Handler {
	r := chi.NewRouter()
	r.Use(httpx.Middleware("cloudapi", s.log, renderError))
	r.Use(s.headers)
	r.NotFound(httpx.Handle(renderError, func(w http.ResponseWriter, r *http.Request) error {
		return restErr(http.StatusNotFound, "ResourceNotFound", r.URL.Path+" does not exist")
	}))
	r.MethodNotAllowed(httpx.Handle(renderError, func(w http.ResponseWriter, r *http.Request) error {
		return restErr(http.StatusMethodNotAllowed, "MethodNotAllowed", r.Method+" is not allowed")
	}))
	r.Get("/--ping", s.handle(s.ping))
	r.Get("/openapi.yaml", serveSpec)
	r.Route("/{account}", func(r chi.Router) {
		r.Use(s.authenticate)
		s.accountRoutes(r)
		s.keyRoutes(r)
		s.packageRoutes(r)
		s.imageRoutes(r)
		s.networkRoutes(r)
		s.fabricRoutes(r)
		s.machineRoutes(r)
		s.fwruleRoutes(r)
		s.volumeRoutes(r)
		s.miscRoutes(r)
	})
	return r
}

func (s *Server) handle(fn httpx.HandlerFunc) http.HandlerFunc { return httpx.Handle(renderError, fn) }

// getHead registers a GET route and its HEAD twin.
func getHead(r chi.Router, pattern string, h http.HandlerFunc) {
	r.Get(pattern, h)
	r.Head(pattern, h)
}

// restError is an error with an exact CloudAPI status and code.
type restError struct {
	status int
	code   string
	msg    string
}

func (e *restError) Error() string { return e.code + ": " + e.msg }

func restErr(status int, code, msg string) error { return &restError{status, code, msg} }

// Unwrap classifies the error for errdefs.CodeOf, so that httpx does not log
// a client's mistake as an internal error.
func (e *restError) Unwrap() error {
	return errdefs.New(errdefs.CodeForStatus(e.status), "%s", e.msg)
}

// statusOf maps an error to CloudAPI's status and restCode: classify once,
// render here.
func statusOf(err error) (int, string, string) {
	var re *restError
	if errors.As(err, &re) {
		return re.status, re.code, re.msg
	}
	msg := errdefs.MessageOf(err)
	reason := errdefs.ReasonOf(err)
	switch errdefs.CodeOf(err) {
	case errdefs.Invalid:
		if errors.Is(err, httpx.ErrTooLarge) {
			return http.StatusRequestEntityTooLarge, "RequestTooLarge", msg
		}
		if reason == "" {
			reason = "InvalidArgument"
		}
		return http.StatusConflict, reason, msg
	case errdefs.NotFound:
		return http.StatusNotFound, "ResourceNotFound", msg
	case errdefs.Conflict:
		if reason == "" {
			reason = "InvalidArgument"
		}
		return http.StatusConflict, reason, msg
	case errdefs.Unauthorized:
		return http.StatusUnauthorized, "InvalidCredentials", msg
	case errdefs.Forbidden:
		return http.StatusForbidden, "NotAuthorized", msg
	case errdefs.Gone:
		return http.StatusGone, "ResourceGone", msg
	case errdefs.Unavailable:
		return http.StatusServiceUnavailable, "ServiceUnavailable", msg
	case errdefs.InsufficientCapacity:
		return http.StatusConflict, "InsufficientCapacity", msg
	case errdefs.NotImplemented:
		return http.StatusNotImplemented, "NotImplemented", msg
	case errdefs.TooManyRequests:
		return http.StatusTooManyRequests, "TooManyRequests", msg
	case errdefs.Unprocessable:
		return http.StatusUnprocessableEntity, "UnprocessableEntity", msg
	}
	return http.StatusInternalServerError, "InternalError", "internal error (request id " + "%s)"
}

// renderError writes {"code","message"}; a 410 for a deleted machine
// carries the machine's JSON instead, as CloudAPI does.
func renderError(w http.ResponseWriter, r *http.Request, err error) {
	status, code, msg := statusOf(err)
	if status == http.StatusInternalServerError {
		msg = "internal error; request id " + httpx.RequestID(r.Context())
	}
	if status == http.StatusGone {
		if inst, ok := errdefs.DetailOf(err).(store.Instance); ok {
			writeJSON(w, r, http.StatusGone, machineJSON(inst, false))
			return
		}
	}
	if status == http.StatusTooManyRequests {
		w.Header().Set("Retry-After", "1")
	}
	writeJSON(w, r, status, map[string]string{"code": code, "message": msg})
}

// writeJSON writes v with Content-MD5 and Content-Length, as restify does.
func writeJSON(w http.ResponseWriter, r *http.Request, status int, v any) error {
	b, err := jsonMarshal(v)
	if err != nil {
		return err
	}
	sum := md5.Sum(b)
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(b)))
	h.Set("Content-MD5", base64.StdEncoding.EncodeToString(sum[:]))
	w.WriteHeader(status)
	if r.Method != http.MethodHead {
		_, err = w.Write(b)
	}
	return err
}

// noContent answers 204 (or 202 for actions) with no body.
func noContent(w http.ResponseWriter, status int) error {
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(status)
	return nil
}

// API versions this server answers, newest first.
var apiVersions = []string{"9.0.0", "8.0.0", "7.3.0", "7.2.0", "7.1.0", "7.0.0"}

type ctxKey int

const (
	keyCaller ctxKey = iota
	keyVersion
)

// headers sets the headers every CloudAPI response carries and negotiates
// the API version.
func (s *Server) headers(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		h := w.Header()
		h.Set("Server", ServerVersion)
		h.Set("Request-Id", httpx.RequestID(r.Context()))
		h.Set("Access-Control-Allow-Origin", "*")
		h.Set("Access-Control-Allow-Headers", "Accept, Accept-Version, Content-Length, Content-MD5, Content-Type, Date, Api-Version, Response-Time")
		h.Set("Access-Control-Allow-Methods", "GET, HEAD, POST, PUT, DELETE, OPTIONS")
		h.Set("Access-Control-Expose-Headers", "Api-Version, Request-Id, Response-Time")
		h.Set("Connection", "Keep-Alive")
		rng := r.Header.Get("Accept-Version")
		if rng == "" {
			rng = r.Header.Get("X-Api-Version")
		}
		if rng == "" {
			rng = "*"
		}
		v, ok := negotiate(rng, apiVersions)
		if !ok {
			w = &timingWriter{ResponseWriter: w, start: start}
			renderError(w, r, restErr(http.StatusBadRequest, "InvalidVersion", rng+" is not supported by "+r.Method+" "+r.URL.Path))
			return
		}
		h.Set("Api-Version", v)
		if r.Method == http.MethodOptions {
			h.Set("Content-Length", "0")
			(&timingWriter{ResponseWriter: w, start: start}).WriteHeader(http.StatusOK)
			return
		}
		ctx := context.WithValue(r.Context(), keyVersion, v)
		next.ServeHTTP(&timingWriter{ResponseWriter: w, start: start}, r.WithContext(ctx))
	})
}

// timingWriter adds Response-Time just before the header is written.
type timingWriter struct {
	http.ResponseWriter
	start time.Time
	done  bool
}

func (w *timingWriter) WriteHeader(code int) {
	if !w.done {
		w.done = true
		w.Header().Set("Response-Time", strconv.FormatInt(time.Since(w.start).Milliseconds(), 10))
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *timingWriter) Write(b []byte) (int, error) {
	if !w.done {
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseWriter.Write(b)
}

func (w *timingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// apiVersion returns the negotiated version of the request.
func apiVersion(r *http.Request) string {
	v, _ := r.Context().Value(keyVersion).(string)
	return v
}

// caller returns the authenticated caller, acting on the path's account.
func caller(r *http.Request) service.Caller {
	c, _ := r.Context().Value(keyCaller).(service.Caller)
	return c
}

func (s *Server) ping(w http.ResponseWriter, r *http.Request) error {
	w.Header().Set("Triton-Datacenter-Name", s.cfg.Datacenter)
	return writeJSON(w, r, http.StatusOK, map[string]any{"ping": "pong", "cloudapi": map[string]any{"versions": apiVersions}})
}

// authenticate verifies the HTTP Signature, resolves the path's account
// ("my" = the caller), enforces tenancy and the rate limit, and checks the
// body's Content-MD5 when sent.
func (s *Server) authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := s.verify(r)
		if err != nil {
			httpx.Fail(w, r, renderError, err)
			return
		}
		if s.limiter != nil {
			if ok, retry := s.limiter.Allow(c.Principal); !ok {
				w.Header().Set("Retry-After", strconv.Itoa(int(retry.Seconds()+0.999)))
				httpx.Fail(w, r, renderError, restErr(http.StatusTooManyRequests, "TooManyRequests",
					auth.ErrThrottled(s.cfg.RateLimit).Message))
				return
			}
		}
		httpx.SetLogField(r.Context(), "account", c.Login)
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), keyCaller, c)))
	})
}

func (s *Server) verify(r *http.Request) (service.Caller, error) {
	authz := r.Header.Get("Authorization")
	if authz == "" {
		return service.Caller{}, authError(auth.ErrAuthRequired())
	}
	sig, err := auth.ParseAuthorization(authz)
	if err != nil {
		return service.Caller{}, authError(err)
	}
	if sig.SubUser != "" {
		return service.Caller{}, authError(auth.ErrInvalidCredentials(errors.New("sub-user keys are not supported")))
	}
	key, pub, err := s.keys.lookup(r.Context(), s.store, sig.Login, sig.KeyRef, s.now())
	if err != nil {
		return service.Caller{}, err
	}
	if err := auth.Verify(sig, r, pub, s.now()); err != nil {
		return service.Caller{}, authError(err)
	}
	if b, ok := auth.BindingOf(sig, r); ok {
		// A signature of the Date alone says nothing of the request: bind
		// it to the first one it authorises and its connection, so that a
		// captured one cannot authorise another (see auth.Binding).
		same, err := s.store.BindSignature(r.Context(), b.Key, b.Request, b.Conn, b.Expires)
		if err != nil {
			return service.Caller{}, err
		}
		if !same {
			return service.Caller{}, authError(auth.ErrSignatureReplayed())
		}
	}
	if key.Disabled {
		return service.Caller{}, authError(auth.ErrAccountDisabled())
	}
	c := service.Caller{AccountID: key.AccountID, Login: sig.Login, Principal: sig.Login, Operator: key.Operator,
		KeyID: sig.KeyID, IP: clientIP(r), Via: "cloudapi"}
	target := chi.URLParam(r, "account")
	if target == "my" || target == sig.Login {
		return c, nil
	}
	if !key.Operator {
		return service.Caller{}, restErr(http.StatusForbidden, "NotAuthorized", "You do not have permission to access "+r.URL.Path)
	}
	acct, err := s.store.AccountByLogin(r.Context(), target)
	if err != nil {
		return service.Caller{}, err
	}
	c.AccountID, c.Login = acct.ID, acct.Login
	s.store.AppendAudit(r.Context(), store.AuditEntry{OwnerID: acct.ID, Action: "operator_act_as", Success: true,
		Caller: c.Audit(), Params: map[string]any{"method": r.Method, "path": r.URL.Path}})
	return c, nil
}

// authError renders an auth package error with CloudAPI's exact code.
func authError(err error) error {
	status := http.StatusUnauthorized
	switch errdefs.CodeOf(err) {
	case errdefs.Invalid:
		status = http.StatusBadRequest
	case errdefs.Forbidden:
		status = http.StatusForbidden
	case errdefs.Internal:
		return err
	}
	return restErr(status, auth.RestCode(err), errdefs.MessageOf(err))
}

func clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// params merges query and body parameters; body wins, as restify's
// mapParams/overrideParams do. JSON values keep their types; query values are strings.
func params(r *http.Request) (map[string]any, error) {
	out := map[string]any{}
	for k, vs := range r.URL.Query() {
		if len(vs) > 0 {
			out[k] = vs[len(vs)-1]
		}
	}
	body, err := httpx.ReadBody(r, maxBody)
	if err != nil {
		return nil, err
	}
	if md := r.Header.Get("Content-MD5"); md != "" && len(body) > 0 {
		sum := md5.Sum(body)
		if base64.StdEncoding.EncodeToString(sum[:]) != md {
			return nil, restErr(http.StatusBadRequest, "BadDigest", "Content-MD5 '"+md+"' didn't match body")
		}
	}
	if len(strings.TrimSpace(string(body))) == 0 {
		return out, nil
	}
	ct := r.Header.Get("Content-Type")
	if strings.HasPrefix(ct, "application/x-www-form-urlencoded") {
		vals, err := parseForm(string(body))
		if err != nil {
			return nil, restErr(http.StatusBadRequest, "InvalidContent", "invalid form body")
		}
		for k, v := range vals {
			out[k] = v
		}
		return out, nil
	}
	var obj map[string]any
	if err := jsonUnmarshal(body, &obj); err != nil {
		return nil, restErr(http.StatusBadRequest, "InvalidContent", "Invalid JSON: "+err.Error())
	}
	for k, v := range obj {
		out[k] = v
	}
	return out, nil
}
