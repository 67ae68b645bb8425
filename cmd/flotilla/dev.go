package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"flotilla/agent"
	"flotilla/agent/dns"
	"flotilla/agent/driver"
	"flotilla/api/agentapi"
	"flotilla/api/auth"
	"flotilla/api/errdefs"
	"flotilla/api/service"
	"flotilla/store"
	"flotilla/store/pglocal"
)

// devConfig is everything `flotilla dev` needs.
type devConfig struct {
	Data         string
	Nodes        int
	Driver       string
	CloudAPIAddr string
	AgentAPIAddr string
	DockerAddr   string
	// DockerRegistry is the registry or mirror Docker Hub pulls go to.
	DockerRegistry string
	Login          string
	KeyFile        string
	NodeMemory     int64
	NodeDisk       int64
	NodeCPUs       float64
	Verbose        bool
	OfflineGrace   time.Duration
	// CNS holds the CNS server's flags (CNSAddr, CNSSuffix, CNSDC).
	CNS serveConfig
}

func defaultLogin() string {
	if u, err := user.Current(); err == nil && u.Username != "" {
		return u.Username
	}
	return "admin"
}

func defaultKeyFile() string {
	home, _ := os.UserHomeDir()
	for _, name := range []string{"id_ed25519.pub", "id_ecdsa.pub", "id_rsa.pub"} {
		p := filepath.Join(home, ".ssh", name)
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return filepath.Join(home, ".ssh", "id_ed25519.pub")
}

func runDev(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("dev", flag.ContinueOnError)
	var c devConfig
	fs.StringVar(&c.Data, "data", "flotilla-data", "directory for the database and node state (reused across runs)")
	fs.IntVar(&c.Nodes, "nodes", 1, "number of in-process compute nodes")
	fs.StringVar(&c.Driver, "driver", "sim", "workload driver for the nodes: sim, runc, qemu or runc,qemu")
	fs.StringVar(&c.CloudAPIAddr, "cloudapi-addr", "127.0.0.1:8080", "CloudAPI listen address")
	fs.StringVar(&c.AgentAPIAddr, "agentapi-addr", "127.0.0.1:0", "agent API listen address (port 0: any free port)")
	fs.StringVar(&c.DockerAddr, "docker-addr", "", "Docker API listen address (empty: off)")
	fs.StringVar(&c.DockerRegistry, "docker-registry", "", "registry or mirror URL that Docker Hub images (docker pull busybox) come from (empty: Docker Hub)")
	fs.StringVar(&c.Login, "login", defaultLogin(), "account to create")
	fs.StringVar(&c.KeyFile, "key", defaultKeyFile(), "SSH public key for the account")
	fs.Int64Var(&c.NodeMemory, "node-memory", 32768, "memory per simulated node in MiB")
	fs.Int64Var(&c.NodeDisk, "node-disk", 1048576, "disk per simulated node in MiB")
	fs.Float64Var(&c.NodeCPUs, "node-cpus", 16, "vCPUs per simulated node")
	fs.DurationVar(&c.OfflineGrace, "offline-grace", 30*time.Second, "silence after which a node is offline")
	fs.BoolVar(&c.Verbose, "verbose", false, "log every request")
	c.CNS.cnsFlags(fs, "127.0.0.1:0")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if c.Nodes < 0 {
		return usagef("--nodes must not be negative")
	}
	start := time.Now()
	key, err := readKey(c.KeyFile)
	if err != nil {
		return fmt.Errorf("%v\nCreate a key with `ssh-keygen -t ed25519` or pass --key FILE", err)
	}
	data, err := filepath.Abs(c.Data)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(data, 0o755); err != nil {
		return err
	}
	fmt.Printf("starting PostgreSQL in %s\n", filepath.Join(data, "pg"))
	pg, err := pglocal.Start(ctx, pglocal.Options{Dir: filepath.Join(data, "pg"), Durable: true})
	if err != nil {
		return err
	}
	defer func() {
		fmt.Println("stopping PostgreSQL")
		pg.Stop()
	}()
	dbURL := pg.URL("flotilla")
	if err := ensureDatabase(ctx, pg.URL("postgres"), "flotilla"); err != nil {
		return err
	}
	level := slog.LevelWarn
	if c.Verbose {
		level = slog.LevelInfo
	}
	cp, err := startControlPlane(ctx, serveConfig{DB: dbURL, CloudAPIAddr: c.CloudAPIAddr, AgentAPIAddr: c.AgentAPIAddr,
		DockerAddr: c.DockerAddr, DockerRegistry: c.DockerRegistry, DataDir: data, Datacenter: "flotilla-dev", OfflineGrace: c.OfflineGrace, Policy: "pack", Quiet: !c.Verbose,
		CNSAddr: c.CNS.CNSAddr, CNSSuffix: c.CNS.CNSSuffix, CNSDC: c.CNS.CNSDC})
	if err != nil {
		return err
	}
	defer cp.Close()
	token, err := seedDev(ctx, cp.Store, data, c.Login, key)
	if err != nil {
		return err
	}
	log := newLogger(false, level)
	agents, err := startAgents(ctx, c, data, cp.AgentAPIURL, token, log)
	if err != nil {
		return err
	}
	defer agents.stop()
	if err := waitReady(ctx, cp, c.Nodes); err != nil {
		return err
	}
	envFile := filepath.Join(data, "env.sh")
	env := fmt.Sprintf(`# Source this file to use the Flotilla dev cloud: . %s
export TRITON_URL=%s
export TRITON_ACCOUNT=%s
export TRITON_KEY_ID=%s
export TRITON_TLS_INSECURE=1
export SDC_URL=$TRITON_URL SDC_ACCOUNT=$TRITON_ACCOUNT SDC_KEY_ID=$TRITON_KEY_ID
export FLOTILLA_DB=%s
export FLOTILLA_DATA=%s
export FLOTILLA_AGENT_API=%s
export FLOTILLA_JOIN_TOKEN=%s
`, envFile, cp.CloudAPIURL, c.Login, key.MD5, dbURL, data, cp.AgentAPIURL, token)
	if cp.Docker != nil {
		env += fmt.Sprintf("export DOCKER_HOST=%s\nexport DOCKER_TLS_VERIFY=1\nexport DOCKER_CERT_PATH=%s\n", cp.Docker.URL, cp.Docker.CertDir)
	}
	if cp.CNSAddr != "" {
		env += fmt.Sprintf("export FLOTILLA_CNS=%s\n", cp.CNSAddr)
	}
	if err := os.WriteFile(envFile, []byte(env), 0o600); err != nil {
		return err
	}
	fmt.Printf("flotilla dev ready in %.1fs: cloudapi %s, %d %s node(s), account %s; run: . %s\n",
		time.Since(start).Seconds(), cp.CloudAPIURL, c.Nodes, c.Driver, c.Login, envFile)
	<-ctx.Done()
	fmt.Println("stopping")
	return nil
}

func ensureDatabase(ctx context.Context, adminURL, name string) error {
	conn, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	var exists bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`, name).Scan(&exists); err != nil {
		return err
	}
	if !exists {
		_, err = conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize())
	}
	return err
}

// seedDev creates what a fresh cloud needs, keeping whatever exists, and
// returns the agents' join token (kept in DIR/join-token).
func seedDev(ctx context.Context, st *store.Store, data, login string, key *auth.ParsedKey) (string, error) {
	acct, err := st.AccountByLogin(ctx, login)
	if errdefs.Is(err, errdefs.NotFound) {
		acct, err = st.CreateAccount(ctx, store.Account{Login: login, Email: login + "@localhost", FirstName: login, Operator: true})
	}
	if err != nil {
		return "", errorText(err)
	}
	if _, err := st.GetKey(ctx, acct.ID, key.MD5); errdefs.Is(err, errdefs.NotFound) {
		if _, err := st.CreateKey(ctx, store.Key{OwnerID: acct.ID, Name: keyName(key), FingerprintMD5: key.MD5,
			FingerprintSHA256: key.SHA256, Text: key.OpenSSH}); err != nil && !errdefs.Is(err, errdefs.Conflict) {
			return "", errorText(err)
		}
	}
	if err := service.EnsurePackages(ctx, st); err != nil {
		return "", err
	}
	if err := service.EnsureNetworks(ctx, st); err != nil {
		return "", err
	}
	if err := ensureDevImages(ctx, st, data); err != nil {
		return "", err
	}
	tokFile := filepath.Join(data, "join-token")
	if b, err := os.ReadFile(tokFile); err == nil && len(strings.TrimSpace(string(b))) > 0 {
		tok := strings.TrimSpace(string(b))
		return tok, st.CreateJoinToken(ctx, agentapi.HashToken(tok), nil)
	}
	tok := agentapi.NewToken()
	if err := st.CreateJoinToken(ctx, agentapi.HashToken(tok), nil); err != nil {
		return "", err
	}
	return tok, os.WriteFile(tokFile, []byte(tok+"\n"), 0o600)
}

type agentGroup struct {
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	drivers  []driver.Driver // real drivers whose workloads dev stops on exit
	resolver *dns.Resolver   // the nodes' resolver (real drivers)
}

// stop ends the agents and then the containers and VMs they run, so that
// `flotilla dev` leaves nothing running; the next start brings back what
// is desired running.
func (g *agentGroup) stop() {
	g.cancel()
	done := make(chan struct{})
	go func() { g.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for _, d := range g.drivers {
		list, err := d.List(ctx)
		if err != nil {
			continue
		}
		for _, st := range list {
			if st.State != driver.StateRunning {
				continue
			}
			wg.Add(1)
			go func() { defer wg.Done(); d.Stop(ctx, st.ID, 5*time.Second) }()
		}
	}
	wg.Wait()
	if g.resolver != nil {
		g.resolver.Close()
	}
}

func startAgents(ctx context.Context, c devConfig, data, apiURL, token string, log *slog.Logger) (*agentGroup, error) {
	actx, cancel := context.WithCancel(context.Background())
	g := &agentGroup{cancel: cancel}
	// The nodes share this host's bridges, so one resolver serves them all.
	var res *dns.Resolver
	if c.Driver != "sim" {
		res = dns.New(dns.Config{Logger: log})
		g.resolver = res
	}
	for i := 1; i <= c.Nodes; i++ {
		dir := filepath.Join(data, "nodes", fmt.Sprintf("node-%d", i))
		drv, err := newDriver(c.Driver, dir, log)
		if err != nil {
			cancel()
			return nil, err
		}
		if c.Driver != "sim" {
			g.drivers = append(g.drivers, drv)
		}
		cfg := agent.Config{Name: fmt.Sprintf("dev-%s-%d", strings.ReplaceAll(c.Driver, ",", "-"), i), DataDir: dir, APIURL: apiURL,
			JoinToken: token, Driver: drv, Address: "127.0.0.1:0", Logger: log.With("node", i)}
		if c.Driver == "sim" {
			cfg.MemoryMiB, cfg.DiskMiB, cfg.VCPUs = c.NodeMemory, c.NodeDisk, c.NodeCPUs
		} else {
			cfg.Resolver = res.Feed(cfg.Name)
		}
		g.wg.Add(1)
		go func() {
			defer g.wg.Done()
			if err := agent.Run(actx, cfg); err != nil && !errors.Is(err, context.Canceled) {
				log.Error("agent stopped", "node", cfg.Name, "error", err)
			}
		}()
	}
	return g, nil
}

// waitReady returns once CloudAPI answers and n nodes are up.
func waitReady(ctx context.Context, cp *controlPlane, n int) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		nodes, err := cp.Store.ListNodes(ctx)
		up := 0
		if err == nil {
			for _, nd := range nodes {
				if nd.State == "running" && time.Since(nd.LastHeartbeat) < 10*time.Second {
					up++
				}
			}
		}
		resp, perr := http.Get(cp.CloudAPIURL + "/--ping")
		if perr == nil {
			resp.Body.Close()
		}
		if perr == nil && resp.StatusCode == 200 && up >= n {
			cp.Service.Placer.Reload(ctx)
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready after 60 s: %d of %d nodes up (ping error: %v)", up, n, perr)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}
