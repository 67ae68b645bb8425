package dockerapi

// Process streams: attach, logs, wait, resize (this file), exec
// (stream_exec.go), top and stats (stream_stats.go), cp's archives
// (stream_archive.go). Each resolves the
// container for the caller, finds its node's stream server (nodes.address
// and nodes.stream_token) and proxies api/nodeclient's stream to the client.
//
// The agent frames output exactly as Docker does (stdcopy frames without a
// tty, raw bytes with one), so the proxy copies bytes without looking at
// them: between two plain TCP connections io.Copy splices in the kernel.
// Hijacked streams answer "101 UPGRADED" (200 for clients that did not ask
// for the upgrade), end when the agent ends them (the process exited and its
// output drained) and pass the client's half-close on as end of stdin.
//
// `docker run` attaches, then waits, then starts: the wait writes its 200
// headers before anything else and answers at the exit; with
// condition=removed it also removes an AutoRemove container, as dockerd does.
//
// Imports beyond the package's: api/nodeclient and api/agentapi/wire.

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/container"
	"github.com/go-chi/chi/v5"

	"flotilla/api/errdefs"
	"flotilla/api/nodeclient"
	"flotilla/api/service"
	"flotilla/store"
)

// nodes is the process's client to agents' stream servers: one connection
// pool shared by every Server.
var nodes = nodeclient.New()

// UseNodeCA makes the process's client to stream servers speak TLS, trusting
// the node CA's certificates for the nodes they name.
func UseNodeCA(roots *x509.CertPool) { nodes.UseTLS(roots) }

func (s *Server) streamRoutes(r chi.Router) {
	r.Post("/containers/{id}/attach", s.handle(s.attachContainer))
	r.Get("/containers/{id}/logs", s.handle(s.containerLogs))
	r.Post("/containers/{id}/wait", s.handle(s.waitContainer))
	r.Post("/containers/{id}/resize", s.handle(s.resizeContainer))
	s.execRoutes(r)
	s.statsRoutes(r)
	s.archiveRoutes(r)
	s.commitRoutes(r)
}

// nodeOf returns how to reach the node running in. It returns Conflict for
// an instance that has no node.
func (s *Server) nodeOf(ctx context.Context, in store.Instance) (nodeclient.Node, error) {
	if in.NodeID == nil || *in.NodeID == "" {
		return nodeclient.Node{}, errdefs.Conflictf("container %s has no node", ContainerID(in.ID))
	}
	ns, err := s.store.NodeStream(ctx, *in.NodeID)
	if err != nil {
		return nodeclient.Node{}, err
	}
	return nodeclient.Node{ID: ns.NodeID, Address: ns.Address, Token: ns.Token}, nil
}

func ttyOf(in store.Instance) bool { return service.DecodeProcessSpec(in.Spec).Tty }

func streamMediaType(tty bool) string {
	if tty {
		return types.MediaTypeRawStream
	}
	return types.MediaTypeMultiplexedStream
}

// hijack takes the client's connection over and answers as dockerd does:
// 101 UPGRADED when the client asked for the upgrade, 200 otherwise. Bytes
// the client sent early are returned for the proxy to forward first.
func hijack(w http.ResponseWriter, r *http.Request, tty bool) (net.Conn, []byte, error) {
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return nil, nil, errdefs.Wrap(errdefs.Internal, err, "hijack the connection")
	}
	var early []byte
	if n := brw.Reader.Buffered(); n > 0 {
		b, _ := brw.Reader.Peek(n)
		early = bytes.Clone(b)
	}
	head := "HTTP/1.1 200 OK\r\nContent-Type: " + streamMediaType(tty) + "\r\n\r\n"
	if strings.EqualFold(r.Header.Get("Upgrade"), "tcp") {
		head = "HTTP/1.1 101 UPGRADED\r\nContent-Type: " + streamMediaType(tty) +
			"\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n"
	}
	if _, err := io.WriteString(conn, head); err != nil {
		conn.Close()
		return nil, nil, nil
	}
	return conn, early, nil
}

