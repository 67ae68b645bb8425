package auth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"

	"flotilla/api/errdefs"
)

var testNow = time.Date(2024, 11, 26, 10, 0, 0, 0, time.UTC)

// serverRequest returns a request as a server sees it, RequestURI included.
func serverRequest(method, uri string, header map[string]string) *http.Request {
	r := httptest.NewRequest(method, uri, nil)
	for k, v := range header {
		r.Header.Set(k, v)
	}
	return r
}

func TestParseAuthorizationForms(t *testing.T) {
	sig := base64.StdEncoding.EncodeToString([]byte("0123456789"))
	for _, c := range []struct {
		name   string
		header string
		want   Signature
	}{
		{
			name:   "OKNodeTriton",
			header: `Signature keyId="/alice/keys/aa:bb",algorithm="rsa-sha256",headers="(request-target) date",signature="` + sig + `"`,
			want: Signature{KeyID: "/alice/keys/aa:bb", Login: "alice", KeyRef: "aa:bb", Algorithm: "rsa-sha256",
				Headers: []string{"(request-target)", "date"}, Signature: []byte("0123456789")},
		},
		{
			name:   "OKTritonGoUpperCaseAlgorithm",
			header: `Signature keyId="/alice/keys/id_rsa",algorithm="RSA-SHA512",headers="date",signature="` + sig + `"`,
			want: Signature{KeyID: "/alice/keys/id_rsa", Login: "alice", KeyRef: "id_rsa", Algorithm: "rsa-sha512",
				Headers: []string{"date"}, Signature: []byte("0123456789")},
		},
		{
			name:   "OKLegacy",
			header: `Signature keyId="/demo/keys/id_rsa",algorithm="rsa-sha256" ` + sig,
			want: Signature{KeyID: "/demo/keys/id_rsa", Login: "demo", KeyRef: "id_rsa", Algorithm: "rsa-sha256",
				Headers: []string{"date"}, HeadersDefaulted: true, Signature: []byte("0123456789"), Legacy: true},
		},
		{
			name:   "OKSubUserSpacesAndSchemeCase",
			header: ` signature keyId="/acme/users/bob/keys/k1", algorithm="ed25519-sha512" , signature="` + sig + `" `,
			want: Signature{KeyID: "/acme/users/bob/keys/k1", Login: "acme", SubUser: "bob", KeyRef: "k1", Algorithm: "ed25519-sha512",
				Headers: []string{"date"}, HeadersDefaulted: true, Signature: []byte("0123456789")},
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := ParseAuthorization(c.header)
			if err != nil {
				t.Fatalf("ParseAuthorization: %v", err)
			}
			if !reflect.DeepEqual(*got, c.want) {
				t.Fatalf("got  %+v\nwant %+v", *got, c.want)
			}
			again, err := ParseAuthorization(got.String())
			if err != nil || !reflect.DeepEqual(again, got) {
				t.Fatalf("round trip of %q: %+v, %v", got.String(), again, err)
			}
		})
	}
}

