package cloudapi

import (
	"context"
	"crypto"
	"errors"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"flotilla/api/auth"
	"flotilla/api/errdefs"
	"flotilla/store"
)

// keyCacheTTL bounds how long a key (or an account's disabled flag) may be
// used after another replica changed it; this replica forgets at once.
const keyCacheTTL = 5 * time.Second

type cachedKey struct {
	key     store.AuthKey
	pub     crypto.PublicKey
	expires time.Time
}

// keyCache saves a database query and a key parse on every signed request.
type keyCache struct {
	mu sync.Mutex
	m  map[string]cachedKey
}

func (c *keyCache) lookup(ctx context.Context, st *store.Store, login, keyRef string, now time.Time) (store.AuthKey, crypto.PublicKey, error) {
	k := login + "\x00" + keyRef
	c.mu.Lock()
	e, ok := c.m[k]
	c.mu.Unlock()
	if ok && now.Before(e.expires) {
		return e.key, e.pub, nil
	}
	key, err := st.KeyForLogin(ctx, login, keyRef)
	if err != nil {
		if errdefs.Is(err, errdefs.NotFound) {
			return store.AuthKey{}, nil, authError(auth.ErrInvalidCredentials(err))
		}
		return store.AuthKey{}, nil, err
	}
	pk, err := auth.ParsePublicKey(key.KeyText)
	if err != nil {
		return store.AuthKey{}, nil, authError(auth.ErrInvalidCredentials(err))
	}
	cpk, ok := pk.PublicKey.(ssh.CryptoPublicKey)
	if !ok {
		return store.AuthKey{}, nil, authError(auth.ErrInvalidCredentials(errors.New("unsupported key type")))
	}
	pub := cpk.CryptoPublicKey()
	c.mu.Lock()
	if c.m == nil || len(c.m) > 10000 {
		c.m = map[string]cachedKey{}
	}
	c.m[k] = cachedKey{key: key, pub: pub, expires: now.Add(keyCacheTTL)}
	c.mu.Unlock()
	return key, pub, nil
}

// forget drops every cached key of an account (after a key is deleted).
func (c *keyCache) forget(accountID string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, e := range c.m {
		if e.key.AccountID == accountID {
			delete(c.m, k)
		}
	}
}
