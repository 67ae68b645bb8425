package auth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"flotilla/api/errdefs"
)

// MaxClockSkew is how far a request's Date may be from the server's clock,
// either way (http-signature's default, which CloudAPI documents).
const MaxClockSkew = 300 * time.Second

// maxAuthorization bounds the header we parse; a 16384-bit RSA signature in
// base64 is under 3 kB.
const maxAuthorization = 16 << 10

// Signature is a parsed HTTP Signature Authorization header.
type Signature struct {
	// KeyID is the keyId parameter as sent, e.g. "/alice/keys/aa:bb:...".
	KeyID string
	// Login is the account login named by KeyID.
	Login string
	// SubUser is the RBAC sub-user login for a keyId of the form
	// /<login>/users/<subuser>/keys/<id>, and empty for an account key.
	SubUser string
	// KeyRef is the last part of KeyID: a key name or an MD5 fingerprint
	// (see IsMD5Fingerprint).
	KeyRef string
	// Algorithm is the signing algorithm, lower-cased (e.g. "rsa-sha256").
	Algorithm string
	// Headers are the signed header names, lower-cased, in signing order.
	Headers []string
	// HeadersDefaulted is true when the header named no headers; Headers is
	// then ["date"], or ["x-date"] for a request that carries X-Date.
	HeadersDefaulted bool
	// Signature is the decoded signature.
	Signature []byte
	// Legacy is true for the http-signature 0.9 form, where the base64
	// signature follows the parameters after a space.
	Legacy bool
}

// algorithm describes one supported signing algorithm.
type algorithm struct {
	family string // "rsa", "ecdsa" or "ed25519"
	hash   crypto.Hash
}

// algorithms are those CloudAPI accepts, less DSA, which Go no longer
// verifies and OpenSSH no longer makes.
var algorithms = map[string]algorithm{
	"rsa-sha1":       {"rsa", crypto.SHA1},
	"rsa-sha256":     {"rsa", crypto.SHA256},
	"rsa-sha384":     {"rsa", crypto.SHA384},
	"rsa-sha512":     {"rsa", crypto.SHA512},
	"ecdsa-sha256":   {"ecdsa", crypto.SHA256},
	"ecdsa-sha384":   {"ecdsa", crypto.SHA384},
	"ecdsa-sha512":   {"ecdsa", crypto.SHA512},
	"ed25519-sha512": {"ed25519", crypto.SHA512},
}

// ParseAuthorization parses an Authorization header in any of the forms
// CloudAPI clients send:
//
//	Signature keyId="/a/keys/fp",algorithm="rsa-sha256",headers="(request-target) date",signature="B64"
//	Signature keyId="/a/keys/fp",algorithm="rsa-sha512",headers="date",signature="B64"
//	Signature keyId="/a/keys/name",algorithm="rsa-sha256" B64
//
// Errors, in the order CloudAPI checks: an empty header or another scheme is
// Unauthorized (MsgAuthRequired); a malformed header is Invalid
// ("Authorization header invalid: ..."); an unsupported algorithm is
// Unauthorized ("<ALG> is not a supported signing algorithm"); a keyId not of
// the form /<login>/keys/<id> or /<login>/users/<user>/keys/<id> is
// Unauthorized ("Invalid KeyId <keyId> in authorization header").
func ParseAuthorization(h string) (*Signature, error) {
	h = strings.TrimSpace(h)
	scheme, rest, _ := strings.Cut(h, " ")
	if !strings.EqualFold(scheme, "signature") {
		return nil, ErrAuthRequired()
	}
	if len(h) > maxAuthorization {
		return nil, errInvalidHeader("header is longer than %d bytes", maxAuthorization)
	}
	params, legacySig, err := parseParams(rest)
	if err != nil {
		return nil, err
	}
	s := &Signature{}
	for _, name := range []string{"keyId", "algorithm"} {
		if params[strings.ToLower(name)] == "" {
			return nil, errInvalidHeader("%s was not specified", name)
		}
	}
	s.KeyID = params["keyid"]
	sigText, hasSig := params["signature"]
	switch {
	case hasSig && legacySig != "":
		return nil, errInvalidHeader("signature given twice")
	case legacySig != "":
		sigText, s.Legacy = legacySig, true
	case sigText == "":
		return nil, errInvalidHeader("signature was not specified")
	}
	if s.Signature, err = decodeBase64(sigText); err != nil {
		return nil, errInvalidHeader("signature is not valid base64")
	}
	if s.Headers, err = parseHeaderList(params["headers"]); err != nil {
		return nil, err
	}
	if s.Headers == nil {
		s.Headers, s.HeadersDefaulted = []string{"date"}, true
	}

	s.Algorithm = strings.ToLower(params["algorithm"])
	if _, ok := algorithms[s.Algorithm]; !ok {
		return nil, errdefs.New(errdefs.Unauthorized, "%s is not a supported signing algorithm", printable(strings.ToUpper(s.Algorithm)))
	}
	if err := s.parseKeyID(); err != nil {
		return nil, err
	}
	return s, nil
}

