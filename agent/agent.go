// Package agent is the compute-node agent: it registers its node with the
// control plane, heartbeats, long-polls the node's assignments and makes the
// driver's instances match them with a level-triggered work queue keyed by
// instance id, reporting what it observes.
//
// Imports: standard library, agent/driver, agent/dns, agent/firewall, fwrule,
// api/agentapi/wire and api/errdefs only. It never imports store or any other api package: it talks
// to the control plane only over the agent API (Client), or through a
// ControlPlane supplied by the caller.
package agent

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"flotilla/agent/dns"
	"flotilla/agent/driver"
	"flotilla/agent/firewall"
	"flotilla/api/agentapi/wire"
	"flotilla/api/errdefs"
)

// Config configures one agent. Several agents may run in one process, each
// with its own Driver and DataDir.
type Config struct {
	// Name is the node's name (default: the host name).
	Name string
	// DataDir keeps the node credential and the applied state (required).
	DataDir string
	// APIURL and JoinToken locate and authorize the control plane's agent
	// API; cmd reads them from FLOTILLA_AGENT_API and FLOTILLA_JOIN_TOKEN.
	APIURL    string
	JoinToken string
	// Driver runs the workloads (required).
	Driver driver.Driver
	// Capacity offered to the scheduler; 0 means detect from the host
	// (/proc/meminfo, statfs of DataDir, runtime.NumCPU).
	MemoryMiB, DiskMiB int64
	VCPUs              float64
	Traits             map[string]any
	// Address is where the agent serves instance streams (host:port), if it does.
	Address string
	// HeartbeatInterval defaults to 5s.
	HeartbeatInterval time.Duration
	Logger            *slog.Logger
	// Workers is the number of concurrent syncs (default 16).
	Workers    int
	HTTPClient *http.Client
	// ControlPlane, when set, is used instead of an HTTP client built from
	// APIURL, JoinToken and HTTPClient.
	ControlPlane ControlPlane
	// Resolver, when set, is the node's resolver: the agent keeps its names
	// in step with the control plane (when that is a NameSource) and with
	// its own assignments.
	Resolver *dns.Feed
	// GatewayNetNS, when set, says in which network namespace (a path) a
	// network's gateway address lives on this node, for the resolver to
	// listen there; nil or "" means the host's.
	GatewayNetNS func(networkID string) string
	// UnderlayIP is this node's address for VXLAN traffic between nodes,
	// reported in heartbeats; empty keeps fabric networks on the node.
	UnderlayIP string
	// OnPeers, when set, receives the other nodes' underlay addresses with
	// every poll answer (the node's fabrics flood to them).
	OnPeers func(peers []string)
	// RouterNetNS, when set, is the path of the router namespace that holds
	// the gateways of fabric VLAN vni; the resolver serves those gateways there.
	RouterNetNS func(vni int) string
	// Firewall, when set, is the node's firewall: the agent applies the
	// control plane's resolved rules and every NIC's anti-spoofing to it
	// (when the control plane is a FirewallSource and the driver names
	// host interfaces).
	Firewall *firewall.Firewall

	// ResyncInterval is how often every instance is synced (default 30s).
	ResyncInterval time.Duration
	// WatchInterval is how often instances desired running are inspected so
	// that exits are reported (default 2s).
	WatchInterval time.Duration
	// PollWait is the long-poll wait (default 30s).
	PollWait time.Duration
	// StopTimeout is the grace a workload gets to stop (default 10s).
	StopTimeout time.Duration
	// BackoffBase and BackoffMax bound the per-instance retry backoff
	// (defaults 100ms and 30s).
	BackoffBase, BackoffMax time.Duration
	// FailAfter is how many failed tries of create/start make an instance
	// "failed" (default 3).
	FailAfter int
	// ReportRefresh is how old the last report of an unchanged instance may
	// get before a resync sends it again (default 5m).
	ReportRefresh time.Duration
}

func (c *Config) setDefaults() error {
	if c.Driver == nil {
		return errdefs.InvalidArgument("agent: no driver configured")
	}
	if c.DataDir == "" {
		return errdefs.InvalidArgument("agent: no data dir configured")
	}
	if c.Name == "" {
		h, err := os.Hostname()
		if err != nil || h == "" {
			return errdefs.InvalidArgument("agent: no node name configured and the host name is unknown")
		}
		c.Name = h
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.HeartbeatInterval, 5*time.Second)
	def(&c.ResyncInterval, 30*time.Second)
	def(&c.WatchInterval, 2*time.Second)
	def(&c.PollWait, 30*time.Second)
	def(&c.StopTimeout, 10*time.Second)
	def(&c.BackoffBase, 100*time.Millisecond)
	def(&c.BackoffMax, 30*time.Second)
	def(&c.ReportRefresh, 5*time.Minute)
	if c.Workers <= 0 {
		c.Workers = 16
	}
	if c.FailAfter <= 0 {
		c.FailAfter = 3
	}
	return nil
}

