package dockerapi

import (
	"net/http"
	"strings"

	"github.com/docker/docker/api/types/container"
	"github.com/go-chi/chi/v5"

	"flotilla/api/agentapi/wire"
	"flotilla/api/errdefs"
	"flotilla/api/httpx"
	"flotilla/store"
)

// Exec ids are 64 hex digits: the instance uuid's 32 then the agent's exec
// id (32), so that any replica can route an exec without storing it, and
// the owner check is the instance lookup.

func (s *Server) execRoutes(r chi.Router) {
	r.Post("/containers/{id}/exec", s.handle(s.execCreate))
	r.Post("/exec/{id}/start", s.handle(s.execStart))
	r.Post("/exec/{id}/resize", s.handle(s.execResize))
	r.Get("/exec/{id}/json", s.handle(s.execInspect))
}

func execID(instanceID, agentExec string) string {
	return strings.ReplaceAll(instanceID, "-", "") + agentExec
}

// splitExecID returns the instance uuid and the agent's exec id.
func splitExecID(id string) (string, string, bool) {
	if len(id) != 64 || !isLowerHex(id) {
		return "", "", false
	}
	u := id[:32]
	return u[0:8] + "-" + u[8:12] + "-" + u[12:16] + "-" + u[16:20] + "-" + u[20:32], id[32:], true
}

func noSuchExec(id string) error { return errdefs.NotFoundf("No such exec instance: %s", id) }

// execTarget resolves an exec id to its instance (the caller's only) and
// the agent's exec id.
func (s *Server) execTarget(r *http.Request) (store.Instance, string, error) {
	id := chi.URLParam(r, "id")
	inst, agentExec, ok := splitExecID(id)
	if !ok {
		return store.Instance{}, "", noSuchExec(id)
	}
	in, err := s.store.GetInstance(r.Context(), Caller(r).AccountID, inst)
	if err != nil {
		if errdefs.Is(err, errdefs.NotFound) || errdefs.Is(err, errdefs.Gone) {
			return store.Instance{}, "", noSuchExec(id)
		}
		return store.Instance{}, "", err
	}
	return in, agentExec, nil
}

func (s *Server) execCreate(w http.ResponseWriter, r *http.Request) error {
	ref := chi.URLParam(r, "id")
	in, err := s.ResolveContainer(r, ref)
	if err != nil {
		return err
	}
	var opts container.ExecOptions
	if err := httpx.DecodeJSON(r, maxBody, false, &opts); err != nil {
		return err
	}
	if len(opts.Cmd) == 0 {
		return errdefs.InvalidArgument("No exec command specified")
	}
	if opts.Privileged {
		return errdefs.InvalidArgument("privileged exec is not supported by this cloud")
	}
	if !stateOf(in).Running {
		return errdefs.Conflictf("Container %s is not running", ContainerID(in.ID))
	}
	node, err := s.nodeOf(r.Context(), in)
	if err != nil {
		return err
	}
	agentExec, err := nodes.ExecCreate(r.Context(), node, in.ID, wire.ExecCreate{Cmd: opts.Cmd, Env: opts.Env,
		User: opts.User, WorkingDir: opts.WorkingDir, Tty: opts.Tty, AttachStdin: opts.AttachStdin,
		AttachStdout: opts.AttachStdout, AttachStderr: opts.AttachStderr})
	if err != nil {
		if errdefs.Is(err, errdefs.Conflict) {
			return errdefs.Conflictf("Container %s is not running", ContainerID(in.ID))
		}
		return err
	}
	return writeJSON(w, http.StatusCreated, container.ExecCreateResponse{ID: execID(in.ID, agentExec)})
}

func (s *Server) execStart(w http.ResponseWriter, r *http.Request) error {
	in, agentExec, err := s.execTarget(r)
	if err != nil {
		return err
	}
	var opts container.ExecStartOptions
	if err := httpx.DecodeJSON(r, maxBody, false, &opts); err != nil {
		return err
	}
	node, err := s.nodeOf(r.Context(), in)
	if err != nil {
		return err
	}
	if opts.Detach {
		if err := nodes.ExecStartDetached(r.Context(), node, in.ID, agentExec); err != nil {
			return execError(r, err)
		}
		w.WriteHeader(http.StatusOK)
		return nil
	}
	var h, wd uint16
	if opts.ConsoleSize != nil {
		h, wd = uint16(opts.ConsoleSize[0]), uint16(opts.ConsoleSize[1])
	}
	agent, err := nodes.ExecStart(r.Context(), node, in.ID, agentExec, h, wd)
	if err != nil {
		return execError(r, err)
	}
	client, early, err := hijack(w, r, opts.Tty)
	if err != nil || client == nil {
		agent.Close()
		return err
	}
	proxy(client, early, agent)
	return nil
}

func execError(r *http.Request, err error) error {
	if errdefs.Is(err, errdefs.NotFound) {
		return noSuchExec(chi.URLParam(r, "id"))
	}
	return err
}

func (s *Server) execResize(w http.ResponseWriter, r *http.Request) error {
	in, agentExec, err := s.execTarget(r)
	if err != nil {
		return err
	}
	h, wd, err := sizeOf(r)
	if err != nil {
		return err
	}
	node, err := s.nodeOf(r.Context(), in)
	if err != nil {
		return err
	}
	if err := nodes.ExecResize(r.Context(), node, in.ID, agentExec, h, wd); err != nil {
		return execError(r, err)
	}
	w.WriteHeader(http.StatusOK)
	return nil
}

// execInspectBody is dockerd's exec inspect (api/types/backend.ExecInspect,
// which this package does not import).
type execInspectBody struct {
	ID            string            `json:"ID"`
	Running       bool              `json:"Running"`
	ExitCode      *int              `json:"ExitCode"`
	ProcessConfig execProcessConfig `json:"ProcessConfig"`
	OpenStdin     bool              `json:"OpenStdin"`
	OpenStderr    bool              `json:"OpenStderr"`
	OpenStdout    bool              `json:"OpenStdout"`
	CanRemove     bool              `json:"CanRemove"`
	ContainerID   string            `json:"ContainerID"`
	DetachKeys    []byte            `json:"DetachKeys"`
	Pid           int               `json:"Pid"`
}

type execProcessConfig struct {
	Tty        bool     `json:"tty"`
	Entrypoint string   `json:"entrypoint"`
	Arguments  []string `json:"arguments"`
	Privileged *bool    `json:"privileged,omitempty"`
	User       string   `json:"user,omitempty"`
}

func (s *Server) execInspect(w http.ResponseWriter, r *http.Request) error {
	in, agentExec, err := s.execTarget(r)
	if err != nil {
		return err
	}
	node, err := s.nodeOf(r.Context(), in)
	if err != nil {
		return err
	}
	info, err := nodes.ExecInspect(r.Context(), node, in.ID, agentExec)
	if err != nil {
		return execError(r, err)
	}
	pc := execProcessConfig{Tty: info.Config.Tty, User: info.Config.User, Arguments: []string{}}
	if len(info.Config.Cmd) > 0 {
		pc.Entrypoint, pc.Arguments = info.Config.Cmd[0], info.Config.Cmd[1:]
	}
	return writeJSON(w, http.StatusOK, execInspectBody{ID: chi.URLParam(r, "id"), Running: info.Running,
		ExitCode: info.ExitCode, ProcessConfig: pc, OpenStdin: info.Config.AttachStdin,
		OpenStdout: info.Config.AttachStdout, OpenStderr: info.Config.AttachStderr,
		ContainerID: ContainerID(in.ID), Pid: info.Pid})
}
