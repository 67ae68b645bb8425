package store

import (
	"context"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"flotilla/api/errdefs"
)

// Disk is one disk of a VM: what the owner asked for, and whether the
// instance's node has applied it (its generation observed).
type Disk struct {
	ID         string    `db:"id"`
	InstanceID string    `db:"instance_id"`
	OwnerID    string    `db:"owner_id"`
	Slot       int       `db:"slot"` // 0 is the boot disk, data disks 1 to MaxDiskSlot
	Boot       bool      `db:"boot"`
	SizeMiB    int64     `db:"size_mib"`
	Generation int64     `db:"generation"` // instance generation of the last change
	Pending    string    `db:"pending"`    // the last change: create, resize or delete
	Applied    bool      `db:"applied"`    // the node has reported Generation
	CreatedAt  time.Time `db:"created_at"`
	UpdatedAt  time.Time `db:"updated_at"`
}

// Disk changes.
const (
	DiskCreate = "create"
	DiskResize = "resize"
	DiskDelete = "delete"
)

// MaxDiskSlot is the highest slot: a VM has at most 8 disks, its boot disk
// (slot 0) and 7 data disks.
const MaxDiskSlot = 7

// State is CloudAPI's disk state: creating, resizing or deleting until the
// node applies the last change, then running.
func (d Disk) State() string {
	if d.Applied {
		return "running"
	}
	switch d.Pending {
	case DiskCreate:
		return "creating"
	case DiskResize:
		return "resizing"
	}
	return "deleting"
}

// Gone reports whether the disk was deleted and its node has removed it.
func (d Disk) Gone() bool { return d.Pending == DiskDelete && d.Applied }

const diskColumns = `d.id::text, d.instance_id::text, d.owner_id::text, d.slot, d.boot, d.size_mib, d.generation, d.pending,
	(i.observed_generation >= d.generation) AS applied, d.created_at, d.updated_at`

func scanDisk(row pgx.CollectableRow) (Disk, error) { return pgx.RowToStructByPos[Disk](row) }

// The disks of an instance that are not gone, in slot order.
const sqlDisksOf = `SELECT ` + diskColumns + ` FROM instance_disks d JOIN instances i ON i.id = d.instance_id
WHERE d.owner_id = $1 AND d.instance_id = $2
	AND NOT (d.pending = 'delete' AND i.observed_generation >= d.generation)
ORDER BY d.slot`

func disksOf(ctx context.Context, q querier, ownerID, instanceID string) ([]Disk, error) {
	rows, _ := q.Query(ctx, sqlDisksOf, ownerID, instanceID)
	out, err := pgx.CollectRows(rows, scanDisk)
	return out, translate(err)
}

// ListDisks returns the disks of one of the owner's instances that are not
// gone, in slot order (the boot disk first). The instance is not checked:
// the caller has read it.
func (s *Store) ListDisks(ctx context.Context, ownerID, instanceID string) ([]Disk, error) {
	if !validUUID(instanceID) {
		return nil, errdefs.NotFoundf("VM not found")
	}
	return disksOf(ctx, s.pool, ownerID, instanceID)
}

// GetDisk returns one disk of one of the owner's instances; an unknown or
// gone one is NotFound.
func (s *Store) GetDisk(ctx context.Context, ownerID, instanceID, diskID string) (Disk, error) {
	disks, err := s.ListDisks(ctx, ownerID, instanceID)
	if err != nil {
		return Disk{}, err
	}
	return findDisk(disks, diskID)
}

func findDisk(disks []Disk, diskID string) (Disk, error) {
	for _, d := range disks {
		if d.ID == diskID {
			return d, nil
		}
	}
	return Disk{}, errdefs.NotFoundf("disk %s not found", diskID)
}

// NewDisk is a disk a VM is created with.
type NewDisk struct {
	SizeMiB int64
	Boot    bool
}

const sqlInsertDisk = `INSERT INTO instance_disks (id, instance_id, owner_id, slot, boot, size_mib, generation, pending)
VALUES ($1, $2, $3, $4, $5, $6, $7, 'create')`

// insertDisks records the disks an instance is created with: the boot disk
// in slot 0, data disks from slot 1 on in order.
func insertDisks(ctx context.Context, tx pgx.Tx, in Instance, disks []NewDisk) error {
	slot := 1
	for _, d := range disks {
		s := 0
		if !d.Boot {
			s, slot = slot, slot+1
		}
		if s > MaxDiskSlot {
			return errdefs.InvalidArgument("a VM has at most %d data disks", MaxDiskSlot)
		}
		if _, err := tx.Exec(ctx, sqlInsertDisk, uuid.NewString(), in.ID, in.OwnerID, s, d.Boot, d.SizeMiB, in.Generation); err != nil {
			return translate(err)
		}
	}
	return nil
}

// DiskPlan vets a disk change under the instance's row lock, given the
// instance and its disks that are not gone (disk is the one changed, zero
// for an add), and returns the size to write. An error refuses the change.
type DiskPlan func(in Instance, disks []Disk, disk Disk) (int64, error)

