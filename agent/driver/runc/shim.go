package runc

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containerd/console"
	gorunc "github.com/containerd/go-runc"
	"golang.org/x/sys/unix"

	"flotilla/agent/driver"
	"flotilla/internal/atomicfile"
)

// Files in a container's directory (the runc bundle).
const (
	fileConfig    = "config.json" // OCI runtime spec
	fileSpec      = "spec.json"   // the driver.Spec it was made from
	fileShim      = "shim.json"   // the running shim's pid and start time
	fileStatus    = "status.json" // the shim's latest transition
	fileExit      = "exit.json"   // final exit status, written when the shim ends
	fileStop      = "stop"        // marker: stopped on purpose, do not restart
	fileLog       = "container.log"
	fileAttach    = "attach.sock"
	fileConsole   = "console.sock"
	fileInitPid   = "init.pid"
	fileRuncLog   = "runc.log"
	fileShimLog   = "shim.log"
	dirRootfs     = "rootfs"
	shimStateRun  = "running"
	shimStateWait = "restarting"
)

// shimStatus is what status.json and exit.json hold.
type shimStatus struct {
	State      string    `json:"state"` // running, restarting, exited
	Pid        int       `json:"pid,omitempty"`
	StartedAt  time.Time `json:"started_at,omitempty"`
	FinishedAt time.Time `json:"finished_at,omitempty"`
	ExitCode   *int      `json:"exit_code,omitempty"`
	Restarts   int       `json:"restarts"`
	Error      string    `json:"error,omitempty"`
}

type shimInfo struct {
	Pid       int    `json:"pid"`
	StartTime uint64 `json:"start_time"` // /proc/<pid>/stat field 22, against pid reuse
}

// writeJSONAtomic writes v to path durably through a rename, so a reader sees
// the old or the new content, never a torn write.
func writeJSONAtomic(path string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(path, b, 0o640, atomicfile.Options{DirPerm: 0o711, Sync: true})
}

func readJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

// procStartTime reads field 22 of /proc/pid/stat (0 if the process is gone).
func procStartTime(pid int) uint64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return 0
	}
	// f[0] is field 3 (state); a zombie has exited.
	if f[0] == "Z" {
		return 0
	}
	n, _ := strconv.ParseUint(f[19], 10, 64)
	return n
}

// ShimMain is the per-container shim: `flotilla runc-shim` runs it with
// args. It becomes a child subreaper (the agent starts it in a new session),
// runs `runc create` and `runc start`, owns the container's stdio (pipes, or
// the pty master for a tty), writes output to the size-rotated JSON-lines
// log, serves attach and resize on attach.sock in the bundle, waits for the
// container's init to exit and applies the restart policy. When it gives up
// it removes the runc container and writes exit.json atomically, then
// returns the exit code for the shim process (0 unless the shim itself
// failed). The agent may exit and restart at any time meanwhile.
func ShimMain(args []string) int {
	fs := flag.NewFlagSet("runc-shim", flag.ContinueOnError)
	var c shimConfig
	fs.StringVar(&c.bundle, "bundle", "", "bundle directory")
	fs.StringVar(&c.id, "id", "", "container id")
	fs.StringVar(&c.runcRoot, "root", "", "runc state root")
	fs.StringVar(&c.runcBin, "runc", "runc", "runc binary")
	fs.StringVar(&c.policy.Name, "restart", "", "restart policy")
	fs.IntVar(&c.policy.MaximumRetryCount, "max-retries", 0, "on-failure retry limit")
	fs.Int64Var(&c.logMax, "log-max-size", 10<<20, "rotate the log at this size")
	fs.IntVar(&c.logKeep, "log-files", 3, "log files kept, rotated ones included")
	fs.BoolVar(&c.stdin, "stdin", false, "keep stdin open")
	fs.BoolVar(&c.stdinOnce, "stdin-once", false, "close stdin when the first attach ends")
	fs.BoolVar(&c.tty, "tty", false, "allocate a tty")
	fs.IntVar(&c.waitAttach, "wait-attach", 0, "hold the first run until this many attach streams joined (at most attachWait)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if c.bundle == "" || c.id == "" || c.runcRoot == "" {
		fmt.Fprintln(os.Stderr, "runc-shim: -bundle, -id and -root are required")
		return 2
	}
	s := &shim{shimConfig: c, subs: map[*subscriber]struct{}{}}
	s.cond = sync.NewCond(&s.mu)
	err := s.run()
	s.mu.Lock()
	s.ended = true
	s.cond.Broadcast()
	s.mu.Unlock()
	if err != nil {
		fmt.Fprintf(os.Stderr, "runc-shim %s: %v\n", c.id, err)
		code, msg := -1, err.Error()
		if c, m, ok := execFailure(msg); ok {
			code, msg = c, m
		}
		writeJSONAtomic(filepath.Join(c.bundle, fileExit), shimStatus{
			State: "exited", ExitCode: &code, FinishedAt: time.Now().UTC(), Error: msg, Restarts: s.restarts})
		return 1
	}
	return 0
}

