package auth

import (
	"context"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	triton "github.com/joyent/triton-go"
	"github.com/joyent/triton-go/account"
	"github.com/joyent/triton-go/authentication"
	"golang.org/x/crypto/ssh"
)

// verifyingServer is a CloudAPI stand-in that authenticates every request
// with this package against one account's keys and records the outcome.
type verifyingServer struct {
	*httptest.Server
	mu    sync.Mutex
	keys  map[string]ssh.PublicKey // by name and by MD5 fingerprint
	seen  []*Signature
	auths []string
}

func newVerifyingServer(t *testing.T, login string, keys map[string]ssh.PublicKey) *verifyingServer {
	t.Helper()
	vs := &verifyingServer{keys: map[string]ssh.PublicKey{}}
	for name, k := range keys {
		vs.keys[name] = k
		vs.keys[FingerprintMD5(k)] = k
	}
	vs.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sig, err := ParseAuthorization(r.Header.Get("Authorization"))
		if err == nil {
			vs.mu.Lock()
			vs.seen = append(vs.seen, sig)
			vs.auths = append(vs.auths, r.Header.Get("Authorization"))
			vs.mu.Unlock()
			if k, ok := vs.keys[sig.KeyRef]; !ok || sig.Login != login {
				err = ErrInvalidCredentials(nil)
			} else {
				err = Verify(sig, r, k, time.Now())
			}
		}
		w.Header().Set("Content-Type", "application/json")
		if err != nil {
			w.WriteHeader(http.StatusUnauthorized)
			json.NewEncoder(w).Encode(map[string]string{"code": RestCode(err), "message": err.Error()})
			return
		}
		json.NewEncoder(w).Encode(map[string]string{"login": login, "id": "00000000-0000-0000-0000-000000000001"})
	}))
	t.Cleanup(vs.Close)
	return vs
}

func (vs *verifyingServer) last() (*Signature, string) {
	vs.mu.Lock()
	defer vs.mu.Unlock()
	return vs.seen[len(vs.seen)-1], vs.auths[len(vs.auths)-1]
}

// TestSignerRoundTrip sends requests signed by Signer over real HTTP and
// verifies them on the server side, for every key type and header form.
func TestSignerRoundTrip(t *testing.T) {
	keys := map[string]ssh.PublicKey{}
	for _, k := range testKeys(t) {
		keys[k.name] = k.pub
	}
	srv := newVerifyingServer(t, "alice", keys)
	for _, k := range testKeys(t) {
		for _, f := range []struct {
			name        string
			form        Form
			wantHeaders string
		}{{"node", FormNodeTriton, "(request-target) date"}, {"tritongo", FormTritonGo, "date"}, {"legacy", FormLegacy, ""}} {
			t.Run(k.name+"/"+f.name, func(t *testing.T) {
				keyRef := "" // the MD5 fingerprint
				if f.form == FormLegacy {
					keyRef = k.name
				}
				s, err := NewSigner("alice", keyRef, k.key, WithForm(f.form))
				if err != nil {
					t.Fatal(err)
				}
				req, err := http.NewRequest("GET", srv.URL+"/alice/machines?name=a%20b&limit=1000&as-role=r1,r2", nil)
				if err != nil {
					t.Fatal(err)
				}
				if err := s.Sign(req); err != nil {
					t.Fatal(err)
				}
				resp, err := srv.Client().Do(req)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if resp.StatusCode != 200 {
					t.Fatalf("status %d", resp.StatusCode)
				}
				sig, auth := srv.last()
				if sig.Algorithm != s.Algorithm() || sig.KeyID != s.KeyID() || sig.Legacy != (f.form == FormLegacy) {
					t.Errorf("server saw %+v", sig)
				}
				if f.wantHeaders != "" && !strings.Contains(auth, `headers="`+f.wantHeaders+`"`) {
					t.Errorf("Authorization %q lacks headers=%q", auth, f.wantHeaders)
				}
				date := req.Header.Get("Date")
				if (f.form == FormTritonGo) != strings.HasSuffix(date, " UTC") {
					t.Errorf("form %s sent Date %q", f.name, date)
				}
			})
		}
	}
}