// Agent is one running node agent.
type Agent struct {
	cfg   Config
	cp    ControlPlane
	drv   driver.Driver
	log   *slog.Logger
	q     *queue
	state *stateStore
	// health runs the health checks of the node's containers.
	health *healthChecks

	nodeID string

	streamToken string // sent at registration when the agent serves streams
	streamAddr  string
	streams     *StreamServer // nil when the agent serves no streams

	mu       sync.Mutex
	desired  map[string]wire.Assignment
	haveFull bool               // a full assignment set has been received
	observed map[string]string  // last state seen in the driver, by id
	reported map[string]report  // last successful report, by id
	failed   map[string]failure // instances given up on, by id
	booted   map[string]bool    // instances whose autoboot was considered since this agent started
	snaps    snapshotFailures
	// moved are instances a migration is taking off this node: the
	// reconcile loop leaves them alone until they are assigned here again.
	moved map[string]bool
}

type report struct {
	st wire.InstanceStatus
	at time.Time
}

// failure records that an instance's generation could not be created or started.
type failure struct {
	generation int64
	msg        string
}

// Run runs an agent until ctx is cancelled. It returns an error if the agent
// cannot start (bad config, join token rejected, unreadable data dir); once
// running it retries every failure and returns nil when ctx ends.
func Run(ctx context.Context, cfg Config) error {
	a, err := New(cfg)
	if err != nil {
		return err
	}
	return a.Run(ctx)
}

// New checks cfg, detects capacity left at zero and loads the agent's state
// from DataDir. It returns errdefs Invalid for a bad config.
func New(cfg Config) (*Agent, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, errdefs.Wrap(errdefs.Invalid, err, "agent: create data dir %s", cfg.DataDir)
	}
	var err error
	if cfg.MemoryMiB == 0 {
		if cfg.MemoryMiB, err = hostMemoryMiB(); err != nil {
			return nil, err
		}
	}
	if cfg.DiskMiB == 0 {
		if cfg.DiskMiB, err = hostDiskMiB(cfg.DataDir); err != nil {
			return nil, err
		}
	}
	if cfg.VCPUs == 0 {
		cfg.VCPUs = hostVCPUs()
	}
	cp := cfg.ControlPlane
	if cp == nil {
		cp, err = NewClient(ClientConfig{
			BaseURL:    cfg.APIURL,
			JoinToken:  cfg.JoinToken,
			DataDir:    cfg.DataDir,
			HTTPClient: cfg.HTTPClient,
			Logger:     cfg.Logger,
		})
		if err != nil {
			return nil, err
		}
	}
	cfg.JoinToken = "" // the client holds it until the node registers
	st, err := openStateStore(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	a := &Agent{
		cfg:      cfg,
		cp:       cp,
		drv:      cfg.Driver,
		log:      cfg.Logger.With("node_name", cfg.Name),
		q:        newQueue(cfg.BackoffBase, cfg.BackoffMax),
		state:    st,
		desired:  map[string]wire.Assignment{},
		observed: map[string]string{},
		reported: map[string]report{},
		failed:   map[string]failure{},
		booted:   map[string]bool{},
		moved:    map[string]bool{},
	}
	a.health = newHealthChecks(cfg.Driver, a.log, a.q.Add)
	return a, nil
}

// NodeID returns the node's id once Run has registered it.
func (a *Agent) NodeID() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.nodeID
}

