package cloudapi

// Volumes: CloudAPI's ListVolumes, CreateVolume, GetVolume, DeleteVolume
// and ListVolumeSizes over the account's volumes (api/service/volumes.go).
// A volume is ready as soon as it is created: its storage is made on the
// node of the first instance that mounts it.

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"

	"github.com/go-chi/chi/v5"

	"flotilla/api/errdefs"
	"flotilla/api/service"
	"flotilla/store"
)

func (s *Server) volumeRoutes(r chi.Router) {
	getHead(r, "/volumes", s.handle(s.listVolumes))
	r.Post("/volumes", s.handle(s.createVolume))
	getHead(r, "/volumes/{id}", s.handle(s.getVolume))
	r.Post("/volumes/{id}", s.handle(s.updateVolume))
	r.Delete("/volumes/{id}", s.handle(s.deleteVolume))
	getHead(r, "/volumesizes", s.handle(s.listVolumeSizes))
}

func volumeJSON(v store.Volume, refs []string) map[string]any {
	if refs == nil {
		refs = []string{}
	}
	tags := v.Tags
	if tags == nil {
		tags = map[string]any{}
	}
	return map[string]any{"id": v.ID, "name": v.Name, "owner_uuid": v.OwnerID, "type": v.Type, "size": v.SizeMiB,
		"created": isoTime(v.CreatedAt), "state": v.State, "networks": []string{}, "refs": refs, "tags": tags}
}

// volumeNotFound answers a volume the caller does not have: VolumeNotFound
// for one it deleted (what `triton volume delete -w` waits for),
// ResourceNotFound for any other (what `triton volume get` expects).
func (s *Server) volumeNotFound(r *http.Request, err error, id string) error {
	if !errdefs.Is(err, errdefs.NotFound) {
		return err
	}
	if gone, derr := s.store.VolumeDeleted(r.Context(), caller(r).AccountID, id); derr == nil && gone {
		return restErr(http.StatusNotFound, "VolumeNotFound", "volume "+id+" was deleted")
	}
	return restErr(http.StatusNotFound, "ResourceNotFound", "volume "+id+" not found")
}

func (s *Server) volumeWithRefs(r *http.Request, v store.Volume) (map[string]any, error) {
	refs, err := s.store.VolumeUsers(r.Context(), v.OwnerID, v.ID)
	if err != nil {
		return nil, err
	}
	return volumeJSON(v, refs), nil
}

func (s *Server) listVolumes(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	var pred *VolumePredicate
	if raw := q.Get("predicate"); raw != "" {
		p, err := ParseVolumePredicate(raw)
		if err != nil {
			return err
		}
		pred = p
	}
	if pred != nil && (q.Get("name") != "" || q.Get("state") != "" || q.Get("size") != "" || q.Get("type") != "") {
		return errdefs.InvalidArgument("give either predicate or name, state, size and type, not both")
	}
	size := int64(0)
	if v := q.Get("size"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n <= 0 {
			return errdefs.InvalidArgument("size must be a positive number of MiB")
		}
		size = n
	}
	list, err := s.store.ListVolumes(r.Context(), caller(r).AccountID, q.Get("type"))
	if err != nil {
		return err
	}
	out := []any{}
	for _, v := range list {
		if pred != nil && !pred.Match(v) {
			continue
		}
		if st := q.Get("state"); st != "" && v.State != st || st == "" && pred == nil && v.State == "failed" {
			continue
		}
		if size != 0 && v.SizeMiB != size || !nameMatches(q.Get("name"), v.Name) {
			continue
		}
		m, err := s.volumeWithRefs(r, v)
		if err != nil {
			return err
		}
		out = append(out, m)
	}
	w.Header().Set("x-resource-count", strconv.Itoa(len(out)))
	w.Header().Set("x-query-limit", "1000")
	return writeJSON(w, r, http.StatusOK, out)
}

// nameMatches is ListVolumes' name filter: exact, or "*" at the start or
// end for a suffix or prefix match.
func nameMatches(pattern, name string) bool {
	switch {
	case pattern == "":
		return true
	case pattern == "*":
		return true
	case strings.HasPrefix(pattern, "*") && strings.HasSuffix(pattern, "*"):
		return strings.Contains(name, strings.Trim(pattern, "*"))
	case strings.HasPrefix(pattern, "*"):
		return strings.HasSuffix(name, pattern[1:])
	case strings.HasSuffix(pattern, "*"):
		return strings.HasPrefix(name, pattern[:len(pattern)-1])
	}
	return pattern == name
}

