package store

import (
	"context"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"flotilla/api/errdefs"
)

// Volume is an account's named storage, mounted into its containers.
type Volume struct {
	ID        string            `db:"id"`
	OwnerID   string            `db:"owner_id"`
	Name      string            `db:"name"`
	Type      string            `db:"type"` // tritonnfs (CloudAPI) or local (Docker)
	SizeMiB   int64             `db:"size_mib"`
	State     string            `db:"state"`
	Anonymous bool              `db:"anonymous"` // made by `docker run -v /path`
	Labels    map[string]string `db:"labels"`
	Tags      map[string]any    `db:"tags"`
	NodeID    *string           `db:"node_id"` // where its storage lives, once mounted
	CreatedAt time.Time         `db:"created_at"`
	UpdatedAt time.Time         `db:"updated_at"`
}

const volumeColumns = `id::text, owner_id::text, name, type, size_mib, state, anonymous, labels, tags, node_id::text, created_at, updated_at`

const sqlCreateVolume = `INSERT INTO volumes (id, owner_id, name, type, size_mib, state, anonymous, labels, tags, node_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING ` + volumeColumns

// CreateVolume records a volume (on node v.NodeID, if set). Conflict if the
// owner has one of that name already.
func (s *Store) CreateVolume(ctx context.Context, v Volume) (Volume, error) {
	if v.ID == "" {
		v.ID = uuid.NewString()
	}
	if v.State == "" {
		v.State = "ready"
	}
	if v.Labels == nil {
		v.Labels = map[string]string{}
	}
	if v.Tags == nil {
		v.Tags = map[string]any{}
	}
	rows, _ := s.pool.Query(ctx, sqlCreateVolume, v.ID, v.OwnerID, v.Name, v.Type, v.SizeMiB, v.State, v.Anonymous, v.Labels, v.Tags, v.NodeID)
	out, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByPos[Volume])
	if err != nil {
		switch pgCode(err) {
		case sqlUniqueViolation:
			return Volume{}, &errdefs.Error{Code: errdefs.Conflict, Err: err, Reason: "VolumeAlreadyExists",
				Message: "a volume named " + v.Name + " already exists"}
		case sqlForeignKeyViolation:
			return Volume{}, errdefs.NotFoundf("account %s not found", v.OwnerID)
		}
		return Volume{}, translate(err)
	}
	return out, nil
}

const sqlGetVolume = `SELECT ` + volumeColumns + ` FROM volumes WHERE owner_id = $1 AND state <> 'deleted' AND ($2 = id::text OR $2 = name)
ORDER BY ($2 = id::text) DESC LIMIT 1`

// GetVolume returns owner's volume by id or name, or NotFound.
func (s *Store) GetVolume(ctx context.Context, owner, idOrName string) (Volume, error) {
	msg := "volume " + idOrName + " not found"
	if !validUUID(owner) {
		return Volume{}, errdefs.NotFoundf("%s", msg)
	}
	rows, _ := s.pool.Query(ctx, sqlGetVolume, owner, idOrName)
	v, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByPos[Volume])
	if err != nil {
		return Volume{}, notFound(err, msg)
	}
	return v, nil
}

const sqlListVolumes = `SELECT ` + volumeColumns + ` FROM volumes WHERE owner_id = $1 AND state <> 'deleted' AND ($2 = '' OR type = $2)
ORDER BY created_at, name`

// ListVolumes returns owner's volumes, only those of type typ unless it is
// empty.
func (s *Store) ListVolumes(ctx context.Context, owner, typ string) ([]Volume, error) {
	if !validUUID(owner) {
		return nil, nil
	}
	rows, _ := s.pool.Query(ctx, sqlListVolumes, owner, typ)
	out, err := pgx.CollectRows(rows, pgx.RowToStructByPos[Volume])
	return out, translate(err)
}

