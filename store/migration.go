package store

import (
	"context"
	"crypto/rand"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"flotilla/api/errdefs"
)

// Migration is the move of an instance from its node (source) to another
// (target) in CloudAPI's phases: begin (the target is chosen and its
// capacity claimed), sync (the instance's disk is copied to the target),
// switch (the instance is stopped, copied a last time and moved), and
// abort (back to how it was before begin).
type Migration struct {
	ID           string              `db:"id"`
	InstanceID   string              `db:"instance_id"`
	OwnerID      string              `db:"owner_id"`
	SourceNodeID *string             `db:"source_node_id"`
	TargetNodeID *string             `db:"target_node_id"`
	Automatic    bool                `db:"automatic"`
	Phase        string              `db:"phase"` // begin | sync | switch | abort
	State        string              `db:"state"` // running | paused | failed | aborted | successful
	Error        string              `db:"error"`
	WasRunning   bool                `db:"was_running"`
	Switched     bool                `db:"switched"`
	MemoryMiB    int64               `db:"memory_mib"`
	DiskMiB      int64               `db:"disk_mib"`
	VCPUsMilli   int64               `db:"vcpus_milli"`
	Progress     []MigrationProgress `db:"progress"`
	CreatedAt    time.Time           `db:"created_at"`
	UpdatedAt    time.Time           `db:"updated_at"`
	FinishedAt   *time.Time          `db:"finished_at"`
}

// Migration states.
const (
	MigrationRunning    = "running"
	MigrationPaused     = "paused"
	MigrationFailed     = "failed"
	MigrationAborted    = "aborted"
	MigrationSuccessful = "successful"
)

// Over reports whether the migration has ended for good.
func (m Migration) Over() bool {
	return m.State == MigrationAborted || m.State == MigrationSuccessful
}

// ProgressScale is the total_progress of a phase measured in steps rather
// than bytes (per mille: node-triton adds up the progress of successive
// events whose total is exactly 100).
const ProgressScale = 1000

// MigrationProgress is one phase's entry of a migration's history, in
// CloudAPI's progress event form.
type MigrationProgress struct {
	Type                string     `json:"type"` // "progress"
	Phase               string     `json:"phase"`
	State               string     `json:"state"` // running | successful | failed | paused
	Message             string     `json:"message"`
	CurrentProgress     int64      `json:"current_progress"`
	TotalProgress       int64      `json:"total_progress"`
	TransferBytesSecond int64      `json:"transfer_bytes_second,omitempty"`
	StartedTimestamp    time.Time  `json:"started_timestamp"`
	FinishedTimestamp   *time.Time `json:"finished_timestamp,omitempty"`
	DurationMs          int64      `json:"duration_ms"`
}

const migrationColumns = `m.id::text, m.instance_id::text, m.owner_id::text, m.source_node_id::text,
	m.target_node_id::text, m.automatic, m.phase, m.state, m.error, m.was_running, m.switched, m.memory_mib,
	m.disk_mib, m.vcpus_milli, m.progress, m.created_at, m.updated_at, m.finished_at`

func scanMigration(row pgx.CollectableRow) (Migration, error) {
	return pgx.RowToStructByPos[Migration](row)
}

// MigrationCheck vets a migration request against the instance, under its
// row lock; an error refuses the request.
type MigrationCheck func(in Instance) error

const sqlActiveMigration = `SELECT ` + migrationColumns + ` FROM migrations m
WHERE m.instance_id = $1 AND m.state NOT IN ('aborted', 'successful')`