func (s *Server) createVolume(w http.ResponseWriter, r *http.Request) error {
	p, err := params(r)
	if err != nil {
		return err
	}
	var req service.VolumeRequest
	if req.Name, err = stringParam(p, "name"); err != nil {
		return err
	}
	if req.Type, err = stringParam(p, "type"); err != nil {
		return err
	}
	if req.Type == "" {
		req.Type = service.VolumeTypeTritonNFS
	}
	if req.Type != service.VolumeTypeTritonNFS {
		return errdefs.InvalidArgument("volume type %q is not supported: use tritonnfs", req.Type)
	}
	switch v := p["size"].(type) {
	case nil:
	case json.Number, string:
		n, err := strconv.ParseInt(fmtString(v), 10, 64)
		if err != nil || n <= 0 {
			return errdefs.InvalidArgument("size must be a positive number of MiB")
		}
		req.SizeMiB = n
	default:
		return errdefs.InvalidArgument("size must be a number of MiB")
	}
	if req.Networks, err = stringList(p, "networks"); err != nil {
		return err
	}
	if req.Affinity, err = stringList(p, "affinity"); err != nil {
		return err
	}
	switch t := p["tags"].(type) {
	case nil:
	case map[string]any:
		req.Tags = t
	default:
		return errdefs.InvalidArgument("tags must be an object")
	}
	v, err := s.svc.CreateVolume(r.Context(), caller(r), req)
	if err != nil {
		return err
	}
	return writeJSON(w, r, http.StatusCreated, volumeJSON(v, nil))
}

func fmtString(v any) string {
	if n, ok := v.(json.Number); ok {
		return n.String()
	}
	s, _ := v.(string)
	return s
}

// stringList reads a parameter that is an array of strings (or one string).
func stringList(p map[string]any, k string) ([]string, error) {
	switch v := p[k].(type) {
	case nil:
		return nil, nil
	case string:
		if v == "" {
			return nil, nil
		}
		return []string{v}, nil
	case []any:
		out := make([]string, 0, len(v))
		for _, x := range v {
			sx, ok := x.(string)
			if !ok {
				return nil, errdefs.InvalidArgument("%s must be an array of strings", k)
			}
			out = append(out, sx)
		}
		return out, nil
	}
	return nil, errdefs.InvalidArgument("%s must be an array of strings", k)
}

func (s *Server) getVolume(w http.ResponseWriter, r *http.Request) error {
	id := pathParam(r, "id")
	v, err := s.store.GetVolume(r.Context(), caller(r).AccountID, id)
	if err != nil {
		return s.volumeNotFound(r, err, id)
	}
	m, err := s.volumeWithRefs(r, v)
	if err != nil {
		return err
	}
	return writeJSON(w, r, http.StatusOK, m)
}

// updateVolume is UpdateVolume: a volume's name is all that changes.
func (s *Server) updateVolume(w http.ResponseWriter, r *http.Request) error {
	p, err := params(r)
	if err != nil {
		return err
	}
	for k := range p {
		if k != "name" {
			return errdefs.InvalidArgument("%s cannot be updated: a volume's name is all that can change", k)
		}
	}
	name, err := stringParam(p, "name")
	if err != nil {
		return err
	}
	if name == "" {
		return errdefs.InvalidArgument("name is required: give the volume's new name")
	}
	id := pathParam(r, "id")
	v, err := s.svc.RenameVolume(r.Context(), caller(r), id, name)
	if err != nil {
		return s.volumeNotFound(r, err, id)
	}
	out, err := s.volumeWithRefs(r, v)
	if err != nil {
		return err
	}
	return writeJSON(w, r, http.StatusOK, out)
}

