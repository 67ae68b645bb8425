package cloudapi

import (
	"net/http"
	"net/url"
	"strconv"

	"github.com/go-chi/chi/v5"

	"flotilla/store"
)

// snapshotRoutes serves machine snapshots: a copy of an instance's disk
// kept on its node, taken and restored by the node's agent.
func (s *Server) snapshotRoutes(r chi.Router) {
	getHead(r, "/machines/{id}/snapshots", s.handle(s.listSnapshots))
	r.Post("/machines/{id}/snapshots", s.handle(s.createSnapshot))
	getHead(r, "/machines/{id}/snapshots/{name}", s.handle(s.getSnapshot))
	r.Post("/machines/{id}/snapshots/{name}", s.handle(s.startFromSnapshot))
	r.Delete("/machines/{id}/snapshots/{name}", s.handle(s.deleteSnapshot))
}

// snapshotJSON is CloudAPI's snapshot object. A snapshot being taken is
// "queued", one being deleted already "deleted".
func snapshotJSON(sn store.Snapshot) map[string]any {
	state := sn.State
	switch {
	case sn.Desired == store.SnapshotDeleted:
		state = "deleted"
	case state == store.SnapshotCreating:
		state = "queued"
	}
	m := map[string]any{"name": sn.Name, "state": state, "created": isoTime(sn.CreatedAt), "updated": isoTime(sn.UpdatedAt)}
	if state == store.SnapshotCreated {
		m["size"] = sn.SizeBytes
	}
	if state == store.SnapshotFailed && sn.Error != "" {
		m["error"] = sn.Error
	}
	return m
}

func (s *Server) listSnapshots(w http.ResponseWriter, r *http.Request) error {
	in, err := s.getOwned(r)
	if err != nil {
		return err
	}
	list, err := s.store.ListSnapshots(r.Context(), caller(r).AccountID, in.ID)
	if err != nil {
		return err
	}
	out := make([]any, 0, len(list))
	for _, sn := range list {
		out = append(out, snapshotJSON(sn))
	}
	w.Header().Set("x-resource-count", strconv.Itoa(len(out)))
	return writeJSON(w, r, http.StatusOK, out)
}

func (s *Server) createSnapshot(w http.ResponseWriter, r *http.Request) error {
	in, err := s.getOwned(r)
	if err != nil {
		return err
	}
	p, err := params(r)
	if err != nil {
		return err
	}
	name, err := stringParam(p, "name")
	if err != nil {
		return err
	}
	sn, err := s.svc.CreateSnapshot(r.Context(), caller(r), in.ID, name)
	if err != nil {
		return err
	}
	w.Header().Set("Location", "/"+caller(r).Login+"/machines/"+in.ID+"/snapshots/"+url.PathEscape(sn.Name))
	return writeJSON(w, r, http.StatusCreated, snapshotJSON(sn))
}

func (s *Server) getSnapshot(w http.ResponseWriter, r *http.Request) error {
	in, err := s.getOwned(r)
	if err != nil {
		return err
	}
	sn, err := s.store.GetSnapshot(r.Context(), caller(r).AccountID, in.ID, pathParam(r, "name"))
	if err != nil {
		return err
	}
	return writeJSON(w, r, http.StatusOK, snapshotJSON(sn))
}

func (s *Server) startFromSnapshot(w http.ResponseWriter, r *http.Request) error {
	in, err := s.getOwned(r)
	if err != nil {
		return err
	}
	if _, err := s.svc.StartFromSnapshot(r.Context(), caller(r), in.ID, pathParam(r, "name")); err != nil {
		return err
	}
	return noContent(w, http.StatusAccepted)
}

func (s *Server) deleteSnapshot(w http.ResponseWriter, r *http.Request) error {
	in, err := s.getOwned(r)
	if err != nil {
		return err
	}
	if err := s.svc.DeleteSnapshot(r.Context(), caller(r), in.ID, pathParam(r, "name")); err != nil {
		return err
	}
	return noContent(w, http.StatusNoContent)
}
