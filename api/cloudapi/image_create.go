package cloudapi

// CreateImageFromMachine: POST /:account/images with machine, name and
// version (`triton image create INST NAME VERSION`). The image is made at
// once (the instance's image plus what the instance changed, read on its
// node; see service.CommitInstance), so it is answered already active.
// Only container instances keep their changes apart from their image; a VM
// is refused with InvalidArgument.

import (
	"net/http"
	"time"

	"github.com/google/uuid"

	"flotilla/api/errdefs"
	"flotilla/api/service"
)

func (s *Server) createImage(w http.ResponseWriter, r *http.Request) error {
	c := caller(r)
	p, err := params(r)
	if err != nil {
		return err
	}
	if action, _ := stringParam(p, "action"); action != "" {
		return errdefs.New(errdefs.NotImplemented, "image action %q is not supported", action)
	}
	meta := service.ImageMeta{}
	var machine string
	for _, f := range []struct {
		key string
		dst *string
		req bool
	}{{"machine", &machine, true}, {"name", &meta.Name, true}, {"version", &meta.Version, true},
		{"description", &meta.Description, false}, {"homepage", &meta.Homepage, false}} {
		v, err := stringParam(p, f.key)
		if err != nil {
			return err
		}
		if f.req && v == "" {
			return &errdefs.Error{Code: errdefs.Invalid, Message: f.key + " is a required argument", Reason: "MissingParameter"}
		}
		*f.dst = v
	}
	if tags, ok := p["tags"]; ok && tags != nil {
		m, ok := tags.(map[string]any)
		if !ok {
			return errdefs.InvalidArgument("tags must be an object")
		}
		meta.Tags = m
	}
	in, err := s.store.GetInstance(r.Context(), c.AccountID, machine)
	if err != nil {
		return err
	}
	if in.State == "deleted" {
		return &errdefs.Error{Code: errdefs.Gone, Message: "VM has been deleted", Detail: in}
	}
	t0 := time.Now()
	im, err := s.svc.CommitInstance(r.Context(), c.AccountID, in, service.CommitOptions{Meta: meta,
		CreatedBy: "CreateImageFromMachine " + in.ID, Comment: meta.Description})
	if err != nil {
		return err
	}
	s.log.Info("image created from machine", "account", c.Login, "instance", in.ID, "image", im.ID, "took", time.Since(t0))
	w.Header().Set("Location", "/"+c.Login+"/images/"+im.ID)
	w.Header().Set("x-joyent-jobid", uuid.NewString())
	return writeJSON(w, r, http.StatusCreated, imageJSON(im, apiVersion(r)))
}
