package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"flotilla/api/auth"
)

// md5Of is the MD5 fingerprint of a public key file, as CloudAPI and triton
// spell it.
func md5Of(t *testing.T, pubFile string) string {
	t.Helper()
	b, err := os.ReadFile(pubFile)
	if err != nil {
		t.Fatal(err)
	}
	k, err := auth.ParsePublicKey(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	return k.MD5
}

// TestTritonAccount drives the account, key, package, image, network,
// datacenter and profile commands, and operator act-as.
func TestTritonAccount(t *testing.T) {
	requireTriton(t)

	t.Run("InfoShowsAccount", func(t *testing.T) {
		out := tri(t, "info")
		for _, want := range []string{"login: e2e", "email: e2e@localhost", "url: " + devEnv["TRITON_URL"], "instances:"} {
			if !strings.Contains(out, want) {
				t.Errorf("triton info lacks %q:\n%s", want, out)
			}
		}
	})

	t.Run("AccountGet", func(t *testing.T) {
		var a map[string]any
		triJSON(t, &a, "account", "get", "-j")
		if field(a, "login") != "e2e" || field(a, "email") != "e2e@localhost" || field(a, "id") == "" {
			t.Errorf("account get = %v, want login e2e, email e2e@localhost and an id", a)
		}
	})

	t.Run("KeyLifecycle", func(t *testing.T) {
		var keys []map[string]any
		triJSON(t, &keys, "key", "ls", "-j")
		if len(keys) != 1 || field(keys[0], "fingerprint") != devEnv["TRITON_KEY_ID"] {
			t.Fatalf("key ls = %v, want the one dev key %s", keys, devEnv["TRITON_KEY_ID"])
		}
		second, err := SSHKeygen(filepath.Join(tmp, "second_key"), "second@e2e")
		if err != nil {
			t.Fatal(err)
		}
		fp := md5Of(t, second)
		out := tri(t, "key", "add", "-n", "second", second)
		if !strings.Contains(out, `Added key "second"`) || !strings.Contains(out, fp) {
			t.Errorf("key add printed %q, want Added key \"second\" (%s)", out, fp)
		}
		var k map[string]any
		triJSON(t, &k, "key", "get", "-j", "second")
		if field(k, "name") != "second" || field(k, "fingerprint") != fp || !strings.HasPrefix(field(k, "key"), "ssh-ed25519 ") {
			t.Errorf("key get second = %v, want name second, fingerprint %s and the OpenSSH text", k, fp)
		}
		// The same key by fingerprint.
		triJSON(t, &k, "key", "get", "-j", fp)
		if field(k, "name") != "second" {
			t.Errorf("key get %s = %v, want the key named second", fp, k)
		}
		triJSON(t, &keys, "key", "ls", "-j")
		if got := byField(keys, "name"); len(got) != 2 || got["second"] == nil || got["e2e"] == nil {
			t.Errorf("key ls after add = %v, want e2e and second", keys)
		}
		triFails(t, "already", "key", "add", "-n", "second", second)
		tri(t, "key", "delete", "-f", "second")
		triFails(t, "second", "key", "get", "second")
		triJSON(t, &keys, "key", "ls", "-j")
		if len(keys) != 1 {
			t.Errorf("key ls after delete = %v, want only the dev key", keys)
		}
	})

	t.Run("Packages", func(t *testing.T) {
		var pkgs []map[string]any
		triJSON(t, &pkgs, "package", "ls", "-j")
		byName := byField(pkgs, "name")
		nano := byName["g1-nano-256M"]
		if nano == nil || field(nano, "memory") != "256" || field(nano, "disk") != "10240" {
			t.Fatalf("package ls = %v, want g1-nano-256M with 256 MiB and 10240 MiB of disk", pkgs)
		}
		var p map[string]any
		triJSON(t, &p, "package", "get", "-j", "g1-nano-256M")
		if field(p, "id") != field(nano, "id") || field(p, "vcpus") != "1" {
			t.Errorf("package get = %v, want id %s and 1 vCPU", p, field(nano, "id"))
		}
		triJSON(t, &p, "package", "get", "-j", field(nano, "id")[:8])
		if field(p, "name") != "g1-nano-256M" {
			t.Errorf("package get by short id = %v", p)
		}
		out := tri(t, "package", "ls")
		if !strings.Contains(out, "g1-nano-256M") || !strings.Contains(out, "SHORTID") {
			t.Errorf("package ls table:\n%s", out)
		}
	})

	t.Run("Images", func(t *testing.T) {
		var imgs []map[string]any
		triJSON(t, &imgs, "image", "ls", "-j")
		bb := byField(imgs, "name")["busybox"]
		if bb == nil || field(bb, "id") != "b0c1d2e3-0000-4000-8000-000000000001" || field(bb, "state") != "active" {
			t.Fatalf("image ls = %v, want the active busybox image", imgs)
		}
		var im map[string]any
		triJSON(t, &im, "image", "get", "-j", "busybox")
		if field(im, "id") != field(bb, "id") || field(im, "version") != "1.36" || field(im, "os") != "linux" {
			t.Errorf("image get busybox = %v", im)
		}
		triFails(t, "no-such-image", "image", "get", "no-such-image")
	})

	t.Run("Networks", func(t *testing.T) {
		var nets []map[string]any
		triJSON(t, &nets, "network", "ls", "-j")
		byName := byField(nets, "name")
		pub, priv := byName["public"], byName["private"]
		if pub == nil || priv == nil || field(pub, "public") != "true" || field(priv, "public") != "false" {
			t.Fatalf("network ls = %v, want public and private", nets)
		}
		var n map[string]any
		triJSON(t, &n, "network", "get", "-j", "public")
		if field(n, "id") != field(pub, "id") || field(n, "subnet") != "10.198.0.0/20" || field(n, "gateway") != "10.198.0.1" {
			t.Errorf("network get public = %v", n)
		}
	})

	t.Run("Datacenters", func(t *testing.T) {
		var dcs map[string]any
		triJSON(t, &dcs, "datacenters", "-j")
		if len(dcs) != 1 || field(dcs, "flotilla-dev") != devEnv["TRITON_URL"] {
			t.Errorf("datacenters = %v, want flotilla-dev at %s", dcs, devEnv["TRITON_URL"])
		}
	})

	t.Run("ProfileCreateAndUse", func(t *testing.T) {
		prof := map[string]any{"name": "e2eprof", "url": devEnv["TRITON_URL"], "account": "e2e",
			"keyId": devEnv["TRITON_KEY_ID"], "insecure": true}
		b, _ := json.Marshal(prof)
		file := filepath.Join(tmp, "profile.json")
		if err := os.WriteFile(file, b, 0o600); err != nil {
			t.Fatal(err)
		}
		out := tri(t, "profile", "create", "-f", file, "--no-docker", "-y")
		if !strings.Contains(out, `Saved profile "e2eprof"`) {
			t.Errorf("profile create printed %q", out)
		}
		// No TRITON_* in the environment: everything comes from the profile.
		r := runTriton(t, baseEnv(), "-p", "e2eprof", "info")
		if r.Code != 0 || !strings.Contains(r.Stdout, "login: e2e") {
			t.Errorf("triton -p e2eprof info:\n%s", r)
		}
		var got map[string]any
		triJSON(t, &got, "profile", "get", "-j", "e2eprof")
		if field(got, "url") != devEnv["TRITON_URL"] || field(got, "account") != "e2e" {
			t.Errorf("profile get = %v", got)
		}
	})

	t.Run("ActAs", func(t *testing.T) {
		// A second, non-operator account whose private key triton finds in ~/.ssh.
		otherPub, err := SSHKeygen(filepath.Join(home, ".ssh", "id_other"), "other@e2e")
		if err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(bin, "admin", "account", "create", "other", "--key", otherPub, "--db", devEnv["FLOTILLA_DB"]).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "account other created") {
			t.Fatalf("flotilla admin account create other: %v\n%s", err, out)
		}
		otherEnv := append(baseEnv(), "TRITON_URL="+devEnv["TRITON_URL"], "TRITON_ACCOUNT=other",
			"TRITON_KEY_ID="+md5Of(t, otherPub), "TRITON_TLS_INSECURE=1")

		cases := []struct {
			name       string
			env        []string
			args       []string
			wantErr    string // "" means success
			wantLogin  string
			wantStdout string
		}{
			{name: "OtherAsItself", env: otherEnv, args: []string{"account", "get", "-j"}, wantLogin: "other"},
			{name: "ErrNonOperatorActAs", env: otherEnv, args: []string{"--act-as", "e2e", "account", "get", "-j"}, wantErr: "permission"},
			{name: "ErrNonOperatorActAsInfo", env: otherEnv, args: []string{"--act-as", "e2e", "info"}, wantErr: "permission"},
			{name: "OperatorActsAsOther", env: tritonEnv(), args: []string{"--act-as", "other", "account", "get", "-j"}, wantLogin: "other"},
			{name: "OperatorActsAsOtherInfo", env: tritonEnv(), args: []string{"--act-as", "other", "info"}, wantStdout: "login: other"},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				r := runTriton(t, tc.env, tc.args...)
				if tc.wantErr != "" {
					if r.Code == 0 || !strings.Contains(strings.ToLower(r.Stderr), tc.wantErr) {
						t.Fatalf("want an error mentioning %q:\n%s", tc.wantErr, r)
					}
					return
				}
				if r.Code != 0 {
					t.Fatalf("exit status %d:\n%s", r.Code, r)
				}
				if tc.wantLogin != "" {
					var a map[string]any
					decodeJSONOutput(t, r.Stdout, &a)
					if field(a, "login") != tc.wantLogin {
						t.Errorf("login = %q, want %q", field(a, "login"), tc.wantLogin)
					}
				}
				if tc.wantStdout != "" && !strings.Contains(r.Stdout, tc.wantStdout) {
					t.Errorf("output lacks %q:\n%s", tc.wantStdout, r)
				}
			})
		}
	})
}
