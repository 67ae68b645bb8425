package auth

import (
	"crypto/rsa"
	"encoding/base64"
	"strings"

	"golang.org/x/crypto/ssh"

	"flotilla/api/errdefs"
)

// minRSABits is the smallest RSA key accepted; Go's crypto/rsa refuses to
// verify with anything smaller.
const minRSABits = 1024

// maxKeyLine bounds the OpenSSH text accepted (an 16384-bit RSA key is ~2.8 kB).
const maxKeyLine = 16 << 10

// ParsedKey is an account's SSH public key with the fingerprints CloudAPI
// shows and looks keys up by.
type ParsedKey struct {
	// Type is the OpenSSH key type: ssh-rsa, ssh-ed25519,
	// ecdsa-sha2-nistp256, ecdsa-sha2-nistp384 or ecdsa-sha2-nistp521.
	Type string
	// Comment is the text after the key, often user@host; may be empty.
	Comment string
	// MD5 is the legacy fingerprint, lower-case hex bytes joined by colons
	// ("aa:bb:..."); CloudAPI keyIds name keys by it.
	MD5 string
	// SHA256 is "SHA256:" and the unpadded base64 of the SHA-256 of the key.
	SHA256 string
	// OpenSSH is the normalised authorized_keys text: type, base64 and the
	// comment if any, separated by single spaces.
	OpenSSH string
	// PublicKey is the parsed key.
	PublicKey ssh.PublicKey
}

// supportedKeyTypes are the key types HTTP Signature and TLS auth can use.
var supportedKeyTypes = map[string]bool{
	ssh.KeyAlgoRSA:      true,
	ssh.KeyAlgoED25519:  true,
	ssh.KeyAlgoECDSA256: true,
	ssh.KeyAlgoECDSA384: true,
	ssh.KeyAlgoECDSA521: true,
}

// ParsePublicKey parses one OpenSSH public key line ("ssh-ed25519 AAAA...
// comment"). It returns an Invalid error when the text is not exactly one key,
// the base64 or key blob is malformed, the type field does not match the blob,
// or the key type cannot be used for authentication (DSA, certificates,
// security-key types, RSA under 1024 bits).
func ParsePublicKey(line string) (*ParsedKey, error) {
	if len(line) > maxKeyLine {
		return nil, errdefs.InvalidArgument("key is too long (%d bytes, at most %d)", len(line), maxKeyLine)
	}
	line = strings.TrimSpace(line)
	if line == "" {
		return nil, errdefs.InvalidArgument("key is empty: expected an OpenSSH public key such as \"ssh-ed25519 AAAA... comment\"")
	}
	if strings.ContainsAny(line, "\r\n") {
		return nil, errdefs.InvalidArgument("key must be a single line holding one OpenSSH public key")
	}
	fields := strings.Fields(line)
	if len(fields) < 2 {
		return nil, errdefs.InvalidArgument("key must have at least two space-separated parts: the key type and the base64 key")
	}
	typ, b64 := fields[0], fields[1]
	if !supportedKeyTypes[typ] {
		if strings.Contains(typ, "=") || strings.Contains(typ, ",") {
			return nil, errdefs.InvalidArgument("key must not start with authorized_keys options; give only the key type, the key and a comment")
		}
		return nil, errdefs.InvalidArgument("key type %q is not supported: use ssh-ed25519, ssh-rsa or ecdsa-sha2-nistp256/384/521", printable(typ))
	}
	blob, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return nil, errdefs.InvalidArgument("key data is not valid base64")
	}
	pub, err := ssh.ParsePublicKey(blob)
	if err != nil {
		return nil, errdefs.InvalidArgument("key data is not a valid %s public key", typ)
	}
	if pub.Type() != typ {
		return nil, errdefs.InvalidArgument("key says it is %s but its data is a %s key", typ, pub.Type())
	}
	if err := checkKeyStrength(pub); err != nil {
		return nil, err
	}
	comment := strings.Join(fields[2:], " ")
	text := typ + " " + base64.StdEncoding.EncodeToString(pub.Marshal())
	if comment != "" {
		text += " " + comment
	}
	return &ParsedKey{
		Type:      typ,
		Comment:   comment,
		MD5:       FingerprintMD5(pub),
		SHA256:    ssh.FingerprintSHA256(pub),
		OpenSSH:   text,
		PublicKey: pub,
	}, nil
}

func checkKeyStrength(pub ssh.PublicKey) error {
	cpk, ok := pub.(ssh.CryptoPublicKey)
	if !ok {
		return errdefs.InvalidArgument("key type %s is not supported", pub.Type())
	}
	if k, ok := cpk.CryptoPublicKey().(*rsa.PublicKey); ok && k.N.BitLen() < minRSABits {
		return errdefs.InvalidArgument("RSA key is %d bits; at least %d are required", k.N.BitLen(), minRSABits)
	}
	return nil
}

// FingerprintMD5 returns the MD5 fingerprint CloudAPI uses in keyIds: the MD5
// of the key's wire-format blob as lower-case hex bytes joined by colons.
func FingerprintMD5(pub ssh.PublicKey) string {
	return ssh.FingerprintLegacyMD5(pub)
}

// printable shortens and sanitises client-supplied text quoted in a message.
func printable(s string) string {
	const max = 64
	if len(s) > max {
		s = s[:max] + "..."
	}
	return strings.ToValidUTF8(s, "?")
}

// IsMD5Fingerprint reports whether s has the shape of an MD5 fingerprint: 16
// two-digit hex bytes joined by colons, in either case. A keyId's key part is
// a fingerprint when this holds and a key name otherwise.
func IsMD5Fingerprint(s string) bool {
	if len(s) != 16*3-1 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if i%3 == 2 {
			if c != ':' {
				return false
			}
			continue
		}
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return false
		}
	}
	return true
}
