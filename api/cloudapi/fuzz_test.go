package cloudapi_test

import (
	"crypto"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"flotilla/api/auth"
)

// FuzzAuthorizationHeader sends arbitrary Authorization and Date headers
// through the whole server (parser, key lookup in PostgreSQL, verification):
// every answer must be 400 InvalidHeader or 401 InvalidCredentials with a
// JSON {code,message} body, never a 500 or a panic.
func FuzzAuthorizationHeader(f *testing.F) {
	e := newEnv(f)
	h := e.srv.Config.Handler
	now := time.Now().UTC().Format(http.TimeFormat)

	// Seeds: real headers from every client form, signed over a Date ten
	// minutes old (sent with it: clock skew; sent with now: the signature
	// does not verify), and classic garbage.
	old := func() time.Time { return time.Now().Add(-10 * time.Minute) }
	for _, form := range []auth.Form{auth.FormNodeTriton, auth.FormTritonGo, auth.FormLegacy} {
		for _, k := range []crypto.Signer{e.keys.ed25519, e.keys.rsa, e.keys.ecdsa} {
			s := e.newSigner("alice", k, auth.WithForm(form), auth.WithClock(old))
			req := httptest.NewRequest("GET", "/alice", nil)
			if err := s.Sign(req); err != nil {
				f.Fatal(err)
			}
			f.Add(req.Header.Get("Authorization"), now)
			f.Add(req.Header.Get("Authorization"), req.Header.Get("Date"))
		}
	}
	sig := base64.StdEncoding.EncodeToString(make([]byte, 64))
	for _, seed := range []string{
		"", "Signature", "Signature ", "signature keyId=", `Signature keyId="/alice/keys/id_rsa"`,
		`Signature keyId="/alice/keys/id_rsa",algorithm="rsa-sha256",signature="` + sig + `"`,
		`Signature keyId="/alice/keys/id_rsa",algorithm="rsa-sha256",headers="(request-target) date host",signature="` + sig + `"`,
		`Signature keyId="/alice/users/bob/keys/x",algorithm="ed25519-sha512",signature="` + sig + `"`,
		`Signature keyId="//keys/",algorithm="ed25519-sha512",signature="` + sig + `"`,
		`Signature keyId="/alice/keys/id_rsa",algorithm="rsa-sha256" ` + sig,
		`Signature keyId="/alice/keys/id_rsa",algorithm="rsa-sha256",headers="",signature="` + sig + `"`,
		`Signature keyId="/alice/keys/id_rsa",,algorithm="RSA-SHA256",signature="` + sig + `"`,
		`Signature keyId="/alice/keys/` + strings.Repeat("a", 5000) + `",algorithm="rsa-sha256",signature="x"`,
		"Basic YWxpY2U6cGFzcw==", "Bearer abc", "Signature keyId=\"/alice/keys/id_rsa\"\x00,algorithm=\"rsa-sha1\"",
	} {
		f.Add(seed, now)
	}
	f.Add(`Signature keyId="/alice/keys/id_rsa",algorithm="rsa-sha256",signature="`+sig+`"`, "yesterday")
	f.Add(`Signature keyId="/alice/keys/id_rsa",algorithm="rsa-sha256",signature="`+sig+`"`, "Mon, 02 Jan 2006 15:04:05 PST")

	f.Fuzz(func(t *testing.T, authz, date string) {
		req := httptest.NewRequest("GET", "/alice/machines", nil)
		req.Header["Authorization"] = []string{authz}
		req.Header["Date"] = []string{date}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		var body struct{ Code, Message string }
		if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil || body.Message == "" {
			t.Fatalf("Authorization %q Date %q: %d with body %q", authz, date, rec.Code, rec.Body.Bytes())
		}
		switch {
		case rec.Code == http.StatusBadRequest && body.Code == "InvalidHeader":
			if !strings.HasPrefix(body.Message, "Authorization header invalid: ") {
				t.Fatalf("InvalidHeader message %q", body.Message)
			}
		case rec.Code == http.StatusUnauthorized && body.Code == "InvalidCredentials":
		default:
			t.Fatalf("Authorization %q Date %q: %d %+v, want 400 InvalidHeader or 401 InvalidCredentials", authz, date, rec.Code, body)
		}
		if rec.Header().Get("Content-Type") != "application/json" || rec.Header().Get("Content-Length") != strconv.Itoa(rec.Body.Len()) {
			t.Fatalf("headers %v for a %d-byte body", rec.Header(), rec.Body.Len())
		}
	})
}
