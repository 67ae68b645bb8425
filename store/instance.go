package store

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"flotilla/api/errdefs"
)

// Instance is a container or VM: its desired state and what its node reports.
type Instance struct {
	ID                  string          `db:"id"`
	OwnerID             string          `db:"owner_id"`
	Name                string          `db:"name"`
	Brand               string          `db:"brand"`
	ImageID             string          `db:"image_id"`
	PackageID           *string         `db:"package_id"`
	PackageName         string          `db:"package_name"`
	MemoryMiB           int64           `db:"memory_mib"`
	DiskMiB             int64           `db:"disk_mib"`
	VCPUsMilli          int64           `db:"vcpus_milli"`
	NodeID              *string         `db:"node_id"`
	State               string          `db:"state"`
	DesiredState        string          `db:"desired_state"`
	Generation          int64           `db:"generation"`
	ObservedGeneration  int64           `db:"observed_generation"`
	RebootCount         int64           `db:"reboot_count"`
	ObservedRebootCount int64           `db:"observed_reboot_count"`
	AssignRev           int64           `db:"assign_rev"`
	Docker              bool            `db:"docker"`
	Spec                json.RawMessage `db:"spec"`
	Metadata            map[string]any  `db:"metadata"`
	Tags                map[string]any  `db:"tags"`
	Affinity            []string        `db:"affinity"`
	Placement           json.RawMessage `db:"placement"`
	FirewallEnabled     bool            `db:"firewall_enabled"`
	DeletionProtection  bool            `db:"deletion_protection"`
	ExitCode            *int            `db:"exit_code"`
	Restarts            int             `db:"restarts"`
	Error               string          `db:"error"`
	StartedAt           *time.Time      `db:"started_at"`
	FinishedAt          *time.Time      `db:"finished_at"`
	CreatedAt           time.Time       `db:"created_at"`
	UpdatedAt           time.Time       `db:"updated_at"`
	DeletedAt           *time.Time      `db:"deleted_at"`
	// Health is what the node last reported of a container's health check.
	Health *Health `db:"health"`

	NICs []NIC `db:"-"`
}

// Health is a container's health: Docker's status ("starting", "healthy",
// "unhealthy"), its consecutive failures and its latest probes.
type Health struct {
	Status        string         `json:"status"`
	FailingStreak int            `json:"failing_streak"`
	Log           []HealthResult `json:"log,omitempty"`
}

// HealthResult is one probe of a health check.
type HealthResult struct {
	Start    time.Time `json:"start"`
	End      time.Time `json:"end"`
	ExitCode int       `json:"exit_code"`
	Output   string    `json:"output"`
}

// NIC is an instance's network interface with its network's settings.
type NIC struct {
	MAC         string   `db:"mac"`
	InstanceID  string   `db:"instance_id"`
	NetworkID   string   `db:"network_id"`
	IP          string   `db:"ip"`
	Primary     bool     `db:"is_primary"`
	Position    int      `db:"position"`
	Subnet      string   `db:"subnet"`
	Gateway     *string  `db:"gateway"`
	Bridge      string   `db:"bridge"`
	Public      bool     `db:"public"`
	InternetNAT bool     `db:"internet_nat"`
	Resolvers   []string `db:"resolvers"`
	NetworkName string   `db:"network_name"`
	// Fabric NICs are on an account's VLAN, carried between nodes under VNI.
	Fabric bool `db:"fabric"`
	VLANID int  `db:"vlan_id"`
	VNI    int  `db:"vni"`
	// Generation is the instance generation the NIC was added at: its
	// node has plumbed it once it reports that generation.
	Generation int64 `db:"generation"`
}

const instanceColumns = `i.id::text, i.owner_id::text, i.name, i.brand, i.image_id::text, i.package_id::text, i.package_name,
	i.memory_mib, i.disk_mib, i.vcpus_milli, i.node_id::text, i.state, i.desired_state, i.generation,
	i.observed_generation, i.reboot_count, i.observed_reboot_count, i.assign_rev, i.docker, i.spec, i.metadata,
	i.tags, i.affinity, i.placement, i.firewall_enabled, i.deletion_protection, i.exit_code, i.restarts, i.error,
	i.started_at, i.finished_at, i.created_at, i.updated_at, i.deleted_at, i.health`

