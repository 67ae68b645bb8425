// Package auth holds Flotilla's authentication primitives, as pure functions
// and small types with no HTTP routing and no SQL:
//
//   - OpenSSH public keys and their MD5/SHA256 fingerprints (keys.go);
//   - CloudAPI's HTTP Signature scheme: parsing the Authorization header and
//     verifying it against an account key (signature.go), and a client-side
//     signer for tests, benchmarks and the CLI (signer.go);
//   - Docker endpoint authentication with TLS client certificates made from an
//     account's SSH key, and the certificates and dev CA to go with it
//     (tlscert.go), which also signs the certificates of nodes' stream
//     servers (nodecert.go);
//   - a per-key token-bucket rate limiter (ratelimit.go).
//
// Errors are *errdefs.Error. The CloudAPI layer renders them with RestCode and
// errdefs.MessageOf, which give exactly the code and message CloudAPI itself
// sends (for example InvalidCredentials / "Invalid authorization credentials
// supplied").
//
// Imports: the standard library, flotilla/api/errdefs and
// golang.org/x/crypto/ssh. Nothing from store, the other api packages, the
// scheduler or the agent.
package auth
