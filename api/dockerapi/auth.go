package dockerapi

import (
	"context"
	"crypto/sha256"
	"net"
	"net/http"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"flotilla/api/auth"
	"flotilla/api/errdefs"
	"flotilla/api/httpx"
	"flotilla/api/service"
)

// authCacheTTL bounds how long a verified certificate is trusted without
// looking at the account again (a removed key or disabled account takes
// effect within this time).
const authCacheTTL = 30 * time.Second

type authEntry struct {
	caller  service.Caller
	expires time.Time
}

// authCache remembers verified certificates by their SHA-256, so that the
// signature check and key lookup happen once per TTL, not per request.
type authCache struct {
	mu      sync.Mutex
	entries map[[32]byte]authEntry
}

func newAuthCache() *authCache { return &authCache{entries: map[[32]byte]authEntry{}} }

func (c *authCache) get(k [32]byte, now time.Time) (service.Caller, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[k]
	if !ok || now.After(e.expires) {
		return service.Caller{}, false
	}
	return e.caller, true
}

func (c *authCache) put(k [32]byte, caller service.Caller, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.entries) > 10000 {
		for k, e := range c.entries {
			if now.After(e.expires) {
				delete(c.entries, k)
			}
		}
		if len(c.entries) > 10000 {
			c.entries = map[[32]byte]authEntry{}
		}
	}
	c.entries[k] = authEntry{caller: caller, expires: now.Add(authCacheTTL)}
}

// authenticate identifies the account from the TLS client certificate: its
// subject CN names the account, its public key must be one of the account's
// SSH keys, and it must be signed by that key (sdc-docker's scheme).
func (s *Server) authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := s.verify(r)
		if err != nil {
			httpx.Fail(w, r, RenderError, err)
			return
		}
		httpx.SetLogField(r.Context(), "account", c.Login)
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), keyCaller, c)))
	})
}

func (s *Server) verify(r *http.Request) (service.Caller, error) {
	ip, _, _ := net.SplitHostPort(r.RemoteAddr)
	if r.TLS == nil && s.cfg.PlainLogin != "" {
		acct, err := s.store.AccountByLogin(r.Context(), s.cfg.PlainLogin)
		if err != nil {
			return service.Caller{}, errdefs.Wrap(errdefs.Unauthorized, err, "the plain-TCP account %s does not exist", s.cfg.PlainLogin)
		}
		return service.Caller{AccountID: acct.ID, Login: acct.Login, Principal: acct.Login, IP: ip, Via: "docker"}, nil
	}
	cert, err := auth.PeerCertificate(r.TLS)
	if err != nil {
		return service.Caller{}, err
	}
	now := s.now()
	sum := sha256.Sum256(cert.Raw)
	if c, ok := s.auth.get(sum, now); ok {
		c.IP = ip
		return c, nil
	}
	cc, err := auth.ParseClientCert(cert)
	if err != nil {
		return service.Caller{}, err
	}
	acct, err := s.store.AccountByLogin(r.Context(), cc.Login)
	if errdefs.Is(err, errdefs.NotFound) {
		return service.Caller{}, errdefs.New(errdefs.Unauthorized, "the client certificate names account %q, which does not exist", cc.Login)
	}
	if err != nil {
		return service.Caller{}, err
	}
	if acct.Disabled {
		return service.Caller{}, auth.ErrAccountDisabled()
	}
	keys, err := s.store.ListKeys(r.Context(), acct.ID)
	if err != nil {
		return service.Caller{}, err
	}
	pubs := make([]ssh.PublicKey, 0, len(keys))
	for _, k := range keys {
		if pk, _, _, _, err := ssh.ParseAuthorizedKey([]byte(k.Text)); err == nil {
			pubs = append(pubs, pk)
		}
	}
	if _, err := auth.VerifyClientCert(cert, pubs); err != nil {
		return service.Caller{}, err
	}
	c := service.Caller{AccountID: acct.ID, Login: acct.Login, Principal: acct.Login, KeyID: cc.MD5, Via: "docker"}
	s.auth.put(sum, c, now)
	c.IP = ip
	return c, nil
}
