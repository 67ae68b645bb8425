package store

import (
	"context"
	"encoding/json"
	"time"

	"github.com/jackc/pgx/v5"

	"flotilla/api/errdefs"
)

// FirewallRule is an account's firewall rule; Rule is its canonical text.
type FirewallRule struct {
	ID          string    `db:"id"`
	OwnerID     string    `db:"owner_id"`
	Rule        string    `db:"rule"`
	Enabled     bool      `db:"enabled"`
	Description string    `db:"description"`
	CreatedAt   time.Time `db:"created_at"`
	UpdatedAt   time.Time `db:"updated_at"`
}

const fwruleColumns = `id::text, owner_id::text, rule, enabled, description, created_at, updated_at`

const sqlCreateFirewallRule = `INSERT INTO fwrules (id, owner_id, rule, enabled, description)
VALUES ($1, $2, $3, $4, $5) RETURNING ` + fwruleColumns

// CreateFirewallRule stores a new rule (the caller has parsed and
// canonicalised its text).
func (s *Store) CreateFirewallRule(ctx context.Context, r FirewallRule) (FirewallRule, error) {
	var out FirewallRule
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		rows, _ := tx.Query(ctx, sqlCreateFirewallRule, r.ID, r.OwnerID, r.Rule, r.Enabled, r.Description)
		var err error
		if out, err = pgx.CollectExactlyOneRow(rows, pgx.RowToStructByPos[FirewallRule]); err != nil {
			return err
		}
		return notifyFirewall(ctx, tx)
	})
	return out, translate(err)
}

const sqlListFirewallRules = `SELECT ` + fwruleColumns + ` FROM fwrules WHERE owner_id = $1 ORDER BY created_at, id`

// ListFirewallRules returns an account's rules, oldest first.
func (s *Store) ListFirewallRules(ctx context.Context, ownerID string) ([]FirewallRule, error) {
	rows, _ := s.pool.Query(ctx, sqlListFirewallRules, ownerID)
	out, err := pgx.CollectRows(rows, pgx.RowToStructByPos[FirewallRule])
	return out, translate(err)
}

const sqlGetFirewallRule = `SELECT ` + fwruleColumns + ` FROM fwrules WHERE owner_id = $1 AND id::text = $2`

// GetFirewallRule returns one of the account's rules; another account's rule
// (or a malformed id) is NotFound.
func (s *Store) GetFirewallRule(ctx context.Context, ownerID, id string) (FirewallRule, error) {
	rows, _ := s.pool.Query(ctx, sqlGetFirewallRule, ownerID, id)
	r, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByPos[FirewallRule])
	if err != nil {
		return FirewallRule{}, notFound(err, "firewall rule "+id+" not found")
	}
	return r, nil
}

// FirewallRuleUpdate names the fields an update changes; nil leaves a field.
type FirewallRuleUpdate struct {
	Rule        *string
	Enabled     *bool
	Description *string
}

const sqlUpdateFirewallRule = `UPDATE fwrules SET rule = COALESCE($3, rule), enabled = COALESCE($4, enabled),
	description = COALESCE($5, description), updated_at = now()
WHERE owner_id = $1 AND id::text = $2 RETURNING ` + fwruleColumns

// UpdateFirewallRule changes the given fields of one of the account's rules
// and returns the result. A rule that is not the account's is NotFound.
func (s *Store) UpdateFirewallRule(ctx context.Context, ownerID, id string, u FirewallRuleUpdate) (FirewallRule, error) {
	var r FirewallRule
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		rows, _ := tx.Query(ctx, sqlUpdateFirewallRule, ownerID, id, u.Rule, u.Enabled, u.Description)
		var err error
		if r, err = pgx.CollectExactlyOneRow(rows, pgx.RowToStructByPos[FirewallRule]); err != nil {
			return err
		}
		return notifyFirewall(ctx, tx)
	})
	if err != nil {
		return FirewallRule{}, notFound(err, "firewall rule "+id+" not found")
	}
	return r, nil
}

