package store

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"flotilla/api/errdefs"
)

// Mutation is one change to an instance, applied under a row lock.
type Mutation struct {
	// Action names the change in the audit log and change feed (start, stop,
	// reboot, rename, resize, set_tags, ...).
	Action string
	Caller map[string]any
	Params map[string]any
	// Apply edits the instance in memory; the store writes every mutable
	// column back. Returning an error aborts the mutation.
	Apply func(in *Instance) error
	// Resources, when set, are the instance's new memory/disk/vCPUs: the
	// difference is claimed on (or released from) its node in the same transaction.
	Resources *Resources
	// applyTx runs after Apply inside the transaction (NIC changes).
	applyTx func(ctx context.Context, tx pgx.Tx, in *Instance) error
	// Migration marks the changes a migration's switch makes itself; any
	// other change of the desired state, resources or NICs is refused
	// while a switch runs.
	Migration bool
}

// Resources are an instance's sized resources.
type Resources struct {
	MemoryMiB, DiskMiB, VCPUsMilli int64
}

// ErrGone wraps a deleted instance: errdefs Gone with the instance as Detail.
func errGone(in Instance) error {
	return &errdefs.Error{Code: errdefs.Gone, Message: "VM " + in.ID + " has been deleted", Detail: in}
}

const sqlLockInstance = `SELECT ` + instanceColumns + ` FROM instances i WHERE i.owner_id = $1 AND i.id = $2 FOR UPDATE`

const sqlWriteInstance = `UPDATE instances SET name = $2, desired_state = $3, reboot_count = $4, metadata = $5, tags = $6,
	firewall_enabled = $7, deletion_protection = $8, package_id = $9, package_name = $10, memory_mib = $11,
	disk_mib = $12, vcpus_milli = $13, spec = $14, generation = generation + 1, assign_rev = $15, updated_at = now(),
	state = $16
WHERE id = $1 RETURNING generation, assign_rev, updated_at`

const sqlBumpNodeRev = `UPDATE nodes SET assign_rev = assign_rev + 1 WHERE id = $1 RETURNING assign_rev`

const sqlResizeOnNode = `UPDATE nodes SET used_memory_mib = used_memory_mib + $2, used_disk_mib = used_disk_mib + $3,
	used_vcpus_milli = used_vcpus_milli + $4, assign_rev = assign_rev + 1, updated_at = now()
WHERE id = $1 AND used_memory_mib + $2 <= floor(memory_mib * ratio_memory)
	AND used_disk_mib + $3 <= floor(disk_mib * ratio_disk) AND used_vcpus_milli + $4 <= floor(vcpus_milli * ratio_vcpu)
RETURNING assign_rev`

