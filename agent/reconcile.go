package agent

import (
	"context"
	"slices"
	"time"

	"flotilla/agent/driver"
	"flotilla/api/agentapi/wire"
	"flotilla/api/errdefs"
)

// workloadError is a driver failure to create or start a workload at some
// generation: retried a few times, then reported as state "failed".
type workloadError struct {
	generation int64
	err        error
}

func (e *workloadError) Error() string { return e.err.Error() }
func (e *workloadError) Unwrap() error { return e.err }

// sync makes one instance match its desired state and reports what it
// observes. It is level-triggered: it reads the desired state (the latest
// assignment) and the actual state (the driver) afresh every time, so
// running it again is always safe.
func (a *Agent) sync(ctx context.Context, id string) error {
	a.mu.Lock()
	want, assigned := a.desired[id]
	full := a.haveFull
	fail, failed := a.failed[id]
	moved := a.moved[id]
	a.mu.Unlock()
	if moved {
		return nil // a migration takes it away: its requests do the work
	}

	st, err := a.drv.Inspect(ctx, id)
	exists := err == nil
	if err != nil && !errdefs.Is(err, errdefs.NotFound) {
		return err
	}

	if !assigned {
		if !full {
			return nil // adopted, not yet known to be unwanted
		}
		if exists {
			a.log.Warn("removing instance the control plane does not assign to this node", "instance", id, "state", st.State)
			if err := a.drv.Delete(ctx, id); err != nil {
				return err
			}
		}
		return a.forget(id)
	}
	log := a.log.With("instance", id, "generation", want.Generation)

	if want.DesiredState == wire.DesiredDeleted {
		a.health.drop(id)
		if exists {
			if err := a.drv.Delete(ctx, id); err != nil {
				return err
			}
			log.Info("instance deleted")
		}
		ap, _ := a.state.Get(id)
		err := a.report(ctx, id, wire.InstanceStatus{
			ObservedGeneration: want.Generation,
			RebootCount:        max(ap.RebootCount, want.RebootCount),
			State:              wire.StateDeleted,
			Restarts:           ap.Restarts,
		}, true)
		if err != nil {
			return err
		}
		a.mu.Lock()
		if cur, ok := a.desired[id]; ok && cur.Generation == want.Generation {
			delete(a.desired, id)
		}
		a.mu.Unlock()
		return a.forget(id)
	}

	if failed {
		if fail.generation == want.Generation {
			ap, _ := a.state.Get(id)
			rep := wire.InstanceStatus{
				ObservedGeneration: want.Generation,
				RebootCount:        ap.RebootCount,
				State:              driver.StateFailed,
				Error:              fail.msg,
				Restarts:           ap.Restarts,
			}
			if exists && st.State == driver.StateFailed {
				// A command that could not run has an exit code (126, 127).
				rep.ExitCode, rep.StartedAt, rep.FinishedAt = st.ExitCode, st.StartedAt, st.FinishedAt
			}
			return a.report(ctx, id, rep, false)
		}
		a.mu.Lock()
		delete(a.failed, id) // a new generation gets new tries
		a.mu.Unlock()
	}

	ap, known := a.state.Get(id)
	if exists && !known {
		// Adopted without a record (first run of this agent over a driver
		// that already runs it, or a lost state file): whatever runs is
		// taken as applied, so adoption never reboots or restarts it.
		ap = applied{
			Generation:        want.Generation,
			StartedGeneration: want.Generation,
			RebootCount:       want.RebootCount,
			RestoreCount:      want.RestoreCount,
			Resources:         resourcesOf(want.Spec),
			NICs:              driver.NICSet(want.Spec.NICs),
		}
	}
	var requeue time.Duration

	if !exists {
		a.firstLook(id) // created by this agent: no autoboot to consider
		if err := a.drv.Create(ctx, want.Spec); err != nil {
			return &workloadError{want.Generation, err}
		}
		if want.ImportDisk {
			if err := a.importDisk(ctx, id); err != nil {
				if derr := a.drv.Delete(ctx, id); derr != nil {
					log.Warn("removing the instance whose disk could not be imported", "err", derr)
				}
				return &workloadError{want.Generation, err}
			}
			log.Info("instance disk imported from its migration")
		}
		ap = applied{RebootCount: want.RebootCount, RestoreCount: want.RestoreCount, Resources: resourcesOf(want.Spec),
			Restarts: ap.Restarts, NICs: driver.NICSet(want.Spec.NICs), Migrated: want.ImportDisk}
		if want.DesiredState == wire.DesiredRunning {
			if err := a.start(ctx, id, want.Spec.Options.Volumes); err != nil {
				return &workloadError{want.Generation, err}
			}
			ap.StartedGeneration = want.Generation
			log.Info("instance created and started")
		} else {
			log.Info("instance created")
		}
	} else {
		if res := resourcesOf(want.Spec); res != ap.Resources {
			if u, ok := a.drv.(driver.Updater); ok {
				switch err := u.Update(ctx, want.Spec); {
				case errdefs.Is(err, errdefs.Conflict):
					// A VM takes new resources only while stopped: keep the
					// old ones recorded so the resize is applied once it is.
					log.Info("resize waits until the instance is stopped", "resources", res.String())
					res = ap.Resources
				case err != nil:
					return err
				default:
					log.Info("instance resized", "resources", res.String())
				}
			} else {
				log.Warn("driver cannot resize; new resources apply at the next create", "driver", a.drv.Name())
			}
			ap.Resources = res
		}
		if nics := driver.NICSet(want.Spec.NICs); nics != ap.NICs {
			if u, ok := a.drv.(driver.NICUpdater); ok {
				if err := u.UpdateNICs(ctx, want.Spec); err != nil {
					return err
				}
				log.Info("instance NICs changed", "nics", len(want.Spec.NICs))
			}
			ap.NICs = nics
		}
		if want.RestoreCount > ap.RestoreCount {
			err := a.restore(ctx, want, st.State == driver.StateRunning)
			if err != nil && !permanent(err) {
				return err
			}
			// Tried once for good: a later start must not restore again.
			ap.RestoreCount = want.RestoreCount
			ap.Generation = want.Generation
			if perr := a.state.Put(id, ap, true); perr != nil {
				return perr
			}
			if err != nil {
				return &workloadError{want.Generation, err}
			}
			log.Info("instance restored from snapshot", "snapshot", want.RestoreSnapshot)
			// Restored stopped; desired running starts it below.
			st.State = driver.StateStopped
			ap.StartedGeneration = 0
		}
		running := st.State == driver.StateRunning
		first := a.firstLook(id)
		switch want.DesiredState {
		case wire.DesiredRunning:
			switch {
			case want.RebootCount > ap.RebootCount:
				if running {
					if err := a.drv.Stop(ctx, id, a.stopGrace(want.Spec)); err != nil {
						return err
					}
				}
				if err := a.start(ctx, id, want.Spec.Options.Volumes); err != nil {
					return &workloadError{want.Generation, err}
				}
				ap.RebootCount = want.RebootCount
				ap.StartedGeneration = want.Generation
				log.Info("instance rebooted", "reboot_count", want.RebootCount)
			case running:
			case want.Spec.Autoboot && first:
				// Found stopped when this agent started: the node went down
				// under it. Boot it again, as Triton's autoboot does.
				if err := a.start(ctx, id, want.Spec.Options.Volumes); err != nil {
					return &workloadError{want.Generation, err}
				}
				ap.StartedGeneration = want.Generation
				log.Info("instance booted again after the node restarted")
			case ap.StartedGeneration < want.Generation || st.State == driver.StateProvisioning:
				if err := a.start(ctx, id, want.Spec.Options.Volumes); err != nil {
					return &workloadError{want.Generation, err}
				}
				ap.StartedGeneration = want.Generation
				log.Info("instance started")
			default:
				// It exited on its own after the agent started it.
				if wait, ok := restartDue(want.Spec.Restart, st, ap.Restarts); ok {
					if wait > 0 {
						requeue = wait
						break
					}
					if err := a.start(ctx, id, want.Spec.Options.Volumes); err != nil {
						return err
					}
					ap.Restarts++
					log.Info("instance restarted by its restart policy", "policy", want.Spec.Restart.Name, "restarts", ap.Restarts)
				}
			}
		case wire.DesiredStopped:
			if running {
				if err := a.drv.Stop(ctx, id, a.stopGrace(want.Spec)); err != nil {
					return err
				}
				log.Info("instance stopped")
			}
			ap.RebootCount = max(ap.RebootCount, want.RebootCount) // rebooting a stopped instance is moot
		default:
			log.Warn("unknown desired state; leaving the instance alone", "desired_state", want.DesiredState)
		}
	}
	snaps, err := a.syncSnapshots(ctx, want)
	if err != nil {
		return err
	}
	ap.Generation = want.Generation
	// What adoption cannot derive (a reboot, a start at a newer generation,
	// a policy restart) must be on disk before it is reported.
	prev, _ := a.state.Get(id)
	durable := ap.Migrated && !prev.Migrated || known && (ap.RebootCount != prev.RebootCount || ap.StartedGeneration != prev.StartedGeneration ||
		ap.Restarts != prev.Restarts || ap.RestoreCount != prev.RestoreCount)
	if err := a.state.Put(id, ap, durable); err != nil {
		return err
	}

	st, err = a.drv.Inspect(ctx, id)
	if err != nil {
		return err
	}
	if st.State == driver.StateProvisioning && ap.Migrated {
		st.State = driver.StateStopped // ran on its source node; not started here yet
	}
	a.mu.Lock()
	a.observed[id] = st.State
	a.mu.Unlock()
	health := a.health.observe(id, want.Spec, st)
	err = a.report(ctx, id, wire.InstanceStatus{
		ObservedGeneration: want.Generation,
		RebootCount:        ap.RebootCount,
		State:              st.State,
		ExitCode:           st.ExitCode,
		StartedAt:          st.StartedAt,
		FinishedAt:         st.FinishedAt,
		Error:              st.Error,
		Restarts:           ap.Restarts + st.Restarts,
		Snapshots:          snaps,
		RestoreCount:       ap.RestoreCount,
		Health:             health,
	}, false)
	if err == nil && requeue > 0 {
		a.q.AddAfter(id, requeue)
	}
	return err
}