// parseParams reads `name="value"` pairs separated by commas and, for the
// legacy form, a base64 signature after whitespace at the end. Names are
// lower-cased; values cannot contain '"' (the scheme has no escapes).
func parseParams(in string) (map[string]string, string, error) {
	params := make(map[string]string, 4)
	i := 0
	skipSpace := func() bool {
		start := i
		for i < len(in) && (in[i] == ' ' || in[i] == '\t') {
			i++
		}
		return i > start
	}
	skipSpace()
	if i >= len(in) {
		return nil, "", errInvalidHeader("no parameters after the Signature scheme")
	}
	for {
		start := i
		for i < len(in) && isTokenChar(in[i]) {
			i++
		}
		if i == start || i+1 >= len(in) || in[i] != '=' || in[i+1] != '"' {
			return nil, "", errInvalidHeader("bad parameter format at offset %d: expected name=\"value\"", len("Signature ")+start)
		}
		name := strings.ToLower(in[start:i])
		i += 2
		end := strings.IndexByte(in[i:], '"')
		if end < 0 {
			return nil, "", errInvalidHeader("unterminated quoted value of %s", printable(name))
		}
		if _, dup := params[name]; dup {
			return nil, "", errInvalidHeader("parameter %s given twice", printable(name))
		}
		params[name] = in[i : i+end]
		i += end + 1

		spaced := skipSpace()
		switch {
		case i >= len(in):
			return params, "", nil
		case in[i] == ',':
			i++
			skipSpace()
			if i >= len(in) {
				return nil, "", errInvalidHeader("trailing comma")
			}
		case spaced:
			// The legacy form: the signature follows the parameters.
			tok := strings.TrimRight(in[i:], " \t")
			if strings.ContainsAny(tok, " \t,\"") {
				return nil, "", errInvalidHeader("unexpected text after the parameters")
			}
			return params, tok, nil
		default:
			return nil, "", errInvalidHeader("expected a comma after the value of %s", printable(name))
		}
	}
}

// parseHeaderList splits the headers parameter. It returns nil for an empty or
// absent list, which means the default.
func parseHeaderList(v string) ([]string, error) {
	names := strings.Fields(strings.ToLower(v))
	if len(names) == 0 {
		return nil, nil
	}
	for _, n := range names {
		if !validHeaderName(n) {
			return nil, errInvalidHeader("%q is not a header name", printable(n))
		}
	}
	return names, nil
}

func validHeaderName(n string) bool {
	if strings.HasPrefix(n, "(") && strings.HasSuffix(n, ")") && len(n) > 2 {
		n = n[1 : len(n)-1]
	}
	for i := 0; i < len(n); i++ {
		if !isTokenChar(n[i]) {
			return false
		}
	}
	return n != ""
}

// isTokenChar reports whether c may appear in an HTTP token (RFC 9110).
func isTokenChar(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

func decodeBase64(s string) ([]byte, error) {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		b, err = base64.RawStdEncoding.DecodeString(s)
	}
	if err == nil && len(b) == 0 {
		err = fmt.Errorf("empty")
	}
	return b, err
}

