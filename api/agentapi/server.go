// Package agentapi serves the internal API that compute-node agents call:
// registration with a join token, heartbeats, long-polled assignments and
// status reports (the protocol is in api/agentapi/wire and openapi/agentapi.yaml).
//
// Imports: store, api/service (process specs), api/httpx, api/errdefs,
// api/agentapi/wire, agent/driver (types only). Never agent.
package agentapi

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-chi/chi/v5"

	"flotilla/api/agentapi/wire"
	"flotilla/api/errdefs"
	"flotilla/api/httpx"
	"flotilla/api/service"
	"flotilla/oci"
	"flotilla/store"
)

// Server is the agent API.
type Server struct {
	store *store.Store
	log   *slog.Logger
	// ImageRegistry is the host:port agents pull images from (this server's
	// address), used to build image references.
	ImageRegistry string
	blobStore     oci.BlobStore // image content served to agents; see SetBlobs

	waiters service.Waiters // long polls waiting for their node's assignments
	names   service.Waiters // long polls of node resolvers' tables, woken by any node's change
	fw      service.Waiters // long polls of node firewalls, woken by any node's or rule's change

	// CNS, when its Address is set, tells node resolvers where names under
	// its suffix go. An unspecified host (":53", "0.0.0.0:53") is replaced
	// by the host the agent reached this API at.
	CNS wire.CNS

	credMu sync.Mutex
	creds  map[string]cachedCredential // by credential hash

	imageMu sync.Mutex
	images  map[string]store.Image // content fields by image id; see imageContent

	nodeCA NodeCA // signs stream server certificates; see SetNodeCA
}

// NodeCA signs the certificates of nodes' stream servers (auth.DevCA).
type NodeCA interface {
	IssueNodeCertificate(name string, pub crypto.PublicKey) ([]byte, error)
	CAPEM() []byte
}

// SetNodeCA sets the authority that signs nodes' stream server
// certificates. Without one, the certificate route answers 501 and agents
// serve streams in plain HTTP, which they do on loopback only.
func (s *Server) SetNodeCA(ca NodeCA) { s.nodeCA = ca }

// New returns an agent API server. Call Listen to wake long polls on changes.
func New(st *store.Store, log *slog.Logger) *Server {
	return &Server{store: st, log: log}
}

// HashToken is how join tokens and node credentials are stored.
func HashToken(tok string) []byte {
	sum := sha256.Sum256([]byte(tok))
	return sum[:]
}

// NewToken returns a random token.
func NewToken() string {
	var b [24]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Handler returns the routes.
func (s *Server) Handler() http.Handler {
	r := chi.NewRouter()
	r.Use(httpx.Middleware("agentapi", s.log, renderError))
	r.NotFound(httpx.Handle(renderError, func(w http.ResponseWriter, r *http.Request) error {
		return errdefs.NotFoundf("%s does not exist", r.URL.Path)
	}))
	r.Post("/agent/v1/nodes/register", httpx.Handle(renderError, s.register))
	s.registryRoutes(r)
	r.Group(func(r chi.Router) {
		r.Use(s.nodeAuth)
		r.Post("/agent/v1/nodes/{node}/heartbeat", httpx.Handle(renderError, s.heartbeat))
		r.Post("/agent/v1/nodes/{node}/certificate", httpx.Handle(renderError, s.certificate))
		r.Get("/agent/v1/nodes/{node}/assignments", httpx.Handle(renderError, s.assignments))
		r.Get("/agent/v1/nodes/{node}/names", httpx.Handle(renderError, s.nodeNames))
		r.Get("/agent/v1/nodes/{node}/firewall", httpx.Handle(renderError, s.nodeFirewall))
		r.Put("/agent/v1/instances/{id}/status", httpx.Handle(renderError, s.status))
	})
	return r
}

func renderError(w http.ResponseWriter, r *http.Request, err error) {
	code := errdefs.CodeOf(err)
	httpx.WriteJSON(w, errdefs.HTTPStatus(code), map[string]string{"code": string(code), "message": errdefs.MessageOf(err)})
}

type ctxKey int

const keyNode ctxKey = 0

func bearer(r *http.Request) string {
	h := r.Header.Get("Authorization")
	if t, ok := strings.CutPrefix(h, "Bearer "); ok {
		return strings.TrimSpace(t)
	}
	return ""
}

// nodeAuth resolves the node credential; a node may only use its own routes.
func (s *Server) nodeAuth(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tok := bearer(r)
		if tok == "" {
			renderError(w, r, errdefs.New(errdefs.Unauthorized, "missing node credential: send Authorization: Bearer <credential>"))
			return
		}
		nodeID, err := s.nodeByCredential(r.Context(), tok)
		if err != nil {
			if errdefs.Is(err, errdefs.NotFound) {
				err = errdefs.New(errdefs.Unauthorized, "unknown node credential: register the node again with a join token")
			}
			renderError(w, r, err)
			return
		}
		if p := chi.URLParam(r, "node"); p != "" && subtle.ConstantTimeCompare([]byte(p), []byte(nodeID)) != 1 {
			renderError(w, r, errdefs.New(errdefs.Forbidden, "this credential belongs to another node"))
			return
		}
		httpx.SetLogField(r.Context(), "node", nodeID)
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), keyNode, nodeID)))
	})
}

func nodeOf(r *http.Request) string { id, _ := r.Context().Value(keyNode).(string); return id }

// credentialTTL bounds how long a replaced node credential keeps working on
// a replica that has seen it (registration rotates credentials).
const credentialTTL = 10 * time.Second

type cachedCredential struct {
	nodeID  string
	expires time.Time
}

// nodeByCredential resolves a node credential, remembering the answer for a
// few seconds: every poll, report and heartbeat carries it.
func (s *Server) nodeByCredential(ctx context.Context, tok string) (string, error) {
	hash := HashToken(tok)
	key := string(hash)
	now := time.Now()
	s.credMu.Lock()
	c, ok := s.creds[key]
	s.credMu.Unlock()
	if ok && now.Before(c.expires) {
		return c.nodeID, nil
	}
	nodeID, err := s.store.NodeByCredential(ctx, hash)
	if err != nil {
		return "", err
	}
	s.credMu.Lock()
	if s.creds == nil || len(s.creds) > 100000 {
		s.creds = map[string]cachedCredential{}
	}
	s.creds[key] = cachedCredential{nodeID: nodeID, expires: now.Add(credentialTTL)}
	s.credMu.Unlock()
	return nodeID, nil
}

// forgetCredentials drops the cached credential answers of this replica,
// so a replaced credential stops working here at once (other replicas
// forget theirs within credentialTTL).
func (s *Server) forgetCredentials() {
	s.credMu.Lock()
	clear(s.creds)
	s.credMu.Unlock()
}

// Listen wakes long polls when the database announces a node's change. It
// returns when ctx ends.
func (s *Server) Listen(ctx context.Context) {
	s.store.Listen(ctx, "flotilla_node", func() {
		s.waiters.WakeAll()
		s.names.WakeAll()
		s.fw.WakeAll()
	}, func(node string) {
		// Tags, addresses and rules of any account may change what any
		// node enforces.
		s.fw.Wake(fwKey)
		s.waiters.Wake(node)
		// A change on any node may change the names other nodes serve.
		s.names.Wake(namesKey)
	})
}

func queryInt(r *http.Request, key string, def int64) (int64, error) {
	v := r.URL.Query().Get(key)
	if v == "" {
		return def, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return 0, errdefs.InvalidArgument("%s must be a non-negative integer", key)
	}
	return n, nil
}
