package service

import (
	"context"
	"fmt"
	"time"

	"flotilla/agent/driver"
	"flotilla/api/errdefs"
	"flotilla/store"
)

// isVM reports whether an instance of brand is a virtual machine.
func isVM(brand string) bool { return brand == driver.BrandBhyve || brand == driver.BrandKVM }

// snapshotAllowed refuses a snapshot request on an instance that cannot
// take it: one that failed, has no node, or is a VM not stopped (its disk
// is snapshotted only while QEMU has it closed).
func snapshotAllowed(in store.Instance) error {
	switch {
	case in.State == "failed":
		return errdefs.Conflictf("instance %s failed: it has no disk to snapshot", in.ID)
	case in.NodeID == nil:
		return errdefs.Conflictf("instance %s is on no node: it has no disk to snapshot", in.ID)
	case isVM(in.Brand) && (in.State != "stopped" || in.DesiredState != "stopped"):
		return errdefs.Conflictf("instance %s is a %s VM: stop it before taking a snapshot (a running VM's disk cannot be snapshotted)", in.ID, in.State)
	}
	return nil
}

// CreateSnapshot asks for a snapshot of the instance's disk named name, or
// after the time when name is empty. It answers at once: the snapshot is
// "creating" until the instance's node reports it. An invalid name is
// Invalid; a name in use, a failed instance or a VM not stopped Conflict.
func (s *Service) CreateSnapshot(ctx context.Context, c Caller, id, name string) (store.Snapshot, error) {
	if name != "" {
		if err := driver.CheckSnapshotName(name); err != nil {
			return store.Snapshot{}, err
		}
		return s.Store.CreateSnapshot(ctx, c.AccountID, id, name, c.Audit(), snapshotAllowed)
	}
	base := time.Now().UTC().Format("20060102T150405Z")
	for i := 0; ; i++ {
		name = base
		if i > 0 {
			name = fmt.Sprintf("%s-%d", base, i)
		}
		snap, err := s.Store.CreateSnapshot(ctx, c.AccountID, id, name, c.Audit(), snapshotAllowed)
		if errdefs.Is(err, errdefs.Conflict) && i < 9 {
			if _, gerr := s.Store.GetSnapshot(ctx, c.AccountID, id, name); gerr == nil {
				continue // the name of the time is taken: try the next
			}
		}
		return snap, err
	}
}

// StartFromSnapshot stops the instance, puts its disk back as the snapshot
// has it and starts it. The snapshot must be created.
func (s *Service) StartFromSnapshot(ctx context.Context, c Caller, id, name string) (store.Instance, error) {
	if err := driver.CheckSnapshotName(name); err != nil {
		return store.Instance{}, errdefs.NotFoundf("snapshot %s not found", name)
	}
	return s.Store.StartFromSnapshot(ctx, c.AccountID, id, name, c.Audit(), func(in store.Instance) error {
		if in.State == "failed" || in.NodeID == nil {
			return errdefs.Conflictf("instance %s is %s: it cannot start from a snapshot", in.ID, in.State)
		}
		return nil
	})
}

// DeleteSnapshot asks for the snapshot to be removed from the instance's node.
func (s *Service) DeleteSnapshot(ctx context.Context, c Caller, id, name string) error {
	if err := driver.CheckSnapshotName(name); err != nil {
		return errdefs.NotFoundf("snapshot %s not found", name)
	}
	return s.Store.DeleteSnapshot(ctx, c.AccountID, id, name, c.Audit(), func(in store.Instance, sn store.Snapshot) error {
		if isVM(in.Brand) && sn.State == store.SnapshotCreated && (in.State != "stopped" || in.DesiredState != "stopped") {
			return errdefs.Conflictf("instance %s is a %s VM: stop it before deleting a snapshot (its disk is changed only while the VM is stopped)", in.ID, in.State)
		}
		return nil
	})
}
