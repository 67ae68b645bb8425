package cloudapi

import (
	"net/http"
	"path"
	"strconv"

	"github.com/go-chi/chi/v5"

	"flotilla/store"
)

func (s *Server) packageRoutes(r chi.Router) {
	getHead(r, "/packages", s.handle(s.listPackages))
	getHead(r, "/packages/{id}", s.handle(s.getPackage))
}

func packageJSON(p store.Package) map[string]any {
	m := map[string]any{"id": p.ID, "name": p.Name, "memory": p.MemoryMiB, "disk": p.DiskMiB, "swap": p.SwapMiB,
		"lwps": p.LWPs, "vcpus": p.VCPUs, "version": p.Version, "default": p.Default}
	if p.Group != "" {
		m["group"] = p.Group
	}
	if p.Description != "" {
		m["description"] = p.Description
	}
	if p.Brand != "" {
		m["brand"] = p.Brand
	}
	if p.FlexibleDisk {
		m["flexible_disk"] = true
	}
	return m
}

// matchFilter compares a package field with a ListPackages filter value,
// where '*' globs are allowed.
func matchFilter(value, filter string) bool {
	ok, err := path.Match(filter, value)
	return err == nil && ok
}

func (s *Server) listPackages(w http.ResponseWriter, r *http.Request) error {
	pkgs, err := s.store.ListPackages(r.Context())
	if err != nil {
		return err
	}
	q := r.URL.Query()
	out := []any{}
	for _, p := range pkgs {
		fields := map[string]string{"name": p.Name, "memory": strconv.FormatInt(p.MemoryMiB, 10),
			"disk": strconv.FormatInt(p.DiskMiB, 10), "swap": strconv.FormatInt(p.SwapMiB, 10),
			"lwps": strconv.Itoa(p.LWPs), "version": p.Version, "vcpus": strconv.Itoa(p.VCPUs),
			"group": p.Group, "brand": p.Brand, "flexible_disk": strconv.FormatBool(p.FlexibleDisk)}
		keep := true
		for k, v := range fields {
			if f := q.Get(k); f != "" && !matchFilter(v, f) {
				keep = false
			}
		}
		if keep {
			out = append(out, packageJSON(p))
		}
	}
	return writeJSON(w, r, http.StatusOK, out)
}

func (s *Server) getPackage(w http.ResponseWriter, r *http.Request) error {
	p, err := s.store.GetPackage(r.Context(), pathParam(r, "id"))
	if err != nil {
		return err
	}
	return writeJSON(w, r, http.StatusOK, packageJSON(p))
}
