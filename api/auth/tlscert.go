package auth

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"

	"golang.org/x/crypto/ssh"

	"flotilla/api/errdefs"
)

// ClientCertValidity is how long MakeClientCert's certificates last, as with
// sdc-docker-setup.sh's "openssl x509 -days 365".
const ClientCertValidity = 365 * 24 * time.Hour

// MsgClientCertRequired answers a Docker request without a client certificate.
const MsgClientCertRequired = "a TLS client certificate is required: make one from your account's SSH key with \"flotilla docker-cert\""

// ClientCert is what a Docker client's TLS certificate claims: an account
// login (the subject's common name) and a public key, which must be one of
// that account's SSH keys.
type ClientCert struct {
	Login     string
	PublicKey ssh.PublicKey
	// MD5 and SHA256 are the key's fingerprints, to look the key up by.
	MD5    string
	SHA256 string
}

// PeerCertificate returns the client's leaf certificate from a TLS connection
// state (http.Request.TLS), or an Unauthorized error when there is none.
func PeerCertificate(cs *tls.ConnectionState) (*x509.Certificate, error) {
	if cs == nil || len(cs.PeerCertificates) == 0 {
		return nil, errdefs.New(errdefs.Unauthorized, MsgClientCertRequired)
	}
	return cs.PeerCertificates[0], nil
}

// ParseClientCert reads the login and public key a client certificate claims.
// Nothing is verified yet: look the account's keys up by Login and MD5, then
// call VerifyClientCert. Errors are Unauthorized: no certificate, no common
// name, or a key type accounts cannot hold.
func ParseClientCert(cert *x509.Certificate) (*ClientCert, error) {
	if cert == nil {
		return nil, errdefs.New(errdefs.Unauthorized, MsgClientCertRequired)
	}
	login := cert.Subject.CommonName
	if login == "" {
		return nil, errdefs.New(errdefs.Unauthorized, "the client certificate has no subject common name: it must be CN=<account login>")
	}
	pub, err := ssh.NewPublicKey(cert.PublicKey)
	if err != nil || !supportedKeyTypes[pub.Type()] {
		return nil, errdefs.New(errdefs.Unauthorized, "the client certificate's key must be an RSA, ECDSA or Ed25519 SSH key of the account")
	}
	return &ClientCert{
		Login:     login,
		PublicKey: pub,
		MD5:       FingerprintMD5(pub),
		SHA256:    ssh.FingerprintSHA256(pub),
	}, nil
}

// VerifyClientCert checks that cert's public key is one of accountKeys and that
// cert is signed by that same key (self-signed with the SSH key, as
// sdc-docker-setup.sh and MakeClientCert make it), and returns the matching
// key. Like sdc-docker it does not enforce the validity period of such
// self-signed certificates. Errors are Unauthorized.
func VerifyClientCert(cert *x509.Certificate, accountKeys []ssh.PublicKey) (ssh.PublicKey, error) {
	cc, err := ParseClientCert(cert)
	if err != nil {
		return nil, err
	}
	want := cc.PublicKey.Marshal()
	for _, k := range accountKeys {
		if k == nil || !bytes.Equal(k.Marshal(), want) {
			continue
		}
		cpk, ok := k.(ssh.CryptoPublicKey)
		if !ok {
			break
		}
		// Check with the account's copy of the key, not the certificate's.
		signer := &x509.Certificate{PublicKey: cpk.CryptoPublicKey()}
		if err := signer.CheckSignature(cert.SignatureAlgorithm, cert.RawTBSCertificate, cert.Signature); err != nil {
			return nil, errdefs.Wrap(errdefs.Unauthorized, err, "the client certificate is not signed by its own key (%s)", cc.MD5)
		}
		return k, nil
	}
	return nil, errdefs.New(errdefs.Unauthorized, "the client certificate's key %s is not one of account %s's SSH keys", cc.MD5, printable(cc.Login))
}

// MakeClientCert returns a PEM certificate for login's Docker client, self-signed
// by key (an account SSH key), valid for ClientCertValidity. Errors are Invalid
// for an empty login or unsupported key.
func MakeClientCert(login string, key crypto.Signer) ([]byte, error) {
	if login == "" {
		return nil, errdefs.InvalidArgument("login is required for a client certificate")
	}
	if err := checkSignerKey(key); err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: randomSerial(),
		Subject:      pkix.Name{CommonName: login},
		NotBefore:    now.Add(-5 * time.Minute),
		NotAfter:     now.Add(ClientCertValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, errdefs.Wrap(errdefs.Internal, err, "creating the client certificate")
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), nil
}