// AddDisk gives one of the owner's instances a data disk in its lowest free
// slot, of the size plan returns. The instance's generation moves on, so
// its node makes the disk; the disk is "creating" until the node reports
// that generation. A VM with every slot taken is Conflict; an unknown
// instance NotFound, a deleted one Gone.
func (s *Store) AddDisk(ctx context.Context, ownerID, id string, caller map[string]any, plan DiskPlan) (Disk, error) {
	var out Disk
	_, err := s.UpdateInstance(ctx, ownerID, id, Mutation{
		Action: "add_disk", Caller: caller,
		applyTx: func(ctx context.Context, tx pgx.Tx, in *Instance) error {
			disks, err := disksOf(ctx, tx, in.OwnerID, in.ID)
			if err != nil {
				return err
			}
			size, err := plan(*in, disks, Disk{})
			if err != nil {
				return err
			}
			used := map[int]bool{}
			for _, d := range disks {
				used[d.Slot] = true
			}
			slot := 1
			for used[slot] {
				slot++
			}
			if slot > MaxDiskSlot {
				return errdefs.Conflictf("VM %s already has %d data disks, the most it may have: delete one first", in.ID, MaxDiskSlot)
			}
			// UpdateInstance writes the instance at the next generation.
			out = Disk{ID: uuid.NewString(), InstanceID: in.ID, OwnerID: in.OwnerID, Slot: slot, SizeMiB: size,
				Generation: in.Generation + 1, Pending: DiskCreate, CreatedAt: time.Now(), UpdatedAt: time.Now()}
			_, err = tx.Exec(ctx, sqlInsertDisk, out.ID, in.ID, in.OwnerID, slot, false, size, out.Generation)
			return translate(err)
		},
	})
	if err != nil {
		return Disk{}, err
	}
	return out, nil
}

const sqlChangeDisk = `UPDATE instance_disks SET size_mib = $3, generation = $4, pending = $5, updated_at = now()
WHERE instance_id = $1 AND id = $2`

// changeDisk applies a resize or delete of diskID, vetted by plan.
func (s *Store) changeDisk(ctx context.Context, ownerID, id, diskID, action string, caller map[string]any, plan DiskPlan) (Disk, error) {
	var out Disk
	_, err := s.UpdateInstance(ctx, ownerID, id, Mutation{
		Action: action + "_disk", Caller: caller, Params: map[string]any{"disk": diskID},
		applyTx: func(ctx context.Context, tx pgx.Tx, in *Instance) error {
			disks, err := disksOf(ctx, tx, in.OwnerID, in.ID)
			if err != nil {
				return err
			}
			d, err := findDisk(disks, diskID)
			if err != nil {
				return err
			}
			if d.Pending == DiskDelete {
				return errdefs.NotFoundf("disk %s not found (it is being deleted)", diskID)
			}
			size, err := plan(*in, disks, d)
			if err != nil {
				return err
			}
			d.SizeMiB, d.Generation, d.Pending, d.Applied, d.UpdatedAt = size, in.Generation+1, action, false, time.Now()
			out = d
			_, err = tx.Exec(ctx, sqlChangeDisk, in.ID, diskID, size, d.Generation, action)
			return translate(err)
		},
	})
	if err != nil {
		return Disk{}, err
	}
	return out, nil
}

// ResizeDisk sets a disk of one of the owner's instances to the size plan
// returns; the disk is "resizing" until its node applies it. An unknown
// disk is NotFound.
func (s *Store) ResizeDisk(ctx context.Context, ownerID, id, diskID string, caller map[string]any, plan DiskPlan) (Disk, error) {
	if !validUUID(diskID) {
		return Disk{}, errdefs.NotFoundf("disk %s not found", diskID)
	}
	return s.changeDisk(ctx, ownerID, id, diskID, DiskResize, caller, plan)
}

// DeleteDisk asks for a disk of one of the owner's instances to be removed;
// it is "deleting" until its node applies that, then gone. check vets the
// request. An unknown disk is NotFound.
func (s *Store) DeleteDisk(ctx context.Context, ownerID, id, diskID string, caller map[string]any, check func(in Instance, disk Disk) error) error {
	if !validUUID(diskID) {
		return errdefs.NotFoundf("disk %s not found", diskID)
	}
	_, err := s.changeDisk(ctx, ownerID, id, diskID, DiskDelete, caller, func(in Instance, _ []Disk, d Disk) (int64, error) {
		return d.SizeMiB, check(in, d)
	})
	return err
}

// DiskWant is one disk as a node is asked to hold it.
type DiskWant struct {
	InstanceID string `db:"instance_id"`
	ID         string `db:"id"`
	Slot       int    `db:"slot"`
	Boot       bool   `db:"boot"`
	SizeMiB    int64  `db:"size_mib"`
}

const sqlDiskWants = `SELECT instance_id::text, id::text, slot, boot, size_mib FROM instance_disks
WHERE instance_id = ANY($1::uuid[]) AND pending <> 'delete' ORDER BY instance_id, slot`

// DiskAssignments returns, for the given instances, the disks their node
// must hold (those not deleted), in slot order.
func (s *Store) DiskAssignments(ctx context.Context, ids []string) (map[string][]DiskWant, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	rows, _ := s.pool.Query(ctx, sqlDiskWants, ids)
	wants, err := pgx.CollectRows(rows, pgx.RowToStructByPos[DiskWant])
	if err != nil {
		return nil, translate(err)
	}
	out := map[string][]DiskWant{}
	for _, w := range wants {
		out[w.InstanceID] = append(out[w.InstanceID], w)
	}
	return out, nil
}

// Once the node has applied a disk's delete, its row goes.
const sqlForgetDeletedDisks = `DELETE FROM instance_disks WHERE instance_id = $1 AND pending = 'delete' AND generation <= $2`