const nicColumns = `n.mac, n.instance_id::text, n.network_id::text, host(n.ip), n.is_primary, n.position,
	w.subnet::text, host(w.gateway), w.bridge, w.public, w.internet_nat, w.resolvers, w.name, w.fabric, w.vlan_id, w.vni,
	n.generation`

func scanInstance(row pgx.CollectableRow) (Instance, error) {
	return pgx.RowToStructByPos[Instance](row)
}

// NewInstance is a create request that the service layer has validated and
// placed: Candidates are node ids in order of preference.
type NewInstance struct {
	Instance
	Networks []string // network ids; the first is primary
	// DefaultFabric adds a NIC on the owner's default network (created on
	// first use, in the create transaction) after those of Networks.
	DefaultFabric bool
	Candidates    []string
	// CheckNode, when set, is called for each candidate node under a lock on
	// (owner, node) with the owner's live instances on that node; an error
	// rejects the node (strict affinity).
	CheckNode func(residents []Resident) error
	// Disks are a flexible-disk VM's disks: its boot disk (if its image has
	// one) and data disks, in order.
	Disks  []NewDisk
	Caller map[string]any
	// IdempotencyKey makes a retried create return the first instance.
	IdempotencyKey string
	RequestHash    string
}

// Resident is an owner's instance already on a node, for affinity checks.
type Resident struct {
	ID   string         `db:"id"`
	Name string         `db:"name"`
	Tags map[string]any `db:"tags"`
}

// ErrNoCandidate is returned (as an InsufficientCapacity error) when every
// candidate node was taken by concurrent placements; the caller re-plans.
var ErrNoCandidate = errdefs.New(errdefs.InsufficientCapacity, "every candidate node was taken by concurrent placements")

// CreateInstance claims capacity on the first candidate node that still
// fits, allocates addresses, and records the instance, its NICs, a change
// and an audit entry — all in one transaction. It returns (instance, true)
// when an Idempotency-Key replay found an earlier instance instead.
func (s *Store) CreateInstance(ctx context.Context, in NewInstance) (Instance, bool, error) {
	var replay bool
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		if in.IdempotencyKey != "" {
			prior, found, err := claimIdempotencyKey(ctx, tx, in.OwnerID, in.IdempotencyKey, in.RequestHash, in.ID)
			if err != nil {
				return err
			}
			if found {
				replay = true
				return errReplay{id: prior}
			}
		}
		// Everything that does not need the node comes first, so the node's
		// row is locked only for the last statements of the transaction.
		if err := insertInstance(ctx, tx, &in.Instance); err != nil {
			return err
		}
		if err := insertDisks(ctx, tx, in.Instance, in.Disks); err != nil {
			return err
		}
		if in.DefaultFabric {
			id, err := ensureDefaultFabric(ctx, tx, in.OwnerID)
			if err != nil {
				return err
			}
			if !slices.Contains(in.Networks, id) {
				in.Networks = append(in.Networks, id)
			}
		}
		for i, netID := range in.Networks {
			ip, err := allocateIP(ctx, tx, netID, in.ID, in.OwnerID)
			if err != nil {
				return err
			}
			nic, err := insertNIC(ctx, tx, in.ID, in.OwnerID, netID, ip, i == 0, i, in.Generation)
			if err != nil {
				return err
			}
			in.NICs = append(in.NICs, nic)
		}
		if err := appendAudit(ctx, tx, AuditEntry{OwnerID: in.OwnerID, InstanceID: &in.ID, Action: "provision", Success: true,
			Caller: in.Caller, Generation: 1, Pending: true}); err != nil {
			return err
		}
		nodeID, rev, err := claimNode(ctx, tx, &in)
		if err != nil {
			return err
		}
		_, err = tx.Exec(ctx, sqlPlaceInstance, in.ID, nodeID, rev, map[string]any{"name": in.Name})
		in.NodeID, in.AssignRev = &nodeID, rev
		return translate(err)
	})
	if r, ok := err.(errReplay); ok {
		inst, err := s.GetInstance(ctx, in.OwnerID, r.id)
		return inst, replay, err
	}
	if err != nil {
		return Instance{}, false, err
	}
	// The transaction returned everything the row holds: no need to read it again.
	return in.Instance, false, nil
}

