package service

import (
	"context"
	"hash/maphash"
	"log/slog"
	"maps"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"flotilla/api/errdefs"
	"flotilla/scheduler"
	"flotilla/store"
)

// PlacerOptions tune placement.
type PlacerOptions struct {
	Policy scheduler.Policy
	// Candidates is how many ranked nodes a decision keeps for the commit to
	// fall back on after a lost race.
	Candidates int
	// Refresh is how often the snapshot is reloaded from the database in full.
	Refresh time.Duration
	// FastRefresh is how often the node rows that changed since the last
	// look are read again, so that other replicas' claims reach this
	// snapshot long before the next full reload. Zero means 250ms;
	// negative turns it off.
	FastRefresh time.Duration
	// GroupCommit is the most creates one transaction commits together
	// (store.CommitPlacements): concurrent creates that need no addresses,
	// strict affinity check or Idempotency-Key share a transaction, each
	// keeping its own outcome. Zero means 64; negative turns it off, so
	// every create commits alone with store.CreateInstance.
	GroupCommit int
	// CommitConcurrency is how many group transactions may run at once.
	// Zero means 2.
	CommitConcurrency int
}

// Placer keeps this replica's scheduler snapshot and commits placements
// through the store. The snapshot is only a hint: capacity and strict
// affinity are checked again in the database transaction.
type Placer struct {
	st   *store.Store
	log  *slog.Logger
	opts PlacerOptions
	snap *scheduler.Snapshot

	group     *groupCommit // nil when group commit is off
	conflicts atomic.Int64

	// inflight is what this replica's placements reserved in the snapshot
	// and have not committed yet, by node. Node rows read from the database
	// get it added back, so a refresh does not hand the same capacity to a
	// second placement while the first is still committing.
	resMu    sync.Mutex
	inflight map[string]scheduler.Resources
	// landed records, while Reload reads the nodes, the placements that
	// commit meanwhile: a row read before one landed lacks it, which the
	// row's assign_rev tells.
	landed map[string][]landedCommit
	// decideMu makes a decision and its reservation one step.
	decideMu sync.Mutex
	// contended are nodes on which this replica recently lost a commit
	// race, until when: another replica is filling them, so this one looks
	// elsewhere first (Omega's conflict avoidance) instead of racing for the
	// same best fit again. Guarded by decideMu.
	contended map[string]time.Time
	// seed orders equally good nodes differently on each replica, so that
	// replicas filling a cluster do not all start on the same empty node.
	seed maphash.Seed

	mu     sync.Mutex
	cursor *store.ChangeCursor
	loaded time.Time
	rows   map[string]store.Node // node rows as the last Reload applied them
	// changedSince is where the next RefreshChanged reads from.
	changedSince time.Time

	// observer and placing feed metrics (placer_observe.go).
	observer atomic.Pointer[PlacementObserver]
	placing  atomic.Int64
}

// NewPlacer loads the snapshot.
func NewPlacer(ctx context.Context, st *store.Store, log *slog.Logger, opts PlacerOptions) (*Placer, error) {
	if opts.Candidates <= 0 {
		opts.Candidates = 8
	}
	if opts.Refresh <= 0 {
		opts.Refresh = 2 * time.Second
	}
	if opts.GroupCommit == 0 {
		opts.GroupCommit = 64
	}
	if opts.FastRefresh == 0 {
		opts.FastRefresh = 250 * time.Millisecond
	}
	if opts.CommitConcurrency <= 0 {
		opts.CommitConcurrency = 2
	}
	p := &Placer{st: st, log: log, opts: opts, snap: scheduler.NewSnapshot(), inflight: map[string]scheduler.Resources{},
		rows: map[string]store.Node{}, contended: map[string]time.Time{}, seed: maphash.MakeSeed()}
	if opts.GroupCommit > 1 {
		p.group = &groupCommit{st: st, max: opts.GroupCommit, concurrency: opts.CommitConcurrency}
	}
	if err := p.Reload(ctx); err != nil {
		return nil, err
	}
	return p, nil
}