// sqlClaimTarget claims an instance's resources on a node that is up, takes
// its brand and has room for them.
const sqlClaimTarget = `UPDATE nodes SET used_memory_mib = used_memory_mib + $2, used_disk_mib = used_disk_mib + $3,
	used_vcpus_milli = used_vcpus_milli + $4, instances = instances + 1, updated_at = now()
WHERE id::text = $1 AND state = 'running' AND NOT drained AND NOT reserved AND $5 = ANY(brands)
	AND used_memory_mib + $2 <= floor(memory_mib * ratio_memory) AND used_disk_mib + $3 <= floor(disk_mib * ratio_disk)
	AND used_vcpus_milli + $4 <= floor(vcpus_milli * ratio_vcpu) AND instances + 1 <= max_instances
RETURNING id::text`

const sqlInsertMigration = `INSERT INTO migrations AS m (id, instance_id, owner_id, source_node_id, target_node_id, automatic,
	phase, state, memory_mib, disk_mib, vcpus_milli, progress)
VALUES ($1, $2, $3, $4, $5, $6, 'begin', $7, $8, $9, $10, $11)
RETURNING ` + migrationColumns

// BeginMigration starts a migration of one of the owner's instances to the
// first of candidates (node ids, best first) that still has room for it,
// claiming the room. The migration is paused after begin, or running when
// automatic (the caller goes on with sync and switch). An unknown instance
// is NotFound, a deleted one Gone; one with a migration not over is a
// Conflict; no candidate with room is InsufficientCapacity.
func (s *Store) BeginMigration(ctx context.Context, ownerID, id string, automatic bool, candidates []string, check MigrationCheck) (Migration, error) {
	if !validUUID(id) || !validUUID(ownerID) {
		return Migration{}, errdefs.NotFoundf("VM not found")
	}
	var out Migration
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		rows, _ := tx.Query(ctx, sqlLockInstance, ownerID, id)
		in, err := pgx.CollectExactlyOneRow(rows, scanInstance)
		if err != nil {
			return notFound(err, "VM not found")
		}
		if in.State == "deleted" || in.DesiredState == "deleted" {
			return errGone(in)
		}
		rows, _ = tx.Query(ctx, sqlActiveMigration, id)
		if cur, err := pgx.CollectExactlyOneRow(rows, scanMigration); err == nil {
			return errdefs.Conflictf("instance %s already has a migration in progress (phase %s, %s): finish or abort it first", id, cur.Phase, cur.State)
		} else if err != pgx.ErrNoRows {
			return translate(err)
		}
		if check != nil {
			if err := check(in); err != nil {
				return err
			}
		}
		var target string
		for _, c := range candidates {
			if in.NodeID != nil && c == *in.NodeID {
				continue
			}
			err := tx.QueryRow(ctx, sqlClaimTarget, c, in.MemoryMiB, in.DiskMiB, in.VCPUsMilli, in.Brand).Scan(&target)
			if err == nil {
				break
			}
			if err != pgx.ErrNoRows {
				return translate(err)
			}
		}
		if target == "" {
			return errdefs.New(errdefs.InsufficientCapacity, "no other compute node has room for instance %s (%d MiB of memory, %d MiB of disk, brand %s)",
				id, in.MemoryMiB, in.DiskMiB, in.Brand)
		}
		now := time.Now().UTC()
		state, hist := MigrationPaused, []MigrationProgress{{Type: "progress", Phase: "begin", State: MigrationSuccessful,
			Message: "reserved room for the instance on compute node " + target, CurrentProgress: ProgressScale, TotalProgress: ProgressScale,
			StartedTimestamp: now, FinishedTimestamp: &now}}
		if automatic {
			state = MigrationRunning
		}
		rows, _ = tx.Query(ctx, sqlInsertMigration, newID(), id, ownerID, in.NodeID, target, automatic, state,
			in.MemoryMiB, in.DiskMiB, in.VCPUsMilli, hist)
		out, err = pgx.CollectExactlyOneRow(rows, scanMigration)
		if err != nil {
			if pgCode(err) == sqlUniqueViolation {
				return errdefs.Conflictf("instance %s already has a migration in progress", id)
			}
			return translate(err)
		}
		return appendChange(ctx, tx, Change{Kind: "instance", ObjectID: in.ID, OwnerID: &in.OwnerID, NodeID: in.NodeID,
			Action: "migrate", State: in.State, Detail: map[string]any{"phase": "begin", "target": target}})
	})
	return out, err
}

