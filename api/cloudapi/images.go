package cloudapi

import (
	"net/http"

	"github.com/go-chi/chi/v5"

	"flotilla/api/errdefs"
	"flotilla/store"
)

func (s *Server) imageRoutes(r chi.Router) {
	getHead(r, "/images", s.handle(s.listImages))
	getHead(r, "/images/{id}", s.handle(s.getImage))
	r.Delete("/images/{id}", s.handle(s.deleteImage))
	r.Post("/images", s.handle(s.createImage))
}

// imageJSON renders an image; API ranges below 8 see the old type names.
func imageJSON(im store.Image, version string) map[string]any {
	typ := im.Type
	if version != "" && version < "8" {
		if typ == "zvol" {
			typ = "virtualmachine"
		} else {
			typ = "smartmachine"
		}
	}
	owner := "00000000-0000-0000-0000-000000000000"
	if im.OwnerID != nil {
		owner = *im.OwnerID
	}
	m := map[string]any{"id": im.ID, "name": im.Name, "version": im.Version, "os": im.OS,
		"requirements": im.Requirements, "type": typ, "files": []any{map[string]any{"compression": "none", "sha1": "", "size": im.SizeBytes}},
		"owner": owner, "public": im.Public, "state": im.State}
	if im.Description != "" {
		m["description"] = im.Description
	}
	if len(im.Tags) > 0 {
		m["tags"] = im.Tags
	}
	if im.Homepage != "" {
		m["homepage"] = im.Homepage
	}
	if im.PublishedAt != nil {
		m["published_at"] = isoTime(*im.PublishedAt)
	}
	if len(im.ACL) > 0 {
		m["acl"] = im.ACL
	}
	if im.ImageSize != nil {
		m["image_size"] = *im.ImageSize
	}
	return m
}

func (s *Server) listImages(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	f := store.ImageFilter{Name: q.Get("name"), OS: q.Get("os"), Version: q.Get("version"), Type: q.Get("type"),
		State: q.Get("state"), Owner: q.Get("owner")}
	if v := q.Get("public"); v != "" {
		b, err := boolParam(v)
		if err != nil {
			return errdefs.InvalidArgument("public must be true or false")
		}
		f.Public = &b
	}
	if f.State != "" && f.State != "all" && f.State != "active" && f.State != "unactivated" && f.State != "disabled" &&
		f.State != "creating" && f.State != "failed" {
		return errdefs.InvalidArgument("%s is not a valid image state", f.State)
	}
	imgs, err := s.store.ListImages(r.Context(), caller(r).AccountID, f)
	if err != nil {
		return err
	}
	out := make([]any, 0, len(imgs))
	for _, im := range imgs {
		out = append(out, imageJSON(im, apiVersion(r)))
	}
	return writeJSON(w, r, http.StatusOK, out)
}

func (s *Server) getImage(w http.ResponseWriter, r *http.Request) error {
	im, err := s.store.GetImage(r.Context(), caller(r).AccountID, pathParam(r, "id"))
	if err != nil {
		return err
	}
	return writeJSON(w, r, http.StatusOK, imageJSON(im, apiVersion(r)))
}

func (s *Server) deleteImage(w http.ResponseWriter, r *http.Request) error {
	if err := s.store.DeleteImage(r.Context(), caller(r).AccountID, pathParam(r, "id")); err != nil {
		return err
	}
	return noContent(w, http.StatusNoContent)
}
