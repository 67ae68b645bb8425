package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"flotilla/agent"
	"flotilla/agent/dns"
	"flotilla/agent/driver"
	"flotilla/agent/firewall"
	"flotilla/agent/network"
	"flotilla/api/auth"
	"flotilla/api/errdefs"
	"flotilla/api/service"
	"flotilla/internal/metrics"
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
	LogJSON        bool
	OfflineGrace   time.Duration
	// CNS holds the CNS server's flags (CNSAddr, CNSSuffix, CNSDC).
	CNS serveConfig
	// Images limits image content, pulls and upload bodies (as serve's).
	Images imageFlags
}

func defaultLogin() string {
	if u, err := user.Current(); err == nil && u.Username != "" {
		return u.Username
	}
	return "admin"
}

// defaultKeyFile is the user's first public key in ~/.ssh, or "" when
// there is none.
func defaultKeyFile() string {
	home, err := os.UserHomeDir()
	if err != nil {
		return ""
	}
	for _, name := range []string{"id_ed25519.pub", "id_ecdsa.pub", "id_rsa.pub"} {
		p := filepath.Join(home, ".ssh", name)
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return ""
}

// busyboxPath is the static busybox dev's container image is built from.
const busyboxPath = "/bin/busybox"

// chooseDriver resolves --driver auto: runc when this process is root and
// runc and the static busybox the dev image is built from are installed,
// sim otherwise. It returns the driver and why it was chosen.
func chooseDriver(name string) (string, string) {
	if name != "auto" {
		return name, ""
	}
	if os.Geteuid() != 0 {
		return "sim", "auto: not root"
	}
	if _, err := exec.LookPath("runc"); err != nil {
		return "sim", "auto: runc not installed"
	}
	if _, err := os.Stat(busyboxPath); err != nil {
		return "sim", "auto: no " + busyboxPath
	}
	return "runc", "auto: root, runc and busybox found"
}

func runDev(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("dev", flag.ContinueOnError)
	var c devConfig
	fs.StringVar(&c.Data, "data", "flotilla-data", "directory for the database and node state (reused across runs)")
	fs.IntVar(&c.Nodes, "nodes", 1, "number of in-process compute nodes")
	fs.StringVar(&c.Driver, "driver", "auto", "workload driver for the nodes: auto (runc as root with runc installed, else sim), sim, runc, qemu or runc,qemu")
	fs.StringVar(&c.CloudAPIAddr, "cloudapi-addr", "127.0.0.1:8080", "CloudAPI listen address")
	fs.StringVar(&c.AgentAPIAddr, "agentapi-addr", "127.0.0.1:0", "agent API listen address (port 0: any free port)")
	fs.StringVar(&c.DockerAddr, "docker-addr", "", "Docker API listen address (empty: off)")
	fs.StringVar(&c.DockerRegistry, "docker-registry", "", "registry or mirror URL that Docker Hub images (docker pull busybox) come from (empty: Docker Hub)")
	fs.StringVar(&c.Login, "login", defaultLogin(), "account to create")
	fs.StringVar(&c.KeyFile, "key", "", "SSH public key for the account (default: ~/.ssh/id_ed25519.pub, id_ecdsa.pub or id_rsa.pub; none: a key generated in DIR/ssh)")
	fs.Int64Var(&c.NodeMemory, "node-memory", 32768, "memory per simulated node in MiB")
	fs.Int64Var(&c.NodeDisk, "node-disk", 1048576, "disk per simulated node in MiB")
	fs.Float64Var(&c.NodeCPUs, "node-cpus", 16, "vCPUs per simulated node")
	fs.DurationVar(&c.OfflineGrace, "offline-grace", 30*time.Second, "silence after which a node is offline")
	fs.BoolVar(&c.Verbose, "verbose", false, "log every request")
	fs.BoolVar(&c.LogJSON, "log-json", false, "log as JSON (every line on stderr)")
	c.CNS.cnsFlags(fs, "127.0.0.1:0")
	c.Images.flags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if c.Nodes < 0 {
		return usagef("--nodes must not be negative")
	}
	start := time.Now()
	// Everything that logs through slog's default (or the log package)
	// follows --log-json too.
	slog.SetDefault(newLogger(c.LogJSON, slog.LevelInfo))
	data, err := filepath.Abs(c.Data)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(data, 0o755); err != nil {
		return err
	}
	keys, err := resolveDevKey(c.KeyFile, data)
	if err != nil {
		return err
	}
	key, err := readKey(keys.Pub)
	if err != nil {
		return fmt.Errorf("%v\nPass --key FILE with an SSH public key, or leave --key out to have one generated in %s", err, filepath.Join(data, "ssh"))
	}
	var why string
	c.Driver, why = chooseDriver(c.Driver)
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
	scfg := serveConfig{DB: dbURL, CloudAPIAddr: c.CloudAPIAddr, AgentAPIAddr: c.AgentAPIAddr,
		DockerAddr: c.DockerAddr, DockerRegistry: c.DockerRegistry, DataDir: data, Datacenter: "flotilla-dev", OfflineGrace: c.OfflineGrace, Policy: "pack", Quiet: !c.Verbose, LogJSON: c.LogJSON,
		CNSAddr: c.CNS.CNSAddr, CNSSuffix: c.CNS.CNSSuffix, CNSDC: c.CNS.CNSDC, Images: c.Images}
	if keys.Priv != "" {
		scfg.DockerClientKeys = []string{keys.Priv}
	}
	cp, err := startControlPlane(ctx, scfg)
	if err != nil {
		return err
	}
	defer cp.Close()
	if err := seedDev(ctx, cp.Store, data, c.Login, key); err != nil {
		return err
	}
	// One single-use token per in-process agent (an agent that registered
	// on an earlier run uses its saved credential instead) and one for env.sh.
	tokens, err := mintJoinTokens(ctx, cp.Store, c.Nodes+1, time.Hour)
	if err != nil {
		return err
	}
	token := tokens[0]
	log := newLogger(c.LogJSON, level)
	agents, err := startAgents(ctx, c, data, cp.AgentAPIURL, tokens[1:], cp.Metrics, log)
	if err != nil {
		return err
	}
	defer agents.stop()
	if err := waitReady(ctx, cp, c.Nodes); err != nil {
		return err
	}
	envFile := filepath.Join(data, "env.sh")
	env := fmt.Sprintf(`# Source this file to use the Flotilla dev cloud: . %s
`, envFile)
	keyNote := ""
	if keys.Generated {
		sock := agentSocketPath(data)
		if err := serveSSHAgent(ctx, sock, keys.Priv, log); err != nil {
			return err
		}
		env += fmt.Sprintf(`# The account's key was generated in %s (no key was given and ~/.ssh has none).
# The triton CLI finds keys only in ~/.ssh or an SSH agent, so flotilla dev serves
# an agent holding just that key while it runs:
export SSH_AUTH_SOCK=%s
`, keys.Priv, sock)
		keyNote = fmt.Sprintf(", key generated in %s", keys.Priv)
	}
	env += fmt.Sprintf(`export TRITON_URL=%s
export TRITON_ACCOUNT=%s
export TRITON_KEY_ID=%s
export TRITON_TLS_INSECURE=1
export SDC_URL=$TRITON_URL SDC_ACCOUNT=$TRITON_ACCOUNT SDC_KEY_ID=$TRITON_KEY_ID
export FLOTILLA_DB=%s
export FLOTILLA_DATA=%s
export FLOTILLA_AGENT_API=%s
export FLOTILLA_JOIN_TOKEN=%s
`, cp.CloudAPIURL, c.Login, key.MD5, dbURL, data, cp.AgentAPIURL, token)
	if cp.Docker != nil {
		env += fmt.Sprintf("export DOCKER_HOST=%s\nexport DOCKER_TLS_VERIFY=1\nexport DOCKER_CERT_PATH=%s\n", cp.Docker.URL, cp.Docker.CertDir)
	}
	if cp.CNSAddr != "" {
		env += fmt.Sprintf("export FLOTILLA_CNS=%s\n", cp.CNSAddr)
	}
	if err := os.WriteFile(envFile, []byte(env), 0o600); err != nil {
		return err
	}
	if why != "" {
		why = " (" + why + ")"
	}
	fmt.Printf("flotilla dev ready in %.1fs: cloudapi %s, %d %s node(s)%s, account %s%s; run: . %s\n",
		time.Since(start).Seconds(), cp.CloudAPIURL, c.Nodes, c.Driver, why, c.Login, keyNote, envFile)
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

// seedDev creates what a fresh cloud needs, keeping whatever exists.
func seedDev(ctx context.Context, st *store.Store, data, login string, key *auth.ParsedKey) error {
	acct, err := st.AccountByLogin(ctx, login)
	if errdefs.Is(err, errdefs.NotFound) {
		acct, err = st.CreateAccount(ctx, store.Account{Login: login, Email: login + "@localhost", FirstName: login, Operator: true,
			TritonCNSEnabled: true})
	}
	if err != nil {
		return errorText(err)
	}
	if _, err := st.GetKey(ctx, acct.ID, key.MD5); errdefs.Is(err, errdefs.NotFound) {
		if _, err := st.CreateKey(ctx, store.Key{OwnerID: acct.ID, Name: keyName(key), FingerprintMD5: key.MD5,
			FingerprintSHA256: key.SHA256, Text: key.OpenSSH}); err != nil && !errdefs.Is(err, errdefs.Conflict) {
			return errorText(err)
		}
	}
	if err := service.EnsurePackages(ctx, st); err != nil {
		return err
	}
	if err := service.EnsureNetworks(ctx, st); err != nil {
		return err
	}
	if err := ensureDevImages(ctx, st, data); err != nil {
		return err
	}
	return nil
}

type agentGroup struct {
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	drivers  []driver.Driver // real drivers whose workloads dev stops on exit
	resolver *dns.Resolver   // the nodes' resolver (real drivers)
	// bridgesBefore are the Flotilla bridges that existed when dev started
	// its nodes; dev deletes only bridges it made.
	bridgesBefore map[string]int
	log           *slog.Logger
	// firewalls are the nodes' nftables tables, removed once their
	// workloads are stopped.
	firewalls []*firewall.Firewall
}

// stop ends the agents, then stops the containers and VMs they run and
// gives back what those hold on the host (overlay mounts, network
// namespaces, veths, taps, cgroups, volumes' mounts), and deletes the
// bridges (with their iptables rules) that this run created and nothing
// uses any more. So `flotilla dev` leaves nothing of its own on the host
// and its data directory can be removed; the next start brings back what
// is desired running. A standalone agent never does this: it adopts
// running workloads.
func (g *agentGroup) stop() {
	g.cancel()
	done := make(chan struct{})
	go func() { g.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
	}
	if len(g.drivers) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for _, d := range g.drivers {
		list, err := d.List(ctx)
		if err != nil {
			g.log.Warn("listing instances to stop", "driver", d.Name(), "error", err)
			continue
		}
		for _, st := range list {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if st.State == driver.StateRunning || st.State == driver.StateProvisioning {
					if err := d.Stop(ctx, st.ID, 5*time.Second); err != nil {
						g.log.Warn("stopping instance", "instance", st.ID, "error", err)
					}
				}
				if r, ok := d.(driver.Releaser); ok {
					if err := r.Release(ctx, st.ID); err != nil {
						g.log.Warn("releasing instance's host resources", "instance", st.ID, "error", err)
					}
				}
			}()
		}
	}
	wg.Wait()
	for _, d := range g.drivers {
		if r, ok := d.(driver.VolumeRemover); ok {
			if err := r.ReleaseVolumes(ctx); err != nil {
				g.log.Warn("unmounting volumes", "driver", d.Name(), "error", err)
			}
		}
	}
	if g.resolver != nil {
		g.resolver.Close()
	}
	for _, f := range g.firewalls {
		f.Close()
	}
	g.deleteBridges()
}

// deleteBridges deletes the Flotilla bridges made since dev started that
// have no links attached (other clouds on this host may share a bridge).
func (g *agentGroup) deleteBridges() {
	now, err := network.Bridges()
	if err != nil {
		g.log.Warn("listing bridges", "error", err)
		return
	}
	for name, ports := range now {
		if _, before := g.bridgesBefore[name]; before || ports > 0 {
			continue
		}
		if err := network.DeleteBridge(name); err != nil {
			g.log.Warn("deleting bridge", "bridge", name, "error", err)
		}
	}
}

func startAgents(ctx context.Context, c devConfig, data, apiURL string, tokens []string, reg *metrics.Registry, log *slog.Logger) (*agentGroup, error) {
	actx, cancel := context.WithCancel(context.Background())
	g := &agentGroup{cancel: cancel, log: log}
	// The nodes share this host's bridges, so one resolver serves them all.
	var res *dns.Resolver
	if c.Driver != "sim" {
		res = dns.New(dns.Config{Logger: log})
		g.resolver = res
		g.bridgesBefore, _ = network.Bridges()
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
			JoinToken: tokens[i-1], Driver: drv, Address: "127.0.0.1:0", Logger: log.With("node", i)}
		if c.Driver == "sim" {
			cfg.MemoryMiB, cfg.DiskMiB, cfg.VCPUs = c.NodeMemory, c.NodeDisk, c.NodeCPUs
		} else {
			cfg.Resolver = res.Feed(cfg.Name)
			// The in-process nodes share one host: fabrics stay local.
			cfg.RouterNetNS = network.RouterNetNSPath
			if cfg.Firewall, err = nodeFirewall(cfg.Name); err != nil {
				cancel()
				return nil, err
			}
			g.firewalls = append(g.firewalls, cfg.Firewall)
		}
		a, err := agent.New(cfg)
		if err != nil {
			cancel()
			return nil, err
		}
		if reg != nil {
			reg.Queue("agent", cfg.Name, a.QueueLen)
		}
		g.wg.Add(1)
		go func() {
			defer g.wg.Done()
			if err := a.Run(actx); err != nil && !errors.Is(err, context.Canceled) {
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