// sqlVolumeUsers are the live instances whose spec mounts volume $2.
const sqlVolumeUsers = `SELECT id::text FROM instances WHERE owner_id = $1 AND desired_state <> 'deleted' AND state <> 'deleted'
	AND spec -> 'options' -> 'Volumes' @> jsonb_build_array(jsonb_build_object('Volume', $2::text)) ORDER BY created_at`

// VolumeUsers returns the ids of owner's live instances that mount volume id.
func (s *Store) VolumeUsers(ctx context.Context, owner, id string) ([]string, error) {
	if !validUUID(owner) || !validUUID(id) {
		return nil, nil
	}
	rows, _ := s.pool.Query(ctx, sqlVolumeUsers, owner, id)
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	return out, translate(err)
}

// sqlDeleteVolume marks the volume deleted unless a live instance mounts
// it, in one statement so a create cannot slip in between check and delete
// unnoticed by both.
const sqlDeleteVolume = `UPDATE volumes v SET state = 'deleted', updated_at = now()
WHERE v.owner_id = $1 AND v.id = $2 AND v.state <> 'deleted' AND NOT EXISTS (
	SELECT 1 FROM instances i WHERE i.owner_id = $1 AND i.desired_state <> 'deleted' AND i.state <> 'deleted'
	AND i.spec -> 'options' -> 'Volumes' @> jsonb_build_array(jsonb_build_object('Volume', $2::text)))
RETURNING ` + volumeColumns

// DeleteVolume deletes owner's volume (by id or name). NotFound if there
// is none, Conflict (VolumeInUse) while an instance mounts it.
func (s *Store) DeleteVolume(ctx context.Context, owner, idOrName string) (Volume, error) {
	v, err := s.GetVolume(ctx, owner, idOrName)
	if err != nil {
		return Volume{}, err
	}
	rows, _ := s.pool.Query(ctx, sqlDeleteVolume, owner, v.ID)
	out, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByPos[Volume])
	if err == nil {
		return out, nil
	}
	if !errdefs.Is(translate(err), errdefs.NotFound) {
		return Volume{}, translate(err)
	}
	users, _ := s.VolumeUsers(ctx, owner, v.ID)
	return Volume{}, &errdefs.Error{Code: errdefs.Conflict, Reason: "VolumeInUse",
		Message: "volume " + v.Name + " is in use by " + joinIDs(users) + "; remove those instances first"}
}

const sqlVolumeDeleted = `SELECT EXISTS (SELECT 1 FROM volumes WHERE owner_id = $1 AND id::text = $2 AND state = 'deleted')`

// VolumeDeleted reports whether owner had a volume with id that is now
// deleted.
func (s *Store) VolumeDeleted(ctx context.Context, owner, id string) (bool, error) {
	if !validUUID(owner) {
		return false, nil
	}
	var ok bool
	err := s.pool.QueryRow(ctx, sqlVolumeDeleted, owner, id).Scan(&ok)
	return ok, translate(err)
}

func joinIDs(ids []string) string {
	if len(ids) == 0 {
		return "an instance being created"
	}
	out := ""
	for i, id := range ids {
		if i > 0 {
			out += ", "
		}
		out += id
	}
	return out
}

const sqlSetVolumesNode = `UPDATE volumes SET node_id = $3, updated_at = now()
WHERE owner_id = $1 AND id = ANY($2::uuid[]) AND node_id IS NULL`

// SetVolumesNode records node as the home of owner's volumes ids that have
// none yet (their first mount).
func (s *Store) SetVolumesNode(ctx context.Context, owner string, ids []string, node string) error {
	if len(ids) == 0 {
		return nil
	}
	_, err := s.pool.Exec(ctx, sqlSetVolumesNode, owner, ids, node)
	return translate(err)
}

// VolumeHome is where a volume's storage lives, for the nodes that mount it.
type VolumeHome struct {
	ID      string
	Type    string
	SizeMiB int64
	Node    NodeStream // empty NodeID: not placed yet
}

const sqlVolumeHomes = `SELECT v.id::text, v.type, v.size_mib, coalesce(n.id::text, ''), coalesce(n.address, ''), coalesce(n.stream_token, '')
FROM volumes v LEFT JOIN nodes n ON n.id = v.node_id WHERE v.id = ANY($1::uuid[])`

