package store

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"
)

// AuditEntry records one action on an instance.
type AuditEntry struct {
	ID         int64          `db:"id"`
	OwnerID    string         `db:"owner_id"`
	InstanceID *string        `db:"instance_id"`
	Action     string         `db:"action"`
	Success    bool           `db:"success"`
	Caller     map[string]any `db:"caller"`
	Params     map[string]any `db:"params"`
	At         time.Time      `db:"at"`
	// Generation, with Pending, makes the entry a job that finishes when the
	// instance's node reports this generation.
	Generation int64 `db:"-"`
	Pending    bool  `db:"-"`
}

const sqlAppendAudit = `INSERT INTO audit (owner_id, instance_id, action, success, caller, params, generation, pending)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`

func appendAudit(ctx context.Context, q querier, a AuditEntry) error {
	if a.Caller == nil {
		a.Caller = map[string]any{}
	}
	if a.Params == nil {
		a.Params = map[string]any{}
	}
	_, err := q.Exec(ctx, sqlAppendAudit, a.OwnerID, a.InstanceID, a.Action, a.Success, a.Caller, a.Params, a.Generation, a.Pending)
	return translate(err)
}

// AppendAudit records an action outside an instance change (operator acts-as, account changes).
func (s *Store) AppendAudit(ctx context.Context, a AuditEntry) error {
	return appendAudit(ctx, s.pool, a)
}

const sqlListAudit = `SELECT id, owner_id::text, instance_id::text, action, success, caller, params, at FROM audit
WHERE owner_id = $1 AND instance_id = $2 AND NOT pending AND at <= clock_timestamp() ORDER BY at DESC, id DESC LIMIT 1000`

// ListInstanceAudit returns an instance's finished audit entries, newest first.
func (s *Store) ListInstanceAudit(ctx context.Context, ownerID, instanceID string) ([]AuditEntry, error) {
	rows, _ := s.pool.Query(ctx, sqlListAudit, ownerID, instanceID)
	out, err := pgx.CollectRows(rows, pgx.RowToStructByPos[AuditEntry])
	return out, translate(err)
}

// A job never finishes less than minJobTime after it was asked for: clients
// such as node-triton's `metadata set -w` take their start time after the
// request returns and wait for an audit entry finished later than that.
const sqlFinishAudit = `UPDATE audit SET pending = false, success = $3,
	at = CASE WHEN action = 'provision' THEN clock_timestamp() ELSE GREATEST(clock_timestamp(), at + interval '1 second') END
WHERE instance_id = $1 AND pending AND generation <= $2`

// finishAudit completes the instance's pending jobs up to generation.
func finishAudit(ctx context.Context, q querier, instanceID string, generation int64, success bool) error {
	_, err := q.Exec(ctx, sqlFinishAudit, instanceID, generation, success)
	return translate(err)
}