// Conflicts counts commits that lost a race: every candidate tried was
// taken by concurrent placements, so the create was planned again.
func (p *Placer) Conflicts() int64 { return p.conflicts.Load() }

// Snapshot exposes the snapshot (benchmarks, admin).
func (p *Placer) Snapshot() *scheduler.Snapshot { return p.snap }

// SchedulerNode converts a node row.
func SchedulerNode(n store.Node) scheduler.Node {
	return scheduler.Node{
		ID: n.ID, Hostname: n.Name, State: n.State, Drained: n.Drained, Reserved: n.Reserved,
		Brands: n.Brands, Traits: n.Traits,
		Capacity: scheduler.Resources{MemoryMiB: n.MemoryMiB, DiskMiB: n.DiskMiB, VCPUs: float64(n.VCPUsMilli) / 1000, Instances: n.MaxInstances},
		Used:     scheduler.Resources{MemoryMiB: n.UsedMemoryMiB, DiskMiB: n.UsedDiskMiB, VCPUs: float64(n.UsedVCPUsMilli) / 1000, Instances: n.Instances},
		Ratios:   scheduler.Ratios{Memory: n.RatioMemory, Disk: n.RatioDisk, VCPU: n.RatioVCPU},
	}
}

// trackLanded records the commits that land while node rows are being read
// (see upsertNode) until the returned func is called.
func (p *Placer) trackLanded() (stop func()) {
	p.resMu.Lock()
	p.landed = map[string][]landedCommit{}
	p.resMu.Unlock()
	return func() {
		p.resMu.Lock()
		p.landed = nil
		p.resMu.Unlock()
	}
}

// Reload replaces the snapshot's nodes from the database and catches up
// with the change feed for residents.
func (p *Placer) Reload(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	seq, err := p.st.LastChangeSeq(ctx)
	if err != nil {
		return err
	}
	defer p.trackLanded()()
	nodes, err := p.st.ListNodes(ctx)
	if err != nil {
		return err
	}
	seen := make(map[string]bool, len(nodes))
	for _, n := range nodes {
		seen[n.ID] = true
		// A row the scheduler would see unchanged since the last reload
		// had no claim or release since: the snapshot already holds it
		// with this replica's reservations.
		if prev, ok := p.rows[n.ID]; ok && sameForScheduler(prev, n) {
			continue
		}
		if err := p.upsertNode(n); err != nil {
			return err
		}
		p.rows[n.ID] = n
	}
	for id := range p.rows {
		if !seen[id] {
			delete(p.rows, id)
		}
	}
	for _, n := range p.snap.Nodes() {
		if !seen[n.ID] {
			p.snap.Remove(n.ID)
		}
	}
	if p.loaded.IsZero() {
		residents, err := p.st.LiveResidents(ctx)
		if err != nil {
			return err
		}
		for _, r := range residents {
			p.snap.AddResident(scheduler.Resident{ID: r.ID, OwnerID: r.OwnerID, Name: r.Name, Tags: r.Tags, NodeID: r.NodeID})
		}
		p.cursor = store.NewChangeCursor(seq, "", "instance")
	} else if err := p.catchUp(ctx); err != nil {
		return err
	}
	p.loaded = time.Now()
	return nil
}

// catchUp applies instance creates and deletes from the change feed to the
// residents index.
func (p *Placer) catchUp(ctx context.Context) error {
	changes, err := p.cursor.Next(ctx, p.st)
	if err != nil {
		return err
	}
	var created []string
	for _, c := range changes {
		switch c.Action {
		case "create":
			created = append(created, c.ObjectID)
		case "delete":
			p.snap.RemoveResident(c.ObjectID)
		}
	}
	if len(created) == 0 {
		return nil
	}
	residents, err := p.st.ResidentsByID(ctx, created)
	if err != nil {
		return err
	}
	for _, r := range residents {
		p.snap.AddResident(scheduler.Resident{ID: r.ID, OwnerID: r.OwnerID, Name: r.Name, Tags: r.Tags, NodeID: r.NodeID})
	}
	return nil
}

