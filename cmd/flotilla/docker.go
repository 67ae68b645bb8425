package main

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/crypto/ssh"

	"flotilla/api/auth"
	"flotilla/api/dockerapi"
	"flotilla/api/service"
)

// dockerEndpoint is a running Docker API listener.
type dockerEndpoint struct {
	URL     string // tcp://host:port
	CertDir string // where ca.pem (and, for dev, the client cert) live
	Close   func() error
}

// startDocker starts the Docker API listener when cfg.DockerAddr is set: TLS
// with a server certificate from a CA kept under DataDir/docker, client
// certificates checked against the accounts' SSH keys. Clients need ca.pem,
// cert.pem and key.pem in DOCKER_CERT_PATH: `flotilla docker-cert` writes them.
// When one of cfg.DockerClientKeys (dev: the private key next to the
// account's public key) or, without those, the user's default SSH private
// key (~/.ssh/id_ed25519, id_ecdsa or id_rsa) belongs to an account, its
// client certificate is written to CertDir as soon as that account exists,
// so dev's env.sh works as is.
func startDocker(ctx context.Context, cfg serveConfig, svc *service.Service, log *slog.Logger) (*dockerEndpoint, error) {
	if cfg.DockerAddr == "" {
		return nil, nil
	}
	host, _, err := net.SplitHostPort(cfg.DockerAddr)
	if err != nil {
		return nil, usagef("--docker-addr %q: %v", cfg.DockerAddr, err)
	}
	var hosts []string
	if host != "" && host != "0.0.0.0" && host != "::" {
		hosts = append(hosts, host)
	}
	if name, err := os.Hostname(); err == nil {
		hosts = append(hosts, name)
	}
	dir := filepath.Join(cfg.DataDir, "docker")
	ca, err := auth.NewDevCA(dir, hosts...)
	if err != nil {
		return nil, err
	}
	tlsCfg, err := ca.TLSConfig()
	if err != nil {
		return nil, err
	}
	caPEM, err := os.ReadFile(ca.CAFile)
	if err != nil {
		return nil, err
	}
	l, err := net.Listen("tcp", cfg.DockerAddr)
	if err != nil {
		return nil, fmt.Errorf("Docker API listener: %w", err)
	}
	api := dockerapi.New(svc, log, dockerapi.Config{Datacenter: cfg.Datacenter, CAPEM: caPEM, Registry: cfg.DockerRegistry,
		UploadMaxBytes: int64(cfg.Images.UploadMax), UploadInflightBytes: int64(cfg.Images.UploadInflight)})
	srv := &http.Server{Handler: cfg.Metrics.Instrument("docker", api.Handler()), TLSConfig: tlsCfg, ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	go func() {
		if err := srv.ServeTLS(l, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("Docker API server", "error", err)
		}
	}()
	addr := l.Addr().(*net.TCPAddr)
	urlHost := host
	if urlHost == "" || urlHost == "0.0.0.0" || urlHost == "::" {
		urlHost = "127.0.0.1"
	}
	ep := &dockerEndpoint{URL: fmt.Sprintf("tcp://%s", net.JoinHostPort(urlHost, fmt.Sprint(addr.Port))), CertDir: dir}
	wctx, cancel := context.WithCancel(ctx)
	go writeDefaultClientCert(wctx, svc, dir, cfg.DockerClientKeys, log)
	ep.Close = func() error {
		cancel()
		sctx, done := context.WithTimeout(context.Background(), 3*time.Second)
		defer done()
		if err := srv.Shutdown(sctx); err != nil {
			return srv.Close()
		}
		return nil
	}
	return ep, nil
}

// writeDefaultClientCert writes dir/key.pem and dir/cert.pem from the first
// readable private key of keyFiles (none: the user's default SSH private
// key) once an account holding its public key exists (dev seeds the
// account after the listener starts). It does nothing when cert.pem exists
// or there is no such key.
func writeDefaultClientCert(ctx context.Context, svc *service.Service, dir string, keyFiles []string, log *slog.Logger) {
	if _, err := os.Stat(filepath.Join(dir, "cert.pem")); err == nil {
		return
	}
	if len(keyFiles) == 0 {
		home, err := os.UserHomeDir()
		if err != nil {
			return
		}
		for _, n := range []string{"id_ed25519", "id_ecdsa", "id_rsa"} {
			keyFiles = append(keyFiles, filepath.Join(home, ".ssh", n))
		}
	}
	var key crypto.Signer
	for _, f := range keyFiles {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		if k, err := auth.LoadPrivateKey(b); err == nil {
			key = k
			break
		}
	}
	if key == nil {
		return
	}
	pub, err := ssh.NewPublicKey(key.Public())
	if err != nil {
		return
	}
	want := string(pub.Marshal())
	for attempt := 0; attempt < 120; attempt++ {
		accts, err := svc.Store.ListAccounts(ctx)
		if err == nil {
			for _, a := range accts {
				keys, err := svc.Store.ListKeys(ctx, a.ID)
				if err != nil {
					continue
				}
				for _, k := range keys {
					pk, _, _, _, err := ssh.ParseAuthorizedKey([]byte(k.Text))
					if err != nil || string(pk.Marshal()) != want {
						continue
					}
					if err := writeClientCert(dir, a.Login, key); err != nil {
						log.Warn("writing the dev Docker client certificate", "error", err)
					}
					return
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(500 * time.Millisecond):
		}
	}
}