// UpdateInstance applies m to one of the owner's instances. A deleted
// instance is errdefs Gone (Detail holds it); an unknown one NotFound.
func (s *Store) UpdateInstance(ctx context.Context, ownerID, id string, m Mutation) (Instance, error) {
	if !validUUID(id) {
		return Instance{}, errdefs.NotFoundf("VM not found")
	}
	var out Instance
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		rows, _ := tx.Query(ctx, sqlLockInstance, ownerID, id)
		in, err := pgx.CollectExactlyOneRow(rows, scanInstance)
		if err != nil {
			return notFound(err, "VM not found")
		}
		if in.State == "deleted" {
			return errGone(in)
		}
		desired := in.DesiredState
		if m.Apply != nil {
			if err := m.Apply(&in); err != nil {
				return err
			}
		}
		if !m.Migration && (in.DesiredState != desired || m.Resources != nil || m.applyTx != nil) {
			if err := refuseDuringSwitch(ctx, tx, in.ID); err != nil {
				return err
			}
		}
		if m.applyTx != nil {
			if err := m.applyTx(ctx, tx, &in); err != nil {
				return err
			}
		}
		var rev int64
		if m.Resources != nil && in.NodeID != nil {
			d := Resources{m.Resources.MemoryMiB - in.MemoryMiB, m.Resources.DiskMiB - in.DiskMiB, m.Resources.VCPUsMilli - in.VCPUsMilli}
			err := tx.QueryRow(ctx, sqlResizeOnNode, *in.NodeID, d.MemoryMiB, d.DiskMiB, d.VCPUsMilli).Scan(&rev)
			if err == pgx.ErrNoRows {
				return errdefs.New(errdefs.InsufficientCapacity, "the instance's node cannot fit %d MiB of memory and %d MiB of disk", m.Resources.MemoryMiB, m.Resources.DiskMiB)
			}
			if err != nil {
				return translate(err)
			}
			in.MemoryMiB, in.DiskMiB, in.VCPUsMilli = m.Resources.MemoryMiB, m.Resources.DiskMiB, m.Resources.VCPUsMilli
		} else if in.NodeID != nil {
			if err := tx.QueryRow(ctx, sqlBumpNodeRev, *in.NodeID).Scan(&rev); err != nil {
				return translate(err)
			}
		}
		if len(in.Spec) == 0 {
			in.Spec = json.RawMessage("{}")
		}
		prevGeneration := in.Generation
		err = tx.QueryRow(ctx, sqlWriteInstance, in.ID, in.Name, in.DesiredState, in.RebootCount, in.Metadata, in.Tags,
			in.FirewallEnabled, in.DeletionProtection, in.PackageID, in.PackageName, in.MemoryMiB, in.DiskMiB,
			in.VCPUsMilli, in.Spec, rev, in.State).Scan(&in.Generation, &in.AssignRev, &in.UpdatedAt)
		if err != nil {
			if pgCode(err) == sqlUniqueViolation {
				return errdefs.Conflictf("an instance named %q already exists", in.Name)
			}
			return translate(err)
		}
		if err := appendChange(ctx, tx, Change{Kind: "instance", ObjectID: in.ID, OwnerID: &in.OwnerID, NodeID: in.NodeID,
			Action: m.Action, State: in.State, Detail: m.Params, WakeNode: true}); err != nil {
			return err
		}
		// The job finishes when the node reports the new generation.
		if err := appendAudit(ctx, tx, AuditEntry{OwnerID: in.OwnerID, InstanceID: &in.ID, Action: m.Action, Success: true,
			Caller: m.Caller, Params: m.Params, Generation: prevGeneration + 1, Pending: in.NodeID != nil}); err != nil {
			return err
		}
		// The row as written, with its NICs: no need to read it again.
		out = in
		return s.loadNICs(ctx, tx, []*Instance{&out})
	})
	if err != nil {
		return Instance{}, err
	}
	return out, nil
}

// StatusReport is what an agent observed about an instance.
type StatusReport struct {
	ObservedGeneration int64
	RebootCount        int64
	State              string
	ExitCode           *int
	StartedAt          *time.Time
	FinishedAt         *time.Time
	Error              string
	Restarts           int
	// Snapshots are the node's view of the instance's snapshots.
	Snapshots []SnapshotReport
	// RestoreCount is the start-from-snapshot count the node has applied.
	RestoreCount int64
	// Health is the container's health (nil: no health check, or none
	// observed since it started).
	Health *Health
}

const sqlLockAssigned = `SELECT ` + instanceColumns + ` FROM instances i WHERE i.id = $1 AND i.node_id = $2 FOR UPDATE`

const sqlWriteStatus = `UPDATE instances SET state = $2, observed_generation = GREATEST(observed_generation, $3),
	observed_reboot_count = GREATEST(observed_reboot_count, $4), exit_code = $5, started_at = COALESCE($6, started_at),
	finished_at = COALESCE($7, finished_at), error = $8, restarts = $9, health = $10, updated_at = now()
WHERE id = $1`

