package runc

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/creack/pty"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"flotilla/agent/driver"
	"flotilla/api/errdefs"
)

// Logs implements driver.Streamer. It sends the selected lines to out (it
// does not close out) and, with Follow, keeps sending until ctx is done or
// the container's shim has ended and the log is drained.
func (d *Driver) Logs(ctx context.Context, id string, opts driver.LogOptions, out chan<- driver.LogEntry) error {
	bundle, _, err := d.loadSpec(id)
	if err != nil {
		return err
	}
	if !opts.Stdout && !opts.Stderr {
		opts.Stdout, opts.Stderr = true, true
	}
	alive := func() bool { _, ok := shimAlive(bundle); return ok }
	if err := readLogs(ctx, filepath.Join(bundle, fileLog), d.cfg.LogFiles, opts, alive, out); err != nil && ctx.Err() == nil {
		return errdefs.Wrap(errdefs.Internal, err, "read logs of %s", id)
	}
	return nil
}

func (d *Driver) dialShim(id string) (net.Conn, string, driver.Spec, error) {
	bundle, spec, err := d.loadSpec(id)
	if err != nil {
		return nil, "", spec, err
	}
	if _, alive := shimAlive(bundle); !alive {
		return nil, "", spec, errdefs.Conflictf("container %s is not running", id)
	}
	conn, err := net.DialTimeout("unix", driver.SocketPath(bundle, fileAttach), 5*time.Second)
	if err != nil {
		// The process may have exited (and its shim gone) since the check:
		// that is "not running", which callers wait on, not a failure.
		if _, alive := shimAlive(bundle); !alive || errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ECONNREFUSED) {
			return nil, "", spec, errdefs.Wrap(errdefs.Conflict, err, "container %s is not running", id)
		}
		return nil, "", spec, errdefs.Wrap(errdefs.Unavailable, err, "connect to the shim of %s", id)
	}
	return conn, bundle, spec, nil
}

func shimRequest(conn net.Conn, req attachRequest) (*bufio.Reader, error) {
	b, _ := json.Marshal(req)
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Write(append(b, '\n')); err != nil {
		return nil, err
	}
	br := bufio.NewReader(conn)
	line, err := br.ReadString('\n')
	if err != nil {
		return nil, err
	}
	conn.SetDeadline(time.Time{})
	if line != "ok\n" {
		return nil, errors.New(strings.TrimSpace(line))
	}
	return br, nil
}

// Attach implements driver.Streamer: a live connection to the container's
// stdio through its shim. It returns Conflict if the container is not
// running. Output that arrives while nobody is attached is only in the logs.
func (d *Driver) Attach(ctx context.Context, id string, opts driver.AttachOptions) (*driver.Streams, error) {
	conn, bundle, spec, err := d.dialShim(id)
	if err != nil {
		return nil, err
	}
	br, err := shimRequest(conn, attachRequest{Stdin: opts.Stdin, Stdout: opts.Stdout, Stderr: opts.Stderr})
	if err != nil {
		conn.Close()
		if _, alive := shimAlive(bundle); !alive {
			return nil, errdefs.Wrap(errdefs.Conflict, err, "container %s is not running", id)
		}
		return nil, errdefs.Wrap(errdefs.Unavailable, err, "attach to %s", id)
	}
	outR, outW := io.Pipe()
	errR, errW := io.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		err := demux(br, outW, errW)
		outW.CloseWithError(err)
		errW.CloseWithError(err)
	}()
	st := &driver.Streams{Tty: spec.Tty, Done: done, Close: conn.Close}
	if opts.Stdout || spec.Tty {
		st.Stdout = outR
	}
	if opts.Stderr && !spec.Tty {
		st.Stderr = errR
	}
	if opts.Stdin {
		st.Stdin = halfCloser{conn.(*net.UnixConn)}
	}
	go func() {
		select {
		case <-ctx.Done():
			conn.Close()
		case <-done:
		}
	}()
	return st, nil
}

type halfCloser struct{ c *net.UnixConn }

func (h halfCloser) Write(p []byte) (int, error) { return h.c.Write(p) }
func (h halfCloser) Close() error                { return h.c.CloseWrite() }

// demux splits the shim's framed stream into stdout and stderr.
func demux(r io.Reader, stdout, stderr io.Writer) error {
	var h [8]byte
	for {
		if _, err := io.ReadFull(r, h[:]); err != nil {
			if err == io.EOF {
				return nil
			}
			return err
		}
		n := int64(binary.BigEndian.Uint32(h[4:]))
		w := stdout
		if h[0] == 2 {
			w = stderr
		}
		if _, err := io.CopyN(w, r, n); err != nil {
			return err
		}
	}
}

