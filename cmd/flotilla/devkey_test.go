package main

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/crypto/ssh"

	"flotilla/api/auth"
)

func TestResolveDevKey(t *testing.T) {
	t.Run("OK_GeneratedWhenNoKey", func(t *testing.T) {
		home, data := t.TempDir(), t.TempDir()
		t.Setenv("HOME", home)
		k, err := resolveDevKey("", data)
		if err != nil {
			t.Fatal(err)
		}
		want := filepath.Join(data, "ssh", "id_ed25519")
		if !k.Generated || k.Pub != want+".pub" || k.Priv != want {
			t.Fatalf("resolveDevKey = %+v, want a generated key at %s", k, want)
		}
		pub, err := readKey(k.Pub)
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(k.Priv)
		if err != nil {
			t.Fatal(err)
		}
		priv, err := auth.LoadPrivateKey(b)
		if err != nil {
			t.Fatalf("the generated private key does not load: %v", err)
		}
		sshPub, err := ssh.NewPublicKey(priv.Public())
		if err != nil {
			t.Fatal(err)
		}
		if got, err := auth.ParsePublicKey(string(ssh.MarshalAuthorizedKey(sshPub))); err != nil || got.MD5 != pub.MD5 {
			t.Fatalf("private key's fingerprint %v (%v), public key's %s", got, err, pub.MD5)
		}
		if fi, err := os.Stat(filepath.Join(home, ".ssh")); err != nil || !fi.IsDir() {
			t.Errorf("~/.ssh was not made for the triton CLI: %v", err)
		}
		again, err := resolveDevKey("", data)
		if err != nil || again.Pub != k.Pub {
			t.Fatalf("second resolve = %+v, %v", again, err)
		}
		if b2, _ := os.ReadFile(k.Priv); string(b2) != string(b) {
			t.Error("the second start generated a new key; it must reuse the first")
		}
	})
	t.Run("OK_PrivateKeyNextToGivenKey", func(t *testing.T) {
		t.Setenv("HOME", t.TempDir())
		dir := t.TempDir()
		priv := filepath.Join(dir, "id_rsa")
		if err := generateKey(priv, "x"); err != nil {
			t.Fatal(err)
		}
		k, err := resolveDevKey(priv+".pub", t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		if k.Generated || k.Pub != priv+".pub" || k.Priv != priv {
			t.Fatalf("resolveDevKey = %+v, want the given key with its private key %s", k, priv)
		}
	})
	t.Run("OK_NoPrivateKey", func(t *testing.T) {
		t.Setenv("HOME", t.TempDir())
		dir := t.TempDir()
		priv := filepath.Join(dir, "id_ed25519")
		if err := generateKey(priv, "x"); err != nil {
			t.Fatal(err)
		}
		os.Remove(priv)
		k, err := resolveDevKey(priv+".pub", t.TempDir())
		if err != nil || k.Priv != "" {
			t.Fatalf("resolveDevKey = %+v, %v; want no private key", k, err)
		}
	})
}
