package service

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"flotilla/api/errdefs"
	"flotilla/api/nodeclient"
	"flotilla/scheduler"
	"flotilla/store"
)

// Instance migrations move a container to another compute node in
// CloudAPI's phases. begin chooses the target with the scheduler and claims
// its room; sync copies what the container wrote to its disk from the
// source node to the target through this control plane (the nodes never
// talk to each other, and a node is handed only the disks of instances
// moved onto it); switch stops the container if it runs, copies its disk a
// last time, has the source give back its host resources, moves the
// instance row to the target (same id, NICs and addresses) and waits for
// the target to create it with that disk and start it if it ran; then the
// source removes its copy. A switch that fails after the move puts the
// instance back on its source. abort ends a migration that is not running
// and gives back the target's room. automatic is begin, sync and switch.
//
// A phase runs in the background of the replica that was asked; its
// progress is in the migration row, which watch follows.

// Migration actions.
const (
	MigrateBegin     = "begin"
	MigrateSync      = "sync"
	MigrateSwitch    = "switch"
	MigrateAutomatic = "automatic"
	MigratePause     = "pause"
	MigrateAbort     = "abort"
	MigrateFinalize  = "finalize"
)

// MigrationTimeouts bound the waits of a switch.
var (
	// migrationStopWait is how long the source may take to stop the instance.
	migrationStopWait = 2 * time.Minute
	// migrationStartWait is how long the target may take to create (and
	// start) the instance with its disk.
	migrationStartWait = 3 * time.Minute
)

// migrationHeartbeat is how often a running phase marks its migration row
// alive; one not marked for migrationStale was left by a replica that
// stopped, and is taken as failed.
var (
	migrationHeartbeat = 5 * time.Second
	migrationStale     = time.Minute
)

// migrations tracks the phases this replica runs, so that pause can stop one.
type migrations struct {
	mu      sync.Mutex
	running map[string]context.CancelFunc // by instance id
}

func (ms *migrations) start(id string) (context.Context, bool) {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	if ms.running == nil {
		ms.running = map[string]context.CancelFunc{}
	}
	if _, busy := ms.running[id]; busy {
		return nil, false
	}
	ctx, cancel := context.WithCancel(context.Background())
	ms.running[id] = cancel
	return ctx, true
}

func (ms *migrations) done(id string) {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	if c, ok := ms.running[id]; ok {
		c()
		delete(ms.running, id)
	}
}

func (ms *migrations) runs(id string) bool {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	_, ok := ms.running[id]
	return ok
}

func (ms *migrations) cancel(id string) bool {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	c, ok := ms.running[id]
	if ok {
		c()
	}
	return ok
}

// migrationAllowed refuses to move an instance that cannot move: a VM, one
// on no node or not settled, one with Docker volumes (their storage is on
// its node; shared volumes are mounted from any node) or snapshots (kept on
// its node).
func (s *Service) migrationAllowed(ctx context.Context) store.MigrationCheck {
	return func(in store.Instance) error {
		switch {
		case isVM(in.Brand):
			return errdefs.InvalidArgument("instance %s is a %s VM: only containers can be migrated", in.ID, in.Brand)
		case in.NodeID == nil:
			return errdefs.Conflictf("instance %s is on no compute node: there is nothing to migrate", in.ID)
		case in.State == "failed" || in.State == "provisioning" || in.State == "unknown":
			return errdefs.Conflictf("instance %s is %s: only a running or stopped instance can be migrated", in.ID, in.State)
		}
		var spec struct {
			Options struct {
				Volumes []struct{ Volume, Destination string }
			} `json:"options"`
		}
		json.Unmarshal(in.Spec, &spec)
		if len(spec.Options.Volumes) > 0 {
			ids := make([]string, len(spec.Options.Volumes))
			for i, v := range spec.Options.Volumes {
				ids[i] = v.Volume
			}
			homes, err := s.Store.VolumeHomes(ctx, ids)
			if err != nil {
				return err
			}
			for _, v := range spec.Options.Volumes {
				if h := homes[v.Volume]; h.Type != VolumeTypeTritonNFS || h.Node.NodeID == "" {
					return errdefs.Conflictf("instance %s mounts a volume at %s whose storage is on its compute node (a Docker volume): "+
						"an instance with one cannot be migrated; shared volumes (triton volume create) move with it", in.ID, v.Destination)
				}
			}
		}
		snaps, err := s.Store.ListSnapshots(ctx, in.OwnerID, in.ID)
		if err != nil {
			return err
		}
		if len(snaps) > 0 {
			return errdefs.Conflictf("instance %s has %d snapshot(s), kept on its compute node: delete them before migrating it", in.ID, len(snaps))
		}
		return nil
	}
}

