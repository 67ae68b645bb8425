package dockerapi

// Upload bodies (`docker load`, `docker import`, `docker cp` into a
// container): each is bounded, and what one account is sending at once is
// bounded too. Over either limit the body stops reading with an Invalid
// error wrapping httpx.ErrTooLarge, which answers 413 with a message that
// says which limit it was.

import (
	"io"
	"net/http"
	"sync"

	"flotilla/api/errdefs"
	"flotilla/api/httpx"
)

// Default upload limits (Config.UploadMaxBytes, Config.UploadInflightBytes).
const (
	DefaultUploadMaxBytes      = 2 << 30
	DefaultUploadInflightBytes = 4 << 30
)

// uploadBudget counts the bytes each account's upload bodies have brought
// in and not yet finished.
type uploadBudget struct {
	max, perAccount int64

	mu       sync.Mutex
	inflight map[string]int64
}

func newUploadBudget(max, perAccount int64) *uploadBudget {
	lim := func(v, def int64) int64 {
		switch {
		case v == 0:
			return def
		case v < 0:
			return 1<<63 - 1
		}
		return v
	}
	return &uploadBudget{max: lim(max, DefaultUploadMaxBytes), perAccount: lim(perAccount, DefaultUploadInflightBytes),
		inflight: map[string]int64{}}
}

// body wraps r's body for account; what is read counts against both
// limits until release is called (call it when the handler is done).
func (b *uploadBudget) body(r *http.Request, account, what string) (*uploadBody, error) {
	if r.ContentLength > b.max {
		return nil, errdefs.Wrap(errdefs.Invalid, httpx.ErrTooLarge,
			"the %s is %d bytes, over this endpoint's limit of %d bytes per upload", what, r.ContentLength, b.max)
	}
	return &uploadBody{b: b, r: r.Body, account: account, what: what}, nil
}

// limitErr is the limit the body ran into, or err when it ran into none
// (whoever read it may have wrapped the body's error beyond recognition).
func (u *uploadBody) limitErr(err error) error {
	if u.err != nil {
		return u.err
	}
	return err
}

type uploadBody struct {
	b       *uploadBudget
	r       io.Reader
	account string
	what    string
	n       int64
	err     error
}

func (u *uploadBody) Read(p []byte) (int, error) {
	if u.err != nil {
		return 0, u.err
	}
	n, err := u.r.Read(p)
	if n > 0 {
		u.n += int64(n)
		b := u.b
		b.mu.Lock()
		b.inflight[u.account] += int64(n)
		total := b.inflight[u.account]
		b.mu.Unlock()
		switch {
		case u.n > b.max:
			u.err = errdefs.Wrap(errdefs.Invalid, httpx.ErrTooLarge,
				"the %s is over this endpoint's limit of %d bytes per upload", u.what, b.max)
		case total > b.perAccount:
			u.err = errdefs.Wrap(errdefs.Invalid, httpx.ErrTooLarge,
				"this account is already sending %d bytes of uploads, over its limit of %d; wait for the others to finish",
				total-int64(n), b.perAccount)
		}
		if u.err != nil {
			return 0, u.err
		}
	}
	return n, err
}

// release gives back what the body counted; calling it again is a no-op.
func (u *uploadBody) release() {
	b := u.b
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.inflight[u.account] -= u.n; b.inflight[u.account] <= 0 {
		delete(b.inflight, u.account)
	}
	u.n = 0
}
