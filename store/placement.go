package store

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"flotilla/api/errdefs"
)

// PlacementResult is the outcome of one create in CommitPlacements: the
// instance as stored, or the error that create alone would have returned.
// Err is ErrNoCandidate when concurrent placements took every candidate the
// batch could lock; Fresh then holds those candidates' rows as read under
// the lock, so the caller can correct its snapshot before re-planning.
type PlacementResult struct {
	Instance Instance
	Err      error
	Fresh    []Node
}

// GroupCommittable reports whether CommitPlacements can take in: creates
// with an Idempotency-Key, a strict-affinity check or networks (the default
// fabric network included) must go
// through CreateInstance, which locks per (owner, node) and allocates
// addresses.
func GroupCommittable(in NewInstance) bool {
	return in.IdempotencyKey == "" && in.CheckNode == nil && len(in.Networks) == 0 && !in.DefaultFabric
}

// sqlCommitPlacements commits a batch in one statement. Each create goes to
// its first candidate (v.node_id). locked takes the batch's nodes in id
// order, so batches never deadlock with each other (CreateInstance holds at
// most one node lock at a time, so it cannot complete a cycle either), and
// reads their latest usage under the lock. ok keeps, on each node, the
// creates in batch order while the running sums still fit: sqlClaimNode's
// predicate applied to the usage plus the sums so far. Those creates are
// inserted with their audit and change rows (a create whose name is taken
// is skipped by ON CONFLICT and so claims nothing), and the nodes' usage
// grows by the inserted creates' sums under the same predicate, backed by
// the CHECK constraints. Should the UPDATE refuse a node that ok allowed
// (the predicates are the same, so it cannot), claims_checked divides by
// zero and the whole statement rolls back.
// Each create on a node gets its own assign_rev (the node's revision plus
// its position in the share), so agents paging by revision never split one.
const sqlCommitPlacements = `WITH v AS (
	SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::uuid[], $6::uuid[], $7::text[],
		$8::bigint[], $9::bigint[], $10::bigint[], $11::uuid[], $12::text[], $13::bigint[], $14::bool[],
		$15::jsonb[], $16::jsonb[], $17::jsonb[], $18::jsonb[], $19::jsonb[], $20::bool[], $21::bool[], $22::jsonb[])
	AS v(id, owner_id, name, brand, image_id, package_id, package_name, memory_mib, disk_mib, vcpus_milli, node_id,
		desired_state, rev_offset, docker, spec, metadata, tags, affinity, placement, firewall_enabled,
		deletion_protection, caller)
), want AS (
	SELECT v.*,
		(sum(memory_mib) OVER w)::bigint AS cum_mem, (sum(disk_mib) OVER w)::bigint AS cum_disk,
		(sum(vcpus_milli) OVER w)::bigint AS cum_cpu, count(*) OVER w AS cum_n
	FROM v WINDOW w AS (PARTITION BY node_id ORDER BY rev_offset)
), locked AS MATERIALIZED (
	SELECT id, state, drained, reserved, brands, memory_mib, disk_mib, vcpus_milli, max_instances, ratio_memory,
		ratio_disk, ratio_vcpu, used_memory_mib, used_disk_mib, used_vcpus_milli, instances, assign_rev
	FROM nodes WHERE id = ANY($11::uuid[]) ORDER BY id FOR NO KEY UPDATE
), ok AS MATERIALIZED (
	SELECT w.id, l.assign_rev + w.rev_offset AS assign_rev FROM want w JOIN locked l ON l.id = w.node_id
	WHERE l.state = 'running' AND NOT l.drained AND NOT l.reserved AND w.brand = ANY(l.brands)
		AND l.used_memory_mib + w.cum_mem <= floor(l.memory_mib * l.ratio_memory)
		AND l.used_disk_mib + w.cum_disk <= floor(l.disk_mib * l.ratio_disk)
		AND l.used_vcpus_milli + w.cum_cpu <= floor(l.vcpus_milli * l.ratio_vcpu)
		AND l.instances + w.cum_n <= l.max_instances
), ins AS (
	INSERT INTO instances AS i (id, owner_id, name, brand, image_id, package_id, package_name, memory_mib, disk_mib,
		vcpus_milli, node_id, desired_state, assign_rev, docker, spec, metadata, tags, affinity, placement,
		firewall_enabled, deletion_protection)
	SELECT v.id, owner_id, name, brand, image_id, package_id, package_name, memory_mib, disk_mib, vcpus_milli,
		node_id, desired_state, ok.assign_rev, docker, spec, metadata, tags, affinity, placement,
		firewall_enabled, deletion_protection
	FROM v JOIN ok ON ok.id = v.id ORDER BY node_id, rev_offset
	ON CONFLICT DO NOTHING
	RETURNING i.*
), aud AS (
	INSERT INTO audit (owner_id, instance_id, action, success, caller, params, generation, pending)
	SELECT ins.owner_id, ins.id, 'provision', true, v.caller, '{}', 1, true FROM ins JOIN v ON v.id = ins.id
), chg AS (
	INSERT INTO changes (kind, object_id, owner_id, node_id, action, state, detail)
	SELECT 'instance', id, owner_id, node_id, 'create', 'provisioning', jsonb_build_object('name', name)
	FROM ins ORDER BY node_id, assign_rev
	RETURNING node_id
), sums AS (
	SELECT ins.node_id, sum(ins.memory_mib) AS mem, sum(ins.disk_mib) AS disk, sum(ins.vcpus_milli) AS cpu,
		count(*) AS n, max(ins.assign_rev) AS rev
	FROM ins GROUP BY ins.node_id
), upd AS (
	UPDATE nodes SET
		used_memory_mib = used_memory_mib + sums.mem, used_disk_mib = used_disk_mib + sums.disk,
		used_vcpus_milli = used_vcpus_milli + sums.cpu, instances = instances + sums.n,
		assign_rev = GREATEST(assign_rev, sums.rev), updated_at = now()
	FROM sums
	WHERE nodes.id = sums.node_id AND state = 'running' AND NOT drained AND NOT reserved
		AND used_memory_mib + sums.mem <= floor(memory_mib * ratio_memory)
		AND used_disk_mib + sums.disk <= floor(disk_mib * ratio_disk)
		AND used_vcpus_milli + sums.cpu <= floor(vcpus_milli * ratio_vcpu)
		AND instances + sums.n <= max_instances
	RETURNING nodes.id
)
SELECT i.id::text, i.node_id::text, i.assign_rev, i.state, i.generation, i.created_at, i.updated_at,
	(SELECT 1 / (CASE WHEN count(*) = (SELECT count(*) FROM sums) THEN 1 ELSE 0 END) FROM upd) AS claims_checked,
	CASE WHEN row_number() OVER () = 1 THEN (SELECT array_agg(id::text) FROM ok) END AS fitting,
	(SELECT count(pg_notify('flotilla_node', d.node_id::text)) FROM (SELECT DISTINCT node_id FROM chg) d) AS notified
FROM ins i`

