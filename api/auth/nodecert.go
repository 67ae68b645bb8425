package auth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"time"

	"flotilla/api/errdefs"
)

// NodeCertValidity is how long a node's stream server certificate lasts;
// agents ask for a new one when theirs has less than a month left.
const NodeCertValidity = 365 * 24 * time.Hour

// IssueNodeCertificate returns a PEM certificate, signed by the CA, for a
// node's stream server with public key pub and the DNS name name. The name
// identifies the node (api/agentapi/wire.NodeCertName), not an address, so
// the control plane checks that it reached the node it meant to, wherever
// that node moved. Errors: Invalid for an unsupported or weak key, Internal
// when signing fails.
func (d *DevCA) IssueNodeCertificate(name string, pub crypto.PublicKey) ([]byte, error) {
	switch k := pub.(type) {
	case *ecdsa.PublicKey, ed25519.PublicKey:
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return nil, errdefs.InvalidArgument("an RSA key for a node certificate needs at least 2048 bits")
		}
	default:
		return nil, errdefs.InvalidArgument("unsupported public key type %T: use ECDSA, Ed25519 or RSA", pub)
	}
	if d.caKey == nil {
		return nil, errdefs.New(errdefs.Internal, "the node CA in %s has no key", d.Dir)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: randomSerial(),
		Subject:      pkix.Name{CommonName: name, Organization: []string{"Flotilla node"}},
		DNSNames:     []string{name},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(NodeCertValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, d.CA, pub, d.caKey)
	if err != nil {
		return nil, errdefs.Wrap(errdefs.Internal, err, "signing the node certificate %s", name)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), nil
}

// CAPEM returns the CA's certificate in PEM form.
func (d *DevCA) CAPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: d.CA.Raw})
}