// execFailures are runc's words for a command that cannot be executed, as
// Docker reports them: 127 for a missing one, 126 for one that is not
// executable.
var execFailures = regexp.MustCompile(`exec: "[^"]*": (executable file not found in \$PATH|no such file or directory|permission denied|is a directory)`)

// execFailure recognises a run that failed because its command could not
// be executed, and returns Docker's exit code and message for it.
func execFailure(msg string) (int, string, bool) {
	m := execFailures.FindStringSubmatch(strings.ReplaceAll(msg, `\"`, `"`))
	if m == nil {
		return 0, "", false
	}
	code := 127
	if m[1] == "permission denied" || m[1] == "is a directory" {
		code = 126
	}
	return code, "failed to create task for container: OCI runtime create failed: runc create failed: unable to start container process: " + m[0] + ": unknown", true
}

// attachWait bounds how long a first run is held for its attach streams.
const attachWait = 5 * time.Second

type shimConfig struct {
	bundle, id, runcRoot, runcBin string
	policy                        driver.RestartPolicy
	logMax                        int64
	logKeep                       int
	stdin, stdinOnce, tty         bool
	waitAttach                    int
}

type shim struct {
	shimConfig
	rc       *gorunc.Runc
	log      *logWriter
	restarts int

	mu       sync.Mutex
	cond     *sync.Cond // on mu: stdin ready, attach joined, shim ended
	subs     map[*subscriber]struct{}
	stdinW   io.WriteCloser  // container stdin (pipe) for this run
	console  console.Console // pty master for this run
	attached int             // attach streams joined since the shim started
	ended    bool            // no run will follow
}

type subscriber struct {
	conn           net.Conn
	stdout, stderr bool
	mu             sync.Mutex
}

func (s *shim) path(name string) string { return filepath.Join(s.bundle, name) }