func TestParseAuthorizationErrors(t *testing.T) {
	sig := base64.StdEncoding.EncodeToString([]byte("sig"))
	for _, c := range []struct {
		name     string
		header   string
		wantRest string
		wantMsg  string
	}{
		{"ErrMissing", "", "InvalidCredentials", "You must make authenticated requests to use CloudAPI"},
		{"ErrBasic", "Basic YWxpY2U6c2VjcmV0", "InvalidCredentials", "You must make authenticated requests to use CloudAPI"},
		{"ErrNoParams", "Signature ", "InvalidHeader", "Authorization header invalid: no parameters"},
		{"ErrGarbled", `Signature keyId=/a/keys/b`, "InvalidHeader", "Authorization header invalid: bad parameter format"},
		{"ErrUnterminated", `Signature keyId="/a/keys/b`, "InvalidHeader", "Authorization header invalid: unterminated"},
		{"ErrNoComma", `Signature keyId="/a/keys/b"algorithm="rsa-sha1"`, "InvalidHeader", "Authorization header invalid: expected a comma"},
		{"ErrTrailingComma", `Signature keyId="/a/keys/b",algorithm="rsa-sha1",signature="` + sig + `",`, "InvalidHeader", "trailing comma"},
		{"ErrDuplicate", `Signature keyId="/a/keys/b",keyId="/c/keys/d",algorithm="rsa-sha1",signature="` + sig + `"`, "InvalidHeader", "given twice"},
		{"ErrNoKeyID", `Signature algorithm="rsa-sha1",signature="` + sig + `"`, "InvalidHeader", "Authorization header invalid: keyId was not specified"},
		{"ErrNoAlgorithm", `Signature keyId="/a/keys/b",signature="` + sig + `"`, "InvalidHeader", "Authorization header invalid: algorithm was not specified"},
		{"ErrNoSignature", `Signature keyId="/a/keys/b",algorithm="rsa-sha1"`, "InvalidHeader", "Authorization header invalid: signature was not specified"},
		{"ErrTwoSignatures", `Signature keyId="/a/keys/b",algorithm="rsa-sha1",signature="` + sig + `" ` + sig, "InvalidHeader", "signature given twice"},
		{"ErrLegacyJunk", `Signature keyId="/a/keys/b",algorithm="rsa-sha1" abc def`, "InvalidHeader", "unexpected text"},
		{"ErrBadBase64", `Signature keyId="/a/keys/b",algorithm="rsa-sha1",signature="%%%"`, "InvalidHeader", "not valid base64"},
		{"ErrBadHeaderName", `Signature keyId="/a/keys/b",algorithm="rsa-sha1",headers="date x:y",signature="` + sig + `"`, "InvalidHeader", "not a header name"},
		{"ErrUnknownAlgorithm", `Signature keyId="/a/keys/b",algorithm="hmac-sha256",signature="` + sig + `"`, "InvalidCredentials", "HMAC-SHA256 is not a supported signing algorithm"},
		{"ErrDSA", `Signature keyId="/a/keys/b",algorithm="dsa-sha1",signature="` + sig + `"`, "InvalidCredentials", "DSA-SHA1 is not a supported signing algorithm"},
		{"ErrKeyIDThreeParts", `Signature keyId="/alice/b",algorithm="rsa-sha1",signature="` + sig + `"`, "InvalidCredentials", "Invalid KeyId /alice/b in authorization header"},
		{"ErrKeyIDMy", `Signature keyId="alice/keys/b",algorithm="rsa-sha1",signature="` + sig + `"`, "InvalidCredentials", "Invalid KeyId alice/keys/b in authorization header"},
		{"ErrKeyIDEmptyLogin", `Signature keyId="//keys/b",algorithm="rsa-sha1",signature="` + sig + `"`, "InvalidCredentials", "Invalid KeyId //keys/b in authorization header"},
		{"ErrKeyIDSubUserShape", `Signature keyId="/a/people/u/keys/b",algorithm="rsa-sha1",signature="` + sig + `"`, "InvalidCredentials", "Invalid KeyId"},
		{"ErrTooLong", `Signature keyId="` + strings.Repeat("a", 20000) + `"`, "InvalidHeader", "longer than"},
	} {
		t.Run(c.name, func(t *testing.T) {
			s, err := ParseAuthorization(c.header)
			if err == nil {
				t.Fatalf("ParseAuthorization(%q) = %+v, want error", c.header, s)
			}
			if got := RestCode(err); got != c.wantRest {
				t.Errorf("RestCode = %s, want %s (%v)", got, c.wantRest, err)
			}
			if msg := errdefs.MessageOf(err); !strings.Contains(msg, c.wantMsg) {
				t.Errorf("message %q does not contain %q", msg, c.wantMsg)
			}
		})
	}
}