// Run reloads the snapshot every refresh interval, and the node rows that
// changed every fast refresh interval, until ctx ends, off the request path.
func (p *Placer) Run(ctx context.Context) {
	t := time.NewTicker(p.opts.Refresh)
	defer t.Stop()
	var fast <-chan time.Time
	if p.opts.FastRefresh > 0 {
		ft := time.NewTicker(p.opts.FastRefresh)
		defer ft.Stop()
		fast = ft.C
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := p.Reload(ctx); err != nil && ctx.Err() == nil {
				p.log.Warn("reloading the scheduler snapshot", "error", err)
			}
		case <-fast:
			if err := p.RefreshChanged(ctx); err != nil && ctx.Err() == nil {
				p.log.Warn("refreshing changed nodes in the scheduler snapshot", "error", err)
			}
		}
	}
}

// commitSlack is how long before its commit a claiming transaction may
// have started (its rows' updated_at): RefreshChanged reads that far back.
const commitSlack = 2 * time.Second

// RefreshChanged reads the node rows that changed since the last look and
// puts those the scheduler would see differently into the snapshot, with
// this replica's reservations. It is how replicas see each other's claims
// between full reloads; nodes that joined or left wait for Reload.
func (p *Placer) RefreshChanged(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.loaded.IsZero() {
		return nil
	}
	defer p.trackLanded()()
	nodes, at, err := p.st.NodesUpdatedSince(ctx, p.changedSince)
	if err != nil {
		return err
	}
	for _, n := range nodes {
		if prev, ok := p.rows[n.ID]; !ok || sameForScheduler(prev, n) {
			continue
		}
		if err := p.upsertNode(n); err != nil {
			return err
		}
		p.rows[n.ID] = n
	}
	p.changedSince = at.Add(-commitSlack)
	return nil
}

// stale reports whether the snapshot is older than the refresh interval.
func (p *Placer) stale() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return time.Since(p.loaded) > staleAfterMiss
}

// staleAfterMiss is how old a snapshot may be before a placement that found
// no node looks again at a fresh one: a node that joined a moment ago must
// not be missed, and a cloud that is truly full reloads at most this often.
const staleAfterMiss = 100 * time.Millisecond