// Run registers the node, adopts the driver's instances and reconciles
// until ctx is cancelled. An Agent runs once.
func (a *Agent) Run(ctx context.Context) error {
	var streamLn net.Listener
	if a.cfg.Address != "" {
		var err error
		if streamLn, err = a.listenStreams(); err != nil {
			return err
		}
	}
	nodeID, err := a.register(ctx)
	if err != nil {
		if streamLn != nil {
			streamLn.Close()
		}
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	if streamLn != nil {
		stop, err := a.serveStreams(ctx, streamLn, nodeID)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		defer stop()
	}
	a.mu.Lock()
	a.nodeID = nodeID
	a.mu.Unlock()
	a.log = a.log.With("node", nodeID)

	// Adopt: learn what the driver runs before the first sync, and touch
	// nothing until the control plane's full assignment set has arrived.
	list, err := a.drv.List(ctx)
	if err != nil {
		return errdefs.Wrap(errdefs.CodeOf(err), err, "agent: list the %s driver's instances", a.drv.Name())
	}
	a.mu.Lock()
	for _, st := range list {
		a.observed[st.ID] = st.State
	}
	a.mu.Unlock()
	a.log.Info("agent started", "driver", a.drv.Name(), "adopted", len(list), "workers", a.cfg.Workers)

	var wg sync.WaitGroup
	for range a.cfg.Workers {
		wg.Go(func() { a.worker(ctx) })
	}
	loops, cancel := context.WithCancel(ctx)
	var lwg sync.WaitGroup
	lwg.Go(func() { a.heartbeatLoop(loops) })
	lwg.Go(func() { a.pollLoop(loops) })
	lwg.Go(func() { a.tickLoop(loops) })
	if src, ok := a.cp.(NameSource); ok && a.cfg.Resolver != nil {
		lwg.Go(func() { a.namesLoop(loops, src) })
	}
	if src, ok := a.cp.(FirewallSource); ok && a.cfg.Firewall != nil {
		if h, ok := a.drv.(driver.HostInterfacer); ok {
			lwg.Go(func() { a.firewallLoop(loops, src, h) })
		}
	}
	<-ctx.Done()
	cancel()
	lwg.Wait()
	a.q.ShutDown()
	wg.Wait()
	a.health.stopAll()
	if err := a.state.Flush(); err != nil {
		a.log.Error("saving applied state failed", "err", err)
	}
	a.log.Info("agent stopped")
	return nil
}

// register registers the node, retrying while the control plane is
// unreachable; a rejected join token is returned at once.
func (a *Agent) register(ctx context.Context) (string, error) {
	req := wire.RegisterRequest{
		Name:      a.cfg.Name,
		Driver:    a.drv.Name(),
		Brands:    a.drv.Brands(),
		MemoryMiB: a.cfg.MemoryMiB,
		DiskMiB:   a.cfg.DiskMiB,
		VCPUs:     a.cfg.VCPUs,
		Traits:    a.cfg.Traits,
		Address:   a.cfg.Address,

		StreamToken: a.streamToken,
		Cgroups:     a.cgroups(),
	}
	req.Hostname, _ = os.Hostname()
	for attempt := 0; ; attempt++ {
		id, err := a.cp.Register(ctx, req)
		if err == nil {
			return id, nil
		}
		if c := errdefs.CodeOf(err); c != errdefs.Unavailable && c != errdefs.TooManyRequests && c != errdefs.Internal {
			return "", err
		}
		a.log.Warn("cannot register yet; retrying", "err", err)
		if !sleepCtx(ctx, jitter(a.cfg.BackoffBase, a.cfg.BackoffMax, attempt)) {
			return "", ctx.Err()
		}
	}
}

// cgroups is what the driver reports of the node's cgroups, if anything.
func (a *Agent) cgroups() wire.Cgroups {
	c, ok := a.drv.(driver.CgroupReporter)
	if !ok {
		return wire.Cgroups{}
	}
	info := c.Cgroups()
	return wire.Cgroups{CgroupVersion: info.Version, CgroupDriver: info.Driver}
}

func (a *Agent) heartbeatLoop(ctx context.Context) {
	t := time.NewTicker(a.cfg.HeartbeatInterval)
	defer t.Stop()
	lostContact := false
	for {
		a.mu.Lock()
		running := 0
		for _, s := range a.observed {
			if s == driver.StateRunning {
				running++
			}
		}
		a.mu.Unlock()
		hb := wire.Heartbeat{
			MemoryMiB: a.cfg.MemoryMiB,
			DiskMiB:   a.cfg.DiskMiB,
			VCPUs:     a.cfg.VCPUs,
			Brands:    a.drv.Brands(),
			Traits:    a.cfg.Traits,
			Address:   a.cfg.Address,
			Running:   running,

			UnderlayIP: a.cfg.UnderlayIP,
			Cgroups:    a.cgroups(),
		}
		if err := a.cp.Heartbeat(ctx, hb); err != nil {
			if ctx.Err() == nil {
				a.log.Warn("heartbeat failed", "err", err)
				lostContact = true
			}
		} else if lostContact {
			// The control plane may have marked this node offline and its
			// instances unknown meanwhile: report every instance again.
			lostContact = false
			a.reportAllAgain()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// pollLoop long-polls assignments and queues the instances that changed.
func (a *Agent) pollLoop(ctx context.Context) {
	var rev int64
	failures := 0
	for ctx.Err() == nil {
		as, err := a.cp.Assignments(ctx, rev, a.cfg.PollWait)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			a.log.Warn("polling assignments failed", "since", rev, "err", err)
			failures++
			if !sleepCtx(ctx, jitter(a.cfg.BackoffBase, a.cfg.BackoffMax, failures)) {
				return
			}
			continue
		}
		failures = 0
		if as.Revision < rev {
			// The control plane's revisions went backwards (restored
			// database?): start over with a full set.
			a.log.Warn("assignment revision went backwards; asking for the full set", "since", rev, "revision", as.Revision)
			rev = 0
			continue
		}
		a.apply(as)
		rev = as.Revision
	}
}

// apply records a poll's assignments and queues what changed.
func (a *Agent) apply(as wire.Assignments) {
	if a.cfg.OnPeers != nil {
		a.cfg.OnPeers(as.Peers)
	}
	a.mu.Lock()
	var keys []string
	if as.Full {
		seen := make(map[string]bool, len(as.Assignments))
		for _, x := range as.Assignments {
			seen[x.ID] = true
		}
		for id := range a.desired {
			if !seen[id] {
				delete(a.desired, id)
				keys = append(keys, id)
			}
		}
		for id := range a.observed {
			if !seen[id] {
				keys = append(keys, id) // orphans: synced, hence removed
			}
		}
		a.haveFull = true
		// Reports may have been lost while disconnected: send them again.
		clear(a.reported)
	}
	for _, x := range as.Assignments {
		if cur, ok := a.desired[x.ID]; ok && cur.Generation > x.Generation {
			continue
		}
		delete(a.moved, x.ID) // assigned here (again)
		a.desired[x.ID] = x
		keys = append(keys, x.ID)
	}
	a.mu.Unlock()
	a.putNames(as.Assignments)
	for _, k := range keys {
		a.q.AddNow(k)
	}
	if as.Full {
		for _, id := range a.state.IDs() {
			a.q.Add(id)
		}
	}
}

// tickLoop queues instances for the watch (desired running, every
// WatchInterval) and for the resync (everything, every ResyncInterval).
func (a *Agent) tickLoop(ctx context.Context) {
	watch := time.NewTicker(a.cfg.WatchInterval)
	defer watch.Stop()
	resync := time.NewTicker(a.cfg.ResyncInterval)
	defer resync.Stop()
	for {
		var all bool
		select {
		case <-ctx.Done():
			return
		case <-watch.C:
		case <-resync.C:
			all = true
		}
		a.mu.Lock()
		keys := make([]string, 0, len(a.desired))
		for id, x := range a.desired {
			if all || x.DesiredState == wire.DesiredRunning {
				keys = append(keys, id)
			}
		}
		if all {
			for id := range a.observed {
				if _, ok := a.desired[id]; !ok {
					keys = append(keys, id)
				}
			}
		}
		a.mu.Unlock()
		for _, k := range keys {
			a.q.Add(k)
		}
	}
}

func (a *Agent) worker(ctx context.Context) {
	for {
		id, ok := a.q.Get()
		if !ok {
			return
		}
		a.process(ctx, id)
		a.q.Done(id)
	}
}

// process syncs one key and decides about retries.
func (a *Agent) process(ctx context.Context, id string) {
	err := a.sync(ctx, id)
	if err == nil {
		a.q.Forget(id)
		return
	}
	if ctx.Err() != nil {
		return
	}
	var we *workloadError
	// A command that cannot run (Invalid) will not run on a second try.
	if errors.As(err, &we) && (a.q.NumRequeues(id)+1 >= a.cfg.FailAfter || errdefs.Is(err, errdefs.Invalid)) {
		a.log.Error("giving up on instance", "instance", id, "generation", we.generation, "tries", a.q.NumRequeues(id)+1, "err", err)
		a.mu.Lock()
		a.failed[id] = failure{generation: we.generation, msg: errdefs.MessageOf(err)}
		a.mu.Unlock()
		a.q.Forget(id)
		a.q.Add(id) // the next sync reports "failed"
		return
	}
	a.log.Warn("sync failed; will retry", "instance", id, "tries", a.q.NumRequeues(id)+1, "err", err)
	a.q.AddRateLimited(id)
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// jitter returns base*2^attempt capped at max, with the upper half jittered.
func jitter(base, max time.Duration, attempt int) time.Duration {
	d := base << min(attempt, 20)
	if d <= 0 || d > max {
		d = max
	}
	return d/2 + rand.N(d/2+1)
}

// reportAllAgain forgets what was reported and syncs every known instance,
// so each is reported afresh.
func (a *Agent) reportAllAgain() {
	a.mu.Lock()
	clear(a.reported)
	keys := make([]string, 0, len(a.desired))
	for id := range a.desired {
		keys = append(keys, id)
	}
	a.mu.Unlock()
	for _, k := range keys {
		a.q.AddNow(k)
	}
}