// signIndependently builds a header by hand and signs it with Go's crypto
// directly, without the package's Signer.
func signIndependently(t *testing.T, k testKey, alg, keyID, headers, signingString string) string {
	t.Helper()
	var raw []byte
	var err error
	hashes := map[string]crypto.Hash{"sha1": crypto.SHA1, "sha256": crypto.SHA256, "sha384": crypto.SHA384, "sha512": crypto.SHA512}
	h := hashes[alg[strings.IndexByte(alg, '-')+1:]]
	switch key := k.key.(type) {
	case ed25519.PrivateKey:
		raw = ed25519.Sign(key, []byte(signingString))
	case *rsa.PrivateKey:
		hh := h.New()
		hh.Write([]byte(signingString))
		raw, err = rsa.SignPKCS1v15(rand.Reader, key, h, hh.Sum(nil))
	case *ecdsa.PrivateKey:
		hh := h.New()
		hh.Write([]byte(signingString))
		raw, err = ecdsa.SignASN1(rand.Reader, key, hh.Sum(nil))
	}
	if err != nil {
		t.Fatal(err)
	}
	return `Signature keyId="` + keyID + `",algorithm="` + alg + `",headers="` + headers + `",signature="` + base64.StdEncoding.EncodeToString(raw) + `"`
}

func TestVerifyIndependentSignatures(t *testing.T) {
	date := testNow.Format(http.TimeFormat)
	uri := "/alice/machines?limit=1000&offset=0&name=a%20b"
	for _, c := range []struct{ key, alg string }{
		{"rsa", "rsa-sha1"}, {"rsa", "rsa-sha256"}, {"rsa", "rsa-sha384"}, {"rsa", "RSA-SHA512"},
		{"ecdsa-p256", "ecdsa-sha256"}, {"ecdsa-p256", "ecdsa-sha512"}, {"ecdsa-p384", "ecdsa-sha384"},
		{"ecdsa-p521", "ecdsa-sha512"}, {"ecdsa-p521", "ecdsa-sha256"}, {"ed25519", "ed25519-sha512"},
	} {
		t.Run(c.key+"/"+c.alg, func(t *testing.T) {
			k := keyNamed(t, c.key)
			h := signIndependently(t, k, strings.ToLower(c.alg), "/alice/keys/"+FingerprintMD5(k.pub),
				"(request-target) date", "(request-target): get "+uri+"\ndate: "+date)
			h = strings.Replace(h, strings.ToLower(c.alg), c.alg, 1)
			r := serverRequest("GET", uri, map[string]string{"Date": date, "Authorization": h})
			sig, err := ParseAuthorization(h)
			if err != nil {
				t.Fatal(err)
			}
			if err := Verify(sig, r, k.pub, testNow.Add(299*time.Second)); err != nil {
				t.Fatalf("Verify with ssh key: %v", err)
			}
			if err := Verify(sig, r, k.key.Public(), testNow.Add(-299*time.Second)); err != nil {
				t.Fatalf("Verify with crypto key: %v", err)
			}
		})
	}
}

