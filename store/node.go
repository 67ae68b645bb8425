package store

import (
	"context"
	"crypto/subtle"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"flotilla/api/errdefs"
)

// Node is a compute node with its capacity and current usage.
type Node struct {
	ID             string         `db:"id"`
	Name           string         `db:"name"`
	Hostname       string         `db:"hostname"`
	State          string         `db:"state"`
	Drained        bool           `db:"drained"`
	Reserved       bool           `db:"reserved"`
	Driver         string         `db:"driver"`
	Brands         []string       `db:"brands"`
	Traits         map[string]any `db:"traits"`
	Address        string         `db:"address"`
	MemoryMiB      int64          `db:"memory_mib"`
	DiskMiB        int64          `db:"disk_mib"`
	VCPUsMilli     int64          `db:"vcpus_milli"`
	MaxInstances   int            `db:"max_instances"`
	RatioMemory    float64        `db:"ratio_memory"`
	RatioDisk      float64        `db:"ratio_disk"`
	RatioVCPU      float64        `db:"ratio_vcpu"`
	UsedMemoryMiB  int64          `db:"used_memory_mib"`
	UsedDiskMiB    int64          `db:"used_disk_mib"`
	UsedVCPUsMilli int64          `db:"used_vcpus_milli"`
	Instances      int            `db:"instances"`
	AssignRev      int64          `db:"assign_rev"`
	LastHeartbeat  time.Time      `db:"last_heartbeat"`
	CreatedAt      time.Time      `db:"created_at"`
	UpdatedAt      time.Time      `db:"updated_at"`
	CgroupVersion  string         `db:"cgroup_version"` // "1", "2" or "" (not reported)
	CgroupDriver   string         `db:"cgroup_driver"`  // "cgroupfs", "systemd" or ""
}

const nodeColumns = `id::text, name, hostname, state, drained, reserved, driver, brands, traits, address,
	memory_mib, disk_mib, vcpus_milli, max_instances, ratio_memory, ratio_disk, ratio_vcpu,
	used_memory_mib, used_disk_mib, used_vcpus_milli, instances, assign_rev, last_heartbeat, created_at, updated_at,
	cgroup_version, cgroup_driver`

// NodeRegistration is what an agent tells about its node.
type NodeRegistration struct {
	ID           string // optional; a new uuid when empty
	Name         string
	Hostname     string
	Driver       string
	Brands       []string
	Traits       map[string]any
	Address      string
	MemoryMiB    int64
	DiskMiB      int64
	VCPUsMilli   int64
	MaxInstances int // 0 = default
	// Overprovision ratios; 0 = leave as is (defaults 1, 1, 4).
	RatioMemory, RatioDisk, RatioVCPU float64
	CgroupVersion, CgroupDriver       string
}

// Capacity never drops below what is already used: the CHECK constraints
// would refuse it, and running workloads do not vanish because a node reports less.
const sqlRegisterNode = `INSERT INTO nodes (id, name, hostname, driver, brands, traits, address, memory_mib, disk_mib,
	vcpus_milli, max_instances, ratio_memory, ratio_disk, ratio_vcpu, credential_hash, state, last_heartbeat, assign_rev,
	cgroup_version, cgroup_driver)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, COALESCE(NULLIF($11, 0), 1000), COALESCE(NULLIF($12, 0), 1.0),
	COALESCE(NULLIF($13, 0), 1.0), COALESCE(NULLIF($14, 0), 4.0), $15, 'running', now(), 1, $16, $17)
ON CONFLICT (name) DO UPDATE SET
	hostname = EXCLUDED.hostname, driver = EXCLUDED.driver, brands = EXCLUDED.brands, traits = EXCLUDED.traits,
	address = EXCLUDED.address, cgroup_version = EXCLUDED.cgroup_version, cgroup_driver = EXCLUDED.cgroup_driver,
	ratio_memory = COALESCE(NULLIF($12, 0), nodes.ratio_memory),
	ratio_disk = COALESCE(NULLIF($13, 0), nodes.ratio_disk),
	ratio_vcpu = COALESCE(NULLIF($14, 0), nodes.ratio_vcpu),
	memory_mib = GREATEST(EXCLUDED.memory_mib, ceil(nodes.used_memory_mib / COALESCE(NULLIF($12, 0), nodes.ratio_memory))::bigint),
	disk_mib = GREATEST(EXCLUDED.disk_mib, ceil(nodes.used_disk_mib / COALESCE(NULLIF($13, 0), nodes.ratio_disk))::bigint),
	vcpus_milli = GREATEST(EXCLUDED.vcpus_milli, ceil(nodes.used_vcpus_milli / COALESCE(NULLIF($14, 0), nodes.ratio_vcpu))::bigint),
	max_instances = GREATEST(COALESCE(NULLIF($11, 0), nodes.max_instances), nodes.instances),
	credential_hash = EXCLUDED.credential_hash, reregister_until = NULL, state = 'running', last_heartbeat = now(), updated_at = now(),
	assign_rev = nodes.assign_rev + 1
RETURNING ` + nodeColumns

