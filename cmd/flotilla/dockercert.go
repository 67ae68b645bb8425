package main

import (
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"flotilla/api/auth"
)

// runDockerCert writes a Docker client's key.pem and cert.pem (a certificate
// for CN=login self-signed by the account's SSH key, as sdc-docker-setup.sh
// made them) and fetches the endpoint's ca.pem, into --out.
func runDockerCert(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("docker-cert", flag.ContinueOnError)
	home, _ := os.UserHomeDir()
	login := fs.String("login", os.Getenv("TRITON_ACCOUNT"), "account login (the certificate's CN)")
	keyFile := fs.String("key", filepath.Join(home, ".ssh", "id_ed25519"), "the account's SSH private key (RSA, ECDSA or Ed25519)")
	out := fs.String("out", filepath.Join(home, ".flotilla", "docker"), "directory for key.pem, cert.pem and ca.pem")
	endpoint := fs.String("url", "", "the Docker endpoint, https://host:port (default from $DOCKER_HOST)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *login == "" {
		return usagef("--login is required")
	}
	if *endpoint == "" {
		if h := os.Getenv("DOCKER_HOST"); strings.HasPrefix(h, "tcp://") {
			*endpoint = "https://" + strings.TrimPrefix(h, "tcp://")
		}
	}
	b, err := os.ReadFile(*keyFile)
	if err != nil {
		return fmt.Errorf("reading the SSH key: %w", err)
	}
	key, err := auth.LoadPrivateKey(b)
	if err != nil {
		return errorText(err)
	}
	if err := os.MkdirAll(*out, 0o700); err != nil {
		return err
	}
	if *endpoint != "" {
		ca, err := fetchCA(ctx, *endpoint)
		if err != nil {
			return fmt.Errorf("fetching %s/ca.pem: %w", *endpoint, err)
		}
		if err := os.WriteFile(filepath.Join(*out, "ca.pem"), ca, 0o644); err != nil {
			return err
		}
	} else {
		fmt.Fprintln(os.Stderr, "no --url and no DOCKER_HOST: ca.pem not fetched; copy it from the endpoint (GET /ca.pem)")
	}
	if err := writeClientCert(*out, *login, key); err != nil {
		return err
	}
	fmt.Printf("wrote %s/{key,cert,ca}.pem for %s\nexport DOCKER_CERT_PATH=%s DOCKER_TLS_VERIFY=1\n", *out, *login, *out)
	if *endpoint != "" {
		u, _ := url.Parse(*endpoint)
		fmt.Printf("export DOCKER_HOST=tcp://%s\n", u.Host)
	}
	return nil
}

// writeClientCert writes dir/key.pem (0600) and dir/cert.pem for login.
func writeClientCert(dir, login string, key any) error {
	signer, ok := key.(crypto.Signer)
	if !ok {
		return usagef("the key cannot sign")
	}
	cert, err := auth.MakeClientCert(login, signer)
	if err != nil {
		return errorText(err)
	}
	keyPEM, err := auth.MarshalPrivateKey(signer)
	if err != nil {
		return errorText(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "key.pem"), keyPEM, 0o600); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "cert.pem"), cert, 0o644)
}

// fetchCA downloads the endpoint's CA certificate. The connection cannot be
// verified yet (that CA is what we are fetching), so the fingerprint is
// printed for the user to compare, as with an SSH host key.
func fetchCA(ctx context.Context, endpoint string) ([]byte, error) {
	client := &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12}}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(endpoint, "/")+"/ca.pem", nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("status %s", resp.Status)
	}
	blk, _ := pem.Decode(body)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("the answer is not a PEM certificate")
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(c.Raw)
	fmt.Fprintf(os.Stderr, "CA %q, SHA-256 fingerprint %x\n", c.Subject.CommonName, sum)
	return body, nil
}
