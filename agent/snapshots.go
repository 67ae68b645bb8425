package agent

import (
	"context"
	"sync"

	"flotilla/agent/driver"
	"flotilla/api/agentapi/wire"
	"flotilla/api/errdefs"
)

// snapshotFailures remembers the snapshots this agent failed to take, so
// that a failure is reported (and not retried) until the control plane
// records it. The zero value is ready to use.
type snapshotFailures struct {
	mu  sync.Mutex
	msg map[string]string // instance id + "/" + name -> error
}

func (f *snapshotFailures) get(id, name string) (string, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	m, ok := f.msg[id+"/"+name]
	return m, ok
}

func (f *snapshotFailures) set(id, name, msg string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.msg == nil {
		f.msg = map[string]string{}
	}
	f.msg[id+"/"+name] = msg
}

func (f *snapshotFailures) clear(id, name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.msg, id+"/"+name)
}

// syncSnapshots makes the instance's snapshots on the node match the
// assignment: it takes the snapshots still "creating" that the node lacks
// and removes those desired deleted. It returns the status of each
// snapshot the assignment names. An error (listing or removing failed) is
// retried by the caller; a snapshot that cannot be taken is reported failed.
func (a *Agent) syncSnapshots(ctx context.Context, want wire.Assignment) ([]wire.SnapshotStatus, error) {
	if len(want.Snapshots) == 0 {
		return nil, nil
	}
	id := want.ID
	sn, ok := a.drv.(driver.Snapshotter)
	if !ok {
		out := make([]wire.SnapshotStatus, 0, len(want.Snapshots))
		for _, w := range want.Snapshots {
			st := wire.SnapshotStatus{Name: w.Name, State: "failed", Error: "the " + a.drv.Name() + " driver on this node cannot take snapshots"}
			if w.Desired == wire.SnapshotDeleted {
				st = wire.SnapshotStatus{Name: w.Name, State: "deleted"}
			}
			out = append(out, st)
		}
		return out, nil
	}
	have, err := sn.Snapshots(ctx, id)
	if err != nil {
		return nil, err
	}
	onNode := map[string]driver.SnapshotInfo{}
	for _, h := range have {
		onNode[h.Name] = h
	}
	log := a.log.With("instance", id)
	out := make([]wire.SnapshotStatus, 0, len(want.Snapshots))
	for _, w := range want.Snapshots {
		if w.Desired == wire.SnapshotDeleted {
			if _, ok := onNode[w.Name]; ok {
				if err := sn.DeleteSnapshot(ctx, id, w.Name); err != nil {
					return nil, err
				}
				log.Info("snapshot deleted", "snapshot", w.Name)
			}
			a.snaps.clear(id, w.Name)
			out = append(out, wire.SnapshotStatus{Name: w.Name, State: "deleted"})
			continue
		}
		if info, ok := onNode[w.Name]; ok {
			out = append(out, wire.SnapshotStatus{Name: w.Name, State: "created", SizeBytes: info.SizeBytes})
			continue
		}
		if msg, failed := a.snaps.get(id, w.Name); failed {
			out = append(out, wire.SnapshotStatus{Name: w.Name, State: "failed", Error: msg})
			continue
		}
		switch w.State {
		case "creating":
			info, err := sn.CreateSnapshot(ctx, id, w.Name)
			if err != nil {
				if errdefs.Is(err, errdefs.Unavailable) && ctx.Err() != nil {
					return nil, err // shutting down: try again at the next start
				}
				msg := errdefs.MessageOf(err)
				log.Warn("snapshot failed", "snapshot", w.Name, "err", err)
				a.snaps.set(id, w.Name, msg)
				out = append(out, wire.SnapshotStatus{Name: w.Name, State: "failed", Error: msg})
				continue
			}
			log.Info("snapshot created", "snapshot", w.Name, "bytes", info.SizeBytes)
			out = append(out, wire.SnapshotStatus{Name: w.Name, State: "created", SizeBytes: info.SizeBytes})
		case "created":
			out = append(out, wire.SnapshotStatus{Name: w.Name, State: "failed", Error: "the snapshot is no longer on the instance's node"})
		default:
			out = append(out, wire.SnapshotStatus{Name: w.Name, State: "failed", Error: "the snapshot could not be taken"})
		}
	}
	return out, nil
}

// restore stops the instance if it runs and puts its disk back as the
// assignment's restore snapshot has it. A snapshot the node cannot restore
// (unknown, or a driver without snapshots) is a permanent error: it is
// Invalid or NotFound and the caller does not try it again.
func (a *Agent) restore(ctx context.Context, want wire.Assignment, running bool) error {
	sn, ok := a.drv.(driver.Snapshotter)
	if !ok {
		return errdefs.InvalidArgument("the %s driver on this node cannot restore snapshots", a.drv.Name())
	}
	if running {
		if err := a.drv.Stop(ctx, want.ID, a.stopGrace(want.Spec)); err != nil {
			return err
		}
	}
	return sn.RestoreSnapshot(ctx, want.ID, want.RestoreSnapshot)
}

// permanent reports whether a restore error will not go away by retrying.
func permanent(err error) bool {
	return errdefs.Is(err, errdefs.NotFound) || errdefs.Is(err, errdefs.Invalid)
}
