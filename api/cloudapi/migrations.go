package cloudapi

import (
	"encoding/json"
	"net/http"
	"strconv"

	"github.com/go-chi/chi/v5"

	"flotilla/api/errdefs"
	"flotilla/api/service"
)

// migrationRoutes serves instance migrations: MigrateMachine (also as
// POST /machines/{id}?action=migrate&migration_action=...), its watch
// stream, and List/GetMigration.
func (s *Server) migrationRoutes(r chi.Router) {
	r.Post("/machines/{id}/migrate", s.handle(func(w http.ResponseWriter, r *http.Request) error {
		p, err := params(r)
		if err != nil {
			return err
		}
		action, err := stringParam(p, "action")
		if err != nil {
			return err
		}
		return s.migrate(w, r, p, action)
	}))
	getHead(r, "/migrations", s.handle(s.listMigrations))
	getHead(r, "/migrations/{id}", s.handle(s.getMigration))
}

// migrate carries out a migration action, or streams the progress of the
// instance's migration for "watch" (newline-separated JSON events, the
// last of type "end").
func (s *Server) migrate(w http.ResponseWriter, r *http.Request, p map[string]any, action string) error {
	c, id := caller(r), pathParam(r, "id")
	if _, err := s.getOwned(r); err != nil {
		return err
	}
	if action == "watch" {
		return s.watchMigration(w, r)
	}
	var affinity []string
	switch a := p["affinity"].(type) {
	case nil:
	case string:
		affinity = []string{a}
	case []any:
		for _, v := range a {
			str, ok := v.(string)
			if !ok {
				return errdefs.InvalidArgument("affinity must be an array of strings")
			}
			affinity = append(affinity, str)
		}
	default:
		return errdefs.InvalidArgument("affinity must be an array of strings")
	}
	m, err := s.svc.Migrate(r.Context(), c, id, action, affinity)
	if err != nil {
		return err
	}
	return writeJSON(w, r, http.StatusOK, service.MigrationJSON(m))
}

func (s *Server) watchMigration(w http.ResponseWriter, r *http.Request) error {
	c, id := caller(r), pathParam(r, "id")
	// Errors before the first event are answered as errors.
	if _, err := s.svc.GetMigration(r.Context(), c, id); err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/x-json-stream")
	w.WriteHeader(http.StatusOK)
	fl, _ := w.(http.Flusher)
	if fl != nil {
		fl.Flush()
	}
	enc := json.NewEncoder(w)
	err := s.svc.WatchMigration(r.Context(), c, id, func(ev service.MigrationEvent) error {
		if err := enc.Encode(ev); err != nil {
			return err
		}
		if fl != nil {
			fl.Flush()
		}
		return nil
	})
	if err != nil {
		s.log.Warn("migration watch ended", "instance", id, "err", err)
	}
	return nil
}

func (s *Server) listMigrations(w http.ResponseWriter, r *http.Request) error {
	list, err := s.svc.ListMigrations(r.Context(), caller(r))
	if err != nil {
		return err
	}
	out := make([]any, 0, len(list))
	for _, m := range list {
		out = append(out, service.MigrationJSON(m))
	}
	w.Header().Set("x-resource-count", strconv.Itoa(len(out)))
	return writeJSON(w, r, http.StatusOK, out)
}

func (s *Server) getMigration(w http.ResponseWriter, r *http.Request) error {
	m, err := s.svc.GetMigration(r.Context(), caller(r), pathParam(r, "id"))
	if err != nil {
		return err
	}
	return writeJSON(w, r, http.StatusOK, service.MigrationJSON(m))
}