func (s *shim) run() error {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("become subreaper: %w", err)
	}
	if err := writeJSONAtomic(s.path(fileShim), shimInfo{Pid: os.Getpid(), StartTime: procStartTime(os.Getpid())}); err != nil {
		return err
	}
	s.rc = &gorunc.Runc{Command: s.runcBin, Root: s.runcRoot, Log: s.path(fileRuncLog)}
	lw, err := openLogWriter(s.path(fileLog), s.logMax, s.logKeep)
	if err != nil {
		return fmt.Errorf("open log: %w", err)
	}
	s.log = lw
	defer lw.Close()
	attach := driver.SocketPath(s.bundle, fileAttach)
	os.Remove(attach)
	ln, err := net.Listen("unix", attach)
	if err != nil {
		return fmt.Errorf("listen for attach: %w", err)
	}
	defer ln.Close()
	go s.serveAttach(ln)

	for {
		code, started, err := s.runOnce()
		if err != nil {
			return err
		}
		finished := time.Now().UTC()
		_, stopErr := os.Stat(s.path(fileStop))
		restart, delay := ShouldRestart(s.policy, code, s.restarts)
		if stopErr == nil || !restart {
			return writeJSONAtomic(s.path(fileExit), shimStatus{State: "exited", ExitCode: &code,
				StartedAt: started, FinishedAt: finished, Restarts: s.restarts})
		}
		s.restarts++
		writeJSONAtomic(s.path(fileStatus), shimStatus{State: shimStateWait, ExitCode: &code,
			StartedAt: started, FinishedAt: finished, Restarts: s.restarts})
		deadline := time.Now().Add(delay)
		for time.Now().Before(deadline) {
			if _, err := os.Stat(s.path(fileStop)); err == nil {
				return writeJSONAtomic(s.path(fileExit), shimStatus{State: "exited", ExitCode: &code,
					StartedAt: started, FinishedAt: finished, Restarts: s.restarts - 1})
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// pipeIO hands runc (and so the container's init) one end of each pipe.
type pipeIO struct {
	stdinR, outW, errW *os.File
}

func (p *pipeIO) Close() error {
	for _, f := range []*os.File{p.stdinR, p.outW, p.errW} {
		if f != nil {
			f.Close()
		}
	}
	return nil
}
func (p *pipeIO) CloseAfterStart() error { return p.Close() }
func (p *pipeIO) Stdin() io.WriteCloser  { return nil }
func (p *pipeIO) Stdout() io.ReadCloser  { return nil }
func (p *pipeIO) Stderr() io.ReadCloser  { return nil }
func (p *pipeIO) Set(c *exec.Cmd) {
	if p.stdinR != nil {
		c.Stdin = p.stdinR
	}
	c.Stdout, c.Stderr = p.outW, p.errW
}

// runOnce creates and starts the container, pumps its output until it exits
// and returns its exit code (128+signal when killed).
func (s *shim) runOnce() (int, time.Time, error) {
	ctx := context.Background()
	if _, err := os.Stat(filepath.Join(s.runcRoot, s.id)); err == nil {
		// A leftover from a crash. (Without runc state there is none: a
		// runc run to find out would cost a start some 25 ms.)
		s.rc.Delete(ctx, s.id, &gorunc.DeleteOpts{Force: true})
	}
	os.Remove(s.path(fileInitPid))
	opts := &gorunc.CreateOpts{PidFile: s.path(fileInitPid)}
	var copiers sync.WaitGroup
	var outR, errR *os.File
	var sock *gorunc.Socket
	if s.tty {
		consolePath := driver.SocketPath(s.bundle, fileConsole)
		os.Remove(consolePath)
		var err error
		if sock, err = gorunc.NewConsoleSocket(consolePath); err != nil {
			return 0, time.Time{}, fmt.Errorf("console socket: %w", err)
		}
		defer sock.Close()
		opts.ConsoleSocket = sock
	} else {
		pio := &pipeIO{}
		var outW, errW, stdinR *os.File
		var err error
		if outR, outW, err = os.Pipe(); err != nil {
			return 0, time.Time{}, err
		}
		if errR, errW, err = os.Pipe(); err != nil {
			return 0, time.Time{}, err
		}
		pio.outW, pio.errW = outW, errW
		if s.stdin {
			var stdinW *os.File
			if stdinR, stdinW, err = os.Pipe(); err != nil {
				return 0, time.Time{}, err
			}
			pio.stdinR = stdinR
			s.mu.Lock()
			s.stdinW = stdinW
			s.cond.Broadcast()
			s.mu.Unlock()
		}
		opts.IO = pio
	}
	// runc reads the console from its socket while create runs.
	masterCh := make(chan console.Console, 1)
	if sock != nil {
		go func() {
			m, err := sock.ReceiveMaster()
			if err != nil {
				close(masterCh)
				return
			}
			masterCh <- m
		}()
	}
	if err := s.rc.Create(ctx, s.id, s.bundle, opts); err != nil {
		if outR != nil {
			outR.Close()
			errR.Close()
		}
		return 0, time.Time{}, fmt.Errorf("runc create: %w%s", err, tailFile(s.path(fileRuncLog)))
	}
	if sock != nil {
		select {
		case m, ok := <-masterCh:
			if !ok {
				return 0, time.Time{}, errors.New("runc create did not send the console")
			}
			s.mu.Lock()
			s.console = m
			s.cond.Broadcast()
			s.mu.Unlock()
			copiers.Add(1)
			go func() { defer copiers.Done(); s.pump("stdout", m) }()
		case <-time.After(10 * time.Second):
			return 0, time.Time{}, errors.New("timed out waiting for the console from runc")
		}
	} else {
		copiers.Add(2)
		go func() { defer copiers.Done(); s.pump("stdout", outR) }()
		go func() { defer copiers.Done(); s.pump("stderr", errR) }()
	}
	pidData, err := os.ReadFile(s.path(fileInitPid))
	if err != nil {
		return 0, time.Time{}, fmt.Errorf("read init pid: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(pidData)))
	if err != nil {
		return 0, time.Time{}, fmt.Errorf("bad init pid %q", pidData)
	}
	if s.restarts == 0 && s.waitAttach > 0 {
		s.awaitAttachers()
	}
	if err := s.rc.Start(ctx, s.id); err != nil {
		s.rc.Delete(ctx, s.id, &gorunc.DeleteOpts{Force: true})
		return 0, time.Time{}, fmt.Errorf("runc start: %w%s", err, tailFile(s.path(fileRuncLog)))
	}
	started := time.Now().UTC()
	writeJSONAtomic(s.path(fileStatus), shimStatus{State: shimStateRun, Pid: pid, StartedAt: started, Restarts: s.restarts})

	code := waitExit(pid)
	// Output ends when every holder of the pipes is gone: the pid
	// namespace dies with its init, so this is quick.
	done := make(chan struct{})
	go func() { copiers.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
	}
	s.log.Flush()
	s.mu.Lock()
	if s.stdinW != nil {
		s.stdinW.Close()
		s.stdinW = nil
	}
	if s.console != nil {
		s.console.Close()
		s.console = nil
	}
	for sub := range s.subs {
		sub.conn.Close()
		delete(s.subs, sub)
	}
	s.mu.Unlock()
	if outR != nil {
		outR.Close()
		errR.Close()
	}
	s.rc.Delete(ctx, s.id, &gorunc.DeleteOpts{Force: true})
	return code, started, nil
}

// awaitAttachers holds the first run until the attach streams the agent
// announced have joined, or attachWait has passed: `docker run` attaches
// before it starts, and dockerd loses none of such a run's input or output.
func (s *shim) awaitAttachers() {
	timeout := time.AfterFunc(attachWait, func() {
		s.mu.Lock()
		s.waitAttach = 0
		s.cond.Broadcast()
		s.mu.Unlock()
	})
	defer timeout.Stop()
	s.mu.Lock()
	for s.attached < s.waitAttach {
		s.cond.Wait()
	}
	s.mu.Unlock()
}

// stdinWriter waits until the current run has stdin (a pipe, or the pty
// master) and returns it, or nil once no run will follow. Input is never
// read from a client before it can be delivered, so none is dropped.
func (s *shim) stdinWriter() io.Writer {
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		if s.console != nil {
			return s.console
		}
		if s.stdinW != nil {
			return s.stdinW
		}
		if s.ended {
			return nil
		}
		s.cond.Wait()
	}
}

// waitExit reaps pid (reparented to this subreaper) and returns its exit
// code, 128+signal if a signal killed it. Other orphans are reaped too.
func waitExit(pid int) int {
	for {
		var ws unix.WaitStatus
		got, err := unix.Wait4(-1, &ws, 0, nil)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return -1 // ECHILD: not ours (should not happen)
		}
		if got != pid {
			continue
		}
		if ws.Signaled() {
			return 128 + int(ws.Signal())
		}
		return ws.ExitStatus()
	}
}

func tailFile(p string) string {
	b, err := os.ReadFile(p)
	if err != nil || len(b) == 0 {
		return ""
	}
	if len(b) > 512 {
		b = b[len(b)-512:]
	}
	return ": " + strings.TrimSpace(string(b))
}

// pump copies one output stream to the log and to attached clients.
func (s *shim) pump(stream string, r io.Reader) {
	buf := make([]byte, 32<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			s.log.Write(stream, buf[:n])
			s.broadcast(stream, buf[:n])
		}
		if err != nil {
			return
		}
	}
}

// Attach framing: 8-byte header [stream, 0, 0, 0, len (big endian u32)],
// Docker's stdcopy layout. Stream 1 is stdout (all of a tty's output), 2 stderr.
func writeFrame(w io.Writer, stream byte, p []byte) error {
	var h [8]byte
	h[0] = stream
	binary.BigEndian.PutUint32(h[4:], uint32(len(p)))
	if _, err := w.Write(h[:]); err != nil {
		return err
	}
	_, err := w.Write(p)
	return err
}

func (s *shim) broadcast(stream string, p []byte) {
	s.mu.Lock()
	subs := make([]*subscriber, 0, len(s.subs))
	for sub := range s.subs {
		subs = append(subs, sub)
	}
	s.mu.Unlock()
	for _, sub := range subs {
		if stream == "stdout" && !sub.stdout || stream == "stderr" && !sub.stderr {
			continue
		}
		var id byte = 1
		if stream == "stderr" {
			id = 2
		}
		sub.mu.Lock()
		sub.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
		err := writeFrame(sub.conn, id, p)
		sub.mu.Unlock()
		if err != nil {
			s.mu.Lock()
			delete(s.subs, sub)
			s.mu.Unlock()
			sub.conn.Close()
		}
	}
}

// attachRequest is the first line a client sends on attach.sock.
type attachRequest struct {
	Stdin  bool       `json:"stdin"`
	Stdout bool       `json:"stdout"`
	Stderr bool       `json:"stderr"`
	Resize *[2]uint16 `json:"resize,omitempty"` // height, width: a resize-only request
}

func (s *shim) serveAttach(ln net.Listener) {
	for {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		go s.handleAttach(conn)
	}
}

func (s *shim) handleAttach(conn net.Conn) {
	br := bufio.NewReader(conn)
	line, err := br.ReadBytes('\n')
	var req attachRequest
	if err != nil || json.Unmarshal(line, &req) != nil {
		conn.Close()
		return
	}
	if req.Resize != nil {
		s.mu.Lock()
		c := s.console
		s.mu.Unlock()
		resp := "ok\n"
		if c == nil {
			resp = "error: no tty\n"
		} else if err := c.Resize(console.WinSize{Height: req.Resize[0], Width: req.Resize[1]}); err != nil {
			resp = "error: " + err.Error() + "\n"
		}
		conn.Write([]byte(resp))
		conn.Close()
		return
	}
	sub := &subscriber{conn: conn, stdout: req.Stdout, stderr: req.Stderr}
	if _, err := conn.Write([]byte("ok\n")); err != nil {
		conn.Close()
		return
	}
	s.mu.Lock()
	s.subs[sub] = struct{}{}
	s.attached++
	s.cond.Broadcast()
	s.mu.Unlock()
	if !req.Stdin || !s.stdin && !s.tty {
		// Nothing to read; notice the client going away.
		io.Copy(io.Discard, br)
		return
	}
	w := s.stdinWriter()
	if w == nil {
		io.Copy(io.Discard, br)
		return
	}
	buf := make([]byte, 32<<10)
	for {
		n, err := br.Read(buf)
		if n > 0 {
			// A failed write (the process closed its stdin, or exited)
			// drops the rest; keep reading to notice the end.
			if _, werr := w.Write(buf[:n]); werr != nil {
				w = io.Discard
			}
		}
		if err != nil {
			break
		}
	}
	if s.stdinOnce {
		s.mu.Lock()
		if s.stdinW != nil {
			s.stdinW.Close()
			s.stdinW = nil
		}
		s.mu.Unlock()
	}
}