// Migrate carries out a migration action on one of the caller's instances
// and returns the migration as it is once the action is under way. An
// unknown instance (or another account's) is NotFound; a VM Invalid; an
// action the migration's phase and state do not allow Conflict (also a
// begin while a migration is not over); no other node with room
// InsufficientCapacity.
func (s *Service) Migrate(ctx context.Context, c Caller, id, action string, affinity []string) (store.Migration, error) {
	if len(affinity) > 0 && action != MigrateBegin && action != MigrateAutomatic {
		return store.Migration{}, errdefs.InvalidArgument("affinity applies only to the begin and automatic migration actions")
	}
	switch action {
	case MigrateBegin, MigrateAutomatic:
		return s.beginMigration(ctx, c, id, action == MigrateAutomatic, affinity)
	case MigrateSync, MigrateSwitch:
		return s.startPhase(ctx, c, id, action)
	case MigratePause:
		return s.pauseMigration(ctx, c, id)
	case MigrateAbort:
		return s.abortMigration(ctx, c, id)
	case MigrateFinalize:
		m, err := s.GetMigration(ctx, c, id)
		if err != nil {
			return m, err
		}
		if m.State != store.MigrationSuccessful {
			return m, errdefs.Conflictf("the migration of instance %s is %s in phase %s: only a successful migration can be finalized", id, m.State, m.Phase)
		}
		return m, nil // the source's copy went at the switch
	case "":
		return store.Migration{}, errdefs.InvalidArgument("missing migration action: use begin, sync, switch, automatic, pause, abort or finalize")
	}
	return store.Migration{}, errdefs.InvalidArgument("unknown migration action %q: use begin, sync, switch, automatic, pause, abort or finalize", action)
}

// GetMigration returns the latest migration of one of the caller's
// instances. A phase left running by a control plane replica that stopped
// (no heartbeat for migrationStale) is recorded as failed first, so that it
// can be tried again or aborted.
func (s *Service) GetMigration(ctx context.Context, c Caller, id string) (store.Migration, error) {
	if _, err := s.Store.GetInstance(ctx, c.AccountID, id); err != nil && !errdefs.Is(err, errdefs.Gone) {
		return store.Migration{}, err
	}
	m, err := s.Store.GetMigration(ctx, c.AccountID, id)
	if err != nil || m.State != store.MigrationRunning || time.Since(m.UpdatedAt) < migrationStale || s.migrating.runs(id) {
		return m, err
	}
	return s.Store.UpdateMigration(ctx, m.ID, func(mm *store.Migration) error {
		if mm.State != store.MigrationRunning || time.Since(mm.UpdatedAt) < migrationStale {
			return nil
		}
		msg := "the control plane replica running its " + mm.Phase + " phase stopped: run the phase again, or abort"
		mm.State, mm.Error = store.MigrationFailed, msg
		if n := len(mm.Progress); n > 0 && mm.Progress[n-1].State == store.MigrationRunning {
			now := time.Now().UTC()
			p := &mm.Progress[n-1]
			p.State, p.Message, p.FinishedTimestamp, p.DurationMs = store.MigrationFailed, msg, &now, now.Sub(p.StartedTimestamp).Milliseconds()
		}
		s.Log.Warn("migration left running by a stopped replica taken as failed", "instance", mm.InstanceID, "phase", mm.Phase)
		return nil
	})
}

// ListMigrations returns the caller's migrations, the latest of each instance.
func (s *Service) ListMigrations(ctx context.Context, c Caller) ([]store.Migration, error) {
	return s.Store.ListMigrations(ctx, c.AccountID)
}