// sqlBatchNodes reads the batch's nodes after its claims, in the same
// transaction, for creates that lost their node.
const sqlBatchNodes = `SELECT ` + nodeColumns + ` FROM nodes WHERE id = ANY($1::uuid[])`

// committedRow is what the database chose for an inserted instance, with
// the batch's node tallies (fitting only on the first row).
type committedRow struct {
	ID         string    `db:"id"`
	NodeID     string    `db:"node_id"`
	AssignRev  int64     `db:"assign_rev"`
	State      string    `db:"state"`
	Generation int64     `db:"generation"`
	CreatedAt  time.Time `db:"created_at"`
	UpdatedAt  time.Time `db:"updated_at"`
	Checked    int64     `db:"claims_checked"`
	Fitting    []string  `db:"fitting"`
	Notified   int64     `db:"notified"`
}

// CommitPlacements commits a batch of placed creates in one transaction and
// one round trip (sqlCommitPlacements, then a read of the batch's nodes).
// Each create is claimed on its first candidate: a node whose latest usage
// cannot take all of the batch's creates for it refuses them all with
// ErrNoCandidate (their PlacementResult.Fresh holds the node's row, so the
// caller's snapshot catches up before it re-plans). A batch can never
// overbook a node: the claim applies sqlClaimNode's predicate to the sums
// under the node's row lock, and the schema's CHECK constraints back it.
//
// Every create keeps its own outcome: a taken name fails only that create
// (errdefs.Conflict, as CreateInstance), and creates GroupCommittable
// refuses go through CreateInstance one by one. Results are in the order of
// ins. An error that would abort the whole transaction (it should not
// happen) makes every create fall back to CreateInstance, so one bad create
// cannot fail the others.
func (s *Store) CommitPlacements(ctx context.Context, ins []NewInstance) []PlacementResult {
	out := make([]PlacementResult, len(ins))
	batch := make([]int, 0, len(ins))
	for i := range ins {
		if GroupCommittable(ins[i]) && len(ins[i].Candidates) > 0 {
			batch = append(batch, i)
			continue
		}
		inst, _, err := s.CreateInstance(ctx, ins[i])
		out[i] = PlacementResult{Instance: inst, Err: err}
	}
	if len(batch) == 0 {
		return out
	}
	if err := s.commitBatch(ctx, ins, batch, out); err != nil {
		for _, i := range batch {
			inst, _, err := s.CreateInstance(ctx, ins[i])
			out[i] = PlacementResult{Instance: inst, Err: err}
		}
	}
	return out
}