// DeleteFirewallRule removes one of the account's rules.
func (s *Store) DeleteFirewallRule(ctx context.Context, ownerID, id string) error {
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `DELETE FROM fwrules WHERE owner_id = $1 AND id::text = $2`, ownerID, id)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return errdefs.NotFoundf("firewall rule %s not found", id)
		}
		return notifyFirewall(ctx, tx)
	})
	return translate(err)
}

// FirewallNotice is the payload on channel flotilla_node that announces a
// change of some account's firewall rules (node changes carry a node id).
const FirewallNotice = "fwrules"

// notifyFirewall tells listeners, at commit, that rules changed.
func notifyFirewall(ctx context.Context, q querier) error {
	_, err := q.Exec(ctx, `SELECT pg_notify('flotilla_node', $1)`, FirewallNotice)
	return err
}

// FirewallMember is what rule resolution needs of a live instance: its
// addresses and MACs (NIC order), tags and firewall switch. Spec is set only
// for instances on the node asked about.
type FirewallMember struct {
	ID              string
	OwnerID         string
	NodeID          string
	Tags            map[string]any
	FirewallEnabled bool
	Docker          bool
	Spec            json.RawMessage
	IPs             []string
	MACs            []string
	Primaries       []bool
}

// NodeFirewall is the input for resolving one node's firewall: every live
// instance of every account that has an instance on the node, and those
// accounts' enabled rules.
type NodeFirewall struct {
	Members []FirewallMember
	Rules   []FirewallRule
}

const sqlFirewallMembers = `SELECT i.id::text, i.owner_id::text, COALESCE(i.node_id::text, ''), i.tags, i.firewall_enabled,
	i.docker, CASE WHEN i.node_id = $1 THEN i.spec ELSE '{}'::jsonb END,
	COALESCE(array_agg(host(n.ip) ORDER BY n.position) FILTER (WHERE n.ip IS NOT NULL), '{}'),
	COALESCE(array_agg(n.mac ORDER BY n.position) FILTER (WHERE n.ip IS NOT NULL), '{}'),
	COALESCE(array_agg(n.is_primary ORDER BY n.position) FILTER (WHERE n.ip IS NOT NULL), '{}')
FROM instances i LEFT JOIN nics n ON n.instance_id = i.id
WHERE i.desired_state <> 'deleted'
	AND i.owner_id IN (SELECT owner_id FROM instances WHERE node_id = $1 AND desired_state <> 'deleted')
GROUP BY i.id ORDER BY i.id`

const sqlFirewallRulesOf = `SELECT ` + fwruleColumns + ` FROM fwrules WHERE enabled AND owner_id = ANY($1::uuid[])
ORDER BY created_at, id`

// NodeFirewall reads what resolving node nodeID's firewall needs, in one
// repeatable-read snapshot.
func (s *Store) NodeFirewall(ctx context.Context, nodeID string) (NodeFirewall, error) {
	var out NodeFirewall
	err := pgx.BeginTxFunc(ctx, s.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		rows, _ := tx.Query(ctx, sqlFirewallMembers, nodeID)
		var err error
		out.Members, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (FirewallMember, error) {
			var m FirewallMember
			var spec []byte
			err := row.Scan(&m.ID, &m.OwnerID, &m.NodeID, &m.Tags, &m.FirewallEnabled, &m.Docker, &spec, &m.IPs, &m.MACs, &m.Primaries)
			m.Spec = spec
			return m, err
		})
		if err != nil {
			return err
		}
		owners := map[string]bool{}
		ids := []string{}
		for _, m := range out.Members {
			if !owners[m.OwnerID] {
				owners[m.OwnerID] = true
				ids = append(ids, m.OwnerID)
			}
		}
		rows, _ = tx.Query(ctx, sqlFirewallRulesOf, ids)
		out.Rules, err = pgx.CollectRows(rows, pgx.RowToStructByPos[FirewallRule])
		return err
	})
	return out, translate(err)
}