// place decides and commits: it asks the scheduler for ranked candidates,
// then lets the store claim the first that still fits. A lost race refreshes
// the snapshot and re-plans, a few times.
func (p *Placer) place(ctx context.Context, req scheduler.Request, in store.NewInstance) (store.Instance, bool, error) {
	var lastErr error
	res := scheduler.Resources{MemoryMiB: in.MemoryMiB, DiskMiB: in.DiskMiB, VCPUs: float64(in.VCPUsMilli) / 1000, Instances: 1}
	for attempt := 0; attempt < placeAttempts; attempt++ {
		if attempt == placeAttempts-1 {
			// The last try looks at the whole cluster afresh, so that if
			// nothing fits any more the scheduler says why.
			if err := p.Reload(ctx); err != nil {
				return store.Instance{}, false, err
			}
		}
		dec, err := p.decide(req, res)
		if err != nil && attempt == 0 && p.stale() {
			// Nothing fits in an old view: look again at a fresh one
			// (a node may have joined since) before saying no.
			if rerr := p.Reload(ctx); rerr != nil {
				return store.Instance{}, false, rerr
			}
			dec, err = p.decide(req, res)
		}
		if err != nil {
			return store.Instance{}, false, err
		}
		in.Candidates = in.Candidates[:0]
		for _, c := range dec.Candidates {
			in.Candidates = append(in.Candidates, c.NodeID)
		}
		if len(in.Candidates) == 0 && dec.NodeID != "" {
			in.Candidates = append(in.Candidates, dec.NodeID)
		}
		in.Placement = mustJSON(dec)
		if len(req.Rules) > 0 {
			rules := req.Rules
			in.CheckNode = func(residents []store.Resident) error { return checkStrict(rules, residents) }
		}
		reserved := dec.NodeID
		// After a lost race the create commits alone, trying every
		// candidate in turn rather than only the first.
		inst, replay, fresh, err := p.commit(ctx, in, attempt > 0)
		if err == nil {
			landed := !replay && inst.NodeID != nil && *inst.NodeID == reserved
			p.unreserve(reserved, res, landed, inst.AssignRev)
			if !replay && inst.NodeID != nil {
				if !landed {
					p.snap.UpdateUsage(*inst.NodeID, res)
				}
				p.snap.AddResident(scheduler.Resident{ID: inst.ID, OwnerID: inst.OwnerID, Name: inst.Name, Tags: inst.Tags, NodeID: *inst.NodeID})
			}
			return inst, replay, nil
		}
		p.unreserve(reserved, res, false, 0)
		if err != store.ErrNoCandidate {
			return store.Instance{}, false, err
		}
		lastErr = err
		p.conflicts.Add(1)
		// Our view of those nodes was stale: refresh them so the scheduler
		// sees their true usage, and avoid them for a while (lostRace). A
		// group commit tried only the first candidate and read its row; a
		// lone commit tried them all, so read them all.
		for _, n := range fresh {
			p.upsertNode(n)
			p.lostRace(n.ID)
		}
		if len(fresh) == 0 {
			p.lostRace(in.Candidates...)
			nodes, err := p.st.NodesByID(ctx, in.Candidates)
			if err != nil {
				return store.Instance{}, false, err
			}
			for _, n := range nodes {
				p.upsertNode(n)
			}
		}
	}
	return store.Instance{}, false, errdefs.Wrap(errdefs.InsufficientCapacity, lastErr, "no node could take the instance: concurrent placements took every candidate, try again")
}

// decide asks the scheduler for ranked candidates and reserves res on the
// winner in the snapshot, as one step: concurrent placements on this
// replica then see the capacity as taken and look elsewhere, rather than
// two of them choosing the last room on a node.
//
// Nodes this replica lost a race on recently are left out while anything
// else fits.
func (p *Placer) decide(req scheduler.Request, res scheduler.Resources) (scheduler.Decision, error) {
	p.decideMu.Lock()
	defer p.decideMu.Unlock()
	opts := scheduler.Options{Policy: p.opts.Policy, Candidates: max(p.opts.Candidates, tieCandidates)}
	if len(p.contended) > 0 {
		now := time.Now()
		avoid := maps.Clone(req.ExcludeNodes)
		if avoid == nil {
			avoid = make(map[string]bool, len(p.contended))
		}
		for id, until := range p.contended {
			if now.After(until) {
				delete(p.contended, id)
				continue
			}
			avoid[id] = true
		}
		r := req
		r.ExcludeNodes = avoid
		if dec, err := scheduler.Place(p.snap, r, opts); err == nil {
			dec = p.breakTie(dec)
			p.reserve(dec.NodeID, res)
			return dec, nil
		}
	}
	dec, err := scheduler.Place(p.snap, req, opts)
	if err == nil {
		dec = p.breakTie(dec)
		p.reserve(dec.NodeID, res)
	}
	return dec, err
}

// tieCandidates is how many ranked nodes a decision asks for so that
// replicas can spread over equally good nodes.
const tieCandidates = 32

// tieWindow is how far below the best score a candidate still counts as
// equally good: on the pack and spread scores, 1% of the largest node's
// memory.
const tieWindow = 0.01