// RegisterNode creates or updates a node by name and sets its credential,
// with no proof asked: for operators' tools and tests. Agents register
// through JoinNode.
func (s *Store) RegisterNode(ctx context.Context, r NodeRegistration, credentialHash []byte) (Node, error) {
	var out Node
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		var err error
		out, err = registerNode(ctx, tx, r, credentialHash)
		return err
	})
	return out, err
}

func registerNode(ctx context.Context, tx pgx.Tx, r NodeRegistration, credentialHash []byte) (Node, error) {
	if r.ID == "" {
		r.ID = uuid.NewString()
	}
	if r.Brands == nil {
		r.Brands = []string{}
	}
	if r.Traits == nil {
		r.Traits = map[string]any{}
	}
	rows, _ := tx.Query(ctx, sqlRegisterNode, r.ID, r.Name, r.Hostname, r.Driver, r.Brands, r.Traits, r.Address,
		r.MemoryMiB, r.DiskMiB, r.VCPUsMilli, r.MaxInstances, r.RatioMemory, r.RatioDisk, r.RatioVCPU, credentialHash,
		r.CgroupVersion, r.CgroupDriver)
	n, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByPos[Node])
	if err != nil {
		if pgCode(err) == sqlCheckViolation {
			return Node{}, errdefs.InvalidArgument("node %s: capacity must not be negative", r.Name)
		}
		return Node{}, translate(err)
	}
	return n, appendChange(ctx, tx, Change{Kind: "node", ObjectID: n.ID, NodeID: &n.ID, Action: "register", State: n.State})
}

const sqlNodeByCredential = `SELECT id::text FROM nodes WHERE credential_hash = $1`

// NodeByCredential returns the id of the node holding that credential hash.
func (s *Store) NodeByCredential(ctx context.Context, hash []byte) (string, error) {
	var id string
	if err := s.pool.QueryRow(ctx, sqlNodeByCredential, hash).Scan(&id); err != nil {
		return "", notFound(err, "unknown node credential")
	}
	return id, nil
}

// Heartbeat is a node's periodic report.
type Heartbeat struct {
	MemoryMiB, DiskMiB, VCPUsMilli int64
	Brands                         []string
	Traits                         map[string]any
	Address                        string
	// UnderlayIP, when set, is where other nodes send this node's VXLAN traffic.
	UnderlayIP                  string
	CgroupVersion, CgroupDriver string // "" = unchanged
}

const sqlHeartbeat = `UPDATE nodes SET last_heartbeat = now(), updated_at = now(), state = 'running',
	memory_mib = GREATEST($2, ceil(used_memory_mib / ratio_memory)::bigint),
	disk_mib = GREATEST($3, ceil(used_disk_mib / ratio_disk)::bigint),
	vcpus_milli = GREATEST($4, ceil(used_vcpus_milli / ratio_vcpu)::bigint),
	brands = COALESCE($5, brands), traits = COALESCE($6, traits), address = COALESCE(NULLIF($7, ''), address),
	underlay_ip = COALESCE(NULLIF($8, ''), underlay_ip),
	cgroup_version = COALESCE(NULLIF($9, ''), cgroup_version), cgroup_driver = COALESCE(NULLIF($10, ''), cgroup_driver)
WHERE id = $1 RETURNING (SELECT state FROM nodes WHERE id = $1)`

// Heartbeat records that a node is alive. It reports whether the node was offline.
func (s *Store) Heartbeat(ctx context.Context, nodeID string, hb Heartbeat) (wasOffline bool, err error) {
	err = s.inTx(ctx, func(tx pgx.Tx) error {
		var prev string
		if err := tx.QueryRow(ctx, sqlHeartbeat, nodeID, hb.MemoryMiB, hb.DiskMiB, hb.VCPUsMilli, hb.Brands, hb.Traits, hb.Address, hb.UnderlayIP,
			hb.CgroupVersion, hb.CgroupDriver).Scan(&prev); err != nil {
			return notFound(err, "node "+nodeID+" not found")
		}
		wasOffline = prev == "offline"
		if wasOffline {
			return appendChange(ctx, tx, Change{Kind: "node", ObjectID: nodeID, NodeID: &nodeID, Action: "online", State: "running"})
		}
		return nil
	})
	return wasOffline, err
}

