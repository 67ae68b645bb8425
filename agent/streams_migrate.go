package agent

// The stream routes of migrations. The control plane moves an instance by
// reading its disk on the node it leaves and writing it to the node it goes
// to, so that nodes never talk to each other and a node is given only the
// disks of instances the control plane moves onto it:
//
//	GET    .../migration/disk           the instance's disk (driver.Migrator.ExportDisk)
//	PUT    .../migration/disk?layer=K   stage a disk for an instance about to be assigned here
//	DELETE .../migration/disk           drop a staged disk
//	POST   .../migration/release        give back the host resources of the stopped instance
//	POST   .../migration/remove         remove the node's copy of an instance that moved away
//	POST   .../migration/discard        delete the instance a failed switch left on this node

import (
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"flotilla/agent/driver"
	"flotilla/api/agentapi/wire"
	"flotilla/api/errdefs"
)

var instanceID = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

func (s *StreamServer) migrationRoutes(m *http.ServeMux, prefix string) {
	m.HandleFunc("GET "+prefix+"/migration/disk", s.handle(s.exportDisk))
	m.HandleFunc("PUT "+prefix+"/migration/disk", s.handle(s.stageDisk))
	m.HandleFunc("DELETE "+prefix+"/migration/disk", s.handle(s.dropDisk))
	for _, op := range []string{"release", "remove", "discard"} {
		m.HandleFunc("POST "+prefix+"/migration/"+op, s.handle(func(w http.ResponseWriter, r *http.Request) error {
			if s.Migration == nil {
				return errdefs.New(errdefs.NotImplemented, "this node takes no migrations")
			}
			id, err := migratingID(r)
			if err != nil {
				return err
			}
			if err := s.Migration(r.Context(), id, op); err != nil {
				return err
			}
			w.WriteHeader(http.StatusNoContent)
			return nil
		}))
	}
}

func migratingID(r *http.Request) (string, error) {
	id := r.PathValue("id")
	if !instanceID.MatchString(id) {
		return "", errdefs.NotFoundf("instance %s not found", id)
	}
	return id, nil
}

func (s *StreamServer) migrator() (driver.Migrator, error) {
	m, ok := s.drv.(driver.Migrator)
	if !ok {
		return nil, errdefs.New(errdefs.NotImplemented, "the %s driver cannot move instances between nodes", s.drv.Name())
	}
	return m, nil
}

func (s *StreamServer) exportDisk(w http.ResponseWriter, r *http.Request) error {
	m, err := s.migrator()
	if err != nil {
		return err
	}
	id, err := migratingID(r)
	if err != nil {
		return err
	}
	disk, err := m.ExportDisk(r.Context(), id)
	if err != nil {
		return err
	}
	defer disk.Close()
	w.Header().Set("Content-Type", "application/x-tar")
	w.Header().Set(wire.StreamDiskLayerHeader, disk.Layer)
	if disk.Size >= 0 {
		w.Header().Set(wire.StreamDiskSizeHeader, strconv.FormatInt(disk.Size, 10))
	}
	cw := &countingWriter{w: w}
	if _, err := io.Copy(cw, disk); err != nil {
		if cw.n == 0 {
			return errdefs.Wrap(errdefs.Internal, err, "read the disk of %s", id)
		}
		s.log.Warn("disk export cut short", "instance", id, "err", err)
		panic(http.ErrAbortHandler)
	}
	return nil
}

// staged returns the paths of an instance's staged disk and of its kind.
func staged(dir, id string) (tarPath, layerPath string) {
	return filepath.Join(dir, id+".tar"), filepath.Join(dir, id+".layer")
}

