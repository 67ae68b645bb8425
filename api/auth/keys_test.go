package auth

import (
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"flotilla/api/errdefs"
)

// TestParsePublicKeyMatchesSSHKeygen checks fingerprints and normalisation
// against keys and fingerprints made by ssh-keygen itself.
func TestParsePublicKeyMatchesSSHKeygen(t *testing.T) {
	needTool(t, "ssh-keygen")
	dir := t.TempDir()
	for _, c := range []struct {
		name     string
		args     []string
		wantType string
	}{
		{"rsa", []string{"-t", "rsa", "-b", "2048"}, "ssh-rsa"},
		{"ed25519", []string{"-t", "ed25519"}, "ssh-ed25519"},
		{"ecdsa256", []string{"-t", "ecdsa", "-b", "256"}, "ecdsa-sha2-nistp256"},
		{"ecdsa384", []string{"-t", "ecdsa", "-b", "384"}, "ecdsa-sha2-nistp384"},
		{"ecdsa521", []string{"-t", "ecdsa", "-b", "521"}, "ecdsa-sha2-nistp521"},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := filepath.Join(dir, c.name)
			run(t, dir, "ssh-keygen", append(c.args, "-q", "-N", "", "-C", "alice@laptop x", "-f", f)...)
			text, err := os.ReadFile(f + ".pub")
			if err != nil {
				t.Fatal(err)
			}
			k, err := ParsePublicKey("  " + string(text) + "\n")
			if err != nil {
				t.Fatalf("ParsePublicKey: %v", err)
			}
			md5 := strings.Fields(string(run(t, dir, "ssh-keygen", "-l", "-E", "md5", "-f", f+".pub")))[1]
			sha := strings.Fields(string(run(t, dir, "ssh-keygen", "-l", "-E", "sha256", "-f", f+".pub")))[1]
			if "MD5:"+k.MD5 != md5 {
				t.Errorf("MD5 = %s, ssh-keygen says %s", k.MD5, md5)
			}
			if k.SHA256 != sha {
				t.Errorf("SHA256 = %s, ssh-keygen says %s", k.SHA256, sha)
			}
			if k.Type != c.wantType || k.Comment != "alice@laptop x" {
				t.Errorf("Type, Comment = %q, %q", k.Type, k.Comment)
			}
			if k.OpenSSH != strings.TrimSpace(string(text)) {
				t.Errorf("OpenSSH = %q, want %q", k.OpenSSH, strings.TrimSpace(string(text)))
			}
			if !IsMD5Fingerprint(k.MD5) {
				t.Errorf("IsMD5Fingerprint(%q) = false", k.MD5)
			}
		})
	}
}

func TestParsePublicKeyNormalises(t *testing.T) {
	k := keyNamed(t, "ed25519")
	b64 := base64.StdEncoding.EncodeToString(k.pub.Marshal())
	got, err := ParsePublicKey("ssh-ed25519\t" + b64 + "   two  words ")
	if err != nil {
		t.Fatal(err)
	}
	if want := "ssh-ed25519 " + b64 + " two words"; got.OpenSSH != want {
		t.Errorf("OpenSSH = %q, want %q", got.OpenSSH, want)
	}
	got, err = ParsePublicKey("ssh-ed25519 " + b64)
	if err != nil {
		t.Fatal(err)
	}
	if got.Comment != "" || got.OpenSSH != "ssh-ed25519 "+b64 {
		t.Errorf("no comment: got %+v", got)
	}
}

func TestParsePublicKeyErrors(t *testing.T) {
	ed := base64.StdEncoding.EncodeToString(keyNamed(t, "ed25519").pub.Marshal())
	rsa := base64.StdEncoding.EncodeToString(keyNamed(t, "rsa").pub.Marshal())
	for _, c := range []struct {
		name, line, wantMsg string
	}{
		{"ErrEmpty", "  ", "empty"},
		{"ErrOnePart", "ssh-ed25519", "two space-separated parts"},
		{"ErrTwoLines", "ssh-ed25519 " + ed + "\nssh-ed25519 " + ed, "single line"},
		{"ErrBadBase64", "ssh-ed25519 !!!notbase64", "base64"},
		{"ErrBadBlob", "ssh-ed25519 AAAA", "not a valid ssh-ed25519"},
		{"ErrTypeMismatch", "ssh-ed25519 " + rsa, "says it is ssh-ed25519 but its data is a ssh-rsa"},
		{"ErrDSA", "ssh-dss AAAAB3NzaC1kc3MAAACBAP", "not supported"},
		{"ErrOptions", `no-pty,command="x" ssh-ed25519 ` + ed, "options"},
		{"ErrCertificate", "ssh-ed25519-cert-v01@openssh.com " + ed, "not supported"},
		{"ErrTooLong", "ssh-rsa " + strings.Repeat("A", 20000), "too long"},
	} {
		t.Run(c.name, func(t *testing.T) {
			k, err := ParsePublicKey(c.line)
			if err == nil {
				t.Fatalf("ParsePublicKey(%q) = %+v, want error", c.line, k)
			}
			if k != nil {
				t.Errorf("got a key with the error")
			}
			if errdefs.CodeOf(err) != errdefs.Invalid {
				t.Errorf("code = %s, want invalid", errdefs.CodeOf(err))
			}
			if !strings.Contains(errdefs.MessageOf(err), c.wantMsg) {
				t.Errorf("message %q does not contain %q", errdefs.MessageOf(err), c.wantMsg)
			}
		})
	}
}

func TestIsMD5Fingerprint(t *testing.T) {
	for s, want := range map[string]bool{
		"9f:d6:65:fc:d6:60:dc:d0:4e:db:2d:75:f7:92:8c:31":  true,
		"9F:D6:65:FC:D6:60:DC:D0:4E:DB:2D:75:F7:92:8C:31":  true,
		"9f:d6:65:fc:d6:60:dc:d0:4e:db:2d:75:f7:92:8c":     false,
		"9f:d6:65:fc:d6:60:dc:d0:4e:db:2d:75:f7:92:8c:3g":  false,
		"9fd6:65:fc:d6:60:dc:d0:4e:db:2d:75:f7:92:8c:31:0": false,
		"id_rsa": false,
		"":       false,
	} {
		if got := IsMD5Fingerprint(s); got != want {
			t.Errorf("IsMD5Fingerprint(%q) = %v, want %v", s, got, want)
		}
	}
}

func FuzzParsePublicKey(f *testing.F) {
	for _, k := range testKeys(f) {
		f.Add(k.pub.Type() + " " + base64.StdEncoding.EncodeToString(k.pub.Marshal()) + " c")
	}
	f.Add("ssh-rsa AAAA")
	f.Add("")
	f.Fuzz(func(t *testing.T, line string) {
		k, err := ParsePublicKey(line)
		if err != nil {
			if k != nil || errdefs.CodeOf(err) != errdefs.Invalid {
				t.Fatalf("error %v with key %v / code %s", err, k, errdefs.CodeOf(err))
			}
			return
		}
		again, err := ParsePublicKey(k.OpenSSH)
		if err != nil {
			t.Fatalf("normalised text %q does not parse: %v", k.OpenSSH, err)
		}
		if again.OpenSSH != k.OpenSSH || again.MD5 != k.MD5 || again.SHA256 != k.SHA256 || again.Comment != k.Comment {
			t.Fatalf("round trip changed the key: %+v -> %+v", k, again)
		}
	})
}