// start starts an instance, holding its run for the attach streams that are
// waiting for it when the driver can. The driver first learns how to reach
// the other nodes' volumes the instance mounts as the control plane now
// says (their nodes' addresses may have changed since it was created).
func (a *Agent) start(ctx context.Context, id string, vols []driver.VolumeMount) error {
	if su, ok := a.drv.(driver.ShareUpdater); ok {
		if err := su.UpdateShares(ctx, id, vols); err != nil {
			return err
		}
	}
	a.mu.Lock()
	streams := a.streams
	a.mu.Unlock()
	if as, ok := a.drv.(driver.AttachStarter); ok && streams != nil {
		if n := streams.PendingAttaches(id); n > 0 {
			return as.StartWith(ctx, id, driver.StartOptions{Attachers: n})
		}
	}
	return a.drv.Start(ctx, id)
}

// stopGrace is how long an instance gets to stop before SIGKILL: its own
// stop timeout (Docker's --stop-timeout; negative waits for ever), else
// the agent's.
func (a *Agent) stopGrace(spec driver.Spec) time.Duration {
	if spec.StopTimeout == nil {
		return a.cfg.StopTimeout
	}
	if *spec.StopTimeout < 0 {
		return 24 * time.Hour
	}
	return time.Duration(*spec.StopTimeout) * time.Second
}

