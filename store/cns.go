package store

import (
	"context"

	"github.com/jackc/pgx/v5"
)

// NodeName is one running instance's address on a network that a node's
// resolver serves, with the instance's Docker aliases on that network.
type NodeName struct {
	NetworkID  string   `db:"network_id"`
	Gateway    string   `db:"gateway"`
	Subnet     string   `db:"subnet"`
	OwnerID    string   `db:"owner_id"`
	InstanceID string   `db:"instance_id"`
	Name       string   `db:"name"`
	IP         string   `db:"ip"`
	Aliases    []string `db:"aliases"`
	// VNI is the network's fabric VLAN's (0 for shared networks), whose
	// gateways live in the VLAN's router namespace on each node.
	VNI int `db:"vni"`
}

// The scopes are the (network, account) pairs of the node's live
// instances; the answer is every instance of those accounts on those
// networks that is meant to run, wherever it is placed.
const sqlNodeNames = `WITH scope AS (
	SELECT DISTINCT n.network_id, n.owner_id FROM instances i JOIN nics n ON n.instance_id = i.id
	WHERE i.node_id = $1 AND i.state <> 'deleted'
)
SELECT n.network_id::text, host(w.gateway), w.subnet::text, n.owner_id::text, i.id::text, i.name, host(n.ip),
	COALESCE(i.spec -> 'network_aliases' -> (n.network_id::text), '[]'::jsonb), w.vni
FROM scope s
JOIN nics n ON n.network_id = s.network_id AND n.owner_id = s.owner_id
JOIN instances i ON i.id = n.instance_id
JOIN networks w ON w.id = n.network_id
WHERE w.gateway IS NOT NULL AND i.desired_state = 'running' AND i.state NOT IN ('deleted', 'failed')
ORDER BY n.network_id, n.owner_id, i.name, i.id`

// NodeNames returns the names the node's resolver answers. Its cost grows
// with the instances of the node's accounts on the node's networks, not
// with the cloud.
func (s *Store) NodeNames(ctx context.Context, nodeID string) ([]NodeName, error) {
	if !validUUID(nodeID) {
		return []NodeName{}, nil
	}
	rows, _ := s.pool.Query(ctx, sqlNodeNames, nodeID)
	out, err := pgx.CollectRows(rows, pgx.RowToStructByPos[NodeName])
	return out, translate(err)
}

// CNSInstance is what the CNS server publishes about an instance: its
// names, account, state, tags (triton.cns.*) and addresses, primary first.
type CNSInstance struct {
	ID      string         `db:"id"`
	OwnerID string         `db:"owner_id"`
	Login   string         `db:"login"`
	Name    string         `db:"name"`
	State   string         `db:"state"`
	Tags    map[string]any `db:"tags"`
	IPs     []string       `db:"ips"`
	// CNSEnabled is the account's triton_cns_enabled: CNS publishes only
	// the instances of accounts that turned it on.
	CNSEnabled bool `db:"cns_enabled"`
}

const cnsColumns = `i.id::text, i.owner_id::text, a.login, i.name, i.state, i.tags,
	ARRAY(SELECT host(n.ip) FROM nics n WHERE n.instance_id = i.id ORDER BY n.is_primary DESC, n.position),
	a.triton_cns_enabled`

const sqlCNSInstances = `SELECT ` + cnsColumns + ` FROM instances i JOIN accounts a ON a.id = i.owner_id
WHERE i.state <> 'deleted'`

// CNSInstances returns every live instance, for the CNS server's start; it
// follows the change feed with CNSInstancesByID after that.
func (s *Store) CNSInstances(ctx context.Context) ([]CNSInstance, error) {
	rows, _ := s.pool.Query(ctx, sqlCNSInstances)
	out, err := pgx.CollectRows(rows, pgx.RowToStructByPos[CNSInstance])
	return out, translate(err)
}

const sqlCNSInstancesByID = `SELECT ` + cnsColumns + ` FROM instances i JOIN accounts a ON a.id = i.owner_id
WHERE i.id = ANY($1::uuid[])`

// CNSInstancesByID returns the instances among ids, deleted ones included
// (state "deleted"); ids of purged instances are simply absent.
func (s *Store) CNSInstancesByID(ctx context.Context, ids []string) ([]CNSInstance, error) {
	valid := make([]string, 0, len(ids))
	for _, id := range ids {
		if validUUID(id) {
			valid = append(valid, id)
		}
	}
	if len(valid) == 0 {
		return []CNSInstance{}, nil
	}
	rows, _ := s.pool.Query(ctx, sqlCNSInstancesByID, valid)
	out, err := pgx.CollectRows(rows, pgx.RowToStructByPos[CNSInstance])
	return out, translate(err)
}

const sqlCNSInstancesByOwner = `SELECT ` + cnsColumns + ` FROM instances i JOIN accounts a ON a.id = i.owner_id
WHERE i.owner_id = $1 AND i.state <> 'deleted'`

// CNSInstancesByOwner returns an account's live instances (when its
// triton_cns_enabled changes).
func (s *Store) CNSInstancesByOwner(ctx context.Context, ownerID string) ([]CNSInstance, error) {
	if !validUUID(ownerID) {
		return []CNSInstance{}, nil
	}
	rows, _ := s.pool.Query(ctx, sqlCNSInstancesByOwner, ownerID)
	out, err := pgx.CollectRows(rows, pgx.RowToStructByPos[CNSInstance])
	return out, translate(err)
}