// proxy joins a hijacked client connection and an agent stream: client
// bytes (stdin) to the agent, with the client's half-close passed on, and
// the agent's output to the client until the agent ends it. Both
// connections are closed when it returns.
func proxy(client net.Conn, early []byte, agent *nodeclient.Stream) {
	go func() {
		if len(early) > 0 {
			if _, err := agent.Write(early); err != nil {
				agent.Close()
				return
			}
		}
		if _, err := io.Copy(agent, client); err != nil {
			agent.Close()
			return
		}
		agent.CloseWrite()
	}()
	agent.WriteTo(client)
	if cw, ok := client.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
	client.Close()
	agent.Close()
}

func (s *Server) attachContainer(w http.ResponseWriter, r *http.Request) error {
	ref := chi.URLParam(r, "id")
	in, err := s.ResolveContainer(r, ref)
	if err != nil {
		return err
	}
	q := r.URL.Query()
	if q.Get("stream") != "" && !boolParam(q.Get("stream")) {
		// stream=0 (with logs=1) is the old way to read logs.
		return errdefs.InvalidArgument("attach without stream is not supported: use logs")
	}
	node, err := s.nodeOf(r.Context(), in)
	if err != nil {
		return err
	}
	opts := nodeclient.AttachOptions{Stdin: boolParam(q.Get("stdin")), Stdout: boolParam(q.Get("stdout")), Stderr: boolParam(q.Get("stderr"))}
	agent, err := nodes.Attach(r.Context(), node, in.ID, opts)
	if err != nil {
		return err
	}
	client, early, err := hijack(w, r, ttyOf(in))
	if err != nil || client == nil {
		agent.Close()
		return err
	}
	s.recordEvent(r.Context(), Caller(r), in, "attach", nil)
	proxy(client, early, agent)
	return nil
}

// parseDockerTime parses since/until: Unix seconds with an optional
// fraction, as the CLI sends them ("1700000000.000000001"), or RFC 3339.
func parseDockerTime(v string) (time.Time, error) {
	if v == "" || v == "0" {
		return time.Time{}, nil
	}
	sec, frac, _ := strings.Cut(v, ".")
	if n, err := strconv.ParseInt(sec, 10, 64); err == nil {
		var ns int64
		if frac != "" {
			frac = (frac + "000000000")[:9]
			if ns, err = strconv.ParseInt(frac, 10, 64); err != nil {
				return time.Time{}, errdefs.InvalidArgument("invalid time %q", v)
			}
		}
		return time.Unix(n, ns), nil
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		return time.Time{}, errdefs.InvalidArgument("invalid time %q: want Unix seconds or RFC 3339", v)
	}
	return t, nil
}

func (s *Server) containerLogs(w http.ResponseWriter, r *http.Request) error {
	in, err := s.ResolveContainer(r, chi.URLParam(r, "id"))
	if err != nil {
		return err
	}
	q := r.URL.Query()
	lq := nodeclient.LogsQuery{Stdout: boolParam(q.Get("stdout")), Stderr: boolParam(q.Get("stderr")),
		Follow: boolParam(q.Get("follow")), Timestamps: boolParam(q.Get("timestamps")), Raw: ttyOf(in), Tail: -1}
	if !lq.Stdout && !lq.Stderr {
		return errdefs.InvalidArgument("Bad parameters: you must choose at least one stream")
	}
	if lq.Since, err = parseDockerTime(q.Get("since")); err != nil {
		return err
	}
	if lq.Until, err = parseDockerTime(q.Get("until")); err != nil {
		return err
	}
	if t := q.Get("tail"); t != "" && t != "all" {
		n, err := strconv.Atoi(t)
		if err != nil {
			return errdefs.InvalidArgument("invalid tail %q", t)
		}
		lq.Tail = max(n, 0)
	}
	var body io.ReadCloser = io.NopCloser(strings.NewReader(""))
	if in.NodeID != nil && (in.StartedAt != nil || stateOf(in).Running || lq.Follow) {
		node, err := s.nodeOf(r.Context(), in)
		if err != nil {
			return err
		}
		body, err = nodes.Logs(r.Context(), node, in.ID, lq)
		if errdefs.Is(err, errdefs.NotFound) && !lq.Follow {
			body, err = io.NopCloser(strings.NewReader("")), nil // not created on its node yet
		}
		if err != nil {
			return err
		}
	}
	defer body.Close()
	w.Header().Set("Content-Type", streamMediaType(lq.Raw))
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	rc.Flush()
	buf := make([]byte, 32<<10)
	for {
		n, err := body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return nil
			}
			rc.Flush()
		}
		if err != nil {
			return nil
		}
	}
}

