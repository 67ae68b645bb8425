package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"flotilla/agent"
	"flotilla/agent/dns"
	"flotilla/agent/driver"
	"flotilla/agent/driver/sim"
	"flotilla/agent/network"
	"flotilla/internal/metrics"
)

// agentConfig is everything `flotilla agent` needs.
type agentConfig struct {
	Name        string
	Driver      string
	DataDir     string
	MemoryMiB   int64
	DiskMiB     int64
	VCPUs       float64
	APIURL      string
	JoinToken   string
	LogJSON     bool
	MetricsAddr string
	Address     string // where instance streams are served
	Resolver    bool   // serve names on the gateways (real drivers only)
	Underlay    string // this node's address for VXLAN between nodes
	Firewall    bool   // enforce firewall rules and anti-spoofing (real drivers only)
}

func runAgent(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	var c agentConfig
	host, _ := os.Hostname()
	fs.StringVar(&c.Name, "name", host, "node name")
	fs.StringVar(&c.Driver, "driver", "sim", "workload driver: sim, runc, qemu or runc,qemu")
	fs.StringVar(&c.DataDir, "data", "/var/lib/flotilla/agent", "agent data directory")
	fs.Int64Var(&c.MemoryMiB, "memory", 0, "memory to offer in MiB (0: detect; required for sim)")
	fs.Int64Var(&c.DiskMiB, "disk", 0, "disk to offer in MiB (0: detect)")
	fs.Float64Var(&c.VCPUs, "cpus", 0, "vCPUs to offer (0: detect)")
	fs.BoolVar(&c.LogJSON, "log-json", false, "log as JSON")
	fs.StringVar(&c.MetricsAddr, "metrics-addr", "", "host:port to serve Prometheus /metrics on (empty: off)")
	fs.BoolVar(&c.Resolver, "resolver", true, "serve DNS to containers on each network's gateway (port 53; runc and qemu drivers)")
	fs.BoolVar(&c.Firewall, "firewall", true, "enforce firewall rules and per-NIC anti-spoofing with nftables (runc and qemu drivers)")
	fs.StringVar(&c.Address, "stream-address", "", "host:port to serve instance streams (logs, attach, exec) to the control plane on")
	fs.StringVar(&c.Underlay, "underlay-ip", "", "this node's IPv4 address that other nodes reach it at, for fabric (VXLAN) traffic; empty keeps fabric networks on this node")
	if err := fs.Parse(args); err != nil {
		return err
	}
	c.APIURL = os.Getenv("FLOTILLA_AGENT_API")
	c.JoinToken = os.Getenv("FLOTILLA_JOIN_TOKEN")
	// Drivers start processes; none of them needs the token.
	os.Unsetenv("FLOTILLA_JOIN_TOKEN")
	var httpClient *http.Client
	if caFile := os.Getenv("FLOTILLA_AGENT_CA"); caFile != "" {
		roots, err := agent.LoadRootCAs(caFile)
		if err != nil {
			return err
		}
		httpClient = agent.NewHTTPClientTLS(roots)
		agentHTTPClient = httpClient
	}
	if c.APIURL == "" {
		return usagef("set FLOTILLA_AGENT_API to the control plane's agent API URL (see env.sh from `flotilla dev`)")
	}
	log := newLogger(c.LogJSON, slog.LevelInfo)
	slog.SetDefault(log)
	drv, err := newDriver(c.Driver, c.DataDir, log)
	if err != nil {
		return err
	}
	fmt.Printf("flotilla agent %s starting with driver %s\n", c.Name, c.Driver)
	cfg := agent.Config{Name: c.Name, DataDir: c.DataDir, APIURL: c.APIURL, JoinToken: c.JoinToken,
		Driver: drv, Address: c.Address, HTTPClient: httpClient, MemoryMiB: c.MemoryMiB, DiskMiB: c.DiskMiB, VCPUs: c.VCPUs, Logger: log.With("node", c.Name)}
	if c.Driver != "sim" {
		if err := network.SetUnderlay(c.Underlay); err != nil {
			return err
		}
		cfg.UnderlayIP = c.Underlay
		cfg.OnPeers = func(peers []string) {
			if err := network.SetFabricPeers(peers); err != nil {
				log.Warn("updating fabric peers failed", "err", err)
			}
		}
		cfg.RouterNetNS = network.RouterNetNSPath
	}
	if c.Resolver && c.Driver != "sim" {
		res := dns.New(dns.Config{Logger: log})
		defer res.Close()
		cfg.Resolver = res.Feed(c.Name)
	}
	if c.Firewall && c.Driver != "sim" {
		// The table outlives the agent: instances keep running, and
		// protected, while it restarts.
		if cfg.Firewall, err = nodeFirewall(c.Name); err != nil {
			return err
		}
	}
	a, err := agent.New(cfg)
	if err != nil {
		return err
	}
	if c.MetricsAddr != "" {
		reg := metrics.New(log)
		reg.Queue("agent", c.Name, a.QueueLen)
		addr, err := serveMetrics(ctx, c.MetricsAddr, reg, log)
		if err != nil {
			return fmt.Errorf("metrics listener: %w", err)
		}
		fmt.Printf("flotilla agent %s: metrics on http://%s/metrics\n", c.Name, addr)
	}
	return a.Run(ctx)
}

// agentHTTPClient, when set, is the agent's client to the control plane
// (trusting FLOTILLA_AGENT_CA), which its image source uses too.
var agentHTTPClient *http.Client

// newDriver builds the named driver with its state under dataDir.
func newDriver(name, dataDir string, log *slog.Logger) (driver.Driver, error) {
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, err
	}
	switch strings.TrimSpace(name) {
	case "sim":
		return sim.New(sim.Config{StateFile: filepath.Join(dataDir, "sim-state.json")})
	default:
		return newRealDriver(name, dataDir, log)
	}
}