// newID returns a random (version 4) UUID.
func newID() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

const sqlLatestMigration = `SELECT ` + migrationColumns + ` FROM migrations m
WHERE m.owner_id = $1 AND m.instance_id = $2 ORDER BY m.created_at DESC LIMIT 1`

// GetMigration returns the latest migration of one of the owner's
// instances. It returns NotFound when the instance has none (or is not the
// owner's).
func (s *Store) GetMigration(ctx context.Context, ownerID, instanceID string) (Migration, error) {
	if !validUUID(ownerID) || !validUUID(instanceID) {
		return Migration{}, errdefs.NotFoundf("migration not found")
	}
	rows, _ := s.pool.Query(ctx, sqlLatestMigration, ownerID, instanceID)
	m, err := pgx.CollectExactlyOneRow(rows, scanMigration)
	if err != nil {
		return Migration{}, notFound(err, "no migration of instance "+instanceID+" found")
	}
	return m, nil
}

const sqlListMigrations = `SELECT DISTINCT ON (m.instance_id) ` + migrationColumns + ` FROM migrations m
WHERE m.owner_id = $1 ORDER BY m.instance_id, m.created_at DESC`

// ListMigrations returns the owner's migrations: the latest of each instance.
func (s *Store) ListMigrations(ctx context.Context, ownerID string) ([]Migration, error) {
	if !validUUID(ownerID) {
		return []Migration{}, nil
	}
	rows, _ := s.pool.Query(ctx, sqlListMigrations, ownerID)
	list, err := pgx.CollectRows(rows, scanMigration)
	if err != nil {
		return nil, translate(err)
	}
	return list, nil
}

const sqlLockMigration = `SELECT ` + migrationColumns + ` FROM migrations m WHERE m.id = $1 FOR UPDATE`

const sqlWriteMigration = `UPDATE migrations SET phase = $2, state = $3, error = $4, was_running = $5, progress = $6,
	updated_at = now(), finished_at = CASE WHEN $3 IN ('aborted', 'successful') THEN now() END
WHERE id = $1 RETURNING updated_at, finished_at`

// UpdateMigration applies fn to a migration under its row lock and writes
// back its phase, state, error, was_running and progress. An error from fn
// aborts the update; an unknown migration is NotFound.
func (s *Store) UpdateMigration(ctx context.Context, id string, fn func(m *Migration) error) (Migration, error) {
	var out Migration
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		m, err := lockMigration(ctx, tx, id)
		if err != nil {
			return err
		}
		if err := fn(&m); err != nil {
			return err
		}
		out, err = writeMigration(ctx, tx, m)
		return err
	})
	return out, err
}

func lockMigration(ctx context.Context, tx pgx.Tx, id string) (Migration, error) {
	rows, _ := tx.Query(ctx, sqlLockMigration, id)
	m, err := pgx.CollectExactlyOneRow(rows, scanMigration)
	if err != nil {
		return Migration{}, notFound(err, "migration not found")
	}
	return m, nil
}

func writeMigration(ctx context.Context, tx pgx.Tx, m Migration) (Migration, error) {
	if m.Progress == nil {
		m.Progress = []MigrationProgress{}
	}
	err := tx.QueryRow(ctx, sqlWriteMigration, m.ID, m.Phase, m.State, m.Error, m.WasRunning, m.Progress).Scan(&m.UpdatedAt, &m.FinishedAt)
	if err != nil {
		return Migration{}, translate(err)
	}
	return m, nil
}

// sqlReleaseClaim gives back what a migration claimed on a node.
const sqlReleaseClaim = `UPDATE nodes SET used_memory_mib = used_memory_mib - $2, used_disk_mib = used_disk_mib - $3,
	used_vcpus_milli = used_vcpus_milli - $4, instances = instances - 1, updated_at = now() WHERE id::text = $1`