// parseKeyID splits KeyID into Login, SubUser and KeyRef.
func (s *Signature) parseKeyID() error {
	parts := strings.Split(s.KeyID, "/")
	bad := errdefs.New(errdefs.Unauthorized, "Invalid KeyId %s in authorization header", printable(s.KeyID))
	for _, p := range parts[1:] {
		if p == "" {
			return bad
		}
	}
	switch {
	case len(parts) == 4 && parts[0] == "" && parts[2] == "keys":
		s.Login, s.KeyRef = parts[1], parts[3]
	case len(parts) == 6 && parts[0] == "" && parts[2] == "users" && parts[4] == "keys":
		s.Login, s.SubUser, s.KeyRef = parts[1], parts[3], parts[5]
	default:
		return bad
	}
	return nil
}

// String formats s as an Authorization header value, in the legacy form when
// s.Legacy is set. ParseAuthorization(s.String()) gives back s.
func (s *Signature) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, `Signature keyId="%s",algorithm="%s"`, s.KeyID, s.Algorithm)
	if !s.HeadersDefaulted && len(s.Headers) > 0 {
		fmt.Fprintf(&b, `,headers="%s"`, strings.Join(s.Headers, " "))
	}
	sig := base64.StdEncoding.EncodeToString(s.Signature)
	if s.Legacy {
		b.WriteString(" " + sig)
	} else {
		fmt.Fprintf(&b, `,signature="%s"`, sig)
	}
	return b.String()
}

// signedHeaders resolves the default header list against r.
func (s *Signature) signedHeaders(r *http.Request) []string {
	if s.HeadersDefaulted && r.Header.Get("X-Date") != "" {
		return []string{"x-date"}
	}
	return s.Headers
}

// SigningString returns the string the client signed for r: one line
// "name: value" per signed header, joined by newlines. (request-target) is the
// lower-cased method and r.RequestURI exactly as received (or r.URL's request
// URI for a client-side request). It returns an Invalid error when a signed
// header is missing from r or is a pseudo-header this package does not know.
func (s *Signature) SigningString(r *http.Request) (string, error) {
	return signingString(s.signedHeaders(r), s, r)
}

func signingString(headers []string, s *Signature, r *http.Request) (string, error) {
	var b strings.Builder
	for i, h := range headers {
		if i > 0 {
			b.WriteByte('\n')
		}
		var v string
		switch h {
		case "(request-target)":
			v = strings.ToLower(r.Method) + " " + requestURI(r)
		case "request-line":
			v = fmt.Sprintf("%s %s HTTP/%d.%d", r.Method, requestURI(r), r.ProtoMajor, r.ProtoMinor)
			b.WriteString(v)
			continue
		case "(keyid)":
			v = s.KeyID
		case "(algorithm)":
			v = s.Algorithm
		case "host":
			v = r.Host
			if v == "" && r.URL != nil {
				v = r.URL.Host
			}
			if v == "" {
				return "", errInvalidHeader("host was not in the request")
			}
		default:
			if strings.HasPrefix(h, "(") {
				return "", errInvalidHeader("pseudo-header %s is not supported", printable(h))
			}
			vals := r.Header.Values(h)
			if len(vals) == 0 {
				return "", errInvalidHeader("%s was not in the request", printable(h))
			}
			v = strings.Join(vals, ", ")
		}
		b.WriteString(h)
		b.WriteString(": ")
		b.WriteString(v)
	}
	return b.String(), nil
}

func requestURI(r *http.Request) string {
	if r.RequestURI != "" {
		return r.RequestURI
	}
	if r.URL == nil {
		return "/"
	}
	return r.URL.RequestURI()
}

