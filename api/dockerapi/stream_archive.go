package dockerapi

// `docker cp`: HEAD/GET/PUT /containers/{id}/archive, proxied to the
// container's node (api/nodeclient's Archive calls), which reads and writes
// the container's filesystem. Paths are absolute in the container; a
// relative one is taken from its root, as dockerd does.

import (
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"strings"

	"github.com/docker/docker/api/types/container"
	"github.com/go-chi/chi/v5"

	"flotilla/api/agentapi/wire"
	"flotilla/api/errdefs"
	"flotilla/api/nodeclient"
	"flotilla/store"
)

func (s *Server) archiveRoutes(r chi.Router) {
	r.Head("/containers/{id}/archive", s.handle(s.statArchivePath))
	r.Get("/containers/{id}/archive", s.handle(s.getArchive))
	r.Put("/containers/{id}/archive", s.handle(s.putArchive))
}

// archiveQueryPath returns the path parameter, absolute, trailing "/" or
// "/." kept (they change what the CLI and the node do).
func archiveQueryPath(r *http.Request) (string, error) {
	p := r.URL.Query().Get("path")
	if p == "" {
		return "", errdefs.InvalidArgument("bad parameter: path cannot be empty")
	}
	if !strings.HasPrefix(p, "/") {
		p = "/" + p
	}
	return p, nil
}

// fileNotFound is dockerd's containerFileNotFound for a NotFound from the
// node; other errors pass unchanged.
func fileNotFound(err error, path, ref string) error {
	if errdefs.Is(err, errdefs.NotFound) {
		return errdefs.Wrap(errdefs.NotFound, err, "Could not find the file %s in container %s", path, ref)
	}
	return err
}

// setPathStat sets dockerd's X-Docker-Container-Path-Stat header.
func setPathStat(w http.ResponseWriter, st wire.PathStat) {
	b, _ := json.Marshal(container.PathStat{Name: st.Name, Size: st.Size, Mode: os.FileMode(st.Mode),
		Mtime: st.Mtime, LinkTarget: st.LinkTarget})
	w.Header().Set("X-Docker-Container-Path-Stat", base64.StdEncoding.EncodeToString(b))
}

// archiveTarget is what every archive request resolves first: the
// container (by the caller's reference), the path in it, and its node.
type archiveTarget struct {
	ref  string
	in   store.Instance
	path string
	node nodeclient.Node
}

func (s *Server) archiveTarget(r *http.Request) (archiveTarget, error) {
	ref := chi.URLParam(r, "id")
	in, err := s.ResolveContainer(r, ref)
	if err != nil {
		return archiveTarget{}, err
	}
	p, err := archiveQueryPath(r)
	if err != nil {
		return archiveTarget{}, err
	}
	node, err := s.nodeOf(r.Context(), in)
	if err != nil {
		return archiveTarget{}, err
	}
	return archiveTarget{ref: ref, in: in, path: p, node: node}, nil
}

func (s *Server) statArchivePath(w http.ResponseWriter, r *http.Request) error {
	t, err := s.archiveTarget(r)
	if err != nil {
		return err
	}
	ref, in, p, node := t.ref, t.in, t.path, t.node
	st, err := nodes.StatPath(r.Context(), node, in.ID, p)
	if err != nil {
		return fileNotFound(err, p, ref)
	}
	setPathStat(w, st)
	w.WriteHeader(http.StatusOK)
	return nil
}

func (s *Server) getArchive(w http.ResponseWriter, r *http.Request) error {
	t, err := s.archiveTarget(r)
	if err != nil {
		return err
	}
	ref, in, p, node := t.ref, t.in, t.path, t.node
	st, body, err := nodes.Archive(r.Context(), node, in.ID, p)
	if err != nil {
		return fileNotFound(err, p, ref)
	}
	defer body.Close()
	setPathStat(w, st)
	w.Header().Set("Content-Type", "application/x-tar")
	w.WriteHeader(http.StatusOK)
	if _, err := io.Copy(w, body); err != nil && r.Context().Err() == nil {
		// The node cut the archive: cut the client's too, rather than end
		// a chunked body cleanly and hand it half a tree.
		s.log.Warn("archive cut short", "instance", in.ID, "path", p, "err", err)
		panic(http.ErrAbortHandler)
	}
	return nil
}

func (s *Server) putArchive(w http.ResponseWriter, r *http.Request) error {
	t, err := s.archiveTarget(r)
	if err != nil {
		return err
	}
	ref, in, p, node := t.ref, t.in, t.path, t.node
	noOverwrite := boolParam(r.URL.Query().Get("noOverwriteDirNonDir"))
	body, err := s.uploads.body(r, in.OwnerID, "archive")
	if err != nil {
		return err
	}
	defer body.release()
	if err := nodes.Extract(r.Context(), node, in.ID, p, noOverwrite, body); err != nil {
		if body.err != nil {
			return body.err
		}
		if errdefs.Is(err, errdefs.Invalid) && strings.HasPrefix(errdefs.MessageOf(err), "extraction point is not a directory") {
			return errdefs.Wrap(errdefs.Invalid, err, "extraction point is not a directory")
		}
		return fileNotFound(err, p, ref)
	}
	w.WriteHeader(http.StatusOK)
	return nil
}