// Resize implements driver.Streamer: it sets the container's tty size.
// It returns Conflict if the container has no tty or is not running.
func (d *Driver) Resize(ctx context.Context, id string, h, w uint16) error {
	conn, _, _, err := d.dialShim(id)
	if err != nil {
		return err
	}
	defer conn.Close()
	if _, err := shimRequest(conn, attachRequest{Resize: &[2]uint16{h, w}}); err != nil {
		return errdefs.Wrap(errdefs.Conflict, err, "resize tty of %s", id)
	}
	return nil
}

// Exec implements driver.Streamer: `runc exec` of cfg in the running
// container, with the container's capabilities, seccomp profile and
// no-new-privileges. With Tty the process gets a pty (Resize works);
// otherwise pipes. Wait returns the process's exit code.
func (d *Driver) Exec(ctx context.Context, id string, cfg driver.ExecConfig) (*driver.ExecProcess, error) {
	bundle, _, err := d.loadSpec(id)
	if err != nil {
		return nil, err
	}
	if len(cfg.Cmd) == 0 {
		return nil, errdefs.InvalidArgument("exec needs a command")
	}
	if st := d.status(ctx, id, bundle); st.State != driver.StateRunning || st.Pid == 0 {
		return nil, errdefs.Conflictf("container %s is not running", id)
	}
	var oci specs.Spec
	if err := readJSON(filepath.Join(bundle, fileConfig), &oci); err != nil {
		return nil, errdefs.Wrap(errdefs.Internal, err, "read runtime spec of %s", id)
	}
	proc := *oci.Process
	proc.Args, proc.Terminal = cfg.Cmd, cfg.Tty
	proc.Env = mergeEnv(proc.Env, cfg.Env)
	if cfg.WorkingDir != "" {
		proc.Cwd = cfg.WorkingDir
	}
	if cfg.User != "" {
		if proc.User, err = resolveUser(filepath.Join(bundle, dirRootfs), cfg.User); err != nil {
			return nil, err
		}
	}
	pf, err := os.CreateTemp(bundle, "exec-*.json")
	if err != nil {
		return nil, errdefs.Wrap(errdefs.Internal, err, "write exec process")
	}
	json.NewEncoder(pf).Encode(proc)
	pf.Close()
	pidFile := pf.Name() + ".pid"
	cmd := exec.Command(d.cfg.RuncBinary, "--root", d.rc.Root, "exec", "--process", pf.Name(), "--pid-file", pidFile, id)
	cleanup := func() { os.Remove(pf.Name()); os.Remove(pidFile) }

	ep := &driver.ExecProcess{}
	done := make(chan struct{})
	var closers []io.Closer
	if cfg.Tty {
		master, err := pty.Start(cmd)
		if err != nil {
			cleanup()
			return nil, errdefs.Wrap(errdefs.Internal, err, "exec in %s", id)
		}
		ep.Tty, ep.Stdout = true, &ptyReader{f: master}
		if cfg.AttachStdin {
			ep.Stdin = master
		}
		ep.Resize = func(h, w uint16) error { return pty.Setsize(master, &pty.Winsize{Rows: h, Cols: w}) }
	} else {
		if cfg.AttachStdin {
			w, err := cmd.StdinPipe()
			if err != nil {
				cleanup()
				return nil, errdefs.Wrap(errdefs.Internal, err, "exec in %s", id)
			}
			ep.Stdin = w
		}
		outR, outW := io.Pipe()
		errR, errW := io.Pipe()
		cmd.Stdout, cmd.Stderr = outW, errW
		if !cfg.AttachStdout {
			cmd.Stdout = io.Discard
		}
		if !cfg.AttachStderr {
			cmd.Stderr = io.Discard
		}
		closers = append(closers, outW, errW)
		ep.Stdout, ep.Stderr = outR, errR
		ep.Resize = func(h, w uint16) error { return errdefs.Conflictf("exec has no tty") }
		if err := cmd.Start(); err != nil {
			cleanup()
			return nil, errdefs.Wrap(errdefs.Internal, err, "exec in %s", id)
		}
	}
	var code int
	var waitErr error
	go func() {
		err := cmd.Wait()
		code = cmd.ProcessState.ExitCode()
		if err != nil && code < 0 {
			waitErr = errdefs.Wrap(errdefs.Internal, err, "exec in %s", id)
		}
		for _, c := range closers {
			c.Close()
		}
		cleanup()
		close(done)
	}()
	// The pid inside the container's view of the host: runc writes it once
	// the process runs.
	for i := 0; i < 200; i++ {
		if b, err := os.ReadFile(pidFile); err == nil && len(b) > 0 {
			ep.Pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
			break
		}
		select {
		case <-done:
			i = 200
		case <-time.After(5 * time.Millisecond):
		}
	}
	ep.Done = done
	ep.Close = func() error {
		if r, ok := ep.Stdout.(*ptyReader); ok {
			r.f.Close()
		}
		select {
		case <-done:
			return nil
		default:
		}
		// runc exec does not pass SIGKILL on: the process in the
		// container is killed by its pid.
		if ep.Pid > 0 {
			unix.Kill(ep.Pid, unix.SIGKILL)
		}
		if cmd.Process != nil {
			cmd.Process.Signal(unix.SIGKILL)
		}
		return nil
	}
	ep.Wait = func() (int, error) { <-done; return code, waitErr }
	return ep, nil
}