// ParseDate parses a Date header in the forms clients send: RFC 1123 with GMT
// (node-triton, curl) or with UTC (triton-go formats time.RFC1123 in UTC), as
// well as the other forms HTTP allows.
func ParseDate(v string) (time.Time, error) {
	for _, layout := range []string{http.TimeFormat, time.RFC1123, time.RFC1123Z, time.RFC850, time.ANSIC} {
		t, err := time.ParseInLocation(layout, v, time.UTC)
		if err != nil {
			continue
		}
		// A zone abbreviation other than UTC or GMT would be read as UTC;
		// refuse it rather than guess its offset.
		if layout == time.RFC1123 && t.Location() != time.UTC && !strings.HasSuffix(v, " GMT") {
			continue
		}
		return t, nil
	}
	return time.Time{}, errInvalidHeader("%q is not an RFC 1123 date", printable(v))
}

// Verify checks that sig, parsed from r's Authorization header, is a valid
// signature of r by pub (an ssh.PublicKey, or a *rsa.PublicKey,
// *ecdsa.PublicKey or ed25519.PublicKey) and that r is fresh at now.
//
// It returns an Invalid error (InvalidHeader) when a signed header is missing,
// the Date (or X-Date) header is missing, unparseable, not among the signed
// headers or more than MaxClockSkew away from now; and an Unauthorized error
// (InvalidCredentials, MsgInvalidCredentials) when the algorithm does not fit
// the key or the signature does not verify — the cause is kept for logs.
func Verify(sig *Signature, r *http.Request, pub crypto.PublicKey, now time.Time) error {
	headers := sig.signedHeaders(r)
	msg, err := signingString(headers, sig, r)
	if err != nil {
		return err
	}
	dateHeader := "date"
	if r.Header.Get("X-Date") != "" {
		dateHeader = "x-date"
	}
	if !contains(headers, dateHeader) {
		return errInvalidHeader("%s was not a signed header", dateHeader)
	}
	date, err := ParseDate(r.Header.Get(dateHeader))
	if err != nil {
		return err
	}
	skew := now.Sub(date)
	if skew < 0 {
		skew = -skew
	}
	if skew > MaxClockSkew {
		secs := strconv.FormatFloat(skew.Round(time.Millisecond).Seconds(), 'f', -1, 64)
		return errInvalidHeader("clock skew of %ss was greater than %ds", secs, int(MaxClockSkew/time.Second))
	}
	return VerifyBytes(sig.Algorithm, pub, []byte(msg), sig.Signature)
}

// VerifyBytes checks sigBytes, encoded as HTTP Signature encodes it (PKCS#1
// v1.5 for RSA, ASN.1 DER (r,s) for ECDSA, raw 64 bytes for Ed25519), over
// msg with pub using the named algorithm. Errors are Unauthorized with
// MsgInvalidCredentials, the cause kept for logs.
func VerifyBytes(alg string, pub crypto.PublicKey, msg, sigBytes []byte) error {
	a, ok := algorithms[strings.ToLower(alg)]
	if !ok {
		return errdefs.New(errdefs.Unauthorized, "%s is not a supported signing algorithm", printable(strings.ToUpper(alg)))
	}
	key, err := cryptoKey(pub)
	if err != nil {
		return ErrInvalidCredentials(err)
	}
	mismatch := func(kind string) error {
		return ErrInvalidCredentials(fmt.Errorf("algorithm %s cannot be used with an %s key", alg, kind))
	}
	switch k := key.(type) {
	case *rsa.PublicKey:
		if a.family != "rsa" {
			return mismatch("RSA")
		}
		if err := rsa.VerifyPKCS1v15(k, a.hash, digest(a.hash, msg), sigBytes); err != nil {
			return ErrInvalidCredentials(err)
		}
	case *ecdsa.PublicKey:
		if a.family != "ecdsa" {
			return mismatch("ECDSA")
		}
		if !ecdsa.VerifyASN1(k, digest(a.hash, msg), sigBytes) {
			return ErrInvalidCredentials(fmt.Errorf("ECDSA signature does not verify"))
		}
	case ed25519.PublicKey:
		if a.family != "ed25519" {
			return mismatch("Ed25519")
		}
		if !ed25519.Verify(k, msg, sigBytes) {
			return ErrInvalidCredentials(fmt.Errorf("Ed25519 signature does not verify"))
		}
	default:
		return ErrInvalidCredentials(fmt.Errorf("unsupported key type %T", key))
	}
	return nil
}

