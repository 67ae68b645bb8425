package store

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"

	"flotilla/api/errdefs"
)

// Snapshot is a machine snapshot: what the owner asked for (Desired) and
// what the instance's node reported (State).
type Snapshot struct {
	InstanceID string    `db:"instance_id"`
	OwnerID    string    `db:"owner_id"`
	Name       string    `db:"name"`
	Desired    string    `db:"desired"` // present | deleted
	State      string    `db:"state"`   // creating | created | failed | deleted
	Error      string    `db:"error"`
	SizeBytes  int64     `db:"size_bytes"`
	CreatedAt  time.Time `db:"created_at"`
	UpdatedAt  time.Time `db:"updated_at"`
}

// Snapshot states and desires.
const (
	SnapshotCreating = "creating"
	SnapshotCreated  = "created"
	SnapshotFailed   = "failed"
	SnapshotDeleted  = "deleted"
	SnapshotPresent  = "present"
)

// MaxSnapshots is how many snapshots (not deleted) an instance may have.
const MaxSnapshots = 64

const snapshotColumns = `s.instance_id::text, s.owner_id::text, s.name, s.desired, s.state, s.error, s.size_bytes,
	s.created_at, s.updated_at`

func scanSnapshot(row pgx.CollectableRow) (Snapshot, error) {
	return pgx.RowToStructByPos[Snapshot](row)
}

// SnapshotCheck vets a snapshot request against the instance, under its
// row lock; an error refuses the request.
type SnapshotCheck func(in Instance) error

const sqlInsertSnapshot = `INSERT INTO instance_snapshots AS s (instance_id, owner_id, name) VALUES ($1, $2, $3)
ON CONFLICT (instance_id, name) DO UPDATE SET desired = 'present', state = 'creating', error = '', size_bytes = 0,
	created_at = now(), updated_at = now()
WHERE s.state = 'deleted'
RETURNING ` + snapshotColumns

const sqlCountSnapshots = `SELECT count(*) FROM instance_snapshots WHERE instance_id = $1 AND state <> 'deleted'`

// CreateSnapshot asks for a snapshot of one of the owner's instances. The
// instance's generation moves on, so its node takes the snapshot; the
// snapshot is "creating" until the node reports it. A name in use is a
// Conflict (also while a snapshot of that name is being deleted), an
// instance with MaxSnapshots snapshots a Conflict, an unknown instance
// NotFound, a deleted one Gone.
func (s *Store) CreateSnapshot(ctx context.Context, ownerID, id, name string, caller map[string]any, check SnapshotCheck) (Snapshot, error) {
	var out Snapshot
	_, err := s.UpdateInstance(ctx, ownerID, id, Mutation{
		Action: "create_snapshot", Caller: caller, Params: map[string]any{"name": name},
		Apply: func(in *Instance) error {
			if check != nil {
				return check(*in)
			}
			return nil
		},
		applyTx: func(ctx context.Context, tx pgx.Tx, in *Instance) error {
			var n int
			if err := tx.QueryRow(ctx, sqlCountSnapshots, in.ID).Scan(&n); err != nil {
				return translate(err)
			}
			if n >= MaxSnapshots {
				return errdefs.Conflictf("instance %s already has %d snapshots, the most it may have: delete one first", in.ID, n)
			}
			rows, _ := tx.Query(ctx, sqlInsertSnapshot, in.ID, in.OwnerID, name)
			snap, err := pgx.CollectExactlyOneRow(rows, scanSnapshot)
			if err == nil {
				out = snap
				return nil
			}
			if err != pgx.ErrNoRows {
				return translate(err)
			}
			cur, err := getSnapshot(ctx, tx, in.ID, name)
			if err != nil {
				return err
			}
			if cur.Desired == SnapshotDeleted {
				return errdefs.Conflictf("snapshot %q of instance %s is being deleted: use another name, or try again once it is gone", name, in.ID)
			}
			return errdefs.Conflictf("instance %s already has a snapshot named %q", in.ID, name)
		},
	})
	if err != nil {
		return Snapshot{}, err
	}
	return out, nil
}

const sqlGetSnapshot = `SELECT ` + snapshotColumns + ` FROM instance_snapshots s WHERE s.instance_id = $1 AND s.name = $2`

