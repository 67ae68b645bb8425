package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"flotilla/api/agentapi"
	"flotilla/api/agentapi/wire"
	"flotilla/api/auth"
	"flotilla/api/cloudapi"
	"flotilla/api/cns"
	"flotilla/api/dockerapi"
	"flotilla/api/nodeclient"
	"flotilla/api/service"
	"flotilla/internal/metrics"
	"flotilla/scheduler"
	"flotilla/store"
)

// serveConfig is everything `flotilla serve` needs.
type serveConfig struct {
	DB           string
	CloudAPIAddr string
	AgentAPIAddr string
	// AgentAPITLS serves the agent API (and its registry endpoint) in TLS
	// with a certificate of the node CA (DataDir/node-ca); required off
	// loopback. AgentAPIHosts are extra names for that certificate.
	AgentAPITLS   bool
	AgentAPIHosts string
	DockerAddr    string
	// DockerRegistry is the registry or mirror Docker Hub pulls go to.
	DockerRegistry string
	// DockerClientKeys are private key files to make the Docker client
	// certificate in DataDir/docker from (dev); empty: ~/.ssh's defaults.
	DockerClientKeys []string
	// MetricsAddr is where /metrics is served; empty: on the CloudAPI
	// listener when that is on loopback, else nowhere.
	MetricsAddr string
	// Metrics is the process's registry (dev shares it with its agents);
	// nil: a new one.
	Metrics      *metrics.Registry
	TLSCert      string
	TLSKey       string
	Datacenter   string
	PublicURL    string
	RateLimit    float64
	OfflineGrace time.Duration
	Policy       string
	DataDir      string
	LogJSON      bool
	Quiet        bool
	// CNSAddr is where the CNS server listens (UDP and TCP; empty: off),
	// CNSSuffix its zone and CNSDC the datacenter label in its names.
	CNSAddr   string
	CNSSuffix string
	CNSDC     string
	// Images limits image content, pulls and upload bodies.
	Images imageFlags
}

func (c *serveConfig) flags(fs *flag.FlagSet) {
	fs.StringVar(&c.CloudAPIAddr, "cloudapi-addr", "127.0.0.1:8080", "CloudAPI listen address")
	fs.StringVar(&c.AgentAPIAddr, "agentapi-addr", "127.0.0.1:8081", "agent API listen address")
	fs.BoolVar(&c.AgentAPITLS, "agentapi-tls", false, "serve the agent API in TLS with the node CA in DATA/node-ca (required off loopback; agents trust DATA/node-ca/ca.pem via FLOTILLA_AGENT_CA)")
	fs.StringVar(&c.AgentAPIHosts, "agentapi-hosts", "", "comma-separated names and addresses agents reach the agent API by, for its certificate (default: the listen address and this host's name)")
	fs.StringVar(&c.DockerAddr, "docker-addr", "", "Docker API listen address (empty: off)")
	fs.StringVar(&c.DockerRegistry, "docker-registry", "", "registry or mirror URL that Docker Hub images (docker pull busybox) come from (empty: Docker Hub)")
	fs.StringVar(&c.DataDir, "data", "/var/lib/flotilla", "directory for image blobs and the Docker endpoint's certificates")
	fs.StringVar(&c.TLSCert, "tls-cert", "", "TLS certificate for CloudAPI (plain HTTP only on loopback without it)")
	fs.StringVar(&c.TLSKey, "tls-key", "", "TLS key for CloudAPI")
	fs.StringVar(&c.Datacenter, "datacenter", "flotilla-1", "datacenter name")
	fs.StringVar(&c.PublicURL, "public-url", "", "CloudAPI URL as clients see it (default from --cloudapi-addr)")
	fs.Float64Var(&c.RateLimit, "rate-limit", 0, "CloudAPI requests per second per account (0: unlimited)")
	fs.DurationVar(&c.OfflineGrace, "offline-grace", 30*time.Second, "silence after which a node is offline")
	fs.StringVar(&c.Policy, "policy", "pack", "placement policy: pack or spread")
	fs.StringVar(&c.MetricsAddr, "metrics-addr", "", "host:port to serve Prometheus /metrics on (empty: on the CloudAPI listener when it is on loopback)")
	fs.BoolVar(&c.LogJSON, "log-json", false, "log as JSON")
	fs.BoolVar(&c.Quiet, "quiet", false, "log warnings only (no access log)")
	c.cnsFlags(fs, "")
	c.Images.flags(fs)
}

// cnsFlags adds the CNS server's flags (serve and dev).
func (c *serveConfig) cnsFlags(fs *flag.FlagSet, defaultAddr string) {
	fs.StringVar(&c.CNSAddr, "cns-addr", defaultAddr, "CNS DNS server listen address, UDP and TCP (empty: off; nodes forward the CNS suffix to it)")
	fs.StringVar(&c.CNSSuffix, "cns-suffix", service.DefaultCNSSuffix, "DNS zone the CNS server is authoritative for")
	fs.StringVar(&c.CNSDC, "cns-dc", "", "datacenter label in CNS names (default: --datacenter)")
}