func (s *Service) beginMigration(ctx context.Context, c Caller, id string, automatic bool, affinity []string) (store.Migration, error) {
	in, err := s.Store.GetInstance(ctx, c.AccountID, id)
	if err != nil {
		return store.Migration{}, err
	}
	if len(affinity) > 0 {
		return store.Migration{}, errdefs.InvalidArgument("affinity rules for a migration are not supported: the scheduler chooses the target among the other nodes")
	}
	if err := s.migrationAllowed(ctx)(in); err != nil {
		return store.Migration{}, err
	}
	if cur, err := s.Store.GetMigration(ctx, c.AccountID, id); err == nil && !cur.Over() {
		return store.Migration{}, errdefs.Conflictf("instance %s already has a migration in progress (phase %s, %s): finish or abort it first", id, cur.Phase, cur.State)
	}
	req := scheduler.Request{InstanceID: in.ID, OwnerID: in.OwnerID, Name: in.Name, Brand: in.Brand, MemoryMiB: in.MemoryMiB,
		DiskMiB: in.DiskMiB, VCPUs: float64(in.VCPUsMilli) / 1000, ExcludeNodes: map[string]bool{*in.NodeID: true}}
	opts := scheduler.Options{Policy: s.Placer.opts.Policy, Candidates: 8}
	dec, err := scheduler.Place(s.Placer.Snapshot(), req, opts)
	if err != nil {
		// A node may have joined since the snapshot was taken.
		if rerr := s.Placer.Reload(ctx); rerr != nil {
			return store.Migration{}, rerr
		}
		if dec, err = scheduler.Place(s.Placer.Snapshot(), req, opts); err != nil {
			return store.Migration{}, errdefs.Wrap(errdefs.InsufficientCapacity, err, "no other compute node can take instance %s: %s", id, errdefs.MessageOf(err))
		}
	}
	var candidates []string
	for _, cd := range dec.Candidates {
		candidates = append(candidates, cd.NodeID)
	}
	if len(candidates) == 0 {
		candidates = []string{dec.NodeID}
	}
	m, err := s.Store.BeginMigration(ctx, c.AccountID, id, automatic, candidates, s.migrationAllowed(ctx))
	if err != nil {
		return m, err
	}
	s.Log.Info("migration begun", "instance", id, "source", deref(m.SourceNodeID), "target", deref(m.TargetNodeID), "automatic", automatic)
	if automatic {
		s.runPhases(m, MigrateSync, MigrateSwitch)
	}
	return m, nil
}

func deref(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

// startPhase starts sync or switch on the instance's migration, which must
// be paused (or failed) and not yet switched.
func (s *Service) startPhase(ctx context.Context, c Caller, id, phase string) (store.Migration, error) {
	cur, err := s.GetMigration(ctx, c, id)
	if err != nil {
		return cur, err
	}
	m, err := s.Store.UpdateMigration(ctx, cur.ID, func(m *store.Migration) error {
		switch {
		case m.Over():
			return errdefs.Conflictf("the migration of instance %s is %s: begin a new one", id, m.State)
		case m.State == store.MigrationRunning:
			return errdefs.Conflictf("the migration of instance %s is running its %s phase: wait for it or pause it", id, m.Phase)
		case m.Switched && m.State == store.MigrationFailed:
			return errdefs.Conflictf("instance %s was left on its target node when its switch stopped: abort the migration to move it back", id)
		case m.Switched:
			return errdefs.Conflictf("instance %s is on its target node already", id)
		}
		m.Phase, m.State, m.Error = phase, store.MigrationRunning, ""
		return nil
	})
	if err != nil {
		return m, err
	}
	s.runPhases(m, phase)
	return m, nil
}

// runPhases runs phases in the background, one after the other.
func (s *Service) runPhases(m store.Migration, phases ...string) {
	ctx, ok := s.migrating.start(m.InstanceID)
	if !ok {
		return // already running here
	}
	go func() {
		defer s.migrating.done(m.InstanceID)
		go func() {
			t := time.NewTicker(migrationHeartbeat)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
					s.Store.UpdateMigration(context.Background(), m.ID, func(*store.Migration) error { return nil })
				}
			}
		}()
		for i, phase := range phases {
			var err error
			m, err = s.runPhase(ctx, m, phase, i == len(phases)-1)
			if err != nil {
				return
			}
		}
	}()
}

