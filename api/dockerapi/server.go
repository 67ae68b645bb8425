// Package dockerapi serves the Docker Engine API (1.44–1.51) so that the
// docker CLI sees the whole datacenter as one Docker host, as Triton's
// sdc-docker did: every container is an instance (same table, scheduler and
// rules as CloudAPI's), with its own IP, placed by the scheduler. One file per
// resource; each decodes, calls the service layer or the store, and encodes
// with the types of github.com/docker/docker/api/types.
//
// Imports: api/service, api/auth, api/httpx, api/errdefs, store, scheduler,
// agent/driver (restart policy type), github.com/docker/docker/api/types/...
// and pkg/stdcopy. Never api/cloudapi.
package dockerapi

import (
	"context"
	"log/slog"
	"net/http"
	"runtime"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"flotilla/api/errdefs"
	"flotilla/api/httpx"
	"flotilla/api/service"
	"flotilla/store"
)

// The API versions served. The CLI negotiates down to MaxAPIVersion; Docker
// 29 clients refuse servers older than 1.44 and vice versa.
const (
	MinAPIVersion = "1.44"
	MaxAPIVersion = "1.51"
	// EngineVersion is what /version reports as the engine's version.
	EngineVersion = "28.5.2-flotilla"
)

// Config describes the endpoint.
type Config struct {
	Datacenter string // shown by `docker info` as the daemon name
	// CAPEM is served at /ca.pem for `flotilla docker-cert` and setup scripts.
	CAPEM []byte
	// PlainLogin, when set, is the account that requests arriving without TLS
	// act as. Only for a loopback listener explicitly asked to be plain.
	PlainLogin string
	// ConvergeTimeout bounds how long start/stop/restart wait for the node
	// to report the new state (default 60s).
	ConvergeTimeout time.Duration
	// Registry is where Docker Hub references ("busybox",
	// "docker.io/library/busybox") are pulled from: a mirror's "host:port"
	// or "http(s)://host:port". Empty: Docker Hub itself. References that
	// name another registry ("quay.io/org/app") go to that registry.
	Registry string
	// UploadMaxBytes bounds one request body of `docker load`, `docker
	// import` and `docker cp` into a container (default 2 GiB; negative:
	// no limit).
	UploadMaxBytes int64
	// UploadInflightBytes bounds what one account's such bodies add up to
	// while they are being received (default 4 GiB; negative: no limit),
	// so one tenant cannot fill the control plane's spool space.
	UploadInflightBytes int64
}

// Server is the Docker Engine API server.
type Server struct {
	// Service is the shared rule layer; the process streams use it too.
	Service *service.Service
	store   *store.Store
	log     *slog.Logger
	cfg     Config
	now     func() time.Time
	auth    *authCache
	uploads *uploadBudget
}

// New returns a Docker API server.
func New(svc *service.Service, log *slog.Logger, cfg Config) *Server {
	if log == nil {
		log = slog.Default()
	}
	if cfg.Datacenter == "" {
		cfg.Datacenter = "flotilla"
	}
	if cfg.ConvergeTimeout <= 0 {
		cfg.ConvergeTimeout = 60 * time.Second
	}
	return &Server{Service: svc, store: svc.Store, log: log, cfg: cfg, now: time.Now, auth: newAuthCache(),
		uploads: newUploadBudget(cfg.UploadMaxBytes, cfg.UploadInflightBytes)}
}

// maxBody bounds JSON request bodies.
const maxBody = 1 << 20

// Handler returns the router: /_ping and /ca.pem are open; every other route
// is served both unversioned and under /vX.Y and needs a client certificate.
func (s *Server) Handler() http.Handler {
	r := chi.NewRouter()
	r.Use(httpx.Middleware("docker", s.log, RenderError))
	r.Use(s.headers)
	r.NotFound(s.handle(notFound))
	r.MethodNotAllowed(s.handle(notFound))
	r.Get("/_ping", s.ping)
	r.Head("/_ping", s.ping)
	r.Get("/ca.pem", s.caPEM)
	r.Group(func(r chi.Router) {
		r.Use(s.authenticate)
		s.routes(r)
	})
	r.Route("/v{version:[0-9]+\\.[0-9]+}", func(r chi.Router) {
		r.Use(s.checkVersion)
		r.NotFound(s.handle(notFound))
		r.MethodNotAllowed(s.handle(notFound))
		r.Get("/_ping", s.ping)
		r.Head("/_ping", s.ping)
		r.Group(func(r chi.Router) {
			r.Use(s.authenticate)
			s.routes(r)
		})
	})
	return r
}

