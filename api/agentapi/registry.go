package agentapi

// The read side of the OCI distribution API, for agents: nodes pull the
// images of their instances from here with their node credential. Image
// references have the form <host:port>/images/<image-uuid>@<manifest digest>
// (see imageRef). Manifests and blobs come from the control plane's blob
// store, byte for byte as written and verified by api/service; a blob is
// served only as part of the image named in the path, and an image only to a
// node that has an instance of it assigned.
//
// This file also imports flotilla/oci and go-containerregistry's v1 types.

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"flotilla/api/errdefs"
	"flotilla/oci"
	"flotilla/store"
)

// registryBlobs holds each Server's blob store until Server has a field for
// it (see SetBlobs).

// SetBlobs sets the blob store the registry routes serve from. Without one
// they answer 503.
func (s *Server) SetBlobs(b oci.BlobStore) { s.blobStore = b }

func (s *Server) blobs() oci.BlobStore { return s.blobStore }

// registryRoutes mounts /v2/ (the OCI distribution API, read only).
func (s *Server) registryRoutes(r chi.Router) {
	r.Route("/v2", func(r chi.Router) {
		r.Use(s.registryAuth)
		r.NotFound(func(w http.ResponseWriter, r *http.Request) {
			distError(w, r, http.StatusNotFound, "NAME_UNKNOWN", "no repository at "+r.URL.Path+"; images are served at /v2/images/<uuid>/")
		})
		r.MethodNotAllowed(func(w http.ResponseWriter, r *http.Request) {
			distError(w, r, http.StatusMethodNotAllowed, "UNSUPPORTED", "this registry is read-only: images enter through `flotilla admin image` or the Docker API")
		})
		r.Get("/", s.registryBase)
		r.Head("/", s.registryBase)
		r.Get("/images/{id}/manifests/{ref}", s.registryManifest)
		r.Head("/images/{id}/manifests/{ref}", s.registryManifest)
		r.Get("/images/{id}/blobs/{digest}", s.registryBlob)
		r.Head("/images/{id}/blobs/{digest}", s.registryBlob)
	})
}

// distError writes an error in the distribution API's format.
func distError(w http.ResponseWriter, r *http.Request, status int, code, msg string) {
	b, _ := json.Marshal(map[string]any{"errors": []map[string]string{{"code": code, "message": msg}}})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	if r.Method != http.MethodHead {
		w.Write(b)
	}
}

// distFail renders err in the distribution format with code for NotFound.
func (s *Server) distFail(w http.ResponseWriter, r *http.Request, err error, notFoundCode string) {
	switch errdefs.CodeOf(err) {
	case errdefs.NotFound:
		distError(w, r, http.StatusNotFound, notFoundCode, errdefs.MessageOf(err))
	case errdefs.Invalid:
		distError(w, r, http.StatusBadRequest, "DIGEST_INVALID", errdefs.MessageOf(err))
	case errdefs.Unavailable:
		distError(w, r, http.StatusServiceUnavailable, "UNAVAILABLE", errdefs.MessageOf(err))
	default:
		s.log.Error("registry request failed", "path", r.URL.Path, "error", err)
		distError(w, r, http.StatusInternalServerError, "UNKNOWN", "internal error")
	}
}

// registryAuth admits node credentials only: "Authorization: Bearer <credential>",
// or basic auth whose password is the credential (for stock registry
// clients). It answers 401 with a Basic challenge otherwise.
func (s *Server) registryAuth(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tok := bearer(r)
		if tok == "" {
			if _, pw, ok := r.BasicAuth(); ok {
				tok = pw
			}
		}
		challenge := func(msg string) {
			w.Header().Set("WWW-Authenticate", `Basic realm="flotilla agent API"`)
			distError(w, r, http.StatusUnauthorized, "UNAUTHORIZED", msg)
		}
		if tok == "" {
			challenge("authentication required: send the node credential as Authorization: Bearer <credential>")
			return
		}
		nodeID, err := s.store.NodeByCredential(r.Context(), HashToken(tok))
		if errdefs.Is(err, errdefs.NotFound) {
			challenge("unknown node credential: register the node again with a join token")
			return
		}
		if err != nil {
			s.distFail(w, r, err, "UNAUTHORIZED")
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), keyNode, nodeID)))
	})
}

func (s *Server) registryBase(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", "2")
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		io.WriteString(w, "{}")
	}
}

