package cloudapi

import (
	"net/http"
	"net/url"

	"github.com/go-chi/chi/v5"

	"flotilla/api/auth"
	"flotilla/api/errdefs"
	"flotilla/store"
)

func (s *Server) keyRoutes(r chi.Router) {
	getHead(r, "/keys", s.handle(s.listKeys))
	r.Post("/keys", s.handle(s.createKey))
	getHead(r, "/keys/{name}", s.handle(s.getKey))
	r.Delete("/keys/{name}", s.handle(s.deleteKey))
}

func keyJSON(k store.Key) map[string]any {
	return map[string]any{"name": k.Name, "fingerprint": k.FingerprintMD5, "key": k.Text}
}

// pathParam returns a URI-decoded path parameter.
func pathParam(r *http.Request, name string) string {
	v := chi.URLParam(r, name)
	if d, err := url.PathUnescape(v); err == nil {
		return d
	}
	return v
}

func (s *Server) listKeys(w http.ResponseWriter, r *http.Request) error {
	keys, err := s.store.ListKeys(r.Context(), caller(r).AccountID)
	if err != nil {
		return err
	}
	out := make([]any, 0, len(keys))
	for _, k := range keys {
		out = append(out, keyJSON(k))
	}
	return writeJSON(w, r, http.StatusOK, out)
}

func (s *Server) getKey(w http.ResponseWriter, r *http.Request) error {
	k, err := s.store.GetKey(r.Context(), caller(r).AccountID, pathParam(r, "name"))
	if err != nil {
		return err
	}
	return writeJSON(w, r, http.StatusOK, keyJSON(k))
}

func (s *Server) createKey(w http.ResponseWriter, r *http.Request) error {
	p, err := params(r)
	if err != nil {
		return err
	}
	text, err := stringParam(p, "key")
	if err != nil {
		return err
	}
	if text == "" {
		return &errdefs.Error{Code: errdefs.Invalid, Message: "key is a required argument", Reason: "MissingParameter"}
	}
	name, err := stringParam(p, "name")
	if err != nil {
		return err
	}
	pk, err := auth.ParsePublicKey(text)
	if err != nil {
		return errdefs.InvalidArgument("key is invalid: %s", errdefs.MessageOf(err))
	}
	if name == "" {
		name = pk.MD5
	}
	k, err := s.store.CreateKey(r.Context(), store.Key{OwnerID: caller(r).AccountID, Name: name,
		FingerprintMD5: pk.MD5, FingerprintSHA256: pk.SHA256, Text: pk.OpenSSH})
	if err != nil {
		return err
	}
	w.Header().Set("Location", "/"+caller(r).Login+"/keys/"+url.PathEscape(k.Name))
	return writeJSON(w, r, http.StatusCreated, keyJSON(k))
}

func (s *Server) deleteKey(w http.ResponseWriter, r *http.Request) error {
	if err := s.store.DeleteKey(r.Context(), caller(r).AccountID, pathParam(r, "name")); err != nil {
		return err
	}
	s.keys.forget(caller(r).AccountID)
	return noContent(w, http.StatusNoContent)
}