func (s *StreamServer) stageDisk(w http.ResponseWriter, r *http.Request) error {
	if s.StageDir == "" {
		return errdefs.New(errdefs.NotImplemented, "this node takes no migrations")
	}
	if _, err := s.migrator(); err != nil {
		return err
	}
	id, err := migratingID(r)
	if err != nil {
		return err
	}
	layer := r.URL.Query().Get("layer")
	if layer == "" || strings.ContainsAny(layer, "/\n") {
		return errdefs.InvalidArgument("a staged disk needs its layer kind (layer=...)")
	}
	if err := os.MkdirAll(s.StageDir, 0o700); err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "create %s", s.StageDir)
	}
	f, err := os.CreateTemp(s.StageDir, ".new-"+id+"-")
	if err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "stage the disk of %s", id)
	}
	defer os.Remove(f.Name())
	_, err = io.Copy(f, r.Body)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return errdefs.Wrap(errdefs.Unavailable, err, "receive the disk of %s", id)
	}
	tarPath, layerPath := staged(s.StageDir, id)
	if err := os.WriteFile(layerPath, []byte(layer), 0o600); err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "stage the disk of %s", id)
	}
	if err := os.Rename(f.Name(), tarPath); err != nil {
		return errdefs.Wrap(errdefs.Internal, err, "stage the disk of %s", id)
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *StreamServer) dropDisk(w http.ResponseWriter, r *http.Request) error {
	id, err := migratingID(r)
	if err != nil {
		return err
	}
	if s.StageDir != "" {
		dropStaged(s.StageDir, id)
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func dropStaged(dir, id string) {
	tarPath, layerPath := staged(dir, id)
	os.Remove(tarPath)
	os.Remove(layerPath)
}

// stageDir is where this agent keeps the disks staged for migrations.
func (a *Agent) stageDir() string { return filepath.Join(a.cfg.DataDir, "migrations") }

// importDisk puts the staged disk of instance id into the instance just
// created, and drops it from the stage once in. A missing stage is
// Invalid: the instance must not start with an empty disk.
func (a *Agent) importDisk(ctx context.Context, id string) error {
	m, ok := a.drv.(driver.Migrator)
	if !ok {
		return errdefs.InvalidArgument("the %s driver on this node cannot take a migrated instance", a.drv.Name())
	}
	tarPath, layerPath := staged(a.stageDir(), id)
	layer, err := os.ReadFile(layerPath)
	if err != nil {
		return errdefs.InvalidArgument("the disk a migration copied for instance %s is not on this node", id)
	}
	f, err := os.Open(tarPath)
	if err != nil {
		return errdefs.InvalidArgument("the disk a migration copied for instance %s is not on this node", id)
	}
	defer f.Close()
	if err := m.ImportDisk(ctx, id, string(layer), f); err != nil {
		return err
	}
	dropStaged(a.stageDir(), id)
	return nil
}

// migrationOp carries out a migration's request on an instance of this node.
//
// release: the instance, stopped for its switch, gives back what it holds
// on the host (driver.Releaser) and keeps its disk, so that the node it
// moves to can use the same names and a move back can start it again.
// remove: the node's copy of an instance that moved away goes, leaving the
// host resources named after it alone. discard: an instance a failed
// switch left here is deleted whole (the source released its resources).
// From the first request on, the reconcile loop leaves the instance alone
// until the control plane assigns it here again.
func (a *Agent) migrationOp(ctx context.Context, id, op string) error {
	a.mu.Lock()
	a.moved[id] = true
	a.mu.Unlock()
	log := a.log.With("instance", id, "migration", op)
	switch op {
	case "release":
		st, err := a.drv.Inspect(ctx, id)
		if err != nil {
			return err
		}
		if st.State == driver.StateRunning {
			return errdefs.Conflictf("instance %s still runs on this node: stop it before it moves", id)
		}
		if r, ok := a.drv.(driver.Releaser); ok {
			if err := r.Release(ctx, id); err != nil {
				return err
			}
		}
		log.Info("instance released for its move to another node")
		return nil
	case "remove", "discard":
		var err error
		if op == "remove" {
			m, ok := a.drv.(driver.Migrator)
			if !ok {
				return errdefs.New(errdefs.NotImplemented, "the %s driver cannot move instances between nodes", a.drv.Name())
			}
			err = m.RemoveLocal(ctx, id)
		} else {
			err = a.drv.Delete(ctx, id)
		}
		if err != nil {
			return err
		}
		dropStaged(a.stageDir(), id)
		a.mu.Lock()
		delete(a.desired, id)
		a.mu.Unlock()
		if err := a.forget(id); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		log.Info("instance removed from this node after its migration")
		return nil
	}
	return errdefs.NotFoundf("no migration request %q", op)
}