func runServe(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	var cfg serveConfig
	db := dbFlag(fs)
	cfg.flags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg.DB = *db
	if cfg.DB == "" {
		return usagef("--db (or $FLOTILLA_DB) is required")
	}
	// Everything that logs through slog's default (or the log package)
	// follows --log-json too.
	slog.SetDefault(newLogger(cfg.LogJSON, slog.LevelInfo))
	cp, err := startControlPlane(ctx, cfg)
	if err != nil {
		return err
	}
	fmt.Printf("flotilla serve ready: cloudapi %s, agent api %s\n", cp.CloudAPIURL, cp.AgentAPIURL)
	<-ctx.Done()
	return cp.Close()
}

// controlPlane is a running `serve`.
type controlPlane struct {
	Store       *store.Store
	Service     *service.Service
	CloudAPIURL string
	AgentAPIURL string
	// NodeCAFile is the node CA's certificate, which agents trust for an
	// agent API in TLS (FLOTILLA_AGENT_CA).
	NodeCAFile string
	Docker     *dockerEndpoint
	Metrics    *metrics.Registry
	CNSAddr    string // the CNS server's bound address, "" when off
	servers    []*http.Server
	cancel     context.CancelFunc
	wg         sync.WaitGroup
}

func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func startControlPlane(ctx context.Context, cfg serveConfig) (*controlPlane, error) {
	level := slog.LevelInfo
	if cfg.Quiet {
		level = slog.LevelWarn
	}
	log := newLogger(cfg.LogJSON, level)
	if !cfg.AgentAPITLS && !isLoopback(cfg.AgentAPIAddr) {
		return nil, usagef("the agent API on %s needs TLS: add --agentapi-tls (plain HTTP is only allowed on loopback; agents then trust %s through FLOTILLA_AGENT_CA)",
			cfg.AgentAPIAddr, filepath.Join(cfg.DataDir, "node-ca", "ca.pem"))
	}
	if err := store.Migrate(ctx, cfg.DB); err != nil {
		return nil, err
	}
	st, err := store.Open(ctx, cfg.DB)
	if err != nil {
		return nil, err
	}
	policy := scheduler.PolicyPack
	if cfg.Policy == "spread" {
		policy = scheduler.PolicySpread
	} else if cfg.Policy != "pack" {
		st.Close()
		return nil, usagef("--policy must be pack or spread")
	}
	svc, err := service.New(ctx, st, log, service.PlacerOptions{Policy: policy})
	if err != nil {
		st.Close()
		return nil, err
	}
	blobs, err := imageBlobs(cfg.DataDir)
	if err != nil {
		st.Close()
		return nil, err
	}
	svc.SetBlobs(blobs)
	svc.SetImagePolicy(cfg.Images.policy())
	useTLS := cfg.TLSCert != "" && cfg.TLSKey != ""
	if !useTLS && !isLoopback(cfg.CloudAPIAddr) {
		st.Close()
		return nil, usagef("CloudAPI on %s needs --tls-cert and --tls-key (plain HTTP is only allowed on loopback)", cfg.CloudAPIAddr)
	}
	cl, err := net.Listen("tcp", cfg.CloudAPIAddr)
	if err != nil {
		st.Close()
		return nil, fmt.Errorf("CloudAPI listener: %w", err)
	}
	// The node CA signs the agent API's certificate and the certificates of
	// nodes' stream servers, which this control plane verifies.
	nodeCA, err := auth.NewDevCA(filepath.Join(cfg.DataDir, "node-ca"), agentAPIHosts(cfg)...)
	if err != nil {
		cl.Close()
		st.Close()
		return nil, err
	}
	dockerapi.UseNodeCA(nodeCA.CertPool())
	nodes := nodeclient.New()
	nodes.UseTLS(nodeCA.CertPool())
	svc.SetNodeClient(nodes)
	al, err := net.Listen("tcp", cfg.AgentAPIAddr)
	if err != nil {
		cl.Close()
		st.Close()
		return nil, fmt.Errorf("agent API listener: %w", err)
	}
	agentScheme := "http"
	if cfg.AgentAPITLS {
		tcfg, err := nodeCA.TLSConfig()
		if err != nil {
			cl.Close()
			al.Close()
			st.Close()
			return nil, err
		}
		tcfg.ClientAuth = tls.NoClientCert
		al, agentScheme = tls.NewListener(al, tcfg), "https"
	}
	scheme := "http"
	if useTLS {
		scheme = "https"
	}
	cp := &controlPlane{Store: st, Service: svc, NodeCAFile: nodeCA.CAFile,
		CloudAPIURL: scheme + "://" + cl.Addr().String(), AgentAPIURL: agentScheme + "://" + al.Addr().String()}
	if cfg.PublicURL == "" {
		cfg.PublicURL = cp.CloudAPIURL
	}
	ctx, cp.cancel = context.WithCancel(context.Background())
	ccfg := cloudapi.Config{Datacenter: cfg.Datacenter, URL: cfg.PublicURL, RateLimit: cfg.RateLimit}
	aapi := agentapi.New(st, log)
	if cfg.CNSAddr != "" {
		zone, addr, err := cp.startCNS(ctx, cfg, log)
		if err != nil {
			cp.cancel()
			cl.Close()
			al.Close()
			st.Close()
			return nil, err
		}
		ccfg.CNS, cp.CNSAddr = zone, addr
		aapi.CNS = wire.CNS{Suffix: zone.Suffix, Address: addr}
	}
	capi := cloudapi.New(svc, log, ccfg)
	aapi.ImageRegistry = al.Addr().String()
	aapi.SetBlobs(blobs)
	aapi.SetNodeCA(nodeCA)
	if cfg.Metrics == nil {
		cfg.Metrics = metrics.New(log)
	}
	cp.Metrics = cfg.Metrics
	watchControlPlane(cfg.Metrics, svc)
	capiHandler := cfg.Metrics.Instrument("cloudapi", capi.Handler())
	if cfg.MetricsAddr == "" && isLoopback(cl.Addr().String()) {
		capiHandler = withMetrics(cfg.Metrics, capiHandler)
	} else if cfg.MetricsAddr != "" {
		if _, err := serveMetrics(ctx, cfg.MetricsAddr, cfg.Metrics, log); err != nil {
			cl.Close()
			al.Close()
			st.Close()
			return nil, fmt.Errorf("metrics listener: %w", err)
		}
	}
	cs := &http.Server{Handler: capiHandler, ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	as := &http.Server{Handler: cfg.Metrics.Instrument("agentapi", aapi.Handler()), ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	cp.servers = []*http.Server{cs, as}
	cp.wg.Add(4)
	go func() {
		defer cp.wg.Done()
		var err error
		if useTLS {
			cs.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12}
			err = cs.ServeTLS(cl, cfg.TLSCert, cfg.TLSKey)
		} else {
			err = cs.Serve(cl)
		}
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("CloudAPI server", "error", err)
		}
	}()
	go func() {
		defer cp.wg.Done()
		if err := as.Serve(al); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("agent API server", "error", err)
		}
	}()
	go func() { defer cp.wg.Done(); aapi.Listen(ctx) }()
	cp.wg.Add(2)
	go func() { defer cp.wg.Done(); svc.Placer.Run(ctx) }()
	go func() { defer cp.wg.Done(); svc.RunWatcher(ctx) }()
	if cp.Docker, err = startDocker(ctx, cfg, svc, log); err != nil {
		cp.Close()
		return nil, err
	}
	host, _ := os.Hostname()
	go func() {
		defer cp.wg.Done()
		svc.RunNodeMonitor(ctx, service.MonitorOptions{Holder: host + "/" + strings.ReplaceAll(cl.Addr().String(), ":", "_"), Grace: cfg.OfflineGrace})
	}()
	return cp, nil
}