// runPhase runs one phase and records its outcome: paused after a sync
// that ends the request, successful after a switch, failed on an error, or
// paused when the phase was paused (its context cancelled).
func (s *Service) runPhase(ctx context.Context, m store.Migration, phase string, last bool) (store.Migration, error) {
	log := s.Log.With("instance", m.InstanceID, "migration", m.ID, "phase", phase)
	start := time.Now().UTC()
	idx := -1
	m, err := s.Store.UpdateMigration(context.Background(), m.ID, func(mm *store.Migration) error {
		mm.Phase, mm.State = phase, store.MigrationRunning
		mm.Progress = append(mm.Progress, store.MigrationProgress{Type: "progress", Phase: phase, State: store.MigrationRunning,
			Message: phase + " started", TotalProgress: store.ProgressScale, StartedTimestamp: start})
		idx = len(mm.Progress) - 1
		return nil
	})
	if err != nil {
		log.Error("migration phase could not start", "err", err)
		return m, err
	}
	report := func(message string, current, total, rate int64) {
		_, err := s.Store.UpdateMigration(context.Background(), m.ID, func(mm *store.Migration) error {
			if idx < len(mm.Progress) {
				p := &mm.Progress[idx]
				if total == store.ProgressScale/10 {
					// Percent steps: in per mille, since the triton CLI
					// adds up the steps of totals of exactly 100.
					current, total = current*10, store.ProgressScale
				}
				p.Message, p.CurrentProgress, p.TotalProgress, p.TransferBytesSecond = message, current, max(total, 1), rate
			}
			return nil
		})
		if err != nil {
			log.Warn("recording migration progress", "err", err)
		}
	}
	var msg string
	switch phase {
	case MigrateSync:
		var n int64
		n, err = s.copyDisk(ctx, m, report)
		msg = fmt.Sprintf("copied %d bytes of the instance's disk to the target node", n)
	case MigrateSwitch:
		msg, err = s.switchMigration(ctx, m, report)
	default:
		err = errdefs.InvalidArgument("unknown migration phase %q", phase)
	}
	paused := err != nil && ctx.Err() != nil && phase == MigrateSync
	end := time.Now().UTC()
	m, uerr := s.Store.UpdateMigration(context.Background(), m.ID, func(mm *store.Migration) error {
		p := &mm.Progress[idx]
		p.FinishedTimestamp, p.DurationMs = &end, end.Sub(start).Milliseconds()
		switch {
		case paused:
			p.State, p.Message = store.MigrationPaused, "paused"
			mm.State = store.MigrationPaused
		case err != nil:
			p.State, p.Message = store.MigrationFailed, errdefs.MessageOf(err)
			mm.State, mm.Error = store.MigrationFailed, errdefs.MessageOf(err)
		default:
			p.State, p.Message, p.CurrentProgress, p.TotalProgress = store.MigrationSuccessful, msg, store.ProgressScale, store.ProgressScale
			switch {
			case phase == MigrateSwitch:
				mm.State = store.MigrationSuccessful
			case last:
				mm.State = store.MigrationPaused
			}
		}
		return nil
	})
	if uerr != nil {
		log.Error("recording the end of a migration phase", "err", uerr)
		return m, uerr
	}
	if err != nil {
		log.Warn("migration phase failed", "err", err, "paused", paused)
		return m, err
	}
	log.Info("migration phase done", "took", end.Sub(start).String())
	return m, nil
}

// nodeOf returns how to reach a node's stream server.
func (s *Service) nodeOf(ctx context.Context, id *string) (nodeclient.Node, error) {
	if id == nil {
		return nodeclient.Node{}, errdefs.Conflictf("a node of the migration is gone")
	}
	ns, err := s.Store.NodeStream(ctx, *id)
	if err != nil {
		return nodeclient.Node{}, err
	}
	return nodeclient.Node{ID: ns.NodeID, Address: ns.Address, Token: ns.Token}, nil
}