// registryImage loads the image of the path and its manifest descriptors.
func (s *Server) registryImage(r *http.Request) (store.Image, *v1.Manifest, error) {
	if s.blobs() == nil {
		return store.Image{}, nil, errdefs.New(errdefs.Unavailable, "this control plane has no image blob store configured")
	}
	id := chi.URLParam(r, "id")
	// A node reads the images of its own assignments only: another
	// tenant's private image on another node is not found.
	used, err := s.store.NodeUsesImage(r.Context(), nodeOf(r), id)
	if err != nil {
		return store.Image{}, nil, err
	}
	if !used {
		return store.Image{}, nil, errdefs.NotFoundf("image %s not found among this node's assignments", id)
	}
	im, err := s.store.ImageByID(r.Context(), id)
	if err != nil {
		return store.Image{}, nil, errdefs.NotFoundf("image %s not found", id)
	}
	if im.ManifestDigest == "" {
		return store.Image{}, nil, errdefs.NotFoundf("image %s has no content (it was recorded without blobs)", id)
	}
	var m v1.Manifest
	if len(im.Manifest) == 0 || json.Unmarshal(im.Manifest, &m) != nil {
		return store.Image{}, nil, errdefs.New(errdefs.Internal, "image %s has no readable manifest", id)
	}
	return im, &m, nil
}

func (s *Server) registryManifest(w http.ResponseWriter, r *http.Request) {
	im, m, err := s.registryImage(r)
	if err != nil {
		s.distFail(w, r, err, "NAME_UNKNOWN")
		return
	}
	ref := chi.URLParam(r, "ref")
	if ref != "latest" && subtle.ConstantTimeCompare([]byte(ref), []byte(im.ManifestDigest)) != 1 {
		distError(w, r, http.StatusNotFound, "MANIFEST_UNKNOWN", "image "+im.ID+" has no manifest "+ref+" (it has "+im.ManifestDigest+")")
		return
	}
	h, err := v1.NewHash(im.ManifestDigest)
	if err != nil {
		s.distFail(w, r, errdefs.Wrap(errdefs.Internal, err, "image %s digest", im.ID), "MANIFEST_UNKNOWN")
		return
	}
	rc, err := s.blobs().Get(r.Context(), h)
	if err != nil {
		s.distFail(w, r, err, "MANIFEST_UNKNOWN")
		return
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, 4<<20))
	if err != nil {
		s.distFail(w, r, errdefs.Wrap(errdefs.Internal, err, "read manifest %s", h), "MANIFEST_UNKNOWN")
		return
	}
	mt := m.MediaType
	if mt == "" {
		mt = types.OCIManifestSchema1
	}
	w.Header().Set("Content-Type", string(mt))
	w.Header().Set("Docker-Content-Digest", im.ManifestDigest)
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.Header().Set("ETag", `"`+im.ManifestDigest+`"`)
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		w.Write(b)
	}
}

func (s *Server) registryBlob(w http.ResponseWriter, r *http.Request) {
	im, m, err := s.registryImage(r)
	if err != nil {
		s.distFail(w, r, err, "NAME_UNKNOWN")
		return
	}
	dgst := chi.URLParam(r, "digest")
	h, err := v1.NewHash(dgst)
	if err != nil {
		distError(w, r, http.StatusBadRequest, "DIGEST_INVALID", "invalid digest "+dgst)
		return
	}
	part := h == m.Config.Digest
	for _, l := range m.Layers {
		part = part || l.Digest == h
	}
	if !part {
		distError(w, r, http.StatusNotFound, "BLOB_UNKNOWN", "blob "+dgst+" is not part of image "+im.ID)
		return
	}
	size, err := s.blobs().Stat(r.Context(), h)
	if err != nil {
		s.distFail(w, r, err, "BLOB_UNKNOWN")
		return
	}
	w.Header().Set("Docker-Content-Digest", h.String())
	w.Header().Set("ETag", `"`+h.String()+`"`)
	w.Header().Set("Content-Type", "application/octet-stream")
	if r.Method == http.MethodHead {
		w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
		w.WriteHeader(http.StatusOK)
		return
	}
	rc, err := s.blobs().Get(r.Context(), h)
	if err != nil {
		s.distFail(w, r, err, "BLOB_UNKNOWN")
		return
	}
	defer rc.Close()
	if rs, ok := rc.(io.ReadSeeker); ok {
		// Range requests let an interrupted pull resume.
		http.ServeContent(w, r, "", time.Time{}, rs)
		return
	}
	w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
	w.WriteHeader(http.StatusOK)
	if _, err := io.Copy(w, rc); err != nil && r.Context().Err() == nil {
		s.log.Warn("registry blob copy", "blob", h.String(), "error", err)
	}
}
