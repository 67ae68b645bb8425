package auth

import (
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"flotilla/api/errdefs"
)

func parsePEMCert(t *testing.T, b []byte) *x509.Certificate {
	t.Helper()
	block, _ := pem.Decode(b)
	if block == nil {
		t.Fatalf("no PEM in %q", b)
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestClientCertFromSetupScriptRecipe makes certificates the way
// sdc-docker-setup.sh does (openssl, self-signed with the SSH key) and checks
// them against the account's OpenSSH public key.
func TestClientCertFromSetupScriptRecipe(t *testing.T) {
	needTool(t, "ssh-keygen")
	needTool(t, "openssl")
	dir := t.TempDir()
	for _, c := range []struct {
		name string
		gen  []string
	}{{"rsa", []string{"-t", "rsa", "-b", "2048"}}, {"ecdsa", []string{"-t", "ecdsa", "-b", "256"}}} {
		t.Run(c.name, func(t *testing.T) {
			f := filepath.Join(dir, c.name)
			run(t, dir, "ssh-keygen", append(c.gen, "-q", "-N", "", "-f", f)...)
			pubText, err := os.ReadFile(f + ".pub")
			if err != nil {
				t.Fatal(err)
			}
			acct, err := ParsePublicKey(string(pubText))
			if err != nil {
				t.Fatal(err)
			}
			run(t, dir, "ssh-keygen", "-q", "-p", "-m", "PEM", "-P", "", "-N", "", "-f", f)
			run(t, dir, "openssl", "req", "-new", "-key", f, "-subj", "/CN=alice", "-out", f+".csr")
			run(t, dir, "openssl", "x509", "-req", "-days", "365", "-in", f+".csr", "-signkey", f, "-out", f+".crt")
			certPEM, err := os.ReadFile(f + ".crt")
			if err != nil {
				t.Fatal(err)
			}
			cert := parsePEMCert(t, certPEM)
			cc, err := ParseClientCert(cert)
			if err != nil {
				t.Fatal(err)
			}
			if cc.Login != "alice" || cc.MD5 != acct.MD5 || cc.SHA256 != acct.SHA256 {
				t.Errorf("ParseClientCert = %+v, account key %s", cc, acct.MD5)
			}
			other := keyNamed(t, "ed25519").pub
			got, err := VerifyClientCert(cert, []ssh.PublicKey{other, acct.PublicKey})
			if err != nil {
				t.Fatalf("VerifyClientCert: %v", err)
			}
			if FingerprintMD5(got) != acct.MD5 {
				t.Errorf("matched key %s", FingerprintMD5(got))
			}
			if _, err := VerifyClientCert(cert, []ssh.PublicKey{other}); errdefs.CodeOf(err) != errdefs.Unauthorized {
				t.Errorf("cert against another account's keys: %v", err)
			}
		})
	}
}

func TestMakeClientCertRoundTrip(t *testing.T) {
	for _, k := range testKeys(t) {
		t.Run(k.name, func(t *testing.T) {
			certPEM, err := MakeClientCert("bob", k.key)
			if err != nil {
				t.Fatal(err)
			}
			cert := parsePEMCert(t, certPEM)
			if cert.Subject.CommonName != "bob" || time.Until(cert.NotAfter) < 364*24*time.Hour {
				t.Errorf("subject %q, not after %v", cert.Subject.CommonName, cert.NotAfter)
			}
			if _, err := VerifyClientCert(cert, []ssh.PublicKey{k.pub}); err != nil {
				t.Fatalf("VerifyClientCert: %v", err)
			}
			keyPEM, err := MarshalPrivateKey(k.key)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
				t.Errorf("the docker CLI could not load cert.pem/key.pem: %v", err)
			}
		})
	}
	if _, err := MakeClientCert("", keyNamed(t, "rsa").key); errdefs.CodeOf(err) != errdefs.Invalid {
		t.Errorf("empty login: %v", err)
	}
}

// TestVerifyClientCertSignedByAnotherKey: a certificate carrying the
// account's public key but signed by someone else's key is refused.
func TestVerifyClientCertSignedByAnotherKey(t *testing.T) {
	victim, attacker := keyNamed(t, "ecdsa-p256"), keyNamed(t, "ecdsa-p384")
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "alice"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(nil, tmpl, tmpl, victim.key.Public(), attacker.key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	_, err = VerifyClientCert(cert, []ssh.PublicKey{victim.pub})
	if errdefs.CodeOf(err) != errdefs.Unauthorized || !strings.Contains(errdefs.MessageOf(err), "not signed by its own key") {
		t.Fatalf("forged certificate: %v", err)
	}

	tmpl.Subject.CommonName = ""
	der, _ = x509.CreateCertificate(nil, tmpl, tmpl, victim.key.Public(), victim.key)
	cert, _ = x509.ParseCertificate(der)
	if _, err := VerifyClientCert(cert, []ssh.PublicKey{victim.pub}); errdefs.CodeOf(err) != errdefs.Unauthorized {
		t.Errorf("certificate without CN: %v", err)
	}
	if _, err := ParseClientCert(nil); errdefs.MessageOf(err) != MsgClientCertRequired {
		t.Errorf("nil certificate: %v", err)
	}
	if _, err := PeerCertificate(&tls.ConnectionState{}); errdefs.CodeOf(err) != errdefs.Unauthorized {
		t.Errorf("no peer certificate: %v", err)
	}
}

func TestLoadPrivateKey(t *testing.T) {
	needTool(t, "ssh-keygen")
	dir := t.TempDir()
	for _, c := range []struct {
		name string
		gen  []string
	}{
		{"rsa", []string{"-t", "rsa", "-b", "2048"}},
		{"ed25519", []string{"-t", "ed25519"}},
		{"ecdsa", []string{"-t", "ecdsa", "-b", "384"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := filepath.Join(dir, c.name)
			run(t, dir, "ssh-keygen", append(c.gen, "-q", "-N", "", "-f", f)...)
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			key, err := LoadPrivateKey(data)
			if err != nil {
				t.Fatalf("LoadPrivateKey: %v", err)
			}
			pubText, _ := os.ReadFile(f + ".pub")
			want, err := ParsePublicKey(string(pubText))
			if err != nil {
				t.Fatal(err)
			}
			got, err := ssh.NewPublicKey(key.Public())
			if err != nil {
				t.Fatal(err)
			}
			if FingerprintMD5(got) != want.MD5 {
				t.Fatalf("loaded key %s, .pub says %s", FingerprintMD5(got), want.MD5)
			}
			// And the loaded key signs requests the server accepts.
			s, err := NewSigner("alice", "", key, WithClock(func() time.Time { return testNow }))
			if err != nil {
				t.Fatal(err)
			}
			r := httptest.NewRequest("GET", "/alice/keys", nil)
			if err := s.Sign(r); err != nil {
				t.Fatal(err)
			}
			sig, err := ParseAuthorization(r.Header.Get("Authorization"))
			if err != nil {
				t.Fatal(err)
			}
			if err := Verify(sig, r, want.PublicKey, testNow); err != nil {
				t.Fatal(err)
			}
		})
	}

	f := filepath.Join(dir, "locked")
	run(t, dir, "ssh-keygen", "-q", "-t", "ed25519", "-N", "s3cret", "-f", f)
	data, err := os.ReadFile(f)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := LoadPrivateKey(data); errdefs.CodeOf(err) != errdefs.Invalid || !strings.Contains(errdefs.MessageOf(err), "passphrase") {
		t.Errorf("locked key without passphrase: %v", err)
	}
	if _, err := LoadPrivateKeyWithPassphrase(data, []byte("wrong")); errdefs.CodeOf(err) != errdefs.Invalid {
		t.Errorf("wrong passphrase: %v", err)
	}
	if _, err := LoadPrivateKeyWithPassphrase(data, []byte("s3cret")); err != nil {
		t.Errorf("right passphrase: %v", err)
	}
	if _, err := LoadPrivateKey([]byte("not a key")); errdefs.CodeOf(err) != errdefs.Invalid {
		t.Errorf("garbage: %v", err)
	}
}

// TestDevCAServesDockerClients runs a TLS server with the dev CA on 127.0.0.1
// and authenticates clients by their SSH-key certificates.
func TestDevCAServesDockerClients(t *testing.T) {
	dir := t.TempDir()
	ca, err := NewDevCA(dir, "docker.dev.test")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"ca.pem", "ca-key.pem", "server-cert.pem", "server-key.pem"} {
		st, err := os.Stat(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasSuffix(f, "key.pem") && st.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %v", f, st.Mode())
		}
	}

	// Reopening keeps the CA and the server certificate.
	serverPEM, _ := os.ReadFile(ca.ServerCertFile)
	again, err := NewDevCA(dir, "docker.dev.test")
	if err != nil {
		t.Fatal(err)
	}
	if !again.CA.Equal(ca.CA) {
		t.Error("reopening made a new CA")
	}
	if b, _ := os.ReadFile(ca.ServerCertFile); string(b) != string(serverPEM) {
		t.Error("reopening remade a fitting server certificate")
	}
	// A new host keeps the CA but remakes the server certificate.
	again, err = NewDevCA(dir, "docker.dev.test", "10.0.0.5")
	if err != nil {
		t.Fatal(err)
	}
	if !again.CA.Equal(ca.CA) {
		t.Error("adding a host made a new CA")
	}
	srvCert, _, err := loadPair(again.ServerCertFile, again.ServerKeyFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range []string{"localhost", "127.0.0.1", "::1", "docker.dev.test", "10.0.0.5"} {
		if err := srvCert.VerifyHostname(h); err != nil {
			t.Errorf("server certificate: %v", err)
		}
	}

	alice := keyNamed(t, "rsa")
	accounts := map[string][]ssh.PublicKey{"alice": {alice.pub}}
	tlsCfg, err := again.TLSConfig()
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cert, err := PeerCertificate(r.TLS)
		var cc *ClientCert
		if err == nil {
			cc, err = ParseClientCert(cert)
		}
		if err == nil {
			_, err = VerifyClientCert(cert, accounts[cc.Login])
		}
		if err != nil {
			http.Error(w, errdefs.MessageOf(err), http.StatusUnauthorized)
			return
		}
		io.WriteString(w, cc.Login)
	}))
	srv.TLS = tlsCfg
	srv.StartTLS()
	defer srv.Close()

	get := func(certs []tls.Certificate) (int, string) {
		t.Helper()
		client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{
			RootCAs: again.CertPool(), Certificates: certs, ServerName: "127.0.0.1"}}}
		resp, err := client.Get(srv.URL + "/v1.50/containers/json")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	pair := func(login string, k testKey) []tls.Certificate {
		certPEM, err := MakeClientCert(login, k.key)
		if err != nil {
			t.Fatal(err)
		}
		keyPEM, err := MarshalPrivateKey(k.key)
		if err != nil {
			t.Fatal(err)
		}
		c, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			t.Fatal(err)
		}
		return []tls.Certificate{c}
	}
	if code, body := get(pair("alice", alice)); code != 200 || body != "alice" {
		t.Errorf("alice's certificate: %d %q", code, body)
	}
	if code, body := get(nil); code != 401 || !strings.Contains(body, "client certificate is required") {
		t.Errorf("no certificate: %d %q", code, body)
	}
	if code, _ := get(pair("alice", keyNamed(t, "ed25519"))); code != 401 {
		t.Errorf("certificate from a key alice does not have: %d", code)
	}
	if code, _ := get(pair("mallory", alice)); code != 401 {
		t.Errorf("alice's key claiming another login: %d", code)
	}
}