const sqlListNodes = `SELECT ` + nodeColumns + ` FROM nodes ORDER BY name`

// ListNodes returns every node.
func (s *Store) ListNodes(ctx context.Context) ([]Node, error) {
	rows, _ := s.pool.Query(ctx, sqlListNodes)
	out, err := pgx.CollectRows(rows, pgx.RowToStructByPos[Node])
	return out, translate(err)
}

const sqlGetNode = `SELECT ` + nodeColumns + ` FROM nodes WHERE id::text = $1 OR name = $1 ORDER BY (id::text = $1) DESC LIMIT 1`

// GetNode finds a node by id or name.
func (s *Store) GetNode(ctx context.Context, idOrName string) (Node, error) {
	rows, _ := s.pool.Query(ctx, sqlGetNode, idOrName)
	n, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByPos[Node])
	if err != nil {
		return Node{}, notFound(err, "node "+idOrName+" not found")
	}
	return n, nil
}

// SetNodeDrained drains (no new placements) or undrains a node.
func (s *Store) SetNodeDrained(ctx context.Context, idOrName string, drained bool) (Node, error) {
	n, err := s.GetNode(ctx, idOrName)
	if err != nil {
		return Node{}, err
	}
	err = s.inTx(ctx, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `UPDATE nodes SET drained = $2, updated_at = now() WHERE id = $1`, n.ID, drained); err != nil {
			return translate(err)
		}
		action := "undrain"
		if drained {
			action = "drain"
		}
		return appendChange(ctx, tx, Change{Kind: "node", ObjectID: n.ID, NodeID: &n.ID, Action: action, State: n.State})
	})
	n.Drained = drained
	return n, err
}

const sqlMarkOffline = `UPDATE nodes SET state = 'offline', updated_at = now()
WHERE state = 'running' AND last_heartbeat < now() - $1::interval RETURNING id::text`

const sqlInstancesUnknown = `UPDATE instances SET state = 'unknown', updated_at = now()
WHERE node_id = ANY($1::uuid[]) AND state NOT IN ('deleted', 'failed') RETURNING id::text, owner_id::text, node_id::text`

// MarkSilentNodesOffline turns nodes silent for longer than grace offline and
// their instances unknown. It returns the ids of the nodes it changed.
func (s *Store) MarkSilentNodesOffline(ctx context.Context, grace time.Duration) ([]string, error) {
	var ids []string
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		rows, _ := tx.Query(ctx, sqlMarkOffline, fmt.Sprintf("%d milliseconds", grace.Milliseconds()))
		var err error
		if ids, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
			return translate(err)
		}
		if len(ids) == 0 {
			return nil
		}
		for _, id := range ids {
			if err := appendChange(ctx, tx, Change{Kind: "node", ObjectID: id, NodeID: &id, Action: "offline", State: "offline"}); err != nil {
				return err
			}
		}
		rows, _ = tx.Query(ctx, sqlInstancesUnknown, ids)
		type row struct{ ID, Owner, Node string }
		insts, err := pgx.CollectRows(rows, pgx.RowToStructByPos[row])
		if err != nil {
			return translate(err)
		}
		for _, in := range insts {
			if err := appendChange(ctx, tx, Change{Kind: "instance", ObjectID: in.ID, OwnerID: &in.Owner, NodeID: &in.Node, Action: "state", State: "unknown"}); err != nil {
				return err
			}
		}
		return nil
	})
	return ids, err
}

// CreateJoinToken records the hash of a join token that one agent may
// register with once, before expires.
func (s *Store) CreateJoinToken(ctx context.Context, hash []byte, expires time.Time) error {
	_, err := s.pool.Exec(ctx, `INSERT INTO join_tokens (token_hash, expires_at) VALUES ($1, $2) ON CONFLICT DO NOTHING`, hash, expires)
	return translate(err)
}

// NodeJoin is what an agent proves when it registers.
type NodeJoin struct {
	// TokenHash is the hash of a join token; it is consumed by the
	// registration.
	TokenHash []byte
	// ProofHash is the hash of the node's current credential, which lets an
	// agent that still holds it register its node again (e.g. with a new
	// address) without an operator's approval.
	ProofHash []byte
	// CredentialHash is the hash of the node's new credential.
	CredentialHash []byte
}

const sqlConsumeJoinToken = `UPDATE join_tokens SET used_at = now(), used_by = $2
WHERE token_hash = $1 AND used_at IS NULL AND expires_at > now() RETURNING 1`

const sqlNodeForJoin = `SELECT id::text, credential_hash, COALESCE(reregister_until > now(), false) FROM nodes WHERE name = $1 FOR UPDATE`

