package cloudapi

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/go-chi/chi/v5"

	"flotilla/api/errdefs"
	"flotilla/api/service"
	"flotilla/store"
)

// diskRoutes serves machine disks: the disks of a VM on a flexible-disk
// package, changed while it is stopped and applied by its node.
func (s *Server) diskRoutes(r chi.Router) {
	getHead(r, "/machines/{id}/disks", s.handle(s.listDisks))
	r.Post("/machines/{id}/disks", s.handle(s.createDisk))
	getHead(r, "/machines/{id}/disks/{disk}", s.handle(s.getDisk))
	r.Post("/machines/{id}/disks/{disk}", s.handle(s.resizeDisk))
	r.Delete("/machines/{id}/disks/{disk}", s.handle(s.deleteDisk))
}

// diskJSON is CloudAPI's disk object; size is in MiB.
func diskJSON(d store.Disk) map[string]any {
	return map[string]any{"id": d.ID, "size": d.SizeMiB, "boot": d.Boot, "state": d.State(), "block_size": 512,
		"pci_slot": fmt.Sprintf("0:%d:0", service.DiskPCISlot(d.Slot))}
}

// maxDiskMiB bounds a disk's size (1 EiB), so sums never overflow.
const maxDiskMiB = 1 << 40

// diskSize reads a disk size: a positive integer of MiB, or (when
// remainingOK) the string "remaining".
func diskSize(v any, field string, remainingOK bool) (size int64, remaining bool, err error) {
	want := "a positive integer number of MiB"
	if remainingOK {
		want += ` or "remaining"`
	}
	var text string
	switch x := v.(type) {
	case json.Number:
		text = x.String()
	case string:
		if remainingOK && x == "remaining" {
			return 0, true, nil
		}
		text = x
	case nil:
		return 0, false, &errdefs.Error{Code: errdefs.Invalid, Message: field + " is required: " + want, Reason: "MissingParameter"}
	}
	n, perr := strconv.ParseInt(strings.TrimSpace(text), 10, 64)
	if perr != nil || n <= 0 {
		return 0, false, errdefs.InvalidArgument("%s must be %s, not %v", field, want, v)
	}
	if n > maxDiskMiB {
		return 0, false, errdefs.InvalidArgument("%s %d MiB is larger than any package's disk", field, n)
	}
	return n, false, nil
}

// diskRequests reads CreateMachine's disks: an array of {size, boot?}
// (a JSON string of one in a form body).
func diskRequests(v any) ([]service.DiskRequest, error) {
	if s, ok := v.(string); ok {
		var parsed any
		if err := jsonUnmarshal([]byte(s), &parsed); err != nil {
			return nil, errdefs.InvalidArgument("disks must be an array of {size, boot}: %v", err)
		}
		v = parsed
	}
	if v == nil {
		return nil, nil
	}
	list, ok := v.([]any)
	if !ok {
		return nil, errdefs.InvalidArgument("disks must be an array of {size, boot}")
	}
	if len(list) > service.MaxDisks {
		return nil, errdefs.InvalidArgument("a VM has at most %d disks, not %d", service.MaxDisks, len(list))
	}
	out := make([]service.DiskRequest, 0, len(list))
	for i, x := range list {
		m, ok := x.(map[string]any)
		if !ok {
			return nil, errdefs.InvalidArgument("disks[%d] must be an object {size, boot}", i)
		}
		var d service.DiskRequest
		if sz, ok := m["size"]; ok && sz != nil {
			var err error
			if d.SizeMiB, d.Remaining, err = diskSize(sz, fmt.Sprintf("disks[%d].size", i), true); err != nil {
				return nil, err
			}
		}
		if b, ok := m["boot"]; ok && b != nil {
			boot, err := boolParam(b)
			if err != nil {
				return nil, errdefs.InvalidArgument("disks[%d].boot must be a boolean", i)
			}
			d.Boot = &boot
		}
		if bs, ok := m["block_size"]; ok && bs != nil {
			if n, ok := bs.(json.Number); !ok || n.String() != "512" {
				return nil, errdefs.InvalidArgument("disks[%d].block_size: only 512 is supported", i)
			}
		}
		out = append(out, d)
	}
	return out, nil
}