// routes registers every authenticated route on r.
func (s *Server) routes(r chi.Router) {
	s.systemRoutes(r)
	s.containerRoutes(r)
	s.imageRoutes(r)
	r.Post("/build", s.handle(s.postBuild))
	s.networkRoutes(r)
	s.volumeRoutes(r)
	s.eventRoutes(r)
	s.streamRoutes(r)
}

func (s *Server) handle(fn httpx.HandlerFunc) http.HandlerFunc { return httpx.Handle(RenderError, fn) }

// Handle adapts a handler that returns its error; the error is rendered as
// dockerd does. For the stream handlers.
func (s *Server) Handle(fn httpx.HandlerFunc) http.HandlerFunc { return s.handle(fn) }

func notFound(w http.ResponseWriter, r *http.Request) error {
	return errdefs.NotFoundf("page not found")
}

// headers puts dockerd's identifying headers on every response.
func (s *Server) headers(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Api-Version", MaxAPIVersion)
		h.Set("Ostype", "linux")
		h.Set("Server", "Docker/"+EngineVersion+" ("+runtime.GOOS+")")
		h.Set("Docker-Experimental", "false")
		next.ServeHTTP(w, r)
	})
}

// checkVersion refuses API versions outside [MinAPIVersion, MaxAPIVersion]
// with dockerd's wording.
func (s *Server) checkVersion(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		v := chi.URLParam(r, "version")
		if compareVersions(v, MinAPIVersion) < 0 {
			httpx.Fail(w, r, RenderError, errdefs.InvalidArgument("client version %s is too old. Minimum supported API version is %s, please upgrade your client to a newer version", v, MinAPIVersion))
			return
		}
		if compareVersions(v, MaxAPIVersion) > 0 {
			httpx.Fail(w, r, RenderError, errdefs.InvalidArgument("client version %s is too new. Maximum supported API version is %s", v, MaxAPIVersion))
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), keyVersion, v)))
	})
}

// compareVersions compares dotted decimal versions ("1.44" < "1.5" is false).
func compareVersions(a, b string) int {
	as, bs := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < max(len(as), len(bs)); i++ {
		var x, y int
		if i < len(as) {
			x = atoiDefault(as[i])
		}
		if i < len(bs) {
			y = atoiDefault(bs[i])
		}
		if x != y {
			if x < y {
				return -1
			}
			return 1
		}
	}
	return 0
}

func atoiDefault(s string) int {
	n := 0
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0
		}
		n = n*10 + int(c-'0')
		if n > 1<<20 {
			return 1 << 20
		}
	}
	return n
}

type ctxKey int

const (
	keyCaller ctxKey = iota
	keyVersion
)

// Caller returns the authenticated caller of a request.
func Caller(r *http.Request) service.Caller {
	c, _ := r.Context().Value(keyCaller).(service.Caller)
	return c
}

// APIVersion returns the version the request's path asked for (MaxAPIVersion
// for unversioned paths).
func APIVersion(r *http.Request) string {
	if v, ok := r.Context().Value(keyVersion).(string); ok {
		return v
	}
	return MaxAPIVersion
}

func (s *Server) ping(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Cache-Control", "no-cache, no-store, must-revalidate")
	h.Set("Pragma", "no-cache")
	h.Set("Builder-Version", "1")
	h.Set("Swarm", "inactive")
	if r.Method == http.MethodHead {
		h.Set("Content-Type", "text/plain; charset=utf-8")
		h.Set("Content-Length", "0")
		w.WriteHeader(http.StatusOK)
		return
	}
	h.Set("Content-Type", "text/plain; charset=utf-8")
	w.Write([]byte("OK"))
}

func (s *Server) caPEM(w http.ResponseWriter, r *http.Request) {
	if len(s.cfg.CAPEM) == 0 {
		httpx.Fail(w, r, RenderError, errdefs.NotFoundf("this endpoint has no CA certificate to offer"))
		return
	}
	w.Header().Set("Content-Type", "application/x-pem-file")
	w.Write(s.cfg.CAPEM)
}
