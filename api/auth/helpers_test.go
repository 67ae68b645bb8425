package auth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"os/exec"
	"sync"
	"testing"

	"golang.org/x/crypto/ssh"
)

// testKey is a private key with the names tests refer to it by.
type testKey struct {
	name string
	key  crypto.Signer
	pub  ssh.PublicKey
}

var (
	testKeysOnce sync.Once
	testKeysList []testKey
)

// testKeys returns one key of every supported type, generated once per run.
func testKeys(t testing.TB) []testKey {
	t.Helper()
	testKeysOnce.Do(func() {
		rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			panic(err)
		}
		_, edKey, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			panic(err)
		}
		keys := []struct {
			name string
			key  crypto.Signer
		}{{"rsa", rsaKey}, {"ed25519", edKey}}
		for _, c := range []struct {
			name  string
			curve elliptic.Curve
		}{{"ecdsa-p256", elliptic.P256()}, {"ecdsa-p384", elliptic.P384()}, {"ecdsa-p521", elliptic.P521()}} {
			k, err := ecdsa.GenerateKey(c.curve, rand.Reader)
			if err != nil {
				panic(err)
			}
			keys = append(keys, struct {
				name string
				key  crypto.Signer
			}{c.name, k})
		}
		for _, k := range keys {
			pub, err := ssh.NewPublicKey(k.key.Public())
			if err != nil {
				panic(err)
			}
			testKeysList = append(testKeysList, testKey{k.name, k.key, pub})
		}
	})
	return testKeysList
}

func keyNamed(t testing.TB, name string) testKey {
	t.Helper()
	for _, k := range testKeys(t) {
		if k.name == name {
			return k
		}
	}
	t.Fatalf("no test key %q", name)
	return testKey{}
}

// needTool skips the test when an external program is missing.
func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s is not installed on this machine: %v", name, err)
	}
	return p
}

func run(t *testing.T, dir, name string, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return out
}
