package cloudapi_test

import (
	"crypto"
	"crypto/md5"
	"encoding/base64"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"flotilla/api/auth"
)

func fingerprint(t *testing.T, k crypto.Signer) string {
	t.Helper()
	pub, err := ssh.NewPublicKey(k.Public())
	if err != nil {
		t.Fatal(err)
	}
	return auth.FingerprintMD5(pub)
}

// TestAuthFailures covers every way authentication can fail: each answers the
// exact status and {code,message} CloudAPI does, never a 500.
func TestAuthFailures(t *testing.T) {
	e := newEnv(t)
	aliceFP := fingerprint(t, e.keys.ed25519)
	bobFP := fingerprint(t, e.keys.bob)
	const badCreds = "Invalid authorization credentials supplied"

	cases := []struct {
		name    string
		authz   string // sent as is, unsigned, when set
		signer  *auth.Signer
		path    string
		status  int
		code    string
		message string
	}{
		{name: "ErrNoAuthorization", authz: "-", status: 401, code: "InvalidCredentials",
			message: "You must make authenticated requests to use CloudAPI"},
		{name: "ErrBasicScheme", authz: "Basic YWxpY2U6c2VjcmV0", status: 401, code: "InvalidCredentials",
			message: "You must make authenticated requests to use CloudAPI"},
		{name: "ErrNoKeyId", authz: `Signature algorithm="ed25519-sha512",signature="AAAA"`, status: 400,
			code: "InvalidHeader", message: "Authorization header invalid: keyId was not specified"},
		{name: "ErrSignatureNotBase64", authz: `Signature keyId="/alice/keys/id_ed25519",algorithm="ed25519-sha512",signature="!!!"`,
			status: 400, code: "InvalidHeader", message: "Authorization header invalid: signature is not valid base64"},
		{name: "ErrGarbledParams", authz: `Signature keyId="/alice/keys/id_ed25519",algorithm`, status: 400, code: "InvalidHeader"},
		{name: "ErrUnsupportedAlgorithm", authz: `Signature keyId="/alice/keys/id_ed25519",algorithm="md5-rot13",signature="AAAA"`,
			status: 401, code: "InvalidCredentials", message: "MD5-ROT13 is not a supported signing algorithm"},
		{name: "ErrBadKeyIdShape", authz: `Signature keyId="alice/id_ed25519",algorithm="ed25519-sha512",signature="AAAA"`,
			status: 401, code: "InvalidCredentials", message: "Invalid KeyId alice/id_ed25519 in authorization header"},
		{name: "ErrBadSignature", authz: `Signature keyId="/alice/keys/id_ed25519",algorithm="ed25519-sha512",headers="date",signature="` +
			base64.StdEncoding.EncodeToString(make([]byte, 64)) + `"`, status: 401, code: "InvalidCredentials", message: badCreds},
		{name: "ErrExpiredDate", signer: e.newSigner("alice", e.keys.ed25519, auth.WithClock(func() time.Time { return time.Now().Add(-10 * time.Minute) })),
			status: 400, code: "InvalidHeader"},
		{name: "ErrFutureDate", signer: e.newSigner("alice", e.keys.ed25519, auth.WithClock(func() time.Time { return time.Now().Add(6 * time.Minute) })),
			status: 400, code: "InvalidHeader"},
		{name: "ErrWrongKey", signer: mustSigner(t, "alice", aliceFP, e.keys.spare), status: 401, code: "InvalidCredentials", message: badCreds},
		{name: "ErrUnknownKey", signer: e.newSigner("alice", e.keys.spare), status: 401, code: "InvalidCredentials", message: badCreds},
		{name: "ErrUnknownLogin", signer: e.newSigner("mallory", e.keys.ed25519), status: 401, code: "InvalidCredentials", message: badCreds},
		{name: "ErrAnotherTenantsKeyId", signer: mustSigner(t, "alice", bobFP, e.keys.bob), status: 401, code: "InvalidCredentials", message: badCreds},
		{name: "ErrAnotherTenantsKeyName", signer: mustSigner(t, "alice", "id_bob", e.keys.bob), status: 401, code: "InvalidCredentials", message: badCreds},
		{name: "ErrSubUser", signer: e.newSigner("alice", e.keys.ed25519, auth.WithSubUser("carol")), status: 401, code: "InvalidCredentials", message: badCreds},
		{name: "ErrAnotherAccountsPath", signer: e.newSigner("bob", e.keys.bob), path: "/alice/machines", status: 403,
			code: "NotAuthorized", message: "You do not have permission to access /alice/machines"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := c.path
			if path == "" {
				path = "/alice"
			}
			r := request{method: "GET", path: path, signer: c.signer}
			if c.authz != "" {
				r.unsigned = true
				r.header = map[string]string{"Date": time.Now().UTC().Format(http.TimeFormat)}
				if c.authz != "-" {
					r.header["Authorization"] = c.authz
				}
			}
			resp, b := e.do(r)
			switch {
			case c.message != "":
				wantError(t, resp, b, c.status, c.code, c.message)
			case strings.HasSuffix(c.name, "Date"):
				wantErrorLike(t, resp, b, c.status, c.code, `^Authorization header invalid: clock skew of (3[0-9]{2}|6[0-9]{2})(\.[0-9]+)?s was greater than 300s$`)
			default:
				wantErrorLike(t, resp, b, c.status, c.code, `^Authorization header invalid: .+`)
			}
			if resp.Header.Get("Api-Version") != "9.0.0" {
				t.Errorf("Api-Version %q on an auth failure", resp.Header.Get("Api-Version"))
			}
		})
	}

	// Every key type alice has, in both client forms, authenticates.
	t.Run("OKEveryKeyAndForm", func(t *testing.T) {
		for _, k := range []struct {
			name string
			key  crypto.Signer
		}{{"ed25519", e.keys.ed25519}, {"rsa", e.keys.rsa}, {"ecdsa", e.keys.ecdsa}} {
			for _, form := range []auth.Form{auth.FormNodeTriton, auth.FormTritonGo, auth.FormLegacy} {
				s := e.newSigner("alice", k.key, auth.WithForm(form))
				resp, b := e.do(request{method: "GET", path: "/my", signer: s})
				wantStatus(t, resp, b, http.StatusOK)
				if got := decode[map[string]any](t, b)["login"]; got != "alice" {
					t.Errorf("%s form %d: login %v", k.name, form, got)
				}
			}
		}
		// By key name as well as by fingerprint.
		resp, b := e.do(request{method: "GET", path: "/alice", signer: mustSigner(t, "alice", "id_rsa", e.keys.rsa)})
		wantStatus(t, resp, b, http.StatusOK)
	})
}