type errReplay struct{ id string }

func (e errReplay) Error() string { return "idempotent replay of " + e.id }

func claimIdempotencyKey(ctx context.Context, tx pgx.Tx, ownerID, key, hash, instanceID string) (prior string, found bool, err error) {
	tag, err := tx.Exec(ctx, `INSERT INTO idempotency_keys (owner_id, key, request_hash, status, response)
VALUES ($1, $2, $3, 201, $4) ON CONFLICT DO NOTHING`, ownerID, key, hash, []byte(instanceID))
	if err != nil {
		return "", false, translate(err)
	}
	if tag.RowsAffected() == 1 {
		return "", false, nil
	}
	var priorHash string
	var resp []byte
	if err := tx.QueryRow(ctx, `SELECT request_hash, response FROM idempotency_keys WHERE owner_id = $1 AND key = $2`, ownerID, key).Scan(&priorHash, &resp); err != nil {
		return "", false, translate(err)
	}
	if priorHash != hash {
		return "", false, errdefs.New(errdefs.Unprocessable, "Idempotency-Key %q was already used with a different request", key)
	}
	return string(resp), true, nil
}

// sqlPlaceInstance puts the instance on its node, records the create in the
// change feed and wakes the node's agent, in one round trip.
const sqlPlaceInstance = `WITH u AS (
	UPDATE instances SET node_id = $2, assign_rev = $3 WHERE id = $1 RETURNING id, owner_id, node_id
), c AS (
	INSERT INTO changes (kind, object_id, owner_id, node_id, action, state, detail)
	SELECT 'instance', id, owner_id, node_id, 'create', 'provisioning', $4 FROM u RETURNING node_id
) SELECT pg_notify('flotilla_node', node_id::text) FROM c`

const sqlClaimNode = `UPDATE nodes SET
	used_memory_mib = used_memory_mib + $2, used_disk_mib = used_disk_mib + $3,
	used_vcpus_milli = used_vcpus_milli + $4, instances = instances + 1,
	assign_rev = assign_rev + 1, updated_at = now()
WHERE id = $1 AND state = 'running' AND NOT drained AND NOT reserved AND $5 = ANY(brands)
	AND used_memory_mib + $2 <= floor(memory_mib * ratio_memory)
	AND used_disk_mib + $3 <= floor(disk_mib * ratio_disk)
	AND used_vcpus_milli + $4 <= floor(vcpus_milli * ratio_vcpu)
	AND instances + 1 <= max_instances
RETURNING assign_rev`

const sqlResidents = `SELECT id::text, name, tags FROM instances WHERE owner_id = $1 AND node_id = $2 AND desired_state <> 'deleted'`

