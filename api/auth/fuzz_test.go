package auth

import (
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"flotilla/api/errdefs"
)

// FuzzParseAuthorization checks that the parser never panics, classifies
// every failure as CloudAPI does, and that a parsed header formats to text
// that parses back to the same value.
func FuzzParseAuthorization(f *testing.F) {
	for _, seed := range []string{
		`Signature keyId="/alice/keys/aa:bb:cc",algorithm="rsa-sha256",headers="(request-target) date",signature="c2lnbmF0dXJl"`,
		`Signature keyId="/alice/keys/id_rsa",algorithm="rsa-sha512",headers="date",signature="c2ln"`,
		`Signature keyId="/demo/keys/id_rsa",algorithm="rsa-sha256" c2lnbmF0dXJl`,
		`signature keyId="/a/users/b/keys/c", algorithm="ED25519-SHA512" ,signature="c2ln" `,
		`Signature keyId="/a/keys/b",algorithm="ecdsa-sha384",headers="",signature="c2ln"`,
		`Signature keyId="/a/keys/b",algorithm="hmac-sha256",signature="c2ln"`,
		`Signature keyId="/a/b",algorithm="rsa-sha1",signature="c2ln"`,
		`Signature keyId="/a/keys/b`,
		`Signature ,,,`,
		`Basic YWxhZGRpbjpvcGVuc2VzYW1l`,
		``,
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, h string) {
		s, err := ParseAuthorization(h)
		if err != nil {
			if s != nil {
				t.Fatalf("error %v with a value %+v", err, s)
			}
			switch errdefs.CodeOf(err) {
			case errdefs.Unauthorized, errdefs.Invalid:
			default:
				t.Fatalf("unexpected error class %s: %v", errdefs.CodeOf(err), err)
			}
			if RestCode(err) == "InvalidHeader" && !strings.HasPrefix(errdefs.MessageOf(err), msgInvalidHeaderPrefix) {
				t.Fatalf("InvalidHeader message %q", errdefs.MessageOf(err))
			}
			return
		}
		if s.Login == "" || s.KeyRef == "" || len(s.Signature) == 0 || len(s.Headers) == 0 {
			t.Fatalf("incomplete parse of %q: %+v", h, s)
		}
		if _, ok := algorithms[s.Algorithm]; !ok {
			t.Fatalf("unsupported algorithm %q accepted", s.Algorithm)
		}
		text := s.String()
		again, err := ParseAuthorization(text)
		if err != nil {
			t.Fatalf("formatted %q does not parse: %v", text, err)
		}
		if !reflect.DeepEqual(again, s) {
			t.Fatalf("round trip changed the value:\n%+v\n%+v", s, again)
		}
	})
}

// FuzzParseDate: never panics, and an accepted date formats and parses back.
func FuzzParseDate(f *testing.F) {
	f.Add("Tue, 26 Nov 2024 10:00:00 GMT")
	f.Add("Tue, 26 Nov 2024 10:00:00 UTC")
	f.Add("Tuesday, 26-Nov-24 10:00:00 GMT")
	f.Add("Tue Nov 26 10:00:00 2024")
	f.Add("Tue, 26 Nov 2024 10:00:00 +0130")
	f.Fuzz(func(t *testing.T, v string) {
		d, err := ParseDate(v)
		if err != nil {
			if RestCode(err) != "InvalidHeader" {
				t.Fatalf("error class %v", err)
			}
			return
		}
		again, err := ParseDate(d.UTC().Format(http.TimeFormat))
		if err != nil || !again.Equal(d.Truncate(time.Second)) {
			t.Fatalf("%q -> %v -> %v, %v", v, d, again, err)
		}
	})
}

// FuzzLoadPrivateKey: arbitrary bytes never panic and fail as Invalid.
func FuzzLoadPrivateKey(f *testing.F) {
	for _, k := range testKeys(f)[1:] { // the RSA key makes slow mutations
		b, err := MarshalPrivateKey(k.key)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjE=\n-----END OPENSSH PRIVATE KEY-----\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		key, err := LoadPrivateKey(data)
		if err != nil {
			if key != nil || errdefs.CodeOf(err) != errdefs.Invalid {
				t.Fatalf("%v with key %v", err, key)
			}
			return
		}
		if _, err := NewSigner("a", "", key); err != nil {
			t.Fatalf("loaded key cannot sign: %v", err)
		}
	})
}