// getSnapshot reads one snapshot row, deleted or not.
func getSnapshot(ctx context.Context, q querier, instanceID, name string) (Snapshot, error) {
	rows, _ := q.Query(ctx, sqlGetSnapshot, instanceID, name)
	snap, err := pgx.CollectExactlyOneRow(rows, scanSnapshot)
	if err != nil {
		return Snapshot{}, notFound(err, "snapshot "+name+" not found")
	}
	return snap, nil
}

const sqlListSnapshots = `SELECT ` + snapshotColumns + ` FROM instance_snapshots s
WHERE s.owner_id = $1 AND s.instance_id = $2 AND s.state <> 'deleted' ORDER BY s.created_at, s.name`

// ListSnapshots returns the snapshots of one of the owner's instances that
// are not deleted, oldest first. The instance is not checked: the caller
// has read it.
func (s *Store) ListSnapshots(ctx context.Context, ownerID, instanceID string) ([]Snapshot, error) {
	if !validUUID(instanceID) {
		return nil, errdefs.NotFoundf("VM not found")
	}
	rows, _ := s.pool.Query(ctx, sqlListSnapshots, ownerID, instanceID)
	out, err := pgx.CollectRows(rows, scanSnapshot)
	return out, translate(err)
}

// GetSnapshot returns one snapshot of one of the owner's instances; a
// deleted or unknown one is NotFound.
func (s *Store) GetSnapshot(ctx context.Context, ownerID, instanceID, name string) (Snapshot, error) {
	if !validUUID(instanceID) {
		return Snapshot{}, errdefs.NotFoundf("VM not found")
	}
	snap, err := getSnapshot(ctx, s.pool, instanceID, name)
	if err != nil {
		return Snapshot{}, err
	}
	if snap.OwnerID != ownerID || snap.State == SnapshotDeleted {
		return Snapshot{}, errdefs.NotFoundf("snapshot %s not found", name)
	}
	return snap, nil
}

const sqlMarkSnapshotDeleted = `UPDATE instance_snapshots SET desired = 'deleted', updated_at = now()
WHERE instance_id = $1 AND name = $2 AND state <> 'deleted'`

// DeleteSnapshot asks for a snapshot to be removed from the instance's
// node; it is "deleted" once the node reports it gone. Unknown (or
// already deleted) snapshots are NotFound. check, when set, vets the
// request against the instance and the snapshot under their locks.
func (s *Store) DeleteSnapshot(ctx context.Context, ownerID, id, name string, caller map[string]any, check func(Instance, Snapshot) error) error {
	_, err := s.UpdateInstance(ctx, ownerID, id, Mutation{
		Action: "delete_snapshot", Caller: caller, Params: map[string]any{"name": name},
		applyTx: func(ctx context.Context, tx pgx.Tx, in *Instance) error {
			rows, _ := tx.Query(ctx, sqlLockSnapshot, in.ID, name)
			snap, err := pgx.CollectExactlyOneRow(rows, scanSnapshot)
			if err != nil || snap.State == SnapshotDeleted {
				return notFound(pgx.ErrNoRows, "snapshot "+name+" not found")
			}
			if check != nil {
				if err := check(*in, snap); err != nil {
					return err
				}
			}
			if _, err := tx.Exec(ctx, sqlMarkSnapshotDeleted, in.ID, name); err != nil {
				return translate(err)
			}
			return nil
		},
	})
	return err
}

const sqlLockSnapshot = `SELECT ` + snapshotColumns + ` FROM instance_snapshots s
WHERE s.instance_id = $1 AND s.name = $2 FOR UPDATE`

const sqlRequestRestore = `UPDATE instances SET restore_count = restore_count + 1, restore_snapshot = $2 WHERE id = $1`

