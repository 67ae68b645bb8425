package sim

// Simulated process I/O (driver.Streamer and driver.StatsReader), so that
// the stream paths (agent stream server, node client, Docker endpoint) can
// be tested without root or runc.
//
// Each run of an instance prints one line when it starts: for a command
// "echo ARGS..." the ARGS joined by spaces, for anything else the whole
// command; SIM_STDERR=<text> in the environment adds <text> on stderr. With
// OpenStdin, what an attach writes to stdin is echoed to stdout (cat).
// Runs are noticed lazily, when a stream looks at the instance, so only runs
// that someone streamed or listed logs of leave log lines.
//
// Exec runs a pretend process: "cat" echoes stdin until it closes,
// "sh -c 'exit N'" exits N, "echo ARGS..." prints ARGS, anything else prints
// its command; SIM_EXIT=<code> in the exec's env sets the exit code.

import (
	"context"
	"io"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"flotilla/agent/driver"
	"flotilla/api/errdefs"
)

var (
	_ driver.Streamer    = (*Driver)(nil)
	_ driver.StatsReader = (*Driver)(nil)
)

// streamState is a driver's simulated I/O state, kept beside the driver.
type streamState struct {
	mu    sync.Mutex
	logs  map[string][]driver.LogEntry
	seen  map[string]time.Time // the StartedAt whose output was recorded
	subs  map[string]map[*simSub]struct{}
	sizes map[string][2]uint16
}

var streamStates sync.Map // *Driver -> *streamState

func (d *Driver) streams() *streamState {
	if v, ok := streamStates.Load(d); ok {
		return v.(*streamState)
	}
	v, _ := streamStates.LoadOrStore(d, &streamState{logs: map[string][]driver.LogEntry{}, seen: map[string]time.Time{},
		subs: map[string]map[*simSub]struct{}{}, sizes: map[string][2]uint16{}})
	return v.(*streamState)
}

// chunk is output for one attach.
type chunk struct {
	stderr bool
	data   []byte
}

// simSub is one live attach.
type simSub struct {
	ch     chan chunk
	stdout bool
	stderr bool
	once   sync.Once
}

func (s *simSub) end() { s.once.Do(func() { close(s.ch) }) }

// observe inspects id and, when a run started that has not been recorded,
// records and broadcasts its start output.
func (d *Driver) observe(id string) (driver.Status, driver.Spec, error) {
	d.mu.Lock()
	in, err := d.get(id)
	if err != nil {
		d.mu.Unlock()
		d.forget(id)
		return driver.Status{}, driver.Spec{}, err
	}
	st := in.status(id, d.cfg.Now())
	spec := in.Spec
	d.mu.Unlock()
	ss := d.streams()
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if st.StartedAt.IsZero() || ss.seen[id].Equal(st.StartedAt) {
		return st, spec, nil
	}
	ss.seen[id] = st.StartedAt
	line := startOutput(spec)
	ss.emit(id, "stdout", st.StartedAt, line, spec.Tty)
	if v, ok := envValue(spec.Env, "SIM_STDERR"); ok {
		ss.emit(id, "stderr", st.StartedAt, v+"\n", spec.Tty)
	}
	return st, spec, nil
}

// forget drops the I/O state of a deleted instance.
func (d *Driver) forget(id string) {
	ss := d.streams()
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if len(ss.subs[id]) > 0 {
		return // an attach may be waiting for the instance to be created
	}
	delete(ss.logs, id)
	delete(ss.seen, id)
	delete(ss.subs, id)
	delete(ss.sizes, id)
}

// emit records output in the log and sends it to attaches. ss.mu is held.
func (ss *streamState) emit(id, stream string, at time.Time, text string, tty bool) {
	if tty {
		text = strings.ReplaceAll(text, "\n", "\r\n")
		stream = "stdout"
	}
	ss.logs[id] = append(ss.logs[id], driver.LogEntry{Time: at, Stream: stream, Line: []byte(text)})
	for sub := range ss.subs[id] {
		if stream == "stdout" && !sub.stdout || stream == "stderr" && !sub.stderr {
			continue
		}
		select {
		case sub.ch <- chunk{stderr: stream == "stderr", data: []byte(text)}:
		default: // a stalled reader loses output, like a full pipe buffer would stall it
		}
	}
}

func startOutput(spec driver.Spec) string {
	cmd := append(slices.Clone(spec.Entrypoint), spec.Cmd...)
	if len(cmd) > 0 && path.Base(cmd[0]) == "echo" {
		return strings.Join(cmd[1:], " ") + "\n"
	}
	return strings.Join(cmd, " ") + "\n"
}