// ReportStatus records an agent's observation of an instance on its node.
// When a deleted instance is reported gone, its capacity and addresses are
// released in the same transaction. Instances not on the node are NotFound.
func (s *Store) ReportStatus(ctx context.Context, nodeID, id string, r StatusReport) error {
	if !validUUID(id) {
		return errdefs.NotFoundf("instance %s not found", id)
	}
	return s.inTx(ctx, func(tx pgx.Tx) error {
		rows, _ := tx.Query(ctx, sqlLockAssigned, id, nodeID)
		in, err := pgx.CollectExactlyOneRow(rows, scanInstance)
		if err != nil {
			return notFound(err, "instance "+id+" is not assigned to this node")
		}
		if in.State == "deleted" {
			return nil
		}
		if r.State == "deleted" {
			if in.DesiredState != "deleted" {
				// The node lost it while we still want it: let the agent recreate.
				r.State = "provisioning"
			} else {
				return finishDelete(ctx, tx, in)
			}
		}
		if r.State == "running" && in.State == "stopping" {
			// A start from a snapshot stops the instance first: a report
			// of its run from before the node restored the snapshot (one
			// that crossed the request) must not make it look started.
			var want int64
			if err := tx.QueryRow(ctx, `SELECT restore_count FROM instances WHERE id = $1`, id).Scan(&want); err != nil {
				return translate(err)
			}
			if r.RestoreCount < want {
				r.State = in.State
			}
		}
		// The writes go together in one round trip.
		b := &pgx.Batch{}
		if r.ObservedGeneration > in.ObservedGeneration {
			b.Queue(sqlFinishAudit, in.ID, r.ObservedGeneration, r.State != "failed")
			b.Queue(sqlForgetDeletedDisks, in.ID, r.ObservedGeneration)
		}
		b.Queue(sqlWriteStatus, id, r.State, r.ObservedGeneration, r.RebootCount, r.ExitCode,
			r.StartedAt, r.FinishedAt, r.Error, r.Restarts, r.Health)
		if err := queueSnapshotReports(b, id, r.Snapshots); err != nil {
			return err
		}
		switch {
		case r.State != in.State:
			detail := map[string]any{}
			if r.ExitCode != nil {
				detail["exit_code"] = *r.ExitCode
			}
			c := Change{Kind: "instance", ObjectID: in.ID, OwnerID: &in.OwnerID, NodeID: in.NodeID,
				Action: "state", State: r.State, Detail: detail, WakeWatchers: true}
			b.Queue(sqlAppendChange, c.Kind, c.ObjectID, c.OwnerID, c.NodeID, c.Action, c.State, c.Detail, false, true)
		case r.ObservedGeneration > in.ObservedGeneration:
			// Nothing to record in the feed, but waiters want to know.
			b.Queue(`SELECT pg_notify('flotilla_object', $1)`, in.ID)
		}
		if ev := healthEvent(in.Health, r); ev != "" {
			detail := map[string]any{"type": "container", "action": ev, "attributes": map[string]any{}}
			b.Queue(sqlAppendChange, "event", in.ID, &in.OwnerID, in.NodeID, ev, "", detail, false, true)
		}
		return translate(tx.SendBatch(ctx, b).Close())
	})
}

// healthEvent is the Docker event a report makes ("health_status:
// healthy" or "health_status: unhealthy"), "" for none: a running
// container's health changed after a probe. That a stopped container is
// shown unhealthy is no event, as with dockerd.
func healthEvent(prev *Health, r StatusReport) string {
	if r.State != "running" || r.Health == nil || r.Health.Status != "healthy" && r.Health.Status != "unhealthy" {
		return ""
	}
	if prev != nil && prev.Status == r.Health.Status {
		return ""
	}
	return "health_status: " + r.Health.Status
}

const sqlReleaseNode = `UPDATE nodes SET used_memory_mib = used_memory_mib - $2, used_disk_mib = used_disk_mib - $3,
	used_vcpus_milli = used_vcpus_milli - $4, instances = instances - 1, updated_at = now() WHERE id = $1`

