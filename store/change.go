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
	// WakeWatchers wakes requests waiting for this object to change
	// (InstanceWatcher), on every control-plane replica.
	WakeWatchers bool `db:"-"`
}

const sqlAppendChange = `WITH c AS (
	INSERT INTO changes (kind, object_id, owner_id, node_id, action, state, detail)
	VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING node_id
) SELECT CASE WHEN $8 THEN pg_notify('flotilla_node', node_id::text) END,
	CASE WHEN $9 THEN pg_notify('flotilla_object', $2::text) END FROM c`

// appendChange records a change (and wakes the node's agent when asked) in
// one round trip.
func appendChange(ctx context.Context, q querier, c Change) error {
	if c.Detail == nil {
		c.Detail = map[string]any{}
	}
	_, err := q.Exec(ctx, sqlAppendChange, c.Kind, c.ObjectID, c.OwnerID, c.NodeID, c.Action, c.State, c.Detail,
		c.WakeNode && c.NodeID != nil, c.WakeWatchers)
	return translate(err)
}

const changeColumns = `seq, kind, object_id::text, owner_id::text, node_id::text, action, state, detail, at`

const sqlChangesSince = `SELECT ` + changeColumns + ` FROM changes WHERE seq > $1 ORDER BY seq LIMIT $2`

const sqlChangesSinceOwner = `SELECT ` + changeColumns + ` FROM changes
WHERE owner_id = $3 AND seq > $1 ORDER BY seq LIMIT $2`

const sqlChangesSinceKind = `SELECT ` + changeColumns + ` FROM changes
WHERE kind = $3 AND seq > $1 ORDER BY seq LIMIT $2`

const sqlChangesSinceOwnerKind = `SELECT ` + changeColumns + ` FROM changes
WHERE owner_id = $3 AND seq > $1 AND kind = $4 ORDER BY seq LIMIT $2`

// ChangesSince returns changes after seq, oldest first; ownerID "" means all
// owners (operators, scheduler snapshots), kind "" every kind. Each filter
// has its own statement so that it can use its index.
func (s *Store) ChangesSince(ctx context.Context, seq int64, ownerID, kind string, limit int) ([]Change, error) {
	var rows pgx.Rows
	switch {
	case ownerID == "" && kind == "":
		rows, _ = s.pool.Query(ctx, sqlChangesSince, seq, limit)
	case kind == "":
		rows, _ = s.pool.Query(ctx, sqlChangesSinceOwner, seq, limit, ownerID)
	case ownerID == "":
		rows, _ = s.pool.Query(ctx, sqlChangesSinceKind, seq, limit, kind)
	default:
		rows, _ = s.pool.Query(ctx, sqlChangesSinceOwnerKind, seq, limit, ownerID, kind)
	}
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

// ChangeCursor reads the change feed in order without losing changes to
// concurrent transactions: a sequence number is taken when a transaction
// inserts its change but becomes visible only when it commits, so a reader
// that jumped past a gap would never see the late one. The cursor keeps the
// seqs it has seen above its floor and only moves the floor over gaps older
// than GapTimeout (a rolled-back transaction leaves a gap for ever).
type ChangeCursor struct {
	OwnerID    string // "" for all owners
	Kind       string // "" for every kind
	GapTimeout time.Duration

	floor    int64
	seen     map[int64]bool
	gapSince map[int64]time.Time
}

// NewChangeCursor starts after seq.
func NewChangeCursor(seq int64, ownerID, kind string) *ChangeCursor {
	return &ChangeCursor{OwnerID: ownerID, Kind: kind, GapTimeout: 10 * time.Second, floor: seq,
		seen: map[int64]bool{}, gapSince: map[int64]time.Time{}}
}

// Next returns the changes not returned before, oldest first.
func (c *ChangeCursor) Next(ctx context.Context, s *Store) ([]Change, error) {
	var out []Change
	for {
		batch, err := s.ChangesSince(ctx, c.floor, c.OwnerID, c.Kind, 5000)
		if err != nil {
			return out, err
		}
		for _, ch := range batch {
			if !c.seen[ch.Seq] {
				c.seen[ch.Seq] = true
				out = append(out, ch)
			}
		}
		c.advance(ctx, s, batch)
		if len(batch) < 5000 {
			return out, nil
		}
	}
}

// advance moves the floor over seen seqs and over gaps that stayed open
// longer than GapTimeout. Seqs of other owners or kinds are gaps to this
// cursor's query too, so a gap is only waited for while it is young.
func (c *ChangeCursor) advance(ctx context.Context, s *Store, batch []Change) {
	now := time.Now()
	maxSeen := c.floor
	for _, ch := range batch {
		maxSeen = max(maxSeen, ch.Seq)
	}
	for c.floor < maxSeen {
		next := c.floor + 1
		if c.seen[next] {
			delete(c.seen, next)
			delete(c.gapSince, next)
			c.floor = next
			continue
		}
		first, ok := c.gapSince[next]
		if !ok {
			c.gapSince[next] = now
			first = now
		}
		if now.Sub(first) < c.GapTimeout && c.OwnerID == "" && c.Kind == "" {
			break
		}
		if c.OwnerID != "" || c.Kind != "" {
			// Filtered cursors cannot tell another owner's change from an
			// uncommitted one; wait a short while for recent gaps only.
			if now.Sub(first) < time.Second {
				break
			}
		}
		delete(c.gapSince, next)
		c.floor = next
	}
}

// Listen calls fn with the payload of every notification on channel until
// ctx ends, reconnecting after errors. onConnect runs each time the listener
// (re)connects, since notifications sent while it was away are lost.
func (s *Store) Listen(ctx context.Context, channel string, onConnect func(), fn func(payload string)) {
	for ctx.Err() == nil {
		err := s.listenOnce(ctx, channel, onConnect, fn)
		if err != nil && ctx.Err() == nil {
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}
}

func (s *Store) listenOnce(ctx context.Context, channel string, onConnect func(), fn func(string)) error {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{channel}.Sanitize()); err != nil {
		return err
	}
	defer conn.Exec(context.Background(), "UNLISTEN "+pgx.Identifier{channel}.Sanitize())
	if onConnect != nil {
		onConnect()
	}
	for {
		n, err := conn.Conn().WaitForNotification(ctx)
		if err != nil {
			return err
		}
		fn(n.Payload)
	}
}

// RecordEvent appends an event to the owner's change feed (kind "event"):
// something that happened to an object without changing its row, such as
// a signal delivered to a container or an attach, for Docker's event
// stream. detail says what (the Docker endpoint keeps "type", "action" and
// "attributes" there). Errors are Internal or Unavailable.
func (s *Store) RecordEvent(ctx context.Context, ownerID, objectID, action string, detail map[string]any) error {
	return appendChange(ctx, s.pool, Change{Kind: "event", ObjectID: objectID, OwnerID: &ownerID, Action: action, Detail: detail})
}