func TestSignerDefaultAlgorithms(t *testing.T) {
	want := map[string][2]string{
		"rsa":        {"rsa-sha256", "rsa-sha512"},
		"ecdsa-p256": {"ecdsa-sha256", "ecdsa-sha512"},
		"ecdsa-p384": {"ecdsa-sha384", "ecdsa-sha512"},
		"ecdsa-p521": {"ecdsa-sha512", "ecdsa-sha512"},
		"ed25519":    {"ed25519-sha512", "ed25519-sha512"},
	}
	for _, k := range testKeys(t) {
		for i, form := range []Form{FormNodeTriton, FormTritonGo} {
			s, err := NewSigner("alice", "", k.key, WithForm(form))
			if err != nil {
				t.Fatal(err)
			}
			if s.Algorithm() != want[k.name][i] {
				t.Errorf("%s form %d: algorithm %s, want %s", k.name, form, s.Algorithm(), want[k.name][i])
			}
			if s.KeyID() != "/alice/keys/"+FingerprintMD5(k.pub) {
				t.Errorf("KeyID = %s", s.KeyID())
			}
		}
	}
}

func TestSignerOptionsAndErrors(t *testing.T) {
	k := keyNamed(t, "rsa")
	s, err := NewSigner("acme", "k1", k.key, WithSubUser("bob"), WithAlgorithm("RSA-SHA1"),
		WithClock(func() time.Time { return testNow }))
	if err != nil {
		t.Fatal(err)
	}
	req := httptest.NewRequest("GET", "/acme/machines", nil)
	req.RequestURI = ""
	if err := s.Sign(req); err != nil {
		t.Fatal(err)
	}
	if req.Header.Get("Date") != "Tue, 26 Nov 2024 10:00:00 GMT" {
		t.Errorf("Date = %q", req.Header.Get("Date"))
	}
	sig, err := ParseAuthorization(req.Header.Get("Authorization"))
	if err != nil {
		t.Fatal(err)
	}
	if sig.Login != "acme" || sig.SubUser != "bob" || sig.KeyRef != "k1" || sig.Algorithm != "rsa-sha1" {
		t.Errorf("parsed %+v", sig)
	}
	if err := Verify(sig, req, k.pub, testNow); err != nil {
		t.Errorf("Verify: %v", err)
	}

	for name, fn := range map[string]func() (*Signer, error){
		"ErrEmptyLogin":     func() (*Signer, error) { return NewSigner("", "", k.key) },
		"ErrSlashedKeyID":   func() (*Signer, error) { return NewSigner("a", "x/y", k.key) },
		"ErrNilKey":         func() (*Signer, error) { return NewSigner("a", "", nil) },
		"ErrAlgorithmOnKey": func() (*Signer, error) { return NewSigner("a", "", k.key, WithAlgorithm("ecdsa-sha256")) },
		"ErrBadSubUser":     func() (*Signer, error) { return NewSigner("a", "", k.key, WithSubUser("")) },
		"ErrBadForm":        func() (*Signer, error) { return NewSigner("a", "", k.key, WithForm(Form(9))) },
	} {
		if s, err := fn(); err == nil {
			t.Errorf("%s: got %v, want error", name, s)
		}
	}
}