// FinishMigrationAbort ends a migration as aborted after fn (under the row
// lock) agrees, and gives back the target's claim. The instance must be on
// its source node (Conflict otherwise: move it back first).
func (s *Store) FinishMigrationAbort(ctx context.Context, id string, fn func(m *Migration) error) (Migration, error) {
	var out Migration
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		m, err := lockMigration(ctx, tx, id)
		if err != nil {
			return err
		}
		if m.Over() {
			return errdefs.Conflictf("the migration of instance %s is already %s", m.InstanceID, m.State)
		}
		if m.Switched {
			return errdefs.Conflictf("instance %s is on its target node: it must be moved back before the migration can be aborted", m.InstanceID)
		}
		if err := fn(&m); err != nil {
			return err
		}
		if m.TargetNodeID != nil {
			if _, err := tx.Exec(ctx, sqlReleaseClaim, *m.TargetNodeID, m.MemoryMiB, m.DiskMiB, m.VCPUsMilli); err != nil {
				return translate(err)
			}
		}
		m.State = MigrationAborted
		out, err = writeMigration(ctx, tx, m)
		return err
	})
	return out, err
}

// MoveMigratedInstance points a migration's instance at its target node
// (toTarget) or back at its source, with desired state desired, as one
// change of the instance (its generation moves on, so the node it is now
// on applies it). Moving to the target gives back the source's capacity
// (the target's was claimed at begin); moving back claims the source's
// again (InsufficientCapacity when it no longer fits) and keeps the
// target's claim until the abort. The instance must be on the node it is
// moved from (Conflict otherwise).
func (s *Store) MoveMigratedInstance(ctx context.Context, migrationID string, toTarget bool, desired string, caller map[string]any) (Instance, error) {
	var m Migration
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		var err error
		m, err = lockMigration(ctx, tx, migrationID)
		return err
	})
	if err != nil {
		return Instance{}, err
	}
	if m.SourceNodeID == nil || m.TargetNodeID == nil {
		return Instance{}, errdefs.Conflictf("the source or target node of the migration of instance %s is gone", m.InstanceID)
	}
	from, to := *m.SourceNodeID, *m.TargetNodeID
	if !toTarget {
		from, to = to, from
	}
	return s.UpdateInstance(ctx, m.OwnerID, m.InstanceID, Mutation{
		Action: "migrate", Caller: caller, Migration: true, Params: map[string]any{"from": from, "to": to},
		Apply: func(in *Instance) error {
			if in.NodeID == nil || *in.NodeID != from {
				return errdefs.Conflictf("instance %s is not on compute node %s", in.ID, from)
			}
			in.DesiredState = desired
			return nil
		},
		applyTx: func(ctx context.Context, tx pgx.Tx, in *Instance) error {
			mm, err := lockMigration(ctx, tx, migrationID)
			if err != nil {
				return err
			}
			if mm.Over() {
				return errdefs.Conflictf("the migration of instance %s is already %s", in.ID, mm.State)
			}
			if toTarget {
				if _, err := tx.Exec(ctx, sqlReleaseClaim, from, in.MemoryMiB, in.DiskMiB, in.VCPUsMilli); err != nil {
					return translate(err)
				}
			} else {
				var got string
				err := tx.QueryRow(ctx, sqlReclaimSource, to, in.MemoryMiB, in.DiskMiB, in.VCPUsMilli).Scan(&got)
				if err == pgx.ErrNoRows {
					return errdefs.New(errdefs.InsufficientCapacity, "compute node %s no longer has room for instance %s", to, in.ID)
				}
				if err != nil {
					return translate(err)
				}
			}
			if _, err := tx.Exec(ctx, `UPDATE instances SET node_id = $2::uuid WHERE id = $1`, in.ID, to); err != nil {
				return translate(err)
			}
			if _, err := tx.Exec(ctx, `UPDATE migrations SET switched = $2, updated_at = now() WHERE id = $1`, migrationID, toTarget); err != nil {
				return translate(err)
			}
			in.NodeID = &to
			return nil
		},
	})
}