func (s *Store) commitBatch(ctx context.Context, ins []NewInstance, batch []int, out []PlacementResult) error {
	var a batchArgs
	offsets := map[string]int64{}
	var nodeIDs []string
	for _, i := range batch {
		in := &ins[i]
		node := in.Candidates[0]
		if offsets[node] == 0 {
			nodeIDs = append(nodeIDs, node)
		}
		offsets[node]++
		a.add(in, node, offsets[node])
	}
	var b pgx.Batch
	b.Queue(sqlCommitPlacements, a.values()...)
	b.Queue(sqlBatchNodes, nodeIDs)
	br := s.pool.SendBatch(ctx, &b)
	defer br.Close()
	rows, _ := br.Query()
	got, err := pgx.CollectRows(rows, pgx.RowToStructByPos[committedRow])
	if err != nil {
		return translate(err)
	}
	rows, _ = br.Query()
	after, err := pgx.CollectRows(rows, pgx.RowToStructByPos[Node])
	if err != nil {
		return translate(err)
	}
	if err := br.Close(); err != nil {
		return translate(err)
	}
	nodes := make(map[string]Node, len(after))
	for _, n := range after {
		nodes[n.ID] = n
	}
	placed := make(map[string]bool, len(got))
	byID := make(map[string]committedRow, len(got))
	for _, r := range got {
		placed[r.ID] = true
		byID[r.ID] = r
	}
	// A create that fitted but was not inserted lost only its name. When
	// nothing was inserted the statement returned no rows to say which
	// fitted, and a lookup tells a taken name from a full node.
	fitted := map[string]bool{}
	var unsure []int
	if len(got) > 0 {
		for _, id := range got[0].Fitting {
			fitted[id] = true
		}
	} else {
		unsure = batch
	}
	taken, err := s.namesTaken(ctx, ins, unsure)
	if err != nil {
		return err
	}
	for _, i := range batch {
		in := &ins[i]
		switch node := in.Candidates[0]; {
		case placed[in.ID]:
			out[i] = PlacementResult{Instance: in.stored(byID[in.ID])}
		case fitted[in.ID] || taken[in.ID]:
			out[i] = PlacementResult{Err: errdefs.Conflictf("an instance named %q already exists", in.Name)}
		default:
			res := PlacementResult{Err: ErrNoCandidate}
			if n, ok := nodes[node]; ok {
				res.Fresh = []Node{n}
			}
			out[i] = res
		}
	}
	return nil
}

// stored is the instance as the batch inserted it: the request's fields
// with the defaults insertInstance applies, and what the database chose.
// Building it here spares reading back and decoding the JSON columns.
func (in *NewInstance) stored(r committedRow) Instance {
	inst := in.Instance
	if inst.DesiredState == "" {
		inst.DesiredState = "running"
	}
	if len(inst.Spec) == 0 {
		inst.Spec = json.RawMessage("{}")
	}
	if inst.Metadata == nil {
		inst.Metadata = map[string]any{}
	}
	if inst.Tags == nil {
		inst.Tags = map[string]any{}
	}
	if inst.Affinity == nil {
		inst.Affinity = []string{}
	}
	nodeID := r.NodeID
	inst.NodeID = &nodeID
	inst.AssignRev, inst.State, inst.Generation = r.AssignRev, r.State, r.Generation
	inst.CreatedAt, inst.UpdatedAt = r.CreatedAt, r.UpdatedAt
	inst.NICs = nil
	return inst
}

const sqlNamesTaken = `SELECT v.id::text FROM unnest($1::uuid[], $2::uuid[], $3::text[]) AS v(id, owner_id, name)
WHERE EXISTS (SELECT 1 FROM instances i WHERE i.owner_id = v.owner_id AND i.name = v.name
	AND i.desired_state <> 'deleted' AND i.id <> v.id)`