// ownedVMWithDisks reads the machine of the path and refuses one that has
// no disks (a container).
func (s *Server) ownedVMWithDisks(r *http.Request) (store.Instance, error) {
	in, err := s.getOwned(r)
	if err != nil {
		return store.Instance{}, err
	}
	return in, s.svc.CheckDisksVisible(r.Context(), in)
}

// addDisks adds a flexible-disk VM's disks, "flexible" and "free_space"
// to its machine object m, as GetMachine shows them.
func (s *Server) addDisks(r *http.Request, in store.Instance, m map[string]any) error {
	if machineType(in.Brand) != "virtualmachine" || s.svc.CheckDisksVisible(r.Context(), in) != nil {
		return nil
	}
	list, err := s.store.ListDisks(r.Context(), in.OwnerID, in.ID)
	if err != nil {
		return err
	}
	disks := make([]any, 0, len(list))
	for _, d := range list {
		disks = append(disks, diskJSON(d))
	}
	quota, used := service.DiskSpace(in, list)
	m["flexible"], m["disks"], m["free_space"] = true, disks, max(quota-used, 0)
	return nil
}

func (s *Server) listDisks(w http.ResponseWriter, r *http.Request) error {
	in, err := s.ownedVMWithDisks(r)
	if err != nil {
		return err
	}
	list, err := s.store.ListDisks(r.Context(), caller(r).AccountID, in.ID)
	if err != nil {
		return err
	}
	out := make([]any, 0, len(list))
	for _, d := range list {
		out = append(out, diskJSON(d))
	}
	w.Header().Set("x-resource-count", strconv.Itoa(len(out)))
	return writeJSON(w, r, http.StatusOK, out)
}

func (s *Server) getDisk(w http.ResponseWriter, r *http.Request) error {
	in, err := s.ownedVMWithDisks(r)
	if err != nil {
		return err
	}
	d, err := s.store.GetDisk(r.Context(), caller(r).AccountID, in.ID, pathParam(r, "disk"))
	if err != nil {
		return err
	}
	return writeJSON(w, r, http.StatusOK, diskJSON(d))
}

func (s *Server) createDisk(w http.ResponseWriter, r *http.Request) error {
	in, err := s.ownedVMWithDisks(r)
	if err != nil {
		return err
	}
	p, err := params(r)
	if err != nil {
		return err
	}
	size, remaining, err := diskSize(p["size"], "size", true)
	if err != nil {
		return err
	}
	d, err := s.svc.AddDisk(r.Context(), caller(r), in.ID, size, remaining)
	if err != nil {
		return err
	}
	w.Header().Set("Location", "/"+caller(r).Login+"/machines/"+in.ID+"/disks/"+d.ID)
	return writeJSON(w, r, http.StatusOK, diskJSON(d))
}

func (s *Server) resizeDisk(w http.ResponseWriter, r *http.Request) error {
	in, err := s.ownedVMWithDisks(r)
	if err != nil {
		return err
	}
	p, err := params(r)
	if err != nil {
		return err
	}
	size, _, err := diskSize(p["size"], "size", false)
	if err != nil {
		return err
	}
	shrink := false
	if v, ok := p["dangerous_allow_shrink"]; ok && v != nil {
		if shrink, err = boolParam(v); err != nil {
			return errdefs.InvalidArgument("dangerous_allow_shrink must be a boolean")
		}
	}
	d, err := s.svc.ResizeDisk(r.Context(), caller(r), in.ID, pathParam(r, "disk"), size, shrink)
	if err != nil {
		return err
	}
	return writeJSON(w, r, http.StatusOK, diskJSON(d))
}

func (s *Server) deleteDisk(w http.ResponseWriter, r *http.Request) error {
	in, err := s.ownedVMWithDisks(r)
	if err != nil {
		return err
	}
	if err := s.svc.DeleteDisk(r.Context(), caller(r), in.ID, pathParam(r, "disk")); err != nil {
		return err
	}
	return noContent(w, http.StatusNoContent)
}