// Logs implements driver.Streamer over the recorded output. With Follow it
// returns once the instance is not running and everything was sent.
func (d *Driver) Logs(ctx context.Context, id string, opts driver.LogOptions, out chan<- driver.LogEntry) error {
	if !opts.Stdout && !opts.Stderr {
		opts.Stdout, opts.Stderr = true, true
	}
	want := func(e driver.LogEntry) bool {
		if e.Stream == "stdout" && !opts.Stdout || e.Stream == "stderr" && !opts.Stderr {
			return false
		}
		return (opts.Since.IsZero() || !e.Time.Before(opts.Since)) && (opts.Until.IsZero() || !e.Time.After(opts.Until))
	}
	ss := d.streams()
	next := 0
	read := func() []driver.LogEntry {
		ss.mu.Lock()
		defer ss.mu.Unlock()
		all := ss.logs[id]
		var sel []driver.LogEntry
		for _, e := range all[min(next, len(all)):] {
			if want(e) {
				sel = append(sel, e)
			}
		}
		next = len(all)
		return sel
	}
	send := func(es []driver.LogEntry) error {
		for _, e := range es {
			select {
			case out <- e:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return nil
	}
	if _, _, err := d.observe(id); err != nil {
		return err
	}
	first := read()
	if opts.Tail >= 0 && len(first) > opts.Tail {
		first = first[len(first)-opts.Tail:]
	}
	if err := send(first); err != nil || !opts.Follow {
		return nil
	}
	for {
		st, _, err := d.observe(id)
		if err := send(read()); err != nil {
			return nil
		}
		if err != nil || st.State != driver.StateRunning {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// Attach implements driver.Streamer. An instance that has never run can be
// attached to and gets the output of its first run; a stopped one answers
// Conflict. The streams end when the attached run ends.
func (d *Driver) Attach(ctx context.Context, id string, opts driver.AttachOptions) (*driver.Streams, error) {
	spec, err := d.Spec(id)
	if err != nil {
		return nil, err
	}
	d.observe(id) // a run nobody noticed yet is past output, not this attach's
	// Subscribe before looking, so that a start noticed by anyone from now
	// on reaches this attach.
	sub := &simSub{ch: make(chan chunk, 1024), stdout: opts.Stdout || spec.Tty, stderr: opts.Stderr && !spec.Tty}
	ss := d.streams()
	ss.mu.Lock()
	if ss.subs[id] == nil {
		ss.subs[id] = map[*simSub]struct{}{}
	}
	ss.subs[id][sub] = struct{}{}
	ss.mu.Unlock()
	st0, _, err := d.observe(id)
	if err == nil && st0.State != driver.StateRunning && !st0.StartedAt.IsZero() {
		err = errdefs.Conflictf("container %s is not running", id)
	}
	if err != nil {
		ss.mu.Lock()
		delete(ss.subs[id], sub)
		ss.mu.Unlock()
		return nil, err
	}

	outR, outW := io.Pipe()
	errR, errW := io.Pipe()
	done := make(chan struct{})
	stop := make(chan struct{})
	var stopOnce sync.Once
	closeFn := func() error { stopOnce.Do(func() { close(stop) }); return nil }
	// Writer: chunks to pipes.
	go func() {
		defer close(done)
		for c := range sub.ch {
			w := outW
			if c.stderr {
				w = errW
			}
			if _, err := w.Write(c.data); err != nil {
				break
			}
		}
		outW.Close()
		errW.Close()
		for range sub.ch {
		}
	}()
	// Watcher: ends the attach with its run.
	go func() {
		defer func() {
			ss.mu.Lock()
			delete(ss.subs[id], sub)
			ss.mu.Unlock()
			sub.end()
		}()
		for {
			select {
			case <-stop:
				return
			case <-ctx.Done():
				return
			case <-time.After(5 * time.Millisecond):
			}
			cur, _, err := d.observe(id)
			if err != nil {
				return
			}
			if cur.State != driver.StateRunning && !cur.StartedAt.IsZero() &&
				(st0.State == driver.StateRunning || !cur.StartedAt.Equal(st0.StartedAt)) {
				return
			}
		}
	}()
	out := &driver.Streams{Tty: spec.Tty, Done: done, Close: closeFn}
	if sub.stdout {
		out.Stdout = outR
	}
	if sub.stderr {
		out.Stderr = errR
	}
	if opts.Stdin {
		out.Stdin = &simStdin{d: d, id: id, open: spec.OpenStdin, tty: spec.Tty}
	}
	return out, nil
}

// simStdin echoes what is written to the instance's stdout (cat), when the
// instance keeps stdin open.
type simStdin struct {
	d    *Driver
	id   string
	open bool
	tty  bool
}

func (s *simStdin) Write(p []byte) (int, error) {
	if !s.open {
		return len(p), nil
	}
	ss := s.d.streams()
	ss.mu.Lock()
	ss.emit(s.id, "stdout", s.d.cfg.Now(), string(p), s.tty)
	ss.mu.Unlock()
	return len(p), nil
}

func (s *simStdin) Close() error { return nil }

// Resize implements driver.Streamer; it records the size (TTYSize).
func (d *Driver) Resize(ctx context.Context, id string, h, w uint16) error {
	st, spec, err := d.observe(id)
	if err != nil {
		return err
	}
	if !spec.Tty || st.State != driver.StateRunning {
		return errdefs.Conflictf("container %s has no running tty", id)
	}
	ss := d.streams()
	ss.mu.Lock()
	ss.sizes[id] = [2]uint16{h, w}
	ss.mu.Unlock()
	return nil
}

// TTYSize returns the last size set with Resize (tests).
func (d *Driver) TTYSize(id string) (h, w uint16) {
	ss := d.streams()
	ss.mu.Lock()
	defer ss.mu.Unlock()
	sz := ss.sizes[id]
	return sz[0], sz[1]
}

// Exec implements driver.Streamer with pretend processes (see the file's
// comment). It returns Conflict if the instance is not running.
func (d *Driver) Exec(ctx context.Context, id string, cfg driver.ExecConfig) (*driver.ExecProcess, error) {
	st, _, err := d.observe(id)
	if err != nil {
		return nil, err
	}
	if st.State != driver.StateRunning {
		return nil, errdefs.Conflictf("container %s is not running", id)
	}
	if len(cfg.Cmd) == 0 {
		return nil, errdefs.InvalidArgument("exec needs a command")
	}
	code := 0
	if len(cfg.Cmd) == 3 && path.Base(cfg.Cmd[0]) == "sh" && cfg.Cmd[1] == "-c" {
		if n, ok := strings.CutPrefix(strings.TrimSpace(cfg.Cmd[2]), "exit "); ok {
			code, _ = strconv.Atoi(strings.TrimSpace(n))
		}
	}
	if v, ok := envValue(cfg.Env, "SIM_EXIT"); ok {
		code, _ = strconv.Atoi(v)
	}
	outR, outW := io.Pipe()
	errR, errW := io.Pipe()
	inR, inW := io.Pipe()
	done := make(chan struct{})
	var once sync.Once
	finish := func(c int) {
		once.Do(func() {
			code = c
			outW.Close()
			errW.Close()
			inR.Close()
			close(done)
		})
	}
	nl := func(s string) string {
		if cfg.Tty {
			return strings.ReplaceAll(s, "\n", "\r\n")
		}
		return s
	}
	go func() {
		switch name := path.Base(cfg.Cmd[0]); {
		case name == "cat" && cfg.AttachStdin:
			io.Copy(outW, inR)
		case name == "sh" && len(cfg.Cmd) == 3 && strings.HasPrefix(strings.TrimSpace(cfg.Cmd[2]), "exit"):
		case name == "echo":
			io.WriteString(outW, nl(strings.Join(cfg.Cmd[1:], " ")+"\n"))
		default:
			io.WriteString(outW, nl(strings.Join(cfg.Cmd, " ")+"\n"))
		}
		finish(code)
	}()
	ep := &driver.ExecProcess{Pid: st.Pid + 1}
	ep.Tty, ep.Stdout, ep.Done = cfg.Tty, outR, done
	if !cfg.Tty {
		ep.Stderr = errR
	}
	if cfg.AttachStdin {
		ep.Stdin = inW
	}
	if !cfg.AttachStdout {
		go io.Copy(io.Discard, outR)
		ep.Stdout = nil
	}
	if !cfg.AttachStderr && ep.Stderr != nil {
		go io.Copy(io.Discard, errR)
		ep.Stderr = nil
	}
	ep.Close = func() error { finish(137); return nil }
	ep.Wait = func() (int, error) { <-done; return code, nil }
	ep.Resize = func(h, w uint16) error {
		if !cfg.Tty {
			return errdefs.Conflictf("exec has no tty")
		}
		return nil
	}
	return ep, nil
}

// Top implements driver.Streamer: one process, the instance's command.
func (d *Driver) Top(ctx context.Context, id string, psArgs string) ([]string, [][]string, error) {
	st, spec, err := d.observe(id)
	if err != nil {
		return nil, nil, err
	}
	if st.State != driver.StateRunning {
		return nil, nil, errdefs.Conflictf("container %s is not running", id)
	}
	cmd := strings.TrimSpace(strings.Join(append(slices.Clone(spec.Entrypoint), spec.Cmd...), " "))
	return []string{"UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"},
		[][]string{{"root", strconv.Itoa(st.Pid), "0", "0", st.StartedAt.Format("15:04"), "?", "00:00:00", cmd}}, nil
}

// Stats implements driver.StatsReader: 1% of a CPU since the start, a
// quarter of the memory limit, one process.
func (d *Driver) Stats(ctx context.Context, id string) (driver.Stats, error) {
	st, spec, err := d.observe(id)
	if err != nil {
		return driver.Stats{}, err
	}
	if st.State != driver.StateRunning {
		return driver.Stats{}, errdefs.Conflictf("container %s is not running", id)
	}
	now := d.cfg.Now()
	limit := uint64(spec.MemoryMiB) << 20
	return driver.Stats{Time: now, CPUUsageNs: uint64(now.Sub(st.StartedAt).Nanoseconds() / 100),
		MemoryBytes: limit / 4, MemoryLimit: limit, PIDs: 1}, nil
}
