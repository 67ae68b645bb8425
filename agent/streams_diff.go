package agent

// The stream routes that read what an instance changed: its changes
// (`docker diff`), its whole filesystem (`docker export`) and its changes
// as an OCI layer (`docker commit`, CloudAPI CreateImageFromMachine).

import (
	"encoding/json"
	"io"
	"net/http"

	"flotilla/agent/driver"
	"flotilla/api/agentapi/wire"
	"flotilla/api/errdefs"
)

func (s *StreamServer) diffRoutes(m *http.ServeMux, prefix string) {
	m.HandleFunc("GET "+prefix+"/changes", s.handle(s.changes))
	m.HandleFunc("GET "+prefix+"/export", s.handle(s.exportTar(func(d driver.Differ) func(*http.Request, io.Writer) error {
		return func(r *http.Request, w io.Writer) error { return d.ExportFilesystem(r.Context(), r.PathValue("id"), w) }
	})))
	m.HandleFunc("GET "+prefix+"/layer", s.handle(s.exportTar(func(d driver.Differ) func(*http.Request, io.Writer) error {
		return func(r *http.Request, w io.Writer) error { return d.ExportChanges(r.Context(), r.PathValue("id"), w) }
	})))
}

func (s *StreamServer) differ() (driver.Differ, error) {
	d, ok := s.drv.(driver.Differ)
	if !ok {
		return nil, errdefs.New(errdefs.NotImplemented, "the %s driver keeps no record of an instance's changes to its image", s.drv.Name())
	}
	return d, nil
}

func (s *StreamServer) changes(w http.ResponseWriter, r *http.Request) error {
	d, err := s.differ()
	if err != nil {
		return err
	}
	list, err := d.Changes(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	out := make([]wire.Change, 0, len(list))
	for _, c := range list {
		out = append(out, wire.Change{Path: c.Path, Kind: uint8(c.Kind)})
	}
	w.Header().Set("Content-Type", "application/json")
	return json.NewEncoder(w).Encode(out)
}

// exportTar streams the tar that write makes. An error before the first
// byte is answered as an error; after it the connection is aborted, so the
// caller never takes a cut tar for a whole one.
func (s *StreamServer) exportTar(pick func(driver.Differ) func(*http.Request, io.Writer) error) func(http.ResponseWriter, *http.Request) error {
	return func(w http.ResponseWriter, r *http.Request) error {
		d, err := s.differ()
		if err != nil {
			return err
		}
		w.Header().Set("Content-Type", "application/x-tar")
		cw := &countingWriter{w: w}
		if err := pick(d)(r, cw); err != nil {
			if cw.n == 0 {
				return err
			}
			s.log.Warn("tar cut short", "instance", r.PathValue("id"), "path", r.URL.Path, "err", err)
			panic(http.ErrAbortHandler)
		}
		return nil
	}
}