// StartFromSnapshot asks the instance's node to stop the instance, put its
// disk back as snapshot name has it, and start it. The snapshot must be
// created (Conflict while it is being made or deleted, or if it failed);
// unknown snapshots are NotFound. check vets the instance under its lock.
func (s *Store) StartFromSnapshot(ctx context.Context, ownerID, id, name string, caller map[string]any, check SnapshotCheck) (Instance, error) {
	return s.UpdateInstance(ctx, ownerID, id, Mutation{
		Action: "rollback_snapshot", Caller: caller, Params: map[string]any{"name": name},
		Apply: func(in *Instance) error {
			if check != nil {
				return check(*in)
			}
			return nil
		},
		applyTx: func(ctx context.Context, tx pgx.Tx, in *Instance) error {
			rows, _ := tx.Query(ctx, sqlLockSnapshot, in.ID, name)
			snap, err := pgx.CollectExactlyOneRow(rows, scanSnapshot)
			if err != nil {
				return notFound(err, "snapshot "+name+" not found")
			}
			switch {
			case snap.State == SnapshotDeleted:
				return errdefs.NotFoundf("snapshot %s not found", name)
			case snap.Desired == SnapshotDeleted:
				return errdefs.Conflictf("snapshot %q is being deleted", name)
			case snap.State != SnapshotCreated:
				return errdefs.Conflictf("snapshot %q is %s: an instance starts only from a created snapshot", name, snap.State)
			}
			if _, err := tx.Exec(ctx, sqlRequestRestore, in.ID, name); err != nil {
				return translate(err)
			}
			in.DesiredState = "running"
			if in.State == "running" {
				// It goes down before it comes back from the snapshot; a
				// client waiting for "running" must not see the old run.
				in.State = "stopping"
			}
			return nil
		},
	})
}

// SnapshotWant is one snapshot as a node is asked to hold it.
type SnapshotWant struct {
	InstanceID string `db:"instance_id"`
	Name       string `db:"name"`
	Desired    string `db:"desired"`
	State      string `db:"state"`
}

// Restore is an instance's latest start-from-snapshot request.
type Restore struct {
	InstanceID string `db:"id"`
	Count      int64  `db:"restore_count"`
	Snapshot   string `db:"restore_snapshot"`
}

const sqlSnapshotWants = `SELECT instance_id::text, name, desired, state FROM instance_snapshots
WHERE instance_id = ANY($1::uuid[]) AND state <> 'deleted' ORDER BY instance_id, created_at, name`

const sqlRestores = `SELECT id::text, restore_count, restore_snapshot FROM instances
WHERE id = ANY($1::uuid[]) AND restore_count > 0`

// SnapshotAssignments returns, for the given instances, the snapshots
// their node must hold or remove and their start-from-snapshot requests.
func (s *Store) SnapshotAssignments(ctx context.Context, ids []string) (map[string][]SnapshotWant, map[string]Restore, error) {
	if len(ids) == 0 {
		return nil, nil, nil
	}
	rows, _ := s.pool.Query(ctx, sqlSnapshotWants, ids)
	wants, err := pgx.CollectRows(rows, pgx.RowToStructByPos[SnapshotWant])
	if err != nil {
		return nil, nil, translate(err)
	}
	rows, _ = s.pool.Query(ctx, sqlRestores, ids)
	restores, err := pgx.CollectRows(rows, pgx.RowToStructByPos[Restore])
	if err != nil {
		return nil, nil, translate(err)
	}
	byInstance := map[string][]SnapshotWant{}
	for _, w := range wants {
		byInstance[w.InstanceID] = append(byInstance[w.InstanceID], w)
	}
	restoreOf := map[string]Restore{}
	for _, r := range restores {
		restoreOf[r.InstanceID] = r
	}
	return byInstance, restoreOf, nil
}

// SnapshotReport is what a node observed of one snapshot.
type SnapshotReport struct {
	Name      string
	State     string // created, failed or deleted
	Error     string
	SizeBytes int64
}

// A node's report moves a snapshot that is wanted to created or failed, and
// one that is to go to deleted; a report that crossed a newer request (a
// snapshot deleted meanwhile) changes nothing.
const sqlReportSnapshot = `UPDATE instance_snapshots SET state = $3, error = $4, size_bytes = $5, updated_at = now()
WHERE instance_id = $1 AND name = $2 AND state <> 'deleted'
	AND ((desired = 'present' AND $3 IN ('created', 'failed')) OR (desired = 'deleted' AND $3 = 'deleted'))
	AND (state <> $3 OR error <> $4 OR size_bytes <> $5)`

// queueSnapshotReports adds the writes of a node's snapshot reports to b.
func queueSnapshotReports(b *pgx.Batch, instanceID string, reports []SnapshotReport) error {
	for _, r := range reports {
		switch r.State {
		case SnapshotCreated, SnapshotFailed, SnapshotDeleted:
		default:
			return errdefs.InvalidArgument("snapshot %q: unknown state %q (want created, failed or deleted)", r.Name, r.State)
		}
		if r.SizeBytes < 0 {
			r.SizeBytes = 0
		}
		b.Queue(sqlReportSnapshot, instanceID, r.Name, r.State, r.Error, r.SizeBytes)
	}
	return nil
}
