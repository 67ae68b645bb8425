package auth

import (
	"reflect"
	"strings"
	"testing"

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