// VolumeHomes returns the homes of volumes ids, by id (ids not found are
// left out).
func (s *Store) VolumeHomes(ctx context.Context, ids []string) (map[string]VolumeHome, error) {
	out := map[string]VolumeHome{}
	var valid []string
	for _, id := range ids {
		if validUUID(id) {
			valid = append(valid, id)
		}
	}
	if len(valid) == 0 {
		return out, nil
	}
	rows, err := s.pool.Query(ctx, sqlVolumeHomes, valid)
	if err != nil {
		return nil, translate(err)
	}
	defer rows.Close()
	for rows.Next() {
		var h VolumeHome
		if err := rows.Scan(&h.ID, &h.Type, &h.SizeMiB, &h.Node.NodeID, &h.Node.Address, &h.Node.Token); err != nil {
			return nil, translate(err)
		}
		out[h.ID] = h
	}
	return out, translate(rows.Err())
}

// sqlVolumeHomeCandidates are the running, undrained runc nodes, those
// holding the fewest live volumes first (ties broken at random).
const sqlVolumeHomeCandidates = `SELECT n.id::text FROM nodes n WHERE n.driver LIKE '%runc%' AND n.state = 'running' AND NOT n.drained
ORDER BY (SELECT count(*) FROM volumes v WHERE v.node_id = n.id AND v.state <> 'deleted'), random()`

// VolumeHomeCandidates returns the nodes a new shared volume may live on,
// the best first.
func (s *Store) VolumeHomeCandidates(ctx context.Context) ([]string, error) {
	rows, _ := s.pool.Query(ctx, sqlVolumeHomeCandidates)
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	return out, translate(err)
}

const sqlOwnerResidents = `SELECT id::text, name, tags, node_id::text FROM instances
WHERE owner_id = $1 AND node_id IS NOT NULL AND desired_state <> 'deleted' AND state <> 'deleted'`

// OwnerResidents returns owner's placed, live instances.
func (s *Store) OwnerResidents(ctx context.Context, owner string) ([]PlacedInstance, error) {
	if !validUUID(owner) {
		return nil, nil
	}
	rows, err := s.pool.Query(ctx, sqlOwnerResidents, owner)
	if err != nil {
		return nil, translate(err)
	}
	defer rows.Close()
	var out []PlacedInstance
	for rows.Next() {
		p := PlacedInstance{OwnerID: owner}
		if err := rows.Scan(&p.ID, &p.Name, &p.Tags, &p.NodeID); err != nil {
			return nil, translate(err)
		}
		out = append(out, p)
	}
	return out, translate(rows.Err())
}

const sqlRenameVolume = `UPDATE volumes SET name = $3, updated_at = now()
WHERE id = (SELECT id FROM volumes WHERE owner_id = $1 AND state <> 'deleted' AND ($2 = id::text OR $2 = name)
	ORDER BY ($2 = id::text) DESC LIMIT 1)
RETURNING ` + volumeColumns

// RenameVolume gives owner's volume (by id or name) another name. NotFound
// if there is none, Conflict (VolumeAlreadyExists) if the owner has a
// volume of that name.
func (s *Store) RenameVolume(ctx context.Context, owner, idOrName, name string) (Volume, error) {
	msg := "volume " + idOrName + " not found"
	if !validUUID(owner) {
		return Volume{}, errdefs.NotFoundf("%s", msg)
	}
	rows, _ := s.pool.Query(ctx, sqlRenameVolume, owner, idOrName, name)
	v, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByPos[Volume])
	if err != nil {
		if pgCode(err) == sqlUniqueViolation {
			return Volume{}, &errdefs.Error{Code: errdefs.Conflict, Err: err, Reason: "VolumeAlreadyExists",
				Message: "a volume named " + name + " already exists"}
		}
		return Volume{}, notFound(err, msg)
	}
	return v, nil
}