// namesTaken returns which of the creates at idx have a name a live
// instance of their owner already holds.
func (s *Store) namesTaken(ctx context.Context, ins []NewInstance, idx []int) (map[string]bool, error) {
	taken := map[string]bool{}
	if len(idx) == 0 {
		return taken, nil
	}
	var ids, owners, names []string
	for _, i := range idx {
		ids = append(ids, ins[i].ID)
		owners = append(owners, ins[i].OwnerID)
		names = append(names, ins[i].Name)
	}
	rows, _ := s.pool.Query(ctx, sqlNamesTaken, ids, owners, names)
	list, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, translate(err)
	}
	for _, id := range list {
		taken[id] = true
	}
	return taken, nil
}

// batchArgs are sqlCommitPlacements' column arrays.
type batchArgs struct {
	id, owner, name, brand, image, pkgName, node, desired []string
	pkg                                                   []*string
	mem, disk, cpu, rev                                   []int64
	docker, firewall, protect                             []bool
	spec, metadata, tags, affinity, caller                []string
	placement                                             []*string
}

func (a *batchArgs) add(in *NewInstance, nodeID string, rev int64) {
	desired := in.DesiredState
	if desired == "" {
		desired = "running"
	}
	a.id = append(a.id, in.ID)
	a.owner = append(a.owner, in.OwnerID)
	a.name = append(a.name, in.Name)
	a.brand = append(a.brand, in.Brand)
	a.image = append(a.image, in.ImageID)
	a.pkg = append(a.pkg, in.PackageID)
	a.pkgName = append(a.pkgName, in.PackageName)
	a.mem = append(a.mem, in.MemoryMiB)
	a.disk = append(a.disk, in.DiskMiB)
	a.cpu = append(a.cpu, in.VCPUsMilli)
	a.node = append(a.node, nodeID)
	a.desired = append(a.desired, desired)
	a.rev = append(a.rev, rev)
	a.docker = append(a.docker, in.Docker)
	spec := "{}"
	if len(in.Spec) > 0 {
		spec = string(in.Spec)
	}
	a.spec = append(a.spec, spec)
	a.metadata = append(a.metadata, jsonText(in.Metadata, "{}"))
	a.tags = append(a.tags, jsonText(in.Tags, "{}"))
	a.affinity = append(a.affinity, jsonText(in.Affinity, "[]"))
	var placement *string
	if len(in.Placement) > 0 {
		p := string(in.Placement)
		placement = &p
	}
	a.placement = append(a.placement, placement)
	a.firewall = append(a.firewall, in.FirewallEnabled)
	a.protect = append(a.protect, in.DeletionProtection)
	a.caller = append(a.caller, jsonText(in.Caller, "{}"))
}

func (a *batchArgs) values() []any {
	return []any{a.id, a.owner, a.name, a.brand, a.image, a.pkg, a.pkgName, a.mem, a.disk, a.cpu, a.node,
		a.desired, a.rev, a.docker, a.spec, a.metadata, a.tags, a.affinity, a.placement, a.firewall, a.protect,
		a.caller}
}

// jsonText is v as JSON text, or def when v is nil or empty.
func jsonText[T any](v T, def string) string {
	b, err := json.Marshal(v)
	if err != nil || string(b) == "null" {
		return def
	}
	return string(b)
}

// BulkNode is a node for BulkInsertNodes.
type BulkNode struct {
	Name                              string
	Brands                            []string
	MemoryMiB, DiskMiB, VCPUsMilli    int64
	MaxInstances                      int     // 0 = 1000
	RatioMemory, RatioDisk, RatioVCPU float64 // 0 = 1, 1, 4
	Traits                            map[string]any
}

// BulkInsertNodes adds running nodes with COPY, for benchmarks and
// simulations of large clusters: no credentials and no change rows (snapshots
// load nodes with ListNodes), then refreshes the table's statistics. It returns the new ids in order and
// errdefs.Conflict if a name is taken.
func (s *Store) BulkInsertNodes(ctx context.Context, nodes []BulkNode) ([]string, error) {
	ids := make([]string, len(nodes))
	now := time.Now()
	rows := make([][]any, len(nodes))
	for i, n := range nodes {
		ids[i] = uuid.NewString()
		brands := n.Brands
		if brands == nil {
			brands = []string{}
		}
		traits := n.Traits
		if traits == nil {
			traits = map[string]any{}
		}
		maxInst := n.MaxInstances
		if maxInst == 0 {
			maxInst = 1000
		}
		rows[i] = []any{ids[i], n.Name, n.Name, "running", brands, traits, n.MemoryMiB, n.DiskMiB, n.VCPUsMilli,
			maxInst, orOne(n.RatioMemory, 1), orOne(n.RatioDisk, 1), orOne(n.RatioVCPU, 4), int64(1), now}
	}
	_, err := s.pool.CopyFrom(ctx, pgx.Identifier{"nodes"},
		[]string{"id", "name", "hostname", "state", "brands", "traits", "memory_mib", "disk_mib", "vcpus_milli",
			"max_instances", "ratio_memory", "ratio_disk", "ratio_vcpu", "assign_rev", "last_heartbeat"},
		pgx.CopyFromRows(rows))
	if err != nil {
		return nil, translate(err)
	}
	// Fresh statistics, so claims look nodes up by key rather than scan.
	if _, err := s.pool.Exec(ctx, `ANALYZE nodes`); err != nil {
		return nil, translate(err)
	}
	return ids, nil
}