// breakTie moves to the front the candidate, among those within tieWindow
// of the best score, that this replica's seed ranks first, and keeps
// opts.Candidates of them. Replicas with their own snapshots would
// otherwise all follow the scheduler's order (score, then node id) to the
// same node and lose races to each other; with a stable preference per
// replica each keeps to its own nodes among the near-best (Omega's
// randomisation to avoid conflicts).
func (p *Placer) breakTie(dec scheduler.Decision) scheduler.Decision {
	c := slices.Clone(dec.Candidates)
	best, bestHash := 0, uint64(0)
	for i := range c {
		if c[i].Score < c[0].Score-tieWindow {
			break
		}
		if h := maphash.String(p.seed, c[i].NodeID); i == 0 || h < bestHash {
			best, bestHash = i, h
		}
	}
	if best > 0 {
		chosen := c[best]
		copy(c[1:best+1], c[:best])
		c[0] = chosen
		dec.NodeID, dec.Hostname, dec.Score = chosen.NodeID, chosen.Hostname, chosen.Score
	}
	dec.Candidates = c[:min(len(c), p.opts.Candidates)]
	return dec
}

// lostRace marks nodes a commit could not claim as contended for a
// refresh interval.
func (p *Placer) lostRace(nodeIDs ...string) {
	p.decideMu.Lock()
	defer p.decideMu.Unlock()
	until := time.Now().Add(p.opts.Refresh)
	for _, id := range nodeIDs {
		p.contended[id] = until
	}
}

// reserve takes res on a node in the snapshot until the placement commits
// or fails.
func (p *Placer) reserve(nodeID string, res scheduler.Resources) {
	p.resMu.Lock()
	defer p.resMu.Unlock()
	p.inflight[nodeID] = addResources(p.inflight[nodeID], res, 1)
	p.snap.UpdateUsage(nodeID, res)
}

// unreserve ends a reservation. committed keeps the usage in the snapshot:
// the database now counts it, from the node's assign_rev rev on.
func (p *Placer) unreserve(nodeID string, res scheduler.Resources, committed bool, rev int64) {
	p.resMu.Lock()
	defer p.resMu.Unlock()
	if committed && p.landed != nil {
		p.landed[nodeID] = append(p.landed[nodeID], landedCommit{rev: rev, res: res})
	}
	left := addResources(p.inflight[nodeID], res, -1)
	if left.Instances <= 0 {
		delete(p.inflight, nodeID)
	} else {
		p.inflight[nodeID] = left
	}
	if !committed {
		p.snap.UpdateUsage(nodeID, addResources(scheduler.Resources{}, res, -1))
	}
}

// sameForScheduler reports whether two reads of a node row look the same
// to the scheduler (SchedulerNode's fields and the assignment revision,
// which every claim and release moves).
func sameForScheduler(a, b store.Node) bool {
	return a.AssignRev == b.AssignRev && a.State == b.State && a.Drained == b.Drained && a.Reserved == b.Reserved &&
		a.Name == b.Name && a.MemoryMiB == b.MemoryMiB && a.DiskMiB == b.DiskMiB && a.VCPUsMilli == b.VCPUsMilli &&
		a.MaxInstances == b.MaxInstances && a.RatioMemory == b.RatioMemory && a.RatioDisk == b.RatioDisk &&
		a.RatioVCPU == b.RatioVCPU && a.UsedMemoryMiB == b.UsedMemoryMiB && a.UsedDiskMiB == b.UsedDiskMiB &&
		a.UsedVCPUsMilli == b.UsedVCPUsMilli && a.Instances == b.Instances && slices.Equal(a.Brands, b.Brands) &&
		reflect.DeepEqual(a.Traits, b.Traits)
}

type landedCommit struct {
	rev int64 // the instance's assign_rev: rows with an older one lack it
	res scheduler.Resources
}

// upsertNode puts a node row into the snapshot with this replica's
// uncommitted reservations on it, and the commits that landed after the row
// was read during a Reload.
func (p *Placer) upsertNode(n store.Node) error {
	p.resMu.Lock()
	defer p.resMu.Unlock()
	sn := SchedulerNode(n)
	sn.Used = addResources(sn.Used, p.inflight[n.ID], 1)
	for _, l := range p.landed[n.ID] {
		if l.rev > n.AssignRev {
			sn.Used = addResources(sn.Used, l.res, 1)
		}
	}
	return p.snap.Upsert(sn)
}