func mustSigner(t *testing.T, login, keyID string, k crypto.Signer) *auth.Signer {
	t.Helper()
	s, err := auth.NewSigner(login, keyID, k)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// wantErrorLike is wantError with a message pattern.
func wantErrorLike(t *testing.T, resp *http.Response, body []byte, status int, code, pattern string) {
	t.Helper()
	wantStatus(t, resp, body, status)
	got := decode[map[string]any](t, body)
	msg, _ := got["message"].(string)
	if len(got) != 2 || got["code"] != code || !regexp.MustCompile(pattern).MatchString(msg) {
		t.Errorf("error body %s, want code %s and a message matching %s", body, code, pattern)
	}
}

// TestOperatorActsAs: an operator's key works on another account's path,
// and each such request leaves an "operator_act_as" audit row.
func TestOperatorActsAs(t *testing.T) {
	e := newEnv(t)
	ops := e.newSigner("ops", e.keys.ops)
	resp, b := e.do(request{method: "GET", path: "/alice", signer: ops})
	wantStatus(t, resp, b, http.StatusOK)
	acct := decode[map[string]any](t, b)
	if acct["login"] != "alice" || acct["id"] != e.alice.ID {
		t.Errorf("operator got account %v, want alice", acct)
	}
	resp, b = e.do(request{method: "GET", path: "/alice/keys", signer: ops})
	wantStatus(t, resp, b, http.StatusOK)
	if keys := decode[[]map[string]any](t, b); len(keys) != 3 {
		t.Errorf("operator sees %d of alice's keys, want 3", len(keys))
	}
	var n int
	var caller, params map[string]any
	err := e.st.Pool().QueryRow(e.ctx, `SELECT count(*) OVER (), caller, params FROM audit
		WHERE owner_id = $1 AND action = 'operator_act_as' ORDER BY id DESC LIMIT 1`, e.alice.ID).Scan(&n, &caller, &params)
	if err != nil {
		t.Fatalf("no operator_act_as audit row: %v", err)
	}
	if n != 2 || caller["type"] != "operator" || caller["user"] != "ops" || params["path"] != "/alice/keys" || params["method"] != "GET" {
		t.Errorf("audit: %d rows, last caller %v params %v", n, caller, params)
	}
	// The operator's own path is not an act-as.
	resp, b = e.do(request{method: "GET", path: "/my", signer: ops})
	wantStatus(t, resp, b, http.StatusOK)
	if decode[map[string]any](t, b)["login"] != "ops" {
		t.Errorf("/my for ops: %s", b)
	}
	// Acting as nobody is not found, not a 500.
	resp, b = e.do(request{method: "GET", path: "/nobody", signer: ops})
	wantError(t, resp, b, http.StatusNotFound, "ResourceNotFound", "account nobody not found")
}

// TestRequestErrors covers body, digest, version and routing errors.
func TestRequestErrors(t *testing.T) {
	e := newEnv(t)

	t.Run("ErrBodyTooLarge", func(t *testing.T) {
		big := `{"name":"` + strings.Repeat("x", 100000) + `"}`
		resp, b := e.post("/alice/machines", big)
		wantError(t, resp, b, http.StatusRequestEntityTooLarge, "RequestTooLarge", "request body is larger than 100000 bytes")
	})
	t.Run("OKBodyAtLimit", func(t *testing.T) {
		// 100000 bytes exactly is allowed (it then fails validation, not size).
		body := `{"key":"` + strings.Repeat("x", 100000-10) + `"}`
		if len(body) != 100000 {
			t.Fatalf("body is %d bytes", len(body))
		}
		resp, b := e.post("/alice/keys", body)
		if resp.StatusCode == http.StatusRequestEntityTooLarge {
			t.Fatalf("a 100000-byte body was refused as too large: %s", b)
		}
		wantStatus(t, resp, b, http.StatusConflict)
	})
	t.Run("ErrBadJSON", func(t *testing.T) {
		resp, b := e.post("/alice/machines", `{"name":"x",}`)
		wantError(t, resp, b, http.StatusBadRequest, "InvalidContent",
			"Invalid JSON: invalid character '}' looking for beginning of object key string")
	})
	t.Run("ErrJSONNotObject", func(t *testing.T) {
		resp, b := e.post("/alice/keys", `["key"]`)
		wantErrorLike(t, resp, b, http.StatusBadRequest, "InvalidContent", `^Invalid JSON: `)
	})
	t.Run("ErrContentMD5", func(t *testing.T) {
		body := `{"name":"x"}`
		resp, b := e.do(request{method: "POST", path: "/alice/keys", body: body,
			header: map[string]string{"Content-MD5": "1B2M2Y8AsgTpgAmY7PhCfg=="}})
		wantError(t, resp, b, http.StatusBadRequest, "BadDigest", "Content-MD5 '1B2M2Y8AsgTpgAmY7PhCfg==' didn't match body")
	})
	t.Run("OKContentMD5", func(t *testing.T) {
		body := `{"name":"by-md5","key":"` + authorizedKey(t, e.keys.spare, "spare") + `"}`
		sum := md5.Sum([]byte(body))
		resp, b := e.do(request{method: "POST", path: "/alice/keys", body: body,
			header: map[string]string{"Content-MD5": base64.StdEncoding.EncodeToString(sum[:])}})
		wantStatus(t, resp, b, http.StatusCreated)
	})
	t.Run("ErrAcceptVersion", func(t *testing.T) {
		resp, b := e.do(request{method: "GET", path: "/alice", header: map[string]string{"Accept-Version": "~10"}})
		wantError(t, resp, b, http.StatusBadRequest, "InvalidVersion", "~10 is not supported by GET /alice")
		if v := resp.Header.Get("Api-Version"); v != "" {
			t.Errorf("Api-Version %q on InvalidVersion", v)
		}
	})
	t.Run("ErrXAPIVersion", func(t *testing.T) {
		resp, b := e.do(request{method: "GET", path: "/alice/keys", header: map[string]string{"X-Api-Version": "6.5"}})
		wantError(t, resp, b, http.StatusBadRequest, "InvalidVersion", "6.5 is not supported by GET /alice/keys")
	})
	t.Run("ErrUnknownRoute", func(t *testing.T) {
		resp, b := e.get("/alice/nothing/here")
		wantError(t, resp, b, http.StatusNotFound, "ResourceNotFound", "/alice/nothing/here does not exist")
	})
	t.Run("ErrUnknownTopLevelRoute", func(t *testing.T) {
		resp, b := e.do(request{method: "GET", path: "/", unsigned: true})
		wantError(t, resp, b, http.StatusNotFound, "ResourceNotFound", "/ does not exist")
	})
	t.Run("ErrMethodNotAllowed", func(t *testing.T) {
		resp, b := e.do(request{method: "PATCH", path: "/alice/machines"})
		wantError(t, resp, b, http.StatusMethodNotAllowed, "MethodNotAllowed", "PATCH is not allowed")
	})
	t.Run("ErrStateFilter", func(t *testing.T) {
		for _, st := range []string{"deleted", "failed", "bogus"} {
			resp, b := e.get("/alice/machines?state=" + st)
			wantError(t, resp, b, http.StatusConflict, "InvalidArgument", st+" is not a valid state")
		}
	})
	t.Run("ErrLimit", func(t *testing.T) {
		resp, b := e.get("/alice/machines?limit=1001")
		wantError(t, resp, b, http.StatusConflict, "InvalidArgument", "limit must be a number between 1 and 1000")
	})
	t.Run("ErrMachineNotFound", func(t *testing.T) {
		resp, b := e.get("/alice/machines/6f1f6a4e-0000-4000-8000-000000000000")
		wantStatus(t, resp, b, http.StatusNotFound)
		if decode[map[string]any](t, b)["code"] != "ResourceNotFound" {
			t.Errorf("body %s", b)
		}
	})
	t.Run("ErrMissingKey", func(t *testing.T) {
		resp, b := e.post("/alice/keys", map[string]any{"name": "nokey"})
		wantError(t, resp, b, http.StatusConflict, "MissingParameter", "key is a required argument")
	})
}

// TestRateLimit: over the per-account rate a caller gets 429 with
// Retry-After and a JSON body; another account is unaffected.
func TestRateLimit(t *testing.T) {
	e := newEnv(t, envOptions{RateLimit: 0.5, Burst: 3})
	for range 3 {
		resp, b := e.get("/alice")
		wantStatus(t, resp, b, http.StatusOK)
	}
	resp, b := e.get("/alice")
	wantError(t, resp, b, http.StatusTooManyRequests, "TooManyRequests", "You have exceeded your request rate of 0.5 r/s.")
	ra, err := strconv.Atoi(resp.Header.Get("Retry-After"))
	if err != nil || ra < 1 || ra > 2 {
		t.Errorf("Retry-After %q, want 1 or 2 seconds", resp.Header.Get("Retry-After"))
	}
	resp, b = e.do(request{method: "GET", path: "/bob", signer: e.newSigner("bob", e.keys.bob)})
	wantStatus(t, resp, b, http.StatusOK)
}