// MarshalPrivateKey returns key as a PKCS#8 PEM block, the key.pem the docker
// CLI reads beside cert.pem.
func MarshalPrivateKey(key crypto.Signer) ([]byte, error) {
	if err := checkSignerKey(key); err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, errdefs.Wrap(errdefs.Invalid, err, "cannot encode the private key")
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// LoadPrivateKey parses an unencrypted private key in OpenSSH format (what
// ssh-keygen writes) or PEM (PKCS#1, PKCS#8, SEC 1). Errors are Invalid: not a
// key, passphrase-protected (use LoadPrivateKeyWithPassphrase), or a type
// other than RSA, ECDSA or Ed25519.
func LoadPrivateKey(pemOrOpenSSH []byte) (crypto.Signer, error) {
	raw, err := ssh.ParseRawPrivateKey(pemOrOpenSSH)
	var missing *ssh.PassphraseMissingError
	if errors.As(err, &missing) {
		return nil, errdefs.InvalidArgument("the private key is protected by a passphrase; give the passphrase or use an ssh-agent key")
	}
	if err != nil {
		return nil, errdefs.Wrap(errdefs.Invalid, err, "not a private key in OpenSSH or PEM format")
	}
	return signerOf(raw)
}

// LoadPrivateKeyWithPassphrase is LoadPrivateKey for a passphrase-protected key.
func LoadPrivateKeyWithPassphrase(pemOrOpenSSH, passphrase []byte) (crypto.Signer, error) {
	raw, err := ssh.ParseRawPrivateKeyWithPassphrase(pemOrOpenSSH, passphrase)
	if errors.Is(err, x509.IncorrectPasswordError) {
		return nil, errdefs.InvalidArgument("the passphrase does not decrypt the private key")
	}
	if err != nil {
		return nil, errdefs.Wrap(errdefs.Invalid, err, "cannot decrypt the private key")
	}
	return signerOf(raw)
}

func signerOf(raw any) (crypto.Signer, error) {
	var s crypto.Signer
	switch k := raw.(type) {
	case *rsa.PrivateKey:
		s = k
	case *ecdsa.PrivateKey:
		s = k
	case ed25519.PrivateKey:
		s = k
	case *ed25519.PrivateKey:
		s = *k
	default:
		return nil, errdefs.InvalidArgument("private key type %T is not supported: use RSA, ECDSA or Ed25519", raw)
	}
	if err := checkSignerKey(s); err != nil {
		return nil, err
	}
	return s, nil
}

func checkSignerKey(key crypto.Signer) error {
	if key == nil {
		return errdefs.InvalidArgument("no private key given")
	}
	pub, err := ssh.NewPublicKey(key.Public())
	if err != nil || !supportedKeyTypes[pub.Type()] {
		return errdefs.InvalidArgument("private key type %T is not supported: use RSA, ECDSA or Ed25519", key)
	}
	return checkKeyStrength(pub)
}

func randomSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand does not fail on supported platforms
	}
	return n.Add(n, big.NewInt(1))
}

// DevCA is a private certificate authority and a server certificate it signed,
// for the Docker endpoint of a dev or test installation.
type DevCA struct {
	Dir string
	// CAFile is ca.pem, which clients put in DOCKER_CERT_PATH.
	CAFile string
	// ServerCertFile and ServerKeyFile are server-cert.pem and server-key.pem.
	ServerCertFile string
	ServerKeyFile  string
	// CA is the authority's certificate.
	CA    *x509.Certificate
	caKey crypto.Signer
}

// devHosts are always in a dev server certificate.
var devHosts = []string{"localhost", "127.0.0.1", "::1"}

// NewDevCA returns the CA and server certificate in dir, making them when
// missing: ca.pem and ca-key.pem (10 years), server-cert.pem and
// server-key.pem (1 year, for localhost, 127.0.0.1, ::1 and hosts, which may
// be names or IP addresses). An existing CA is kept so that clients' ca.pem
// stays valid; the server certificate is remade when it lacks a host or is
// about to expire. Errors are Internal (I/O) or Invalid (unreadable files).
func NewDevCA(dir string, hosts ...string) (*DevCA, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, errdefs.Wrap(errdefs.Internal, err, "creating %s", dir)
	}
	d := &DevCA{
		Dir:            dir,
		CAFile:         filepath.Join(dir, "ca.pem"),
		ServerCertFile: filepath.Join(dir, "server-cert.pem"),
		ServerKeyFile:  filepath.Join(dir, "server-key.pem"),
	}
	caKeyFile := filepath.Join(dir, "ca-key.pem")
	caCert, caKey, err := loadPair(d.CAFile, caKeyFile)
	if errors.Is(err, os.ErrNotExist) {
		caCert, caKey, err = makeCA(d.CAFile, caKeyFile)
	}
	if err != nil {
		return nil, err
	}
	d.CA, d.caKey = caCert, caKey
	allHosts := append(slices.Clone(devHosts), hosts...)
	srvCert, _, err := loadPair(d.ServerCertFile, d.ServerKeyFile)
	if err != nil || !serverCertFits(srvCert, caCert, allHosts) {
		if err := makeServerCert(d.ServerCertFile, d.ServerKeyFile, caCert, caKey, allHosts); err != nil {
			return nil, err
		}
	}
	return d, nil
}