func orOne(v, def float64) float64 {
	if v > 0 {
		return v
	}
	return def
}

// PlacementAudit is what CheckPlacements finds.
type PlacementAudit struct {
	Nodes int `json:"nodes"`
	// Overcommitted counts nodes whose usage exceeds floor(capacity * ratio)
	// for some resource, or whose instance count exceeds its maximum.
	Overcommitted int `json:"overcommitted_nodes"`
	// Mismatched counts nodes whose usage columns differ from the sums over
	// their live instances.
	Mismatched    int   `json:"mismatched_nodes"`
	LiveInstances int64 `json:"live_instances"`
	UsedMemoryMiB int64 `json:"used_memory_mib"`
}

const sqlCheckPlacements = `WITH live AS (
	SELECT node_id, sum(memory_mib) AS mem, sum(disk_mib) AS disk, sum(vcpus_milli) AS cpu, count(*) AS n
	FROM instances WHERE node_id IS NOT NULL AND state <> 'deleted' GROUP BY node_id
)
SELECT count(*),
	count(*) FILTER (WHERE used_memory_mib > floor(memory_mib * ratio_memory)
		OR used_disk_mib > floor(disk_mib * ratio_disk)
		OR used_vcpus_milli > floor(vcpus_milli * ratio_vcpu)
		OR instances > max_instances
		OR COALESCE(live.mem, 0) > floor(memory_mib * ratio_memory)),
	count(*) FILTER (WHERE used_memory_mib <> COALESCE(live.mem, 0) OR used_disk_mib <> COALESCE(live.disk, 0)
		OR used_vcpus_milli <> COALESCE(live.cpu, 0) OR instances <> COALESCE(live.n, 0)),
	COALESCE(sum(live.n), 0)::bigint, COALESCE(sum(used_memory_mib), 0)::bigint
FROM nodes LEFT JOIN live ON live.node_id = nodes.id`

// CheckPlacements verifies the capacity invariants over every node by SQL:
// no node is overcommitted and each node's usage equals the sums over its
// live instances.
func (s *Store) CheckPlacements(ctx context.Context) (PlacementAudit, error) {
	var a PlacementAudit
	err := s.pool.QueryRow(ctx, sqlCheckPlacements).Scan(&a.Nodes, &a.Overcommitted, &a.Mismatched, &a.LiveInstances, &a.UsedMemoryMiB)
	if err != nil {
		return a, translate(err)
	}
	return a, nil
}

// String summarises the audit.
func (a PlacementAudit) String() string {
	return fmt.Sprintf("%d nodes, %d overcommitted, %d with usage unequal to their instances' sums, %d live instances",
		a.Nodes, a.Overcommitted, a.Mismatched, a.LiveInstances)
}

// NodesUpdatedSince returns the nodes whose row changed at or after since
// (updated_at, the changing transaction's start), and the database's
// current time to ask from next, less the longest a claiming transaction
// may take to commit.
func (s *Store) NodesUpdatedSince(ctx context.Context, since time.Time) ([]Node, time.Time, error) {
	var b pgx.Batch
	b.Queue(`SELECT now()`)
	b.Queue(`SELECT `+nodeColumns+` FROM nodes WHERE updated_at >= $1`, since)
	br := s.pool.SendBatch(ctx, &b)
	defer br.Close()
	var at time.Time
	if err := br.QueryRow().Scan(&at); err != nil {
		return nil, since, translate(err)
	}
	rows, _ := br.Query()
	nodes, err := pgx.CollectRows(rows, pgx.RowToStructByPos[Node])
	if err != nil {
		return nil, since, translate(err)
	}
	return nodes, at, translate(br.Close())
}

// NodesByID returns the nodes among ids, in one query.
func (s *Store) NodesByID(ctx context.Context, ids []string) ([]Node, error) {
	rows, _ := s.pool.Query(ctx, sqlBatchNodes, ids)
	out, err := pgx.CollectRows(rows, pgx.RowToStructByPos[Node])
	return out, translate(err)
}
