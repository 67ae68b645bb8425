package dockerapi

// What a container changed: `docker diff` (GET /containers/{id}/changes),
// `docker export` (GET /containers/{id}/export) and `docker commit`
// (POST /commit). The container's node reads its filesystem (api/nodeclient);
// a commit becomes an image of the account through the service, which
// reads the changes as a layer on the node itself.

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
	"github.com/go-chi/chi/v5"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"flotilla/api/errdefs"
	"flotilla/api/service"
)

func (s *Server) commitRoutes(r chi.Router) {
	r.Get("/containers/{id}/changes", s.handle(s.containerChanges))
	r.Get("/containers/{id}/export", s.handle(s.exportContainer))
	r.Post("/commit", s.handle(s.commitContainer))
}

// onNode turns the node's NotFound for a container the control plane knows
// into Conflict: it is not (or no longer) made on its node.
func onNode(err error, ref string) error {
	if errdefs.Is(err, errdefs.NotFound) {
		return errdefs.Wrap(errdefs.Conflict, err, "container %s has no filesystem on its node yet", ref)
	}
	return err
}

func (s *Server) containerChanges(w http.ResponseWriter, r *http.Request) error {
	ref := chi.URLParam(r, "id")
	in, err := s.ResolveContainer(r, ref)
	if err != nil {
		return err
	}
	node, err := s.nodeOf(r.Context(), in)
	if err != nil {
		return err
	}
	list, err := nodes.Changes(r.Context(), node, in.ID)
	if err != nil {
		return onNode(err, ref)
	}
	out := make([]container.FilesystemChange, 0, len(list))
	for _, c := range list {
		out = append(out, container.FilesystemChange{Path: c.Path, Kind: container.ChangeType(c.Kind)})
	}
	return writeJSON(w, http.StatusOK, out)
}

func (s *Server) exportContainer(w http.ResponseWriter, r *http.Request) error {
	ref := chi.URLParam(r, "id")
	in, err := s.ResolveContainer(r, ref)
	if err != nil {
		return err
	}
	node, err := s.nodeOf(r.Context(), in)
	if err != nil {
		return err
	}
	body, err := nodes.Export(r.Context(), node, in.ID)
	if err != nil {
		return onNode(err, ref)
	}
	defer body.Close()
	w.Header().Set("Content-Type", "application/x-tar")
	w.WriteHeader(http.StatusOK)
	if _, err := io.Copy(w, body); err != nil && r.Context().Err() == nil {
		// Cut the client's stream too rather than end it cleanly with half
		// a filesystem.
		s.log.Warn("export cut short", "instance", in.ID, "err", err)
		panic(http.ErrAbortHandler)
	}
	return nil
}

// commitContainer is POST /commit?container=&repo=&tag=&comment=&author=&changes=
// with an optional container.Config body: 201 {"Id"}. The container is
// not paused (pause is ignored): a container that writes while it is
// committed may have its last writes left out.
func (s *Server) commitContainer(w http.ResponseWriter, r *http.Request) error {
	c := Caller(r)
	q := r.URL.Query()
	ref := q.Get("container")
	if ref == "" {
		return errdefs.InvalidArgument("container is required")
	}
	repo, tag := "", ""
	if q.Get("repo") != "" {
		full := q.Get("repo")
		if t := q.Get("tag"); t != "" {
			full += ":" + t
		}
		var err error
		if repo, tag, err = service.ParseRepoTag(full); err != nil {
			return err
		}
	} else if q.Get("tag") != "" {
		return errdefs.InvalidArgument("a tag needs a repository name")
	}
	var override *container.Config
	if err := decodeOptionalJSON(r, &override); err != nil {
		return err
	}
	changes, err := importChanges(q["changes"])
	if err != nil {
		return err
	}
	in, err := s.ResolveContainer(r, ref)
	if err != nil {
		return err
	}
	if !in.Docker && in.Brand != "joyent-minimal" && in.Brand != "lx" {
		return errdefs.InvalidArgument("container %s is a virtual machine: only containers can be committed", ref)
	}
	base, err := s.store.ImageByID(r.Context(), in.ImageID)
	if err != nil {
		return errdefs.Wrap(errdefs.Invalid, err, "the image of container %s no longer exists", ref)
	}
	p := service.DecodeProcessSpec(in.Spec)
	var bcf v1.ConfigFile
	if len(base.Config) > 0 {
		json.Unmarshal(base.Config, &bcf)
	}
	cfg := commitConfig(bcf.Config, p, extraOf(p).Config, override, changes)
	meta := service.ImageMeta{Type: service.ImageTypeDocker, Name: "<none>", Version: "<none>", Description: q.Get("comment")}
	if repo != "" {
		meta.Name, meta.Version = repo, tag
	}
	t0 := time.Now()
	im, err := s.Service.CommitInstance(r.Context(), c.AccountID, in, service.CommitOptions{Meta: meta, Config: &cfg,
		Author: q.Get("author"), Comment: q.Get("comment"), CreatedBy: service.DefaultCreatedBy(p)})
	if err != nil {
		return err
	}
	if repo != "" {
		if err := s.Service.Tag(r.Context(), c.AccountID, im.ID, repo+":"+tag); err != nil {
			return err
		}
	}
	attrs := map[string]string{"comment": q.Get("comment"), "imageID": ImageID(im)}
	if repo != "" {
		attrs["imageRef"] = repo + ":" + tag
	}
	s.recordObjectEvent(r.Context(), c, in.ID, events.ContainerEventType, events.ActionCommit, ContainerID(in.ID), attrs)
	s.log.Info("container committed", "account", c.Login, "instance", in.ID, "image", im.ID, "took", time.Since(t0))
	return writeJSON(w, http.StatusCreated, map[string]string{"Id": ImageID(im)})
}