// Top implements driver.Streamer: `ps` (with psArgs, default "-ef") on the
// host, keeping the rows of the container's processes.
func (d *Driver) Top(ctx context.Context, id string, psArgs string) ([]string, [][]string, error) {
	if _, _, err := d.loadSpec(id); err != nil {
		return nil, nil, err
	}
	pids, err := d.rc.Ps(ctx, id)
	if err != nil {
		return nil, nil, errdefs.Wrap(errdefs.Conflict, err, "container %s is not running", id)
	}
	if psArgs == "" {
		psArgs = "-ef"
	}
	out, err := exec.CommandContext(ctx, "ps", strings.Fields(psArgs)...).Output()
	if err != nil {
		return nil, nil, errdefs.Wrap(errdefs.Invalid, err, "ps %s", psArgs)
	}
	lines := strings.Split(strings.TrimRight(string(out), "\n"), "\n")
	titles := strings.Fields(lines[0])
	pidCol := -1
	for i, t := range titles {
		if t == "PID" {
			pidCol = i
		}
	}
	if pidCol < 0 {
		return nil, nil, errdefs.InvalidArgument("ps %s prints no PID column", psArgs)
	}
	want := map[string]bool{}
	for _, p := range pids {
		want[strconv.Itoa(p)] = true
	}
	var rows [][]string
	for _, l := range lines[1:] {
		f := strings.Fields(l)
		if len(f) < len(titles) || !want[f[pidCol]] {
			continue
		}
		// The last column (the command) may hold spaces.
		row := append(f[:len(titles)-1:len(titles)-1], strings.Join(f[len(titles)-1:], " "))
		rows = append(rows, row)
	}
	return titles, rows, nil
}

// Stats implements driver.StatsReader from the container's cgroup v1 files.
// It returns Conflict if the container is not running.
func (d *Driver) Stats(ctx context.Context, id string) (driver.Stats, error) {
	bundle, _, err := d.loadSpec(id)
	if err != nil {
		return driver.Stats{}, err
	}
	if st := d.status(ctx, id, bundle); st.State != driver.StateRunning {
		return driver.Stats{}, errdefs.Conflictf("container %s is not running", id)
	}
	cg := func(ctrl, file string) uint64 {
		b, err := os.ReadFile(filepath.Join("/sys/fs/cgroup", ctrl, CgroupParent, id, file))
		if err != nil {
			return 0
		}
		n, _ := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
		return n
	}
	s := driver.Stats{
		Time:        time.Now(),
		CPUUsageNs:  cg("cpuacct", "cpuacct.usage"),
		MemoryBytes: cg("memory", "memory.usage_in_bytes"),
		MemoryLimit: cg("memory", "memory.limit_in_bytes"),
		PIDs:        cg("pids", "pids.current"),
	}
	if s.PIDs == 0 && s.MemoryBytes == 0 {
		return s, errdefs.New(errdefs.Unavailable, "no cgroup statistics for %s", id)
	}
	return s, nil
}

// ptyReader reads a pty master; the EIO that signals the other side has
// closed becomes io.EOF, and the master is closed then.
type ptyReader struct{ f *os.File }

func (p *ptyReader) Read(b []byte) (int, error) {
	n, err := p.f.Read(b)
	if err != nil && (errors.Is(err, unix.EIO) || errors.Is(err, os.ErrClosed)) {
		p.f.Close()
		err = io.EOF
	}
	return n, err
}

var _ = fmt.Sprintf