// waitContainer answers POST /containers/{id}/wait. The headers go out at
// once (the CLI waits for them before it starts the container); the body
// when the condition holds. Errors after that are in the body's Error.
func (s *Server) waitContainer(w http.ResponseWriter, r *http.Request) error {
	c := Caller(r)
	in, err := s.ResolveContainer(r, chi.URLParam(r, "id"))
	if err != nil {
		return err
	}
	cond := container.WaitCondition(r.URL.Query().Get("condition"))
	switch cond {
	case "":
		cond = container.WaitConditionNotRunning
	case container.WaitConditionNotRunning, container.WaitConditionNextExit, container.WaitConditionRemoved:
	default:
		return errdefs.InvalidArgument("invalid condition: %q", cond)
	}
	autoRemove := extraOf(service.DecodeProcessSpec(in.Spec)).HostConfig.AutoRemove
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	http.NewResponseController(w).Flush()

	agentCond := "next-exit"
	if cond == container.WaitConditionNotRunning {
		agentCond = "not-running"
	}
	var res container.WaitResponse
	var code int
	var msg string
	if autoRemove && cond != container.WaitConditionNotRunning {
		// The removal must happen even when the client leaves first
		// (`docker run -d --rm`): wait and remove apart from the request.
		type outcome struct {
			code int
			msg  string
			err  error
		}
		done := make(chan outcome, 1)
		go func() {
			bg := context.WithoutCancel(r.Context())
			code, msg, err := s.waitExit(bg, c, in, "next-exit")
			if err == nil {
				s.autoRemove(bg, c, in.ID)
			}
			done <- outcome{code, msg, err}
		}()
		select {
		case <-r.Context().Done():
			return nil
		case o := <-done:
			code, msg, err = o.code, o.msg, o.err
		}
	} else {
		code, msg, err = s.waitExit(r.Context(), c, in, agentCond)
	}
	if err != nil {
		if r.Context().Err() != nil {
			return nil
		}
		res.StatusCode = -1
		res.Error = &container.WaitExitError{Message: errdefs.MessageOf(err)}
		return writeJSONBody(w, res)
	}
	res.StatusCode = int64(code)
	if msg != "" {
		res.Error = &container.WaitExitError{Message: msg}
	}
	if cond == container.WaitConditionRemoved {
		s.waitRemoved(r.Context(), c, in.ID)
	}
	return writeJSONBody(w, res)
}

func writeJSONBody(w http.ResponseWriter, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return nil
	}
	w.Write(append(b, '\n'))
	return nil
}

