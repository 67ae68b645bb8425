package cloudapi

import (
	"net/http"

	"github.com/go-chi/chi/v5"
	"github.com/google/uuid"

	"flotilla/api/errdefs"
	"flotilla/openapi"
	"flotilla/store"
)

func (s *Server) miscRoutes(r chi.Router) {
	r.Get("/datacenters", s.handle(s.listDatacenters))
	r.Get("/datacenters/{dc}", s.handle(s.getDatacenter))
	r.Get("/services", s.handle(s.listServices))
	getHead(r, "/config", s.handle(s.getConfig))
	r.Put("/config", s.handle(s.updateConfig))
}

func isUUID(s string) bool {
	_, err := uuid.Parse(s)
	return err == nil && len(s) == 36
}

func (s *Server) listDatacenters(w http.ResponseWriter, r *http.Request) error {
	w.Header().Set("Triton-Datacenter-Name", s.cfg.Datacenter)
	return writeJSON(w, r, http.StatusOK, map[string]string{s.cfg.Datacenter: s.cfg.URL})
}

func (s *Server) getDatacenter(w http.ResponseWriter, r *http.Request) error {
	dc := pathParam(r, "dc")
	if dc != s.cfg.Datacenter {
		return errdefs.NotFoundf("%s is not an available datacenter", dc)
	}
	w.Header().Set("Location", s.cfg.URL)
	return writeJSON(w, r, http.StatusFound, map[string]string{"code": "ResourceMoved", "message": s.cfg.Datacenter + " " + s.cfg.URL})
}

func (s *Server) listServices(w http.ResponseWriter, r *http.Request) error {
	out := map[string]string{"cloudapi": s.cfg.URL}
	if s.cfg.DockerURL != "" {
		out["docker"] = s.cfg.DockerURL
	}
	return writeJSON(w, r, http.StatusOK, out)
}

func (s *Server) getConfig(w http.ResponseWriter, r *http.Request) error {
	a, err := s.store.AccountByID(r.Context(), caller(r).AccountID)
	if err != nil {
		return err
	}
	return writeJSON(w, r, http.StatusOK, configJSON(a))
}

func configJSON(a store.Account) map[string]any {
	m := map[string]any{}
	if a.DefaultNetwork != nil {
		m["default_network"] = *a.DefaultNetwork
	}
	return m
}

func (s *Server) updateConfig(w http.ResponseWriter, r *http.Request) error {
	p, err := params(r)
	if err != nil {
		return err
	}
	dn, err := stringParam(p, "default_network")
	if err != nil {
		return err
	}
	c := caller(r)
	if dn != "" {
		n, err := s.store.GetNetwork(r.Context(), c.AccountID, dn)
		if err != nil {
			return errdefs.InvalidArgument("unknown network %s", dn)
		}
		dn = n.ID
	}
	var upd store.AccountUpdate
	if dn != "" {
		upd.DefaultNetwork = &dn
	}
	a, err := s.store.UpdateAccount(r.Context(), c.AccountID, upd)
	if err != nil {
		return err
	}
	return writeJSON(w, r, http.StatusOK, configJSON(a))
}

func serveSpec(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/yaml")
	w.Write(openapi.CloudAPI)
}