func TestVerifyFailures(t *testing.T) {
	k := keyNamed(t, "ecdsa-p256")
	other := keyNamed(t, "ecdsa-p384")
	date := testNow.Format(http.TimeFormat)
	uri := "/alice/machines?limit=1"
	good := signIndependently(t, k, "ecdsa-sha256", "/alice/keys/x", "(request-target) date", "(request-target): get "+uri+"\ndate: "+date)
	for _, c := range []struct {
		name     string
		header   string
		method   string
		uri      string
		hdrs     map[string]string
		pub      crypto.PublicKey
		now      time.Time
		wantRest string
		wantMsg  string
	}{
		{name: "OK", header: good, wantRest: ""},
		{name: "ErrWrongKey", header: good, pub: other.pub, wantRest: "InvalidCredentials", wantMsg: MsgInvalidCredentials},
		{name: "ErrKeyTypeMismatch", header: good, pub: keyNamed(t, "ed25519").pub, wantRest: "InvalidCredentials", wantMsg: MsgInvalidCredentials},
		{name: "ErrAlgorithmMismatch", header: strings.Replace(good, "ecdsa-sha256", "rsa-sha256", 1), wantRest: "InvalidCredentials", wantMsg: MsgInvalidCredentials},
		{name: "ErrTamperedURI", header: good, uri: "/alice/machines?limit=2", wantRest: "InvalidCredentials", wantMsg: MsgInvalidCredentials},
		{name: "ErrTamperedMethod", header: good, method: "DELETE", wantRest: "InvalidCredentials", wantMsg: MsgInvalidCredentials},
		{name: "ErrTamperedDate", header: good, hdrs: map[string]string{"Date": testNow.Add(time.Second).Format(http.TimeFormat)}, wantRest: "InvalidCredentials", wantMsg: MsgInvalidCredentials},
		{name: "ErrStale", header: good, now: testNow.Add(301 * time.Second), wantRest: "InvalidHeader",
			wantMsg: "Authorization header invalid: clock skew of 301s was greater than 300s"},
		{name: "ErrFuture", header: good, now: testNow.Add(-400*time.Second - 500*time.Millisecond), wantRest: "InvalidHeader",
			wantMsg: "Authorization header invalid: clock skew of 400.5s was greater than 300s"},
		{name: "ErrMissingDate", header: good, hdrs: map[string]string{"Date": ""}, wantRest: "InvalidHeader", wantMsg: "Authorization header invalid: date was not in the request"},
		{name: "ErrBadDate", header: good, hdrs: map[string]string{"Date": "yesterday"}, wantRest: "InvalidHeader", wantMsg: "is not an RFC 1123 date"},
		{name: "ErrDateNotSigned", header: signIndependently(t, k, "ecdsa-sha256", "/alice/keys/x", "(request-target)", "(request-target): get "+uri),
			wantRest: "InvalidHeader", wantMsg: "Authorization header invalid: date was not a signed header"},
		{name: "ErrXDateNotSigned", header: good, hdrs: map[string]string{"X-Date": date}, wantRest: "InvalidHeader", wantMsg: "x-date was not a signed header"},
		{name: "ErrUnknownPseudoHeader", header: signIndependently(t, k, "ecdsa-sha256", "/alice/keys/x", "(created) date", "x"),
			wantRest: "InvalidHeader", wantMsg: "pseudo-header (created) is not supported"},
	} {
		t.Run(c.name, func(t *testing.T) {
			method, u, pub, now := "GET", uri, crypto.PublicKey(k.pub), testNow
			if c.method != "" {
				method = c.method
			}
			if c.uri != "" {
				u = c.uri
			}
			if c.pub != nil {
				pub = c.pub
			}
			if !c.now.IsZero() {
				now = c.now
			}
			r := serverRequest(method, u, map[string]string{"Date": date})
			for hk, hv := range c.hdrs {
				if hv == "" {
					r.Header.Del(hk)
				} else {
					r.Header.Set(hk, hv)
				}
			}
			sig, err := ParseAuthorization(c.header)
			if err != nil {
				t.Fatal(err)
			}
			err = Verify(sig, r, pub, now)
			if got := restCodeOrEmpty(err); got != c.wantRest {
				t.Fatalf("RestCode = %q, want %q (err %v)", got, c.wantRest, err)
			}
			if err != nil && !strings.Contains(errdefs.MessageOf(err), c.wantMsg) {
				t.Errorf("message %q does not contain %q", errdefs.MessageOf(err), c.wantMsg)
			}
		})
	}
}

func restCodeOrEmpty(err error) string {
	if err == nil {
		return ""
	}
	return RestCode(err)
}

