package store

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"
)

// Change is one entry of the append-only change feed.
type Change struct {
	Seq      int64          `db:"seq"`
	Kind     string         `db:"kind"` // instance, node, image, network
	ObjectID string         `db:"object_id"`
	OwnerID  *string        `db:"owner_id"`
	NodeID   *string        `db:"node_id"`
	Action   string         `db:"action"`
	State    string         `db:"state"`
	Detail   map[string]any `db:"detail"`
	At       time.Time      `db:"at"`
	// WakeNode, when set with NodeID, wakes the node's agent long poll.
	WakeNode bool `db:"-"`
}

const sqlAppendChange = `WITH c AS (
	INSERT INTO changes (kind, object_id, owner_id, node_id, action, state, detail)
	VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING node_id
) SELECT CASE WHEN $8 THEN pg_notify('flotilla_node', node_id::text) END FROM c`

// appendChange records a change (and wakes the node's agent when asked) in
// one round trip.
func appendChange(ctx context.Context, q querier, c Change) error {
	if c.Detail == nil {
		c.Detail = map[string]any{}
	}
	_, err := q.Exec(ctx, sqlAppendChange, c.Kind, c.ObjectID, c.OwnerID, c.NodeID, c.Action, c.State, c.Detail, c.WakeNode && c.NodeID != nil)
	return translate(err)
}

const changeColumns = `seq, kind, object_id::text, owner_id::text, node_id::text, action, state, detail, at`

const sqlChangesSince = `SELECT ` + changeColumns + ` FROM changes
WHERE seq > $1 AND ($2::uuid IS NULL OR owner_id = $2) AND ($3 = '' OR kind = $3)
ORDER BY seq LIMIT $4`

// ChangesSince returns changes after seq, oldest first; ownerID "" means all
// owners (operators, scheduler snapshots), kind "" every kind.
func (s *Store) ChangesSince(ctx context.Context, seq int64, ownerID, kind string, limit int) ([]Change, error) {
	var owner any
	if ownerID != "" {
		owner = ownerID
	}
	rows, _ := s.pool.Query(ctx, sqlChangesSince, seq, owner, kind, limit)
	out, err := pgx.CollectRows(rows, pgx.RowToStructByPos[Change])
	return out, translate(err)
}

// LastChangeSeq returns the newest change sequence number.
func (s *Store) LastChangeSeq(ctx context.Context) (int64, error) {
	var seq int64
	err := s.pool.QueryRow(ctx, `SELECT COALESCE(max(seq), 0) FROM changes`).Scan(&seq)
	return seq, translate(err)
}

// ChangesBetween returns an owner's changes in a time window, oldest first.
func (s *Store) ChangesBetween(ctx context.Context, ownerID string, since, until time.Time, limit int) ([]Change, error) {
	rows, _ := s.pool.Query(ctx, `SELECT `+changeColumns+` FROM changes
WHERE owner_id = $1 AND at >= $2 AND at <= $3 ORDER BY seq LIMIT $4`, ownerID, since, until, limit)
	out, err := pgx.CollectRows(rows, pgx.RowToStructByPos[Change])
	return out, translate(err)
}