// cryptoKey turns an ssh.PublicKey or a crypto public key into one of
// *rsa.PublicKey, *ecdsa.PublicKey or ed25519.PublicKey.
func cryptoKey(pub crypto.PublicKey) (crypto.PublicKey, error) {
	if sk, ok := pub.(ssh.PublicKey); ok {
		cpk, ok := sk.(ssh.CryptoPublicKey)
		if !ok {
			return nil, fmt.Errorf("ssh key type %s has no crypto key", sk.Type())
		}
		pub = cpk.CryptoPublicKey()
	}
	switch k := pub.(type) {
	case *rsa.PublicKey:
		if k != nil && k.N != nil {
			return k, nil
		}
	case *ecdsa.PublicKey:
		if k != nil && k.Curve != nil && k.X != nil && k.Y != nil {
			return k, nil
		}
	case ed25519.PublicKey:
		if len(k) == ed25519.PublicKeySize {
			return k, nil
		}
	case *ed25519.PublicKey:
		if k != nil && len(*k) == ed25519.PublicKeySize {
			return *k, nil
		}
	default:
		return nil, fmt.Errorf("unsupported key type %T", pub)
	}
	return nil, fmt.Errorf("incomplete %T key", pub)
}

func digest(h crypto.Hash, msg []byte) []byte {
	switch h {
	case crypto.SHA1:
		d := sha1.Sum(msg)
		return d[:]
	case crypto.SHA256:
		d := sha256.Sum256(msg)
		return d[:]
	case crypto.SHA384:
		d := sha512.Sum384(msg)
		return d[:]
	default:
		d := sha512.Sum512(msg)
		return d[:]
	}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// SignsTarget reports whether the signature covers the request's method and
// target: (request-target) or request-line is among its signed headers.
// node-triton (the triton CLI) signs "(request-target) date"; triton-go
// signs "date" alone.
func (s *Signature) SignsTarget() bool {
	return contains(s.Headers, "(request-target)") || contains(s.Headers, "request-line")
}

// Binding is what a signature that does not cover the request target is
// bound to: the first request it authorises and the client connection that
// request came on. The signature then authorises that same method and
// request target again, or any request on that same connection, until
// Expires (when its Date is too old to verify anyway), and nothing else.
//
// triton-go signs the Date alone, and with an RSA or Ed25519 key signs the
// same Date the same way, so its requests within one second carry one
// signature: on its connection they all pass, while the signature captured
// and replayed by anyone else, on another connection, as another request,
// does not.
type Binding struct {
	// Key identifies the signature: a SHA-256 over the keyId and the
	// signature bytes.
	Key []byte
	// Request is the lower-cased method and the request target as received.
	Request string
	// Conn identifies the client connection: its remote address.
	Conn string
	// Expires is when the signature's Date falls outside MaxClockSkew.
	Expires time.Time
}

// BindingOf returns the binding of a verified signature sig of r, and false
// when sig covers the request target and needs none.
func BindingOf(sig *Signature, r *http.Request) (Binding, bool) {
	if sig.SignsTarget() {
		return Binding{}, false
	}
	h := sha256.New()
	h.Write([]byte(sig.KeyID))
	h.Write([]byte{0})
	h.Write(sig.Signature)
	dateHeader := "date"
	if r.Header.Get("X-Date") != "" {
		dateHeader = "x-date"
	}
	date, err := ParseDate(r.Header.Get(dateHeader))
	if err != nil {
		date = time.Now()
	}
	return Binding{Key: h.Sum(nil), Request: strings.ToLower(r.Method) + " " + requestURI(r), Conn: r.RemoteAddr,
		Expires: date.Add(MaxClockSkew)}, true
}

// ErrSignatureReplayed answers a signature without (request-target) that
// was already used for another request.
func ErrSignatureReplayed() error {
	return errdefs.New(errdefs.Unauthorized, "this signature does not sign (request-target) and was already used for another request on another connection: "+
		"sign each request anew; signing \"(request-target) date\" makes a signature valid for its own method and path only")
}