// claimNode takes capacity on the first candidate that still fits. The
// capacity predicate lives in the WHERE clause (re-evaluated on the latest
// row version under READ COMMITTED) and in CHECK constraints, so no two
// transactions can overbook a node.
//
// A candidate that is refused is rolled back to a savepoint: an UPDATE that
// waited for a concurrent claim and then found the row no longer fits
// keeps the row locked, and holding refused nodes while waiting for the
// next one, in each create's own candidate order, deadlocks with other
// creates and with group commits (which lock in id order).
func claimNode(ctx context.Context, tx pgx.Tx, in *NewInstance) (string, int64, error) {
	for i, nodeID := range in.Candidates {
		last := i == len(in.Candidates)-1
		// Without a strict-affinity check the savepoint travels with the
		// first claim, in the same round trip.
		pipelined := i == 0 && !last && in.CheckNode == nil
		if i == 0 && !last && !pipelined {
			if _, err := tx.Exec(ctx, `SAVEPOINT claim_node`); err != nil {
				return "", 0, translate(err)
			}
		}
		nextCandidate := func() error {
			if last {
				return nil
			}
			_, err := tx.Exec(ctx, `ROLLBACK TO SAVEPOINT claim_node`)
			return translate(err)
		}
		if in.CheckNode != nil {
			if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtextextended($1 || '/' || $2, 0))`, in.OwnerID, nodeID); err != nil {
				return "", 0, translate(err)
			}
			rows, _ := tx.Query(ctx, sqlResidents, in.OwnerID, nodeID)
			residents, err := pgx.CollectRows(rows, pgx.RowToStructByPos[Resident])
			if err != nil {
				return "", 0, translate(err)
			}
			if in.CheckNode(residents) != nil {
				if err := nextCandidate(); err != nil {
					return "", 0, err
				}
				continue
			}
		}
		var rev int64
		var err error
		if pipelined {
			b := &pgx.Batch{}
			b.Queue(`SAVEPOINT claim_node`)
			b.Queue(sqlClaimNode, nodeID, in.MemoryMiB, in.DiskMiB, in.VCPUsMilli, in.Brand)
			br := tx.SendBatch(ctx, b)
			if _, err = br.Exec(); err == nil {
				err = br.QueryRow().Scan(&rev)
			}
			if cerr := br.Close(); err == nil && cerr != nil {
				err = cerr
			}
		} else {
			err = tx.QueryRow(ctx, sqlClaimNode, nodeID, in.MemoryMiB, in.DiskMiB, in.VCPUsMilli, in.Brand).Scan(&rev)
		}
		if err == pgx.ErrNoRows {
			if err := nextCandidate(); err != nil {
				return "", 0, err
			}
			continue
		}
		if err != nil {
			return "", 0, translate(err)
		}
		return nodeID, rev, nil
	}
	return "", 0, ErrNoCandidate
}

const sqlInsertInstance = `INSERT INTO instances (id, owner_id, name, brand, image_id, package_id, package_name, memory_mib,
	disk_mib, vcpus_milli, node_id, desired_state, assign_rev, docker, spec, metadata, tags, affinity, placement,
	firewall_enabled, deletion_protection)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21)
RETURNING created_at, updated_at, generation, state`

func insertInstance(ctx context.Context, tx pgx.Tx, in *Instance) error {
	if in.DesiredState == "" {
		in.DesiredState = "running"
	}
	if len(in.Spec) == 0 {
		in.Spec = json.RawMessage("{}")
	}
	if in.Metadata == nil {
		in.Metadata = map[string]any{}
	}
	if in.Tags == nil {
		in.Tags = map[string]any{}
	}
	if in.Affinity == nil {
		in.Affinity = []string{}
	}
	err := tx.QueryRow(ctx, sqlInsertInstance, in.ID, in.OwnerID, in.Name, in.Brand, in.ImageID, in.PackageID, in.PackageName,
		in.MemoryMiB, in.DiskMiB, in.VCPUsMilli, in.NodeID, in.DesiredState, in.AssignRev, in.Docker, in.Spec,
		in.Metadata, in.Tags, in.Affinity, nullJSON(in.Placement), in.FirewallEnabled, in.DeletionProtection).Scan(
		&in.CreatedAt, &in.UpdatedAt, &in.Generation, &in.State)
	if err != nil {
		if pgCode(err) == sqlUniqueViolation && constraintOf(err) == "instances_owner_name" {
			return errdefs.Conflictf("an instance named %q already exists", in.Name)
		}
		if pgCode(err) == sqlUniqueViolation {
			return errdefs.Conflictf("instance %s already exists", in.ID)
		}
		return translate(err)
	}
	return nil
}

// sqlInsertNIC adds a NIC and returns it with its network's settings.
const sqlInsertNIC = `WITH n AS (
	INSERT INTO nics (mac, instance_id, owner_id, network_id, ip, is_primary, position, generation)
	VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (mac) DO NOTHING RETURNING *
) SELECT ` + nicColumns + ` FROM n JOIN networks w ON w.id = n.network_id`

// insertNIC adds a NIC that the instance's node applies at generation gen.
func insertNIC(ctx context.Context, tx pgx.Tx, instanceID, ownerID, networkID, ip string, primary bool, pos int, gen int64) (NIC, error) {
	for attempt := 0; attempt < 5; attempt++ {
		rows, _ := tx.Query(ctx, sqlInsertNIC, randomMAC(), instanceID, ownerID, networkID, ip, primary, pos, gen)
		nic, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByPos[NIC])
		if err == nil {
			return nic, nil
		}
		if err != pgx.ErrNoRows {
			return NIC{}, translate(err)
		}
		// That MAC is taken: draw another.
	}
	return NIC{}, errdefs.New(errdefs.Internal, "could not allocate a MAC address")
}

// randomMAC returns a locally administered unicast MAC address.
func randomMAC() string {
	var b [6]byte
	rand.Read(b[:])
	b[0] = 0x90
	b[1] = 0xb8
	b[2] = 0xd0
	return fmt.Sprintf("%02x:%02x:%02x:%02x:%02x:%02x", b[0], b[1], b[2], b[3], b[4], b[5])
}

const sqlGetInstance = `SELECT ` + instanceColumns + ` FROM instances i WHERE i.owner_id = $1 AND i.id = $2`

// GetInstance returns one of the owner's instances with its NICs, deleted
// ones included (state "deleted"); NotFound otherwise.
func (s *Store) GetInstance(ctx context.Context, ownerID, id string) (Instance, error) {
	if !validUUID(id) {
		return Instance{}, errdefs.NotFoundf("VM not found")
	}
	rows, _ := s.pool.Query(ctx, sqlGetInstance, ownerID, id)
	inst, err := pgx.CollectExactlyOneRow(rows, scanInstance)
	if err != nil {
		return Instance{}, notFound(err, "VM not found")
	}
	if err := s.loadNICs(ctx, s.pool, []*Instance{&inst}); err != nil {
		return Instance{}, err
	}
	return inst, nil
}

// InstanceByID returns any instance (agent API, operators).
func (s *Store) InstanceByID(ctx context.Context, id string) (Instance, error) {
	if !validUUID(id) {
		return Instance{}, errdefs.NotFoundf("instance %s not found", id)
	}
	rows, _ := s.pool.Query(ctx, `SELECT `+instanceColumns+` FROM instances i WHERE i.id = $1`, id)
	inst, err := pgx.CollectExactlyOneRow(rows, scanInstance)
	if err != nil {
		return Instance{}, notFound(err, "instance "+id+" not found")
	}
	if err := s.loadNICs(ctx, s.pool, []*Instance{&inst}); err != nil {
		return Instance{}, err
	}
	return inst, nil
}

func (s *Store) loadNICs(ctx context.Context, q querier, insts []*Instance) error {
	if len(insts) == 0 {
		return nil
	}
	ids := make([]string, len(insts))
	byID := make(map[string]*Instance, len(insts))
	for i, in := range insts {
		ids[i] = in.ID
		byID[in.ID] = in
	}
	rows, _ := q.Query(ctx, `SELECT `+nicColumns+` FROM nics n JOIN networks w ON w.id = n.network_id
WHERE n.instance_id = ANY($1::uuid[]) ORDER BY n.instance_id, n.position`, ids)
	nics, err := pgx.CollectRows(rows, pgx.RowToStructByPos[NIC])
	if err != nil {
		return translate(err)
	}
	for _, n := range nics {
		if in := byID[n.InstanceID]; in != nil {
			in.NICs = append(in.NICs, n)
		}
	}
	return nil
}

// InstanceFilter selects instances in ListInstances.
type InstanceFilter struct {
	Name    string
	Brand   string
	Image   string
	States  []string // any of these; empty = every state but deleted/failed
	Memory  int64
	Docker  *bool
	Tags    map[string]string // tag.KEY=VALUE, compared as text
	Tagged  bool              // tags=*: any tag
	Deleted bool              // include deleted and failed (tombstone)
	NodeID  string
	Limit   int
	Offset  int
}

const sqlListInstances = `SELECT ` + instanceColumns + ` FROM instances i WHERE i.owner_id = $1
	AND ($2 = '' OR i.name = $2) AND ($3 = '' OR i.brand = $3) AND ($4 = '' OR i.image_id::text = $4)
	AND (cardinality($5::text[]) > 0 AND i.state = ANY($5) OR cardinality($5::text[]) = 0 AND ($6 OR i.state NOT IN ('deleted', 'failed')))
	AND ($7 = 0 OR i.memory_mib = $7) AND ($8::bool IS NULL OR i.docker = $8)
	AND (SELECT bool_and(COALESCE(i.tags ->> k = v, false)) FROM jsonb_each_text($9::jsonb) AS t(k, v)) IS NOT FALSE
	AND (NOT $10 OR i.tags <> '{}'::jsonb)
	AND ($11 = '' OR i.node_id::text = $11)
ORDER BY i.created_at, i.id LIMIT $12 OFFSET $13`

// ListInstances returns a page of the owner's instances, oldest first.
func (s *Store) ListInstances(ctx context.Context, ownerID string, f InstanceFilter) ([]Instance, error) {
	if f.Limit <= 0 {
		f.Limit = 1000
	}
	if f.States == nil {
		f.States = []string{}
	}
	tags := f.Tags
	if tags == nil {
		tags = map[string]string{}
	}
	rows, _ := s.pool.Query(ctx, sqlListInstances, ownerID, f.Name, f.Brand, f.Image, f.States, f.Deleted,
		f.Memory, f.Docker, tags, f.Tagged, f.NodeID, f.Limit, f.Offset)
	list, err := pgx.CollectRows(rows, scanInstance)
	if err != nil {
		return nil, translate(err)
	}
	ptrs := make([]*Instance, len(list))
	for i := range list {
		ptrs[i] = &list[i]
	}
	if err := s.loadNICs(ctx, s.pool, ptrs); err != nil {
		return nil, err
	}
	return list, nil
}

// CountInstances counts an owner's live instances per state.
func (s *Store) CountInstances(ctx context.Context, ownerID string) (map[string]int, error) {
	rows, _ := s.pool.Query(ctx, `SELECT state, count(*) FROM instances WHERE owner_id = $1 AND state NOT IN ('deleted') GROUP BY state`, ownerID)
	out := map[string]int{}
	var state string
	var n int
	_, err := pgx.ForEachRow(rows, []any{&state, &n}, func() error { out[state] = n; return nil })
	return out, translate(err)
}

// PlacedInstance is a live instance with its node, for scheduler snapshots.
type PlacedInstance struct {
	ID      string         `db:"id"`
	OwnerID string         `db:"owner_id"`
	Name    string         `db:"name"`
	Tags    map[string]any `db:"tags"`
	NodeID  string         `db:"node_id"`
}

const sqlLiveResidents = `SELECT id::text, owner_id::text, name, tags, node_id::text FROM instances
WHERE node_id IS NOT NULL AND state <> 'deleted'`

// LiveResidents returns every placed, live instance.
func (s *Store) LiveResidents(ctx context.Context) ([]PlacedInstance, error) {
	rows, _ := s.pool.Query(ctx, sqlLiveResidents)
	out, err := pgx.CollectRows(rows, pgx.RowToStructByPos[PlacedInstance])
	return out, translate(err)
}

// ResidentsByID returns the placed, live instances among ids.
func (s *Store) ResidentsByID(ctx context.Context, ids []string) ([]PlacedInstance, error) {
	rows, _ := s.pool.Query(ctx, `SELECT id::text, owner_id::text, name, tags, node_id::text FROM instances
WHERE id = ANY($1::uuid[]) AND node_id IS NOT NULL AND state <> 'deleted'`, ids)
	out, err := pgx.CollectRows(rows, pgx.RowToStructByPos[PlacedInstance])
	return out, translate(err)
}