// report sends st unless the same status was reported recently. A 404
// (the instance is no longer assigned here) is not retried: the next full
// assignment set settles it.
func (a *Agent) report(ctx context.Context, id string, st wire.InstanceStatus, always bool) error {
	a.mu.Lock()
	last, ok := a.reported[id]
	a.mu.Unlock()
	if !always && ok && sameStatus(last.st, st) && time.Since(last.at) < a.cfg.ReportRefresh {
		return nil
	}
	err := a.cp.ReportStatus(ctx, id, st)
	if errdefs.Is(err, errdefs.NotFound) {
		a.log.Warn("control plane does not know the instance on this node", "instance", id, "err", err)
		return nil
	}
	if err != nil {
		return err
	}
	a.mu.Lock()
	a.reported[id] = report{st: st, at: time.Now()}
	a.mu.Unlock()
	return nil
}

// forget drops everything the agent keeps about an instance that is gone.
func (a *Agent) forget(id string) error {
	a.health.drop(id)
	a.mu.Lock()
	delete(a.observed, id)
	delete(a.reported, id)
	delete(a.failed, id)
	a.mu.Unlock()
	return a.state.Delete(id)
}

// restartDue applies a Docker restart policy to an instance that exited on
// its own. It returns whether to restart and how long to wait first
// (doubling from 100ms per restart, at most a minute, counted from the exit).
func restartDue(p driver.RestartPolicy, st driver.Status, restarts int) (time.Duration, bool) {
	switch p.Name {
	case "always", "unless-stopped":
	case "on-failure":
		if st.ExitCode == nil || *st.ExitCode == 0 {
			return 0, false
		}
		if p.MaximumRetryCount > 0 && restarts >= p.MaximumRetryCount {
			return 0, false
		}
	default:
		return 0, false
	}
	delay := min(100*time.Millisecond<<min(restarts, 10), time.Minute)
	if st.FinishedAt.IsZero() {
		return 0, true
	}
	return max(time.Until(st.FinishedAt.Add(delay)), 0), true
}

func sameStatus(x, y wire.InstanceStatus) bool {
	return x.ObservedGeneration == y.ObservedGeneration &&
		x.RebootCount == y.RebootCount &&
		x.State == y.State &&
		(x.ExitCode == nil) == (y.ExitCode == nil) &&
		(x.ExitCode == nil || *x.ExitCode == *y.ExitCode) &&
		x.StartedAt.Equal(y.StartedAt) &&
		x.FinishedAt.Equal(y.FinishedAt) &&
		x.Error == y.Error &&
		x.Restarts == y.Restarts &&
		x.RestoreCount == y.RestoreCount &&
		slices.Equal(x.Snapshots, y.Snapshots) &&
		sameHealth(x.Health, y.Health)
}

// sameHealth compares what makes a health worth reporting: its status and
// failing streak. A new probe alone is not sent; its log goes with the
// next report.
func sameHealth(x, y *wire.Health) bool {
	if x == nil || y == nil {
		return x == y
	}
	return x.Status == y.Status && x.FailingStreak == y.FailingStreak
}

// firstLook reports whether this is the first time since the agent started
// that an instance is looked at for autoboot.
func (a *Agent) firstLook(id string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.booted[id] {
		return false
	}
	a.booted[id] = true
	return true
}