// waitExit waits for the container's main process through its node's
// stream server, watching the instance row meanwhile for what the node
// cannot tell: a failed start, a removal. A container whose node serves no
// streams is watched through the row alone.
func (s *Server) waitExit(ctx context.Context, c service.Caller, in store.Instance, cond string) (int, string, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type result struct {
		code int
		msg  string
		err  error
	}
	done := make(chan result, 1)
	node, nerr := s.nodeOf(ctx, in)
	if nerr == nil && node.Address != "" {
		go func() {
			var last time.Time
			if in.StartedAt != nil {
				last = *in.StartedAt
			}
			res, err := nodes.WaitAfter(ctx, node, in.ID, cond, last)
			if err == nil {
				// Answer only once the exit is stored: a `docker rm` or
				// inspect right after `docker run` must see it.
				s.waitStored(ctx, c, in, cond)
			}
			done <- result{res.StatusCode, res.Error, err}
		}()
	}
	started := in.StartedAt
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return 0, "", ctx.Err()
		case res := <-done:
			return res.code, res.msg, res.err
		case <-tick.C:
		}
		cur, err := s.store.GetInstance(ctx, c.AccountID, in.ID)
		if errdefs.Is(err, errdefs.NotFound) || errdefs.Is(err, errdefs.Gone) || err == nil && cur.State == "deleted" {
			return exitOf(cur), "", nil
		}
		if err != nil {
			continue
		}
		if cur.State == "failed" {
			msg := cur.Error
			if msg == "" {
				msg = "the container failed to start"
			}
			return 127, msg, nil
		}
		if nerr != nil || node.Address == "" {
			// No stream server: the row's reported state is all there is.
			st := stateOf(cur)
			ran := cur.StartedAt != nil && (started == nil || !cur.StartedAt.Equal(*started))
			if !st.Running && (cond == "not-running" || ran || stateOf(in).Running) {
				return exitOf(cur), "", nil
			}
		}
	}
}

// waitStored waits (up to ConvergeTimeout) until the instance's row shows
// what the node's wait saw: not running, and for next-exit a run newer than
// the one in `in` ended (or the row is gone).
func (s *Server) waitStored(ctx context.Context, c service.Caller, in store.Instance, cond string) {
	if p := service.DecodeProcessSpec(in.Spec).Restart.Name; p != "" && p != "no" {
		return // restarted at once: the row may never show the exit
	}
	s.converge(ctx, c, in.ID, 5*time.Second, func(cur store.Instance) bool {
		if stateOf(cur).Running || cur.State == "provisioning" {
			return false
		}
		if cond != "next-exit" {
			return true
		}
		return cur.ExitCode != nil && cur.FinishedAt != nil && (in.FinishedAt == nil || !cur.FinishedAt.Equal(*in.FinishedAt))
	})
}

func exitOf(in store.Instance) int {
	if in.ExitCode != nil {
		return *in.ExitCode
	}
	return 0
}

// autoRemove deletes an exited AutoRemove container. It outlives the
// client's request: `docker run -d --rm` leaves before the exit.
func (s *Server) autoRemove(ctx context.Context, c service.Caller, id string) {
	if _, err := s.Service.Delete(context.WithoutCancel(ctx), c, id); err != nil &&
		!errdefs.Is(err, errdefs.Gone) && !errdefs.Is(err, errdefs.NotFound) {
		s.log.Warn("auto-remove failed", "instance", id, "err", err)
	}
}

// waitRemoved waits (up to a minute) for the container to be gone.
func (s *Server) waitRemoved(ctx context.Context, c service.Caller, id string) {
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		changed, cancel := s.Service.InstanceChanged(id)
		cur, err := s.store.GetInstance(ctx, c.AccountID, id)
		if err != nil && !errdefs.Is(err, errdefs.Unavailable) || err == nil && (cur.State == "deleted" || cur.DesiredState == "deleted") {
			cancel()
			return
		}
		select {
		case <-ctx.Done():
			cancel()
			return
		case <-changed:
		case <-time.After(250 * time.Millisecond):
		}
		cancel()
	}
}

func (s *Server) resizeContainer(w http.ResponseWriter, r *http.Request) error {
	in, err := s.ResolveContainer(r, chi.URLParam(r, "id"))
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
	if err := nodes.Resize(r.Context(), node, in.ID, h, wd); err != nil {
		return err
	}
	w.WriteHeader(http.StatusOK)
	return nil
}

func sizeOf(r *http.Request) (uint16, uint16, error) {
	q := r.URL.Query()
	h, err1 := strconv.ParseUint(q.Get("h"), 10, 16)
	w, err2 := strconv.ParseUint(q.Get("w"), 10, 16)
	if err1 != nil || err2 != nil {
		return 0, 0, errdefs.InvalidArgument("h and w must be numbers")
	}
	return uint16(h), uint16(w), nil
}