// JoinNode registers a node for an agent that presents a join token, in one
// transaction that consumes the token. A new name becomes a new node; an
// existing name is registered again only with proof of its current
// credential or an operator's approval (ApproveNodeReregistration), which it
// uses up. Errors: Unauthorized for an unknown, expired or used token (the
// token is then not consumed); Conflict for an existing node without proof
// or approval; Invalid for negative capacity.
func (s *Store) JoinNode(ctx context.Context, r NodeRegistration, j NodeJoin) (Node, error) {
	r.ID = uuid.NewString()
	var out Node
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		var (
			existingID string
			current    []byte
			approved   bool
		)
		err := tx.QueryRow(ctx, sqlNodeForJoin, r.Name).Scan(&existingID, &current, &approved)
		switch {
		case err == pgx.ErrNoRows:
		case err != nil:
			return translate(err)
		default:
			proven := len(j.ProofHash) > 0 && len(current) > 0 && subtle.ConstantTimeCompare(j.ProofHash, current) == 1
			if !proven && !approved {
				return errdefs.New(errdefs.Conflict, "node %s is already registered with another credential: "+
					"an agent that has its credential file (node.json) registers without a token; to let a reinstalled node take "+
					"the name over, an operator runs `flotilla admin node approve %s` and the agent registers again", r.Name, r.Name)
			}
			r.ID = existingID
		}
		var one int
		if err := tx.QueryRow(ctx, sqlConsumeJoinToken, j.TokenHash, r.ID).Scan(&one); err != nil {
			if err == pgx.ErrNoRows {
				return errdefs.New(errdefs.Unauthorized, "the join token is unknown, expired or already used: "+
					"mint a new one with `flotilla admin node join-token` (each token registers one node once)")
			}
			return translate(err)
		}
		if out, err = registerNode(ctx, tx, r, j.CredentialHash); err != nil {
			return err
		}
		if out.ID != r.ID {
			// Another registration took the name since the check above.
			return errdefs.New(errdefs.Conflict, "node %s was registered by another agent at the same time", r.Name)
		}
		return nil
	})
	return out, err
}

// ApproveNodeReregistration lets the next registration of the named node,
// within ttl, replace its credential without presenting the current one. It
// returns NotFound for an unknown node.
func (s *Store) ApproveNodeReregistration(ctx context.Context, idOrName string, ttl time.Duration) (Node, error) {
	n, err := s.GetNode(ctx, idOrName)
	if err != nil {
		return Node{}, err
	}
	_, err = s.pool.Exec(ctx, `UPDATE nodes SET reregister_until = now() + $2::interval WHERE id = $1`, n.ID,
		fmt.Sprintf("%d milliseconds", ttl.Milliseconds()))
	return n, translate(err)
}

// RevokeNodeCredential withdraws a pending re-registration approval and the
// node's credential: its agent can no longer call the agent API until the
// node registers again with a join token and an operator's approval. It
// returns NotFound for an unknown node.
func (s *Store) RevokeNodeCredential(ctx context.Context, idOrName string) (Node, error) {
	n, err := s.GetNode(ctx, idOrName)
	if err != nil {
		return Node{}, err
	}
	_, err = s.pool.Exec(ctx, `UPDATE nodes SET reregister_until = NULL, credential_hash = NULL WHERE id = $1`, n.ID)
	return n, translate(err)
}

// AcquireLease takes or renews the named lease for holder for ttl. It
// reports whether holder now holds it.
func (s *Store) AcquireLease(ctx context.Context, name, holder string, ttl time.Duration) (bool, error) {
	var got string
	err := s.pool.QueryRow(ctx, `INSERT INTO leases (name, holder, expires_at) VALUES ($1, $2, now() + $3::interval)
ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at
	WHERE leases.holder = EXCLUDED.holder OR leases.expires_at < now()
RETURNING holder`, name, holder, fmt.Sprintf("%d milliseconds", ttl.Milliseconds())).Scan(&got)
	if err == pgx.ErrNoRows {
		return false, nil
	}
	if err != nil {
		return false, translate(err)
	}
	return got == holder, nil
}

const sqlNodeUsesImage = `SELECT EXISTS (SELECT 1 FROM instances WHERE node_id = $1::uuid AND image_id = $2::uuid AND state <> 'deleted')`

// NodeUsesImage reports whether an instance assigned to the node (and not
// deleted) uses the image: what a node may pull from the registry endpoint.
func (s *Store) NodeUsesImage(ctx context.Context, nodeID, imageID string) (bool, error) {
	if !validUUID(imageID) || !validUUID(nodeID) {
		return false, nil
	}
	var ok bool
	err := s.pool.QueryRow(ctx, sqlNodeUsesImage, nodeID, imageID).Scan(&ok)
	return ok, translate(err)
}