func TestVerifyLegacyAndDefaults(t *testing.T) {
	k := keyNamed(t, "rsa")
	date := testNow.Format(time.RFC1123) // the UTC form
	raw, err := SignBytes("rsa-sha256", k.key, []byte("date: "+date))
	if err != nil {
		t.Fatal(err)
	}
	legacy := `Signature keyId="/demo/keys/id_rsa",algorithm="rsa-sha256" ` + base64.StdEncoding.EncodeToString(raw)
	sig, err := ParseAuthorization(legacy)
	if err != nil {
		t.Fatal(err)
	}
	r := serverRequest("POST", "/demo/machines", map[string]string{"Date": date})
	if err := Verify(sig, r, k.pub, testNow); err != nil {
		t.Fatalf("legacy form: %v", err)
	}

	// With X-Date and no headers list, the default is x-date.
	raw, err = SignBytes("rsa-sha256", k.key, []byte("x-date: "+date))
	if err != nil {
		t.Fatal(err)
	}
	sig.Signature = raw
	r = serverRequest("GET", "/demo", map[string]string{"X-Date": date})
	if err := Verify(sig, r, k.pub, testNow); err != nil {
		t.Fatalf("x-date default: %v", err)
	}
}

func TestSigningStringHeaders(t *testing.T) {
	r := serverRequest("PUT", "/a/b?c=d%2F", map[string]string{"Date": "D", "Content-MD5": "M"})
	r.Header.Add("X-Multi", "1")
	r.Header.Add("X-Multi", "2")
	r.Host = "cloud.example:8443"
	s := &Signature{KeyID: "/a/keys/k", Algorithm: "rsa-sha256",
		Headers: []string{"(request-target)", "host", "date", "content-md5", "x-multi", "(keyid)", "(algorithm)", "request-line"}}
	got, err := s.SigningString(r)
	if err != nil {
		t.Fatal(err)
	}
	want := "(request-target): put /a/b?c=d%2F\nhost: cloud.example:8443\ndate: D\ncontent-md5: M\nx-multi: 1, 2\n" +
		"(keyid): /a/keys/k\n(algorithm): rsa-sha256\nPUT /a/b?c=d%2F HTTP/1.1"
	if got != want {
		t.Errorf("SigningString:\n%s\nwant\n%s", got, want)
	}
}

func TestParseDate(t *testing.T) {
	for _, v := range []string{
		"Tue, 26 Nov 2024 10:00:00 GMT",
		"Tue, 26 Nov 2024 10:00:00 UTC",
		"Tue, 26 Nov 2024 10:00:00 +0000",
		"Tuesday, 26-Nov-24 10:00:00 GMT",
		"Tue Nov 26 10:00:00 2024",
	} {
		got, err := ParseDate(v)
		if err != nil || !got.Equal(testNow) {
			t.Errorf("ParseDate(%q) = %v, %v; want %v", v, got, err, testNow)
		}
	}
	if _, err := ParseDate("2024-11-26T10:00:00Z"); err == nil {
		t.Error("ParseDate accepted RFC 3339")
	}
}

func TestRestCode(t *testing.T) {
	for err, want := range map[error]string{
		ErrAuthRequired():                 "InvalidCredentials",
		ErrInvalidCredentials(nil):        "InvalidCredentials",
		errInvalidHeader("x"):             "InvalidHeader",
		ErrAccountDisabled():              "NotAuthorized",
		ErrThrottled(10):                  "TooManyRequests",
		errdefs.New(errdefs.Internal, ""): "InternalError",
	} {
		if got := RestCode(err); got != want {
			t.Errorf("RestCode(%v) = %s, want %s", err, got, want)
		}
	}
	if got := errdefs.MessageOf(ErrThrottled(10)); got != "You have exceeded your request rate of 10 r/s." {
		t.Errorf("throttle message %q", got)
	}
	// The cause of a failed verification stays out of the client's message.
	err := ErrInvalidCredentials(causeErr{})
	if errdefs.MessageOf(err) != MsgInvalidCredentials || !strings.Contains(err.Error(), "secret detail") {
		t.Errorf("MessageOf = %q, Error = %q", errdefs.MessageOf(err), err.Error())
	}
}

type causeErr struct{}

func (causeErr) Error() string { return "secret detail" }

func TestParseDateRefusesOtherZones(t *testing.T) {
	for _, v := range []string{"Tue, 26 Nov 2024 10:00:00 PST", "Tue, 26 Nov 2024 10:00:00 CET"} {
		if d, err := ParseDate(v); err == nil {
			t.Errorf("ParseDate(%q) = %v, want an error", v, d)
		}
	}
}