// TestTritonGoSDKSigner verifies requests made by the real triton-go SDK,
// signed by its PrivateKeySigner (rsa-sha1 over "date", UTC-form Date).
func TestTritonGoSDKSigner(t *testing.T) {
	k := keyNamed(t, "rsa")
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k.key.(*rsa.PrivateKey))})
	fp := FingerprintMD5(k.pub)
	tgSigner, err := authentication.NewPrivateKeySigner(authentication.PrivateKeySignerInput{
		KeyID: fp, PrivateKeyMaterial: keyPEM, AccountName: "alice",
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := newVerifyingServer(t, "alice", map[string]ssh.PublicKey{"id_rsa": k.pub})
	client, err := account.NewClient(&triton.ClientConfig{TritonURL: srv.URL, AccountName: "alice",
		Signers: []authentication.Signer{tgSigner}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	acct, err := client.Get(ctx, &account.GetInput{})
	if err != nil {
		t.Fatalf("triton-go Get account: %v", err)
	}
	if acct.Login != "alice" {
		t.Errorf("login %q", acct.Login)
	}
	sig, _ := srv.last()
	if sig.KeyID != "/alice/keys/"+fp || sig.Algorithm != "rsa-sha1" || strings.Join(sig.Headers, " ") != "date" {
		t.Errorf("server saw %+v", sig)
	}

	// The same SDK header checked directly, and refused once stale.
	date := time.Now().UTC().Format(time.RFC1123)
	h, err := tgSigner.Sign(date, false)
	if err != nil {
		t.Fatal(err)
	}
	sig, err = ParseAuthorization(h)
	if err != nil {
		t.Fatal(err)
	}
	r := serverRequest("GET", "/alice", map[string]string{"Date": date})
	if err := Verify(sig, r, k.pub, time.Now()); err != nil {
		t.Errorf("Verify SDK header: %v", err)
	}
	if err := Verify(sig, r, k.pub, time.Now().Add(10*time.Minute)); RestCode(err) != "InvalidHeader" {
		t.Errorf("stale SDK header: %v", err)
	}
}

// TestOpenSSLSignatures verifies signatures made by openssl from keys made by
// ssh-keygen: nothing of this package or Go's signing code is involved.
func TestOpenSSLSignatures(t *testing.T) {
	needTool(t, "ssh-keygen")
	needTool(t, "openssl")
	dir := t.TempDir()
	date := time.Now().UTC().Format(http.TimeFormat)
	uri := "/bob/machines?limit=1000&offset=0"
	msg := "(request-target): get " + uri + "\ndate: " + date
	if err := os.WriteFile(filepath.Join(dir, "msg"), []byte(msg), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		gen  []string
		alg  string
	}{
		{"rsa", []string{"-t", "rsa", "-b", "2048"}, "rsa-sha256"},
		{"rsa512", []string{"-t", "rsa", "-b", "2048"}, "rsa-sha512"},
		{"p256", []string{"-t", "ecdsa", "-b", "256"}, "ecdsa-sha256"},
		{"p384", []string{"-t", "ecdsa", "-b", "384"}, "ecdsa-sha384"},
		{"p521", []string{"-t", "ecdsa", "-b", "521"}, "ecdsa-sha512"},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := filepath.Join(dir, c.name)
			run(t, dir, "ssh-keygen", append(c.gen, "-q", "-N", "", "-f", f)...)
			run(t, dir, "ssh-keygen", "-q", "-p", "-m", "PEM", "-P", "", "-N", "", "-f", f) // to PEM for openssl
			hash := "-" + c.alg[strings.IndexByte(c.alg, '-')+1:]
			run(t, dir, "openssl", "dgst", hash, "-sign", f, "-out", f+".sig", "msg")
			sigBytes, err := os.ReadFile(f + ".sig")
			if err != nil {
				t.Fatal(err)
			}
			pubText, err := os.ReadFile(f + ".pub")
			if err != nil {
				t.Fatal(err)
			}
			pk, err := ParsePublicKey(string(pubText))
			if err != nil {
				t.Fatal(err)
			}
			h := `Signature keyId="/bob/keys/` + pk.MD5 + `",algorithm="` + c.alg + `",headers="(request-target) date",signature="` +
				base64.StdEncoding.EncodeToString(sigBytes) + `"`
			sig, err := ParseAuthorization(h)
			if err != nil {
				t.Fatal(err)
			}
			r := serverRequest("GET", uri, map[string]string{"Date": date})
			if err := Verify(sig, r, pk.PublicKey, time.Now()); err != nil {
				t.Fatalf("Verify openssl signature: %v", err)
			}
			r = serverRequest("GET", uri+"&x=1", map[string]string{"Date": date})
			if err := Verify(sig, r, pk.PublicKey, time.Now()); RestCode(err) != "InvalidCredentials" {
				t.Fatalf("tampered URI: %v", err)
			}
		})
	}
}

func BenchmarkVerify(b *testing.B) {
	for _, k := range testKeys(b) {
		b.Run(k.name, func(b *testing.B) {
			s, err := NewSigner("alice", "", k.key, WithClock(func() time.Time { return testNow }))
			if err != nil {
				b.Fatal(err)
			}
			req := httptest.NewRequest("GET", "/alice/machines?limit=1000", nil)
			if err := s.Sign(req); err != nil {
				b.Fatal(err)
			}
			h := req.Header.Get("Authorization")
			b.ResetTimer()
			for b.Loop() {
				sig, err := ParseAuthorization(h)
				if err != nil {
					b.Fatal(err)
				}
				if err := Verify(sig, req, k.pub, testNow); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