// finishDelete marks an instance deleted and gives back its capacity and addresses.
func finishDelete(ctx context.Context, tx pgx.Tx, in Instance) error {
	if in.NodeID != nil {
		if _, err := tx.Exec(ctx, sqlReleaseNode, *in.NodeID, in.MemoryMiB, in.DiskMiB, in.VCPUsMilli); err != nil {
			return translate(err)
		}
	}
	if err := abortMigrationOfDeleted(ctx, tx, in.ID); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `DELETE FROM nics WHERE instance_id = $1`, in.ID); err != nil {
		return translate(err)
	}
	if _, err := tx.Exec(ctx, `DELETE FROM network_ips WHERE instance_id = $1`, in.ID); err != nil {
		return translate(err)
	}
	if _, err := tx.Exec(ctx, `UPDATE instances SET state = 'deleted', deleted_at = now(), updated_at = now() WHERE id = $1`, in.ID); err != nil {
		return translate(err)
	}
	if err := finishAudit(ctx, tx, in.ID, in.Generation, true); err != nil {
		return err
	}
	return appendChange(ctx, tx, Change{Kind: "instance", ObjectID: in.ID, OwnerID: &in.OwnerID, NodeID: in.NodeID, Action: "delete", State: "deleted", WakeWatchers: true})
}

// DeleteInstance asks for an instance to be deleted. With deletion
// protection on it is a Conflict; an already deleted one is Gone. An instance
// whose node no longer exists is deleted at once.
func (s *Store) DeleteInstance(ctx context.Context, ownerID, id string, caller map[string]any) (Instance, error) {
	return s.UpdateInstance(ctx, ownerID, id, Mutation{
		Action: "destroy", Caller: caller,
		Apply: func(in *Instance) error {
			if in.DeletionProtection {
				return &errdefs.Error{Code: errdefs.Conflict, Message: `Instance has "deletion_protection" enabled, preventing deletion`,
					Reason: "CannotDestroyMachine"}
			}
			in.DesiredState = "deleted"
			return nil
		},
	})
}

// PurgeDeleted removes instances deleted longer ago than retention.
func (s *Store) PurgeDeleted(ctx context.Context, retention time.Duration) (int64, error) {
	tag, err := s.pool.Exec(ctx, `DELETE FROM instances WHERE state = 'deleted' AND deleted_at < now() - $1::interval`,
		fmt.Sprintf("%d milliseconds", retention.Milliseconds()))
	if err != nil {
		return 0, translate(err)
	}
	return tag.RowsAffected(), nil
}

const sqlAssignments = `SELECT ` + instanceColumns + ` FROM instances i
WHERE i.node_id = $1 AND i.assign_rev > $2 AND ($2 > 0 OR i.state <> 'deleted') ORDER BY i.assign_rev LIMIT $3`

// Assignments returns the node's instances changed after rev (all live ones
// when rev is 0), and the revision to ask from next. A full answer carries at
// least the node's current revision, so the next poll waits for a change.
func (s *Store) Assignments(ctx context.Context, nodeID string, since int64, limit int) ([]Instance, int64, error) {
	if limit <= 0 {
		limit = 5000
	}
	rev := since
	if since == 0 {
		nodeRev, err := s.NodeRev(ctx, nodeID)
		if err != nil {
			return nil, since, err
		}
		rev = nodeRev
	}
	rows, _ := s.pool.Query(ctx, sqlAssignments, nodeID, since, limit)
	list, err := pgx.CollectRows(rows, scanInstance)
	if err != nil {
		return nil, since, translate(err)
	}
	for _, in := range list {
		rev = max(rev, in.AssignRev)
	}
	ptrs := make([]*Instance, len(list))
	for i := range list {
		ptrs[i] = &list[i]
	}
	if err := s.loadNICs(ctx, s.pool, ptrs); err != nil {
		return nil, since, err
	}
	return list, rev, nil
}

// NodeRev returns a node's current assignment revision, at least 1: a node
// that was never assigned anything has revision 0, and an agent polling
// since 0 gets a full answer at once instead of a long poll, so it would
// spin. No instance carries a revision of this node until a placement bumps
// it, so moving 0 to 1 skips nothing.
func (s *Store) NodeRev(ctx context.Context, nodeID string) (int64, error) {
	if _, err := s.pool.Exec(ctx, `UPDATE nodes SET assign_rev = 1 WHERE id = $1 AND assign_rev = 0`, nodeID); err != nil {
		return 0, translate(err)
	}
	var rev int64
	err := s.pool.QueryRow(ctx, `SELECT assign_rev FROM nodes WHERE id = $1`, nodeID).Scan(&rev)
	if err != nil {
		return 0, notFound(err, "node "+nodeID+" not found")
	}
	return rev, nil
}