// sqlReclaimSource claims an instance's resources on its source node again
// (drained or not: it is where the instance was).
const sqlReclaimSource = `UPDATE nodes SET used_memory_mib = used_memory_mib + $2, used_disk_mib = used_disk_mib + $3,
	used_vcpus_milli = used_vcpus_milli + $4, instances = instances + 1, updated_at = now()
WHERE id::text = $1 AND used_memory_mib + $2 <= floor(memory_mib * ratio_memory)
	AND used_disk_mib + $3 <= floor(disk_mib * ratio_disk) AND used_vcpus_milli + $4 <= floor(vcpus_milli * ratio_vcpu)
	AND instances + 1 <= max_instances
RETURNING id::text`

const sqlMigrationImports = `SELECT instance_id::text FROM migrations
WHERE target_node_id = $1::uuid AND switched AND state NOT IN ('aborted', 'successful') AND instance_id = ANY($2::uuid[])`

// MigrationImports returns which of the given instances a migration is
// moving onto node: their node must create them with the disk the
// migration copied there, not an empty one.
func (s *Store) MigrationImports(ctx context.Context, nodeID string, ids []string) (map[string]bool, error) {
	out := map[string]bool{}
	if len(ids) == 0 || !validUUID(nodeID) {
		return out, nil
	}
	rows, _ := s.pool.Query(ctx, sqlMigrationImports, nodeID, ids)
	list, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, translate(err)
	}
	for _, id := range list {
		out[id] = true
	}
	return out, nil
}

const sqlUnfinishedMigrations = `SELECT ` + migrationColumns + ` FROM migrations m WHERE m.state = 'running'`

// RunningMigrations returns every migration whose phase is running, for a
// control plane that starts to find the ones a stopped replica left.
func (s *Store) RunningMigrations(ctx context.Context) ([]Migration, error) {
	rows, _ := s.pool.Query(ctx, sqlUnfinishedMigrations)
	list, err := pgx.CollectRows(rows, scanMigration)
	return list, translate(err)
}

const sqlAbortDeleted = `UPDATE migrations SET state = 'aborted', error = 'the instance was deleted', updated_at = now(),
	finished_at = now()
WHERE instance_id = $1 AND state NOT IN ('aborted', 'successful')
RETURNING target_node_id::text, switched, memory_mib, disk_mib, vcpus_milli`

// abortMigrationOfDeleted ends the migration of an instance being deleted
// and gives back the room it claimed on its target (unless the instance
// had moved there: that room is the instance's, released with it).
func abortMigrationOfDeleted(ctx context.Context, tx pgx.Tx, id string) error {
	var target *string
	var switched bool
	var mem, disk, cpu int64
	err := tx.QueryRow(ctx, sqlAbortDeleted, id).Scan(&target, &switched, &mem, &disk, &cpu)
	if err == pgx.ErrNoRows {
		return nil
	}
	if err != nil {
		return translate(err)
	}
	if target == nil || switched {
		return nil
	}
	_, err = tx.Exec(ctx, sqlReleaseClaim, *target, mem, disk, cpu)
	return translate(err)
}

// refuseDuringSwitch returns Conflict while a migration switches the
// instance to another node: it stops, moves and starts it itself.
func refuseDuringSwitch(ctx context.Context, tx pgx.Tx, id string) error {
	var busy bool
	err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM migrations WHERE instance_id = $1 AND state = 'running' AND phase = 'switch')`, id).Scan(&busy)
	if err != nil {
		return translate(err)
	}
	if busy {
		return errdefs.Conflictf("instance %s is being switched to another compute node by its migration: try again once the switch is over", id)
	}
	return nil
}