func (s *Server) deleteVolume(w http.ResponseWriter, r *http.Request) error {
	id := pathParam(r, "id")
	if _, err := s.svc.DeleteVolume(r.Context(), caller(r), id); err != nil {
		return s.volumeNotFound(r, err, id)
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) listVolumeSizes(w http.ResponseWriter, r *http.Request) error {
	if t := r.URL.Query().Get("type"); t != "" && t != service.VolumeTypeTritonNFS {
		return errdefs.InvalidArgument("volume type %q is not supported: use tritonnfs", t)
	}
	out := make([]map[string]any, 0, len(service.VolumeSizesMiB))
	for _, n := range service.VolumeSizesMiB {
		out = append(out, map[string]any{"size": n, "type": service.VolumeTypeTritonNFS})
	}
	return writeJSON(w, r, http.StatusOK, out)
}

// VolumePredicate is ListVolumes' predicate: {"and":[...]}, {"or":[...]},
// {"eq":[field, value]} or {"ne":[field, value]} over the fields id, name,
// type, state and size.
type VolumePredicate struct {
	Op    string // and, or, eq, ne
	Subs  []*VolumePredicate
	Field string
	Value string
}

// maxPredicateDepth bounds nesting, so a hostile predicate cannot recurse
// without end.
const maxPredicateDepth = 16

// ParseVolumePredicate parses a predicate; it returns Invalid saying what
// is wrong for anything else.
func ParseVolumePredicate(raw string) (*VolumePredicate, error) {
	var v any
	if err := json.Unmarshal([]byte(raw), &v); err != nil {
		return nil, errdefs.InvalidArgument("predicate is not JSON: %v", err)
	}
	return parsePredicate(v, 0)
}

func parsePredicate(v any, depth int) (*VolumePredicate, error) {
	if depth > maxPredicateDepth {
		return nil, errdefs.InvalidArgument("predicate is nested more than %d deep", maxPredicateDepth)
	}
	m, ok := v.(map[string]any)
	if !ok || len(m) != 1 {
		return nil, errdefs.InvalidArgument("a predicate is an object with one key: and, or, eq or ne")
	}
	for op, arg := range m {
		list, ok := arg.([]any)
		if !ok {
			return nil, errdefs.InvalidArgument("predicate %s takes an array", op)
		}
		switch op {
		case "and", "or":
			p := &VolumePredicate{Op: op}
			for _, sub := range list {
				sp, err := parsePredicate(sub, depth+1)
				if err != nil {
					return nil, err
				}
				p.Subs = append(p.Subs, sp)
			}
			return p, nil
		case "eq", "ne":
			if len(list) != 2 {
				return nil, errdefs.InvalidArgument("predicate %s takes [field, value]", op)
			}
			field, ok := list[0].(string)
			if !ok {
				return nil, errdefs.InvalidArgument("predicate %s: the field must be a string", op)
			}
			switch field {
			case "id", "name", "type", "state", "size":
			default:
				return nil, errdefs.InvalidArgument("predicate field %q is not one of id, name, type, state, size", field)
			}
			var val string
			switch x := list[1].(type) {
			case string:
				val = x
			case float64:
				val = strconv.FormatFloat(x, 'f', -1, 64)
			case json.Number:
				val = x.String()
			default:
				return nil, errdefs.InvalidArgument("predicate %s %s: the value must be a string or a number", op, field)
			}
			return &VolumePredicate{Op: op, Field: field, Value: val}, nil
		default:
			return nil, errdefs.InvalidArgument("predicate operator %q is not one of and, or, eq, ne", op)
		}
	}
	return nil, errdefs.InvalidArgument("empty predicate")
}

// Match reports whether v satisfies the predicate.
func (p *VolumePredicate) Match(v store.Volume) bool {
	switch p.Op {
	case "and":
		for _, s := range p.Subs {
			if !s.Match(v) {
				return false
			}
		}
		return true
	case "or":
		for _, s := range p.Subs {
			if s.Match(v) {
				return true
			}
		}
		return false
	}
	var got string
	switch p.Field {
	case "id":
		got = v.ID
	case "name":
		got = v.Name
	case "type":
		got = v.Type
	case "state":
		got = v.State
	case "size":
		got = strconv.FormatInt(v.SizeMiB, 10)
	}
	eq := got == p.Value || p.Field == "name" && strings.Contains(p.Value, "*") && nameMatches(p.Value, got)
	return eq == (p.Op == "eq")
}

// volumeMounts reads CreateMachine's volumes: [{name, type, mode,
// mountpoint}], type tritonnfs, mode rw (default) or ro.
func volumeMounts(v any) ([]service.MountRequest, error) {
	if v == nil {
		return nil, nil
	}
	list, ok := v.([]any)
	if !ok {
		return nil, errdefs.InvalidArgument("volumes must be an array of {name, mountpoint, mode, type}")
	}
	var out []service.MountRequest
	for _, x := range list {
		m, ok := x.(map[string]any)
		if !ok {
			return nil, errdefs.InvalidArgument("volumes must be an array of {name, mountpoint, mode, type}")
		}
		name, _ := m["name"].(string)
		mp, _ := m["mountpoint"].(string)
		mode, _ := m["mode"].(string)
		typ, _ := m["type"].(string)
		if name == "" || mp == "" {
			return nil, errdefs.InvalidArgument("each volume needs a name and a mountpoint")
		}
		if typ != "" && typ != service.VolumeTypeTritonNFS {
			return nil, errdefs.InvalidArgument("volume %s: type %q is not supported: use tritonnfs", name, typ)
		}
		if mode != "" && mode != "rw" && mode != "ro" {
			return nil, errdefs.InvalidArgument("volume %s: mode must be rw or ro, not %q", name, mode)
		}
		out = append(out, service.MountRequest{Name: name, Destination: mp, ReadOnly: mode == "ro"})
	}
	return out, nil
}
