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
}

const sqlAppendAudit = `INSERT INTO audit (owner_id, instance_id, action, success, caller, params) VALUES ($1, $2, $3, $4, $5, $6)`

func appendAudit(ctx context.Context, q querier, a AuditEntry) error {
	if a.Caller == nil {
		a.Caller = map[string]any{}
	}
	if a.Params == nil {
		a.Params = map[string]any{}
	}
	_, err := q.Exec(ctx, sqlAppendAudit, a.OwnerID, a.InstanceID, a.Action, a.Success, a.Caller, a.Params)
	return translate(err)
}

// AppendAudit records an action outside an instance change (operator acts-as, account changes).
func (s *Store) AppendAudit(ctx context.Context, a AuditEntry) error {
	return appendAudit(ctx, s.pool, a)
}

const sqlListAudit = `SELECT id, owner_id::text, instance_id::text, action, success, caller, params, at FROM audit
WHERE owner_id = $1 AND instance_id = $2 ORDER BY id DESC LIMIT 1000`

// ListInstanceAudit returns an instance's audit entries, newest first.
func (s *Store) ListInstanceAudit(ctx context.Context, ownerID, instanceID string) ([]AuditEntry, error) {
	rows, _ := s.pool.Query(ctx, sqlListAudit, ownerID, instanceID)
	out, err := pgx.CollectRows(rows, pgx.RowToStructByPos[AuditEntry])
	return out, translate(err)
}