func addResources(a, b scheduler.Resources, sign int) scheduler.Resources {
	return scheduler.Resources{MemoryMiB: a.MemoryMiB + int64(sign)*b.MemoryMiB, DiskMiB: a.DiskMiB + int64(sign)*b.DiskMiB,
		VCPUs: a.VCPUs + float64(sign)*b.VCPUs, Instances: a.Instances + sign*b.Instances}
}

// placeAttempts bounds how often one create decides and commits.
const placeAttempts = 6

// commit records a placed create: in a shared transaction when group commit
// is on and the create allows it, else (or when alone is set) on its own.
// fresh holds candidate rows a group commit read under its lock when it
// returns store.ErrNoCandidate.
func (p *Placer) commit(ctx context.Context, in store.NewInstance, alone bool) (inst store.Instance, replay bool, fresh []store.Node, err error) {
	if alone || p.group == nil || !store.GroupCommittable(in) {
		inst, replay, err = p.st.CreateInstance(ctx, in)
		return inst, replay, nil, err
	}
	r := p.group.commit(in)
	return r.Instance, false, r.Fresh, r.Err
}

// groupCommit coalesces concurrent creates into shared transactions, as
// PostgreSQL's own group commit does for WAL flushes: a create joins the
// queue, and up to concurrency committers drain it, max creates per
// transaction. Committers exist only while the queue is non-empty.
type groupCommit struct {
	st          *store.Store
	max         int
	concurrency int

	mu      sync.Mutex
	queue   []*pendingCreate
	running int
}

type pendingCreate struct {
	in   store.NewInstance
	res  store.PlacementResult
	done chan struct{}
}

// commit queues in and waits for its transaction. The transaction does not
// follow the caller's context: once queued, a create is committed or
// refused, so a cancelled caller cannot leave its batch half-done.
func (g *groupCommit) commit(in store.NewInstance) store.PlacementResult {
	pc := &pendingCreate{in: in, done: make(chan struct{})}
	g.mu.Lock()
	g.queue = append(g.queue, pc)
	if g.running < g.concurrency {
		g.running++
		go g.run()
	}
	g.mu.Unlock()
	<-pc.done
	return pc.res
}

func (g *groupCommit) run() {
	g.mu.Lock()
	for len(g.queue) > 0 {
		n := min(len(g.queue), g.max)
		batch := make([]*pendingCreate, n)
		copy(batch, g.queue)
		g.queue = append(g.queue[:0], g.queue[n:]...)
		g.mu.Unlock()
		ins := make([]store.NewInstance, n)
		for i, pc := range batch {
			ins[i] = pc.in
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		res := g.st.CommitPlacements(ctx, ins)
		cancel()
		for i, pc := range batch {
			pc.res = res[i]
			close(pc.done)
		}
		g.mu.Lock()
	}
	g.running--
	g.mu.Unlock()
}

// Released tells the snapshot an instance's resources went back to its node.
func (p *Placer) Released(inst store.Instance) {
	if inst.NodeID == nil {
		return
	}
	p.snap.UpdateUsage(*inst.NodeID, scheduler.Resources{MemoryMiB: -inst.MemoryMiB, DiskMiB: -inst.DiskMiB,
		VCPUs: -float64(inst.VCPUsMilli) / 1000, Instances: -1})
	p.snap.RemoveResident(inst.ID)
}

// checkStrict evaluates strict rules against the owner's instances on one
// node, under the database lock the store holds.
func checkStrict(rules []scheduler.Rule, residents []store.Resident) error {
	for _, rule := range rules {
		if rule.Soft {
			continue
		}
		matched := false
		for _, r := range residents {
			if rule.Matches(scheduler.Resident{ID: r.ID, Name: r.Name, Tags: r.Tags}) {
				matched = true
				break
			}
		}
		if rule.Operator == scheduler.OpNotEqual && matched {
			return errdefs.New(errdefs.InsufficientCapacity, "excluded by %s", rule)
		}
		if rule.Operator == scheduler.OpEqual && !matched {
			return errdefs.New(errdefs.InsufficientCapacity, "excluded by %s", rule)
		}
	}
	return nil
}