// copyDisk copies the instance's disk from the source node to the target's
// stage, reporting progress about twice a second, and returns its size.
func (s *Service) copyDisk(ctx context.Context, m store.Migration, report func(string, int64, int64, int64)) (int64, error) {
	src, err := s.nodeOf(ctx, m.SourceNodeID)
	if err != nil {
		return 0, err
	}
	dst, err := s.nodeOf(ctx, m.TargetNodeID)
	if err != nil {
		return 0, err
	}
	disk, err := s.nodeClient().ExportDisk(ctx, src, m.InstanceID)
	if err != nil {
		return 0, err
	}
	defer disk.Close()
	cr := &countingReader{r: disk}
	done := make(chan struct{})
	started := time.Now()
	go func() {
		t := time.NewTicker(500 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				n := cr.n.Load()
				rate := int64(float64(n) / max(time.Since(started).Seconds(), 0.001))
				report(fmt.Sprintf("copying the disk: %d of %d bytes", n, disk.Size), n, max(disk.Size, n), rate)
			}
		}
	}()
	err = s.nodeClient().StageDisk(ctx, dst, m.InstanceID, disk.Layer, cr)
	close(done)
	if err != nil {
		return cr.n.Load(), err
	}
	return cr.n.Load(), nil
}

type countingReader struct {
	r io.Reader
	n atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// switchMigration stops the instance on its source, copies its disk a last
// time, releases it there, moves it to the target and waits for the target
// to run it as it was. A failure after the move puts it back on its source.
func (s *Service) switchMigration(ctx context.Context, m store.Migration, report func(string, int64, int64, int64)) (string, error) {
	in, err := s.Store.GetInstance(ctx, m.OwnerID, m.InstanceID)
	if err != nil {
		return "", err
	}
	if err := s.migrationAllowed(ctx)(in); err != nil {
		return "", err
	}
	wasRunning := in.DesiredState == "running"
	if m, err = s.Store.UpdateMigration(ctx, m.ID, func(mm *store.Migration) error { mm.WasRunning = wasRunning; return nil }); err != nil {
		return "", err
	}
	desired := "stopped"
	if wasRunning {
		desired = "running"
	}
	src, err := s.nodeOf(ctx, m.SourceNodeID)
	if err != nil {
		return "", err
	}
	dst, err := s.nodeOf(ctx, m.TargetNodeID)
	if err != nil {
		return "", err
	}
	caller := map[string]any{"type": "operator", "user": "migration"}
	// Back on the source as it was, if anything below fails before the move.
	undo := func(cause error) error {
		bctx := context.Background()
		if wasRunning {
			if _, err := s.Store.UpdateInstance(bctx, m.OwnerID, m.InstanceID, store.Mutation{Migration: true, Action: "start", Caller: caller,
				Apply: func(in *store.Instance) error { in.DesiredState = "running"; return nil }}); err != nil {
				s.Log.Error("migration: starting the instance on its source again", "instance", m.InstanceID, "err", err)
			}
		}
		s.nodeClient().DropDisk(bctx, dst, m.InstanceID)
		return cause
	}
	stopped := time.Now()
	if in.DesiredState != "stopped" || in.State != "stopped" {
		report("stopping the instance on its source node", 10, 100, 0)
		up, err := s.Store.UpdateInstance(ctx, m.OwnerID, m.InstanceID, store.Mutation{Migration: true, Action: "stop", Caller: caller,
			Apply: func(in *store.Instance) error { in.DesiredState = "stopped"; return nil }})
		if err != nil {
			return "", undo(err)
		}
		if err := s.awaitInstance(ctx, m, up.Generation, "stopped", migrationStopWait); err != nil {
			return "", undo(errdefs.Wrap(errdefs.Unavailable, err, "stopping the instance on its source node: %s", errdefs.MessageOf(err)))
		}
	}
	report("copying the disk a last time", 30, 100, 0)
	n, err := s.copyDisk(ctx, m, func(string, int64, int64, int64) {})
	if err != nil {
		return "", undo(err)
	}
	report("releasing the instance on its source node", 50, 100, 0)
	if err := s.nodeClient().MigrationOp(ctx, src, m.InstanceID, "release"); err != nil {
		return "", undo(err)
	}
	moved, err := s.Store.MoveMigratedInstance(ctx, m.ID, true, desired, caller)
	if err != nil {
		return "", undo(err)
	}
	report("starting the instance on its target node", 70, 100, 0)
	if err := s.awaitInstance(ctx, m, moved.Generation, desired, migrationStartWait); err != nil {
		return "", s.moveBack(m, dst, wasRunning, errdefs.Wrap(errdefs.Unavailable, err, "the target node did not take the instance: %s", errdefs.MessageOf(err)))
	}
	downtime := time.Since(stopped)
	if err := s.nodeClient().MigrationOp(context.Background(), src, m.InstanceID, "remove"); err != nil {
		s.Log.Warn("migration: the source node did not remove its copy", "instance", m.InstanceID, "err", err)
	}
	return fmt.Sprintf("instance %s on compute node %s (disk %d bytes, %s while switching)", desired, deref(m.TargetNodeID), n,
		downtime.Round(time.Millisecond)), nil
}

// moveBack undoes a move to the target: the target deletes what it made of
// the instance and the instance goes back to its source as it was.
func (s *Service) moveBack(m store.Migration, dst nodeclient.Node, wasRunning bool, cause error) error {
	ctx := context.Background()
	if err := s.nodeClient().MigrationOp(ctx, dst, m.InstanceID, "discard"); err != nil {
		s.Log.Error("migration: the target node did not discard the instance", "instance", m.InstanceID, "err", err)
	}
	s.nodeClient().DropDisk(ctx, dst, m.InstanceID)
	desired := "stopped"
	if wasRunning {
		desired = "running"
	}
	if _, err := s.Store.MoveMigratedInstance(ctx, m.ID, false, desired, map[string]any{"type": "operator", "user": "migration"}); err != nil {
		s.Log.Error("migration: moving the instance back to its source", "instance", m.InstanceID, "err", err)
		return errdefs.Wrap(errdefs.CodeOf(cause), cause, "%s; moving it back to its source failed too: %s", errdefs.MessageOf(cause), errdefs.MessageOf(err))
	}
	return errdefs.Wrap(errdefs.CodeOf(cause), cause, "%s; it is back on its source node", errdefs.MessageOf(cause))
}

// awaitInstance waits until the instance's node reports generation gen (or
// later) in state want. A report of "failed" ends the wait with its error.
func (s *Service) awaitInstance(ctx context.Context, m store.Migration, gen int64, want string, within time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	for {
		in, err := s.Store.GetInstance(ctx, m.OwnerID, m.InstanceID)
		if err != nil {
			return err
		}
		if in.ObservedGeneration >= gen {
			if in.State == want {
				return nil
			}
			if in.State == "failed" {
				msg := in.Error
				if msg == "" {
					msg = "the node reported it failed"
				}
				return errdefs.New(errdefs.Unavailable, "%s", msg)
			}
		}
		select {
		case <-ctx.Done():
			return errdefs.New(errdefs.Unavailable, "instance %s is still %s after %s (want %s)", m.InstanceID, in.State, within, want)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// pauseMigration stops a running sync; it ends paused.
func (s *Service) pauseMigration(ctx context.Context, c Caller, id string) (store.Migration, error) {
	m, err := s.GetMigration(ctx, c, id)
	if err != nil {
		return m, err
	}
	if m.State != store.MigrationRunning || m.Phase != MigrateSync {
		return m, errdefs.Conflictf("the migration of instance %s is %s in phase %s: only a running sync can be paused", id, m.State, m.Phase)
	}
	if !s.migrating.cancel(id) {
		return m, errdefs.Conflictf("the sync of instance %s runs on another control plane replica: pause it there or wait for it", id)
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if m, err = s.Store.GetMigration(ctx, c.AccountID, id); err != nil || m.State != store.MigrationRunning {
			return m, err
		}
		time.Sleep(50 * time.Millisecond)
	}
	return m, nil
}

// abortMigration ends a migration that is not running: a disk staged on
// the target is dropped and the target's room given back.
func (s *Service) abortMigration(ctx context.Context, c Caller, id string) (store.Migration, error) {
	m, err := s.GetMigration(ctx, c, id)
	if err != nil {
		return m, err
	}
	switch {
	case m.Over():
		return m, errdefs.Conflictf("the migration of instance %s is already %s", id, m.State)
	case m.State == store.MigrationRunning:
		return m, errdefs.Conflictf("the migration of instance %s is running its %s phase: pause it or wait for it to end before aborting", id, m.Phase)
	}
	if dst, err := s.nodeOf(ctx, m.TargetNodeID); err == nil {
		if m.Switched {
			s.moveBack(m, dst, m.WasRunning, errdefs.New(errdefs.Internal, "aborted"))
		}
		if err := s.nodeClient().DropDisk(ctx, dst, m.InstanceID); err != nil {
			s.Log.Warn("migration abort: the target node did not drop the staged disk", "instance", id, "err", err)
		}
	}
	now := time.Now().UTC()
	return s.Store.FinishMigrationAbort(ctx, m.ID, func(mm *store.Migration) error {
		if mm.State == store.MigrationRunning {
			return errdefs.Conflictf("the migration of instance %s started its %s phase meanwhile: pause it or wait for it to end", id, mm.Phase)
		}
		mm.Phase = MigrateAbort
		mm.Progress = append(mm.Progress, store.MigrationProgress{Type: "progress", Phase: MigrateAbort, State: store.MigrationSuccessful,
			Message: "migration aborted; the instance stays on its source node", CurrentProgress: store.ProgressScale, TotalProgress: store.ProgressScale,
			StartedTimestamp: now, FinishedTimestamp: &now})
		return nil
	})
}

// MigrationEvent is one event of a migration's watch stream, as CloudAPI
// sends it: "progress" events as phases advance, then one "end".
type MigrationEvent = map[string]any

// WatchMigration sends the caller's instance's migration's progress to
// emit until the migration is no longer running (then an "end" event) or
// ctx ends.
func (s *Service) WatchMigration(ctx context.Context, c Caller, id string, emit func(MigrationEvent) error) error {
	m, err := s.GetMigration(ctx, c, id)
	if err != nil {
		return err
	}
	sent := map[int]string{}
	first := true
	for {
		start := 0
		if first && m.State != store.MigrationRunning && len(m.Progress) > 0 {
			start = len(m.Progress) - 1 // nothing runs: the last phase only
		}
		first = false
		for i := start; i < len(m.Progress); i++ {
			b, _ := json.Marshal(m.Progress[i])
			if sent[i] == string(b) {
				continue
			}
			sent[i] = string(b)
			var ev MigrationEvent
			json.Unmarshal(b, &ev)
			if err := emit(ev); err != nil {
				return err
			}
		}
		if m.State != store.MigrationRunning {
			ev := MigrationEvent{"type": "end", "phase": m.Phase, "state": m.State}
			if m.Error != "" {
				ev["message"] = m.Error
			}
			return emit(ev)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(200 * time.Millisecond):
		}
		if m, err = s.Store.GetMigration(ctx, c.AccountID, id); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
	}
}

// MigrationJSON renders a migration as CloudAPI's Migration object.
func MigrationJSON(m store.Migration) map[string]any {
	hist := m.Progress
	if hist == nil {
		hist = []store.MigrationProgress{}
	}
	out := map[string]any{
		"machine":           m.InstanceID,
		"automatic":         m.Automatic,
		"created_timestamp": m.CreatedAt.UTC().Format(time.RFC3339Nano),
		"phase":             m.Phase,
		"state":             m.State,
		"progress_history":  hist,
	}
	if m.Error != "" {
		out["error"] = m.Error
	}
	if m.FinishedAt != nil {
		out["finished_timestamp"] = m.FinishedAt.UTC().Format(time.RFC3339Nano)
		out["duration_ms"] = m.FinishedAt.Sub(m.CreatedAt).Milliseconds()
	}
	if m.SourceNodeID != nil {
		out["source_server_uuid"] = *m.SourceNodeID
	}
	if m.TargetNodeID != nil {
		out["target_server_uuid"] = *m.TargetNodeID
	}
	return out
}