// decodeOptionalJSON decodes the body into v unless it is empty or null.
func decodeOptionalJSON(r *http.Request, v any) error {
	b, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil {
		return errdefs.Wrap(errdefs.Invalid, err, "read the request body")
	}
	if len(b) > maxBody {
		return errdefs.InvalidArgument("the request body is larger than %d bytes", maxBody)
	}
	if t := bytes.TrimSpace(b); len(t) == 0 || string(t) == "null" {
		return nil
	}
	if err := json.Unmarshal(b, v); err != nil {
		return errdefs.Wrap(errdefs.Invalid, err, "the body is not a container configuration: %v", err)
	}
	return nil
}

// commitConfig is the committed image's configuration, as dockerd makes
// it: the container's (its image's, with what it was run with), then what
// the request's body sets, then the change instructions.
func commitConfig(img v1.Config, p service.ProcessSpec, run *container.Config, body *container.Config, ch v1.Config) v1.Config {
	cfg := img
	cfg.Env = append([]string(nil), img.Env...)
	if p.Entrypoint != nil || p.Cmd != nil {
		cfg.Entrypoint, cfg.Cmd = p.Entrypoint, p.Cmd
	}
	cfg.Env = mergeEnvs(cfg.Env, p.Env)
	if p.WorkingDir != "" {
		cfg.WorkingDir = p.WorkingDir
	}
	if p.User != "" {
		cfg.User = p.User
	}
	cfg.Labels = mergeLabels(img.Labels, p.Labels)
	if run != nil {
		cfg.ExposedPorts = mergePorts(cfg.ExposedPorts, portsOf(run))
		if run.StopSignal != "" {
			cfg.StopSignal = run.StopSignal
		}
	}
	if body != nil {
		if len(body.Cmd) > 0 {
			cfg.Cmd = body.Cmd
		}
		if len(body.Entrypoint) > 0 {
			cfg.Entrypoint = body.Entrypoint
		}
		cfg.Env = mergeEnvs(cfg.Env, body.Env)
		if body.WorkingDir != "" {
			cfg.WorkingDir = body.WorkingDir
		}
		if body.User != "" {
			cfg.User = body.User
		}
		cfg.Labels = mergeLabels(cfg.Labels, body.Labels)
		cfg.ExposedPorts = mergePorts(cfg.ExposedPorts, portsOf(body))
	}
	if ch.Cmd != nil {
		cfg.Cmd = ch.Cmd
	}
	if ch.Entrypoint != nil {
		cfg.Entrypoint = ch.Entrypoint
		if ch.Cmd == nil {
			cfg.Cmd = nil // a new ENTRYPOINT resets CMD, as in a Dockerfile
		}
	}
	cfg.Env = mergeEnvs(cfg.Env, ch.Env)
	if ch.WorkingDir != "" {
		cfg.WorkingDir = ch.WorkingDir
	}
	if ch.User != "" {
		cfg.User = ch.User
	}
	cfg.Labels = mergeLabels(cfg.Labels, ch.Labels)
	cfg.ExposedPorts = mergePorts(cfg.ExposedPorts, ch.ExposedPorts)
	return cfg
}

func mergeEnvs(base, over []string) []string {
	out := append([]string(nil), base...)
	for _, kv := range over {
		k, _, _ := strings.Cut(kv, "=")
		replaced := false
		for i, old := range out {
			if ok, _, _ := strings.Cut(old, "="); ok == k {
				out[i], replaced = kv, true
				break
			}
		}
		if !replaced {
			out = append(out, kv)
		}
	}
	return out
}

func mergeLabels(base, over map[string]string) map[string]string {
	if len(base) == 0 && len(over) == 0 {
		return base
	}
	out := make(map[string]string, len(base)+len(over))
	for k, v := range base {
		out[k] = v
	}
	for k, v := range over {
		out[k] = v
	}
	return out
}

func portsOf(c *container.Config) map[string]struct{} {
	out := map[string]struct{}{}
	for p := range c.ExposedPorts {
		out[string(p)] = struct{}{}
	}
	return out
}

func mergePorts(base, over map[string]struct{}) map[string]struct{} {
	if len(over) == 0 {
		return base
	}
	out := make(map[string]struct{}, len(base)+len(over))
	for p := range base {
		out[p] = struct{}{}
	}
	for p := range over {
		out[p] = struct{}{}
	}
	return out
}
