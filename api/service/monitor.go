package service

import (
	"context"
	"time"
)

// MonitorOptions tune the node monitor.
type MonitorOptions struct {
	Holder    string        // this replica's identity for the lease
	Grace     time.Duration // silence after which a node is offline (default 30s)
	Interval  time.Duration // how often to check (default grace/6, at most 5s)
	Retention time.Duration // how long deleted instances answer 410 (default 7 days)
}

// RunNodeMonitor marks silent nodes offline and their instances unknown.
// Only the replica holding the "node-monitor" lease acts; the others wait to
// take over. It returns when ctx ends.
func (s *Service) RunNodeMonitor(ctx context.Context, o MonitorOptions) {
	if o.Grace <= 0 {
		o.Grace = 30 * time.Second
	}
	if o.Interval <= 0 {
		o.Interval = min(o.Grace/6, 5*time.Second)
	}
	if o.Retention <= 0 {
		o.Retention = 7 * 24 * time.Hour
	}
	t := time.NewTicker(o.Interval)
	defer t.Stop()
	lastPurge := time.Time{}
	for {
		leader, err := s.Store.AcquireLease(ctx, "node-monitor", o.Holder, 3*o.Interval)
		if err != nil && ctx.Err() == nil {
			s.Log.Warn("node monitor lease", "error", err)
		}
		// A node silent for longer than the grace period is offline even
		// if the control plane itself was down meanwhile: placing on it
		// would strand instances; its next heartbeat brings it back.
		if leader {
			ids, err := s.Store.MarkSilentNodesOffline(ctx, o.Grace)
			if err != nil && ctx.Err() == nil {
				s.Log.Warn("node monitor", "error", err)
			}
			for _, id := range ids {
				s.Log.Warn("node offline: no heartbeat within the grace period", "node", id, "grace", o.Grace)
			}
			if len(ids) > 0 {
				s.Placer.Reload(ctx)
			}
			if time.Since(lastPurge) > time.Hour {
				lastPurge = time.Now()
				if n, err := s.Store.PurgeDeleted(ctx, o.Retention); err == nil && n > 0 {
					s.Log.Info("purged deleted instances past retention", "count", n)
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