// startCNS loads the CNS server and listens; it follows the change feed
// until the control plane closes.
func (cp *controlPlane) startCNS(ctx context.Context, cfg serveConfig, log *slog.Logger) (service.CNSZone, string, error) {
	zone := service.CNSZone{Suffix: cfg.CNSSuffix, DC: cfg.CNSDC}
	if zone.DC == "" {
		zone.DC = cfg.Datacenter
	}
	srv, err := cns.New(cp.Store, cns.Config{CNSZone: zone, Logger: log})
	if err != nil {
		return zone, "", usagef("%v (see --cns-suffix, --cns-dc)", err)
	}
	zone.Suffix = strings.TrimSuffix(strings.ToLower(zone.Suffix), ".")
	loaded := make(chan error, 1)
	cp.wg.Add(1)
	go func() {
		defer cp.wg.Done()
		loaded <- srv.Run(ctx)
	}()
	select {
	case <-srv.Ready():
	case err := <-loaded:
		return zone, "", fmt.Errorf("CNS server: %w", err)
	}
	addr, err := srv.ListenAndServe(ctx, cfg.CNSAddr)
	if err != nil {
		return zone, "", err
	}
	return zone, addr.String(), nil
}

// agentAPIHosts are the names in the agent API's certificate: those given,
// or the listen host (unless a wildcard) and this host's name.
func agentAPIHosts(cfg serveConfig) []string {
	var hosts []string
	for _, h := range strings.Split(cfg.AgentAPIHosts, ",") {
		if h = strings.TrimSpace(h); h != "" {
			hosts = append(hosts, h)
		}
	}
	if len(hosts) > 0 {
		return hosts
	}
	if h, _, err := net.SplitHostPort(cfg.AgentAPIAddr); err == nil && h != "" {
		if ip := net.ParseIP(h); ip == nil || !ip.IsUnspecified() {
			hosts = append(hosts, h)
		}
	}
	if name, err := os.Hostname(); err == nil {
		hosts = append(hosts, name)
	}
	return hosts
}

// Close stops the listeners (waiting briefly for requests in flight) and the loops.
func (cp *controlPlane) Close() error {
	sctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	cp.cancel()
	if cp.Docker != nil && cp.Docker.Close != nil {
		cp.Docker.Close()
	}
	for _, s := range cp.servers {
		if err := s.Shutdown(sctx); err != nil {
			s.Close()
		}
	}
	cp.wg.Wait()
	cp.Store.Close()
	return nil
}