// TLSConfig returns a server TLS configuration with the dev server certificate
// that asks clients for a certificate without checking it against a CA (the
// client's certificate is self-signed by an SSH key): check it per request
// with PeerCertificate, ParseClientCert and VerifyClientCert.
func (d *DevCA) TLSConfig() (*tls.Config, error) {
	pair, err := tls.LoadX509KeyPair(d.ServerCertFile, d.ServerKeyFile)
	if err != nil {
		return nil, errdefs.Wrap(errdefs.Invalid, err, "loading the server certificate from %s", d.Dir)
	}
	return &tls.Config{
		Certificates: []tls.Certificate{pair},
		ClientAuth:   tls.RequestClientCert,
		MinVersion:   tls.VersionTLS12,
	}, nil
}

// CertPool returns a pool holding the CA, for clients.
func (d *DevCA) CertPool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(d.CA)
	return p
}

func serverCertFits(c, ca *x509.Certificate, hosts []string) bool {
	if c.CheckSignatureFrom(ca) != nil || time.Until(c.NotAfter) < 30*24*time.Hour {
		return false
	}
	for _, h := range hosts {
		if c.VerifyHostname(h) != nil {
			return false
		}
	}
	return true
}

func makeCA(certFile, keyFile string) (*x509.Certificate, crypto.Signer, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, errdefs.Wrap(errdefs.Internal, err, "generating the CA key")
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{CommonName: "Flotilla dev CA", Organization: []string{"Flotilla"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	cert, err := writePair(certFile, keyFile, tmpl, tmpl, key, key)
	return cert, key, err
}

func makeServerCert(certFile, keyFile string, ca *x509.Certificate, caKey crypto.Signer, hosts []string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "generating the server key")
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: randomSerial(),
		Subject:      pkix.Name{CommonName: hosts[0]},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else if h != "" {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	_, err = writePair(certFile, keyFile, tmpl, ca, key, caKey)
	return err
}

// writePair signs tmpl with parentKey and writes the certificate and key.
func writePair(certFile, keyFile string, tmpl, parent *x509.Certificate, key, parentKey crypto.Signer) (*x509.Certificate, error) {
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), parentKey)
	if err != nil {
		return nil, errdefs.Wrap(errdefs.Internal, err, "creating certificate %s", certFile)
	}
	keyPEM, err := MarshalPrivateKey(key)
	if err != nil {
		return nil, err
	}
	// The key first, so a certificate on disk always has its key.
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		return nil, errdefs.Wrap(errdefs.Internal, err, "writing %s", keyFile)
	}
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return nil, errdefs.Wrap(errdefs.Internal, err, "writing %s", certFile)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, errdefs.Wrap(errdefs.Internal, err, "parsing the new certificate")
	}
	return cert, nil
}

// loadPair reads a PEM certificate and its private key. A missing file gives
// an error matching os.ErrNotExist.
func loadPair(certFile, keyFile string) (*x509.Certificate, crypto.Signer, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, nil, err
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, nil, err
	}
	block, _ := pem.Decode(certPEM)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, nil, errdefs.InvalidArgument("%s holds no PEM certificate", certFile)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, nil, errdefs.Wrap(errdefs.Invalid, err, "%s holds no valid certificate", certFile)
	}
	key, err := LoadPrivateKey(keyPEM)
	if err != nil {
		return nil, nil, errdefs.Wrap(errdefs.Invalid, err, "%s holds no usable private key", keyFile)
	}
	if pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(cert.PublicKey) {
		return nil, nil, errdefs.InvalidArgument("%s does not hold the key of %s", keyFile, certFile)
	}
	return cert, key, nil
}

// String describes the CA for logs.
func (d *DevCA) String() string { return fmt.Sprintf("DevCA(%s)", d.Dir) }
