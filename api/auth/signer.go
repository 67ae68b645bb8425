package auth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"fmt"
	"net/http"
	"path"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"flotilla/api/errdefs"
)

// Form is the shape of the Authorization header a Signer writes: the forms
// real CloudAPI clients send.
type Form int

const (
	// FormNodeTriton signs "(request-target) date" with the key's default
	// hash (RSA sha256, ECDSA by curve, Ed25519 sha512) and a GMT Date, as
	// node-triton does.
	FormNodeTriton Form = iota
	// FormTritonGo signs "date" only, with sha512 for RSA and ECDSA and a Date
	// in time.RFC1123's UTC form, as triton-go does.
	FormTritonGo
	// FormLegacy signs the Date alone and writes the signature after the
	// parameters, as http-signature 0.9 and CloudAPI's curl examples do.
	FormLegacy
)

// Signer signs requests with an account's private key, for Flotilla's own
// tests, benchmarks and CLI.
type Signer struct {
	keyID     string
	key       crypto.Signer
	family    string
	algorithm string
	form      Form
	now       func() time.Time
}

// SignerOption configures a Signer.
type SignerOption func(*Signer) error

// WithForm selects the header form (FormNodeTriton by default).
func WithForm(f Form) SignerOption {
	return func(s *Signer) error {
		if f < FormNodeTriton || f > FormLegacy {
			return errdefs.InvalidArgument("unknown signature form %d", f)
		}
		s.form = f
		return nil
	}
}

// WithAlgorithm overrides the algorithm the form would choose, e.g.
// "rsa-sha1". It must suit the key.
func WithAlgorithm(alg string) SignerOption {
	return func(s *Signer) error {
		s.algorithm = strings.ToLower(alg)
		return nil
	}
}

// WithSubUser signs as an RBAC sub-user of the account:
// keyId /<login>/users/<user>/keys/<id>.
func WithSubUser(user string) SignerOption {
	return func(s *Signer) error {
		if user == "" || strings.Contains(user, "/") {
			return errdefs.InvalidArgument("sub-user %q is not a valid login", user)
		}
		s.keyID = "/" + strings.Split(s.keyID, "/")[1] + "/users/" + user + "/keys/" + path.Base(s.keyID)
		return nil
	}
}

// WithClock sets the clock the Date header is read from (time.Now by default).
func WithClock(now func() time.Time) SignerOption {
	return func(s *Signer) error {
		s.now = now
		return nil
	}
}

// NewSigner returns a Signer for the account login with the given private key
// (*rsa.PrivateKey, *ecdsa.PrivateKey or ed25519.PrivateKey). keyID is the key's
// name or MD5 fingerprint as the server knows it; empty means the MD5
// fingerprint of key. Errors are Invalid: an empty or slashed login or key id,
// an unsupported key type, or an algorithm that does not suit the key.
func NewSigner(login, keyID string, key crypto.Signer, opts ...SignerOption) (*Signer, error) {
	if login == "" || strings.Contains(login, "/") {
		return nil, errdefs.InvalidArgument("login %q is not valid for a keyId", login)
	}
	if key == nil {
		return nil, errdefs.InvalidArgument("no private key given")
	}
	s := &Signer{key: key, now: time.Now}
	switch key.Public().(type) {
	case *rsa.PublicKey:
		s.family = "rsa"
	case *ecdsa.PublicKey:
		s.family = "ecdsa"
	case ed25519.PublicKey:
		s.family = "ed25519"
	default:
		return nil, errdefs.InvalidArgument("private key type %T is not supported: use RSA, ECDSA or Ed25519", key)
	}
	if keyID == "" {
		pub, err := ssh.NewPublicKey(key.Public())
		if err != nil {
			return nil, errdefs.Wrap(errdefs.Invalid, err, "cannot derive the SSH public key")
		}
		keyID = FingerprintMD5(pub)
	}
	if strings.Contains(keyID, "/") {
		return nil, errdefs.InvalidArgument("key id %q must be a key name or MD5 fingerprint, not a path", keyID)
	}
	s.keyID = "/" + login + "/keys/" + keyID
	for _, o := range opts {
		if err := o(s); err != nil {
			return nil, err
		}
	}
	if s.algorithm == "" {
		s.algorithm = s.defaultAlgorithm()
	}
	if a, ok := algorithms[s.algorithm]; !ok || a.family != s.family {
		return nil, errdefs.InvalidArgument("algorithm %q cannot be used with an %s key", s.algorithm, s.family)
	}
	return s, nil
}

// KeyID returns the keyId the signer sends, e.g. "/alice/keys/aa:bb:...".
func (s *Signer) KeyID() string { return s.keyID }

// Algorithm returns the algorithm the signer uses, e.g. "rsa-sha256".
func (s *Signer) Algorithm() string { return s.algorithm }

func (s *Signer) defaultAlgorithm() string {
	switch s.family {
	case "ed25519":
		return "ed25519-sha512"
	case "rsa":
		if s.form == FormTritonGo {
			return "rsa-sha512"
		}
		return "rsa-sha256"
	}
	if s.form == FormTritonGo {
		return "ecdsa-sha512"
	}
	switch s.key.Public().(*ecdsa.PublicKey).Curve {
	case elliptic.P384():
		return "ecdsa-sha384"
	case elliptic.P521():
		return "ecdsa-sha512"
	default:
		return "ecdsa-sha256"
	}
}

// Sign sets req's Date header to the current time and its Authorization
// header to a signature in the signer's form. It signs req.URL's request URI,
// which is what net/http's client sends.
func (s *Signer) Sign(req *http.Request) error {
	now := s.now().UTC()
	date := now.Format(http.TimeFormat)
	if s.form == FormTritonGo {
		date = now.Format(time.RFC1123)
	}
	req.Header.Set("Date", date)
	sig := &Signature{KeyID: s.keyID, Algorithm: s.algorithm, Headers: []string{"(request-target)", "date"}}
	switch s.form {
	case FormTritonGo:
		sig.Headers = []string{"date"}
	case FormLegacy:
		sig.Headers, sig.HeadersDefaulted, sig.Legacy = []string{"date"}, true, true
	}
	msg, err := signingString(sig.Headers, sig, req)
	if err != nil {
		return err
	}
	if sig.Signature, err = SignBytes(s.algorithm, s.key, []byte(msg)); err != nil {
		return err
	}
	req.Header.Set("Authorization", sig.String())
	return nil
}

// SignBytes signs msg with key using the named algorithm and encodes the
// signature as HTTP Signature does (PKCS#1 v1.5, ASN.1 DER, raw Ed25519).
func SignBytes(alg string, key crypto.Signer, msg []byte) ([]byte, error) {
	a, ok := algorithms[strings.ToLower(alg)]
	if !ok {
		return nil, errdefs.InvalidArgument("%s is not a supported signing algorithm", strings.ToUpper(alg))
	}
	var (
		sig []byte
		err error
	)
	if a.family == "ed25519" {
		sig, err = key.Sign(rand.Reader, msg, crypto.Hash(0))
	} else {
		sig, err = key.Sign(rand.Reader, digest(a.hash, msg), a.hash)
	}
	if err != nil {
		return nil, errdefs.Wrap(errdefs.Internal, err, "signing with %s", alg)
	}
	return sig, nil
}

// String describes the signer for logs.
func (s *Signer) String() string {
	return fmt.Sprintf("Signer(%s, %s)", s.keyID, s.algorithm)
}
