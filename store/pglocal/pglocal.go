// Package pglocal starts and stops a private PostgreSQL server from the
// binaries installed on this machine, for `flotilla dev` and for tests.
//
// The server listens on a unix socket inside its data directory and on a free
// 127.0.0.1 port. PostgreSQL refuses to run as root, so when the caller is root
// the cluster is created and run as an unprivileged system user ("postgres"
// if it exists, otherwise "flotilla", created on demand).
//
// Imports: standard library only.
package pglocal

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Options tune the server.
type Options struct {
	// Dir holds the cluster (Dir/data) and the socket. Created if missing;
	// an existing cluster is reused.
	Dir string
	// Port to listen on at 127.0.0.1; 0 picks a free one.
	Port int
	// Durable keeps fsync on. Tests turn it off for speed.
	Durable bool
	// Log receives progress lines (may be nil).
	Log func(format string, args ...any)
	// Settings are extra server settings (-c name=value), e.g.
	// shared_preload_libraries=pg_stat_statements for profiling.
	Settings map[string]string
}

// Server is a running PostgreSQL.
type Server struct {
	opts   Options
	bindir string
	data   string
	port   int
	cred   *syscall.Credential
	cmd    *exec.Cmd
	exited chan struct{}
}

// User is the database superuser the cluster is created with.
const User = "flotilla"

// BinDir finds the PostgreSQL server binaries: pg_config --bindir, then the
// newest /usr/lib/postgresql/*/bin, then PATH.
func BinDir() (string, error) {
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		dir := strings.TrimSpace(string(out))
		if fileExists(filepath.Join(dir, "initdb")) {
			return dir, nil
		}
	}
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(matches, func(i, j int) bool { return versionOf(matches[i]) > versionOf(matches[j]) })
	for _, m := range matches {
		if fileExists(filepath.Join(m, "initdb")) {
			return m, nil
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(p), nil
	}
	return "", errors.New("PostgreSQL server binaries not found: install them with `apt-get install postgresql` (or run `make setup`)")
}

func versionOf(dir string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(dir)))
	return v
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// Start initialises the cluster if needed and starts the server. It returns
// once the server accepts connections.
func Start(ctx context.Context, opts Options) (*Server, error) {
	if opts.Log == nil {
		opts.Log = func(string, ...any) {}
	}
	bindir, err := BinDir()
	if err != nil {
		return nil, err
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, err
	}
	s := &Server{opts: opts, bindir: bindir, data: filepath.Join(dir, "data"), exited: make(chan struct{})}
	s.opts.Dir = dir
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	if os.Geteuid() == 0 {
		if s.cred, err = serviceUser(); err != nil {
			return nil, err
		}
		if err := makeReachable(dir, s.cred); err != nil {
			return nil, err
		}
	}
	if !fileExists(filepath.Join(s.data, "PG_VERSION")) {
		if err := s.initdb(ctx); err != nil {
			return nil, err
		}
	}
	// A previous run killed hard may have left a pid file behind.
	s.removeStalePid()
	s.port = opts.Port
	if s.port == 0 {
		if s.port, err = freePort(); err != nil {
			return nil, err
		}
	}
	if err := s.start(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

func serviceUser() (*syscall.Credential, error) {
	for _, name := range []string{"postgres", "flotilla"} {
		if u, err := user.Lookup(name); err == nil {
			uid, _ := strconv.Atoi(u.Uid)
			gid, _ := strconv.Atoi(u.Gid)
			return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
		}
	}
	out, err := exec.Command("useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "flotilla").CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("PostgreSQL cannot run as root and creating the system user \"flotilla\" failed: %v: %s", err, out)
	}
	return serviceUser()
}

// makeReachable lets the service user reach dir: it owns dir, and every
// ancestor gets the search (x) bit for others, never read or write.
func makeReachable(dir string, cred *syscall.Credential) error {
	if err := filepath.Walk(dir, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, int(cred.Uid), int(cred.Gid))
	}); err != nil {
		return fmt.Errorf("giving %s to the database user: %w", dir, err)
	}
	for p := filepath.Dir(dir); ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err != nil {
			return err
		}
		if fi.Mode().Perm()&0o001 == 0 {
			if err := os.Chmod(p, fi.Mode().Perm()|0o001); err != nil {
				return fmt.Errorf("letting the database user reach %s: %w", dir, err)
			}
		}
		if p == "/" {
			return nil
		}
	}
}

func (s *Server) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, filepath.Join(s.bindir, name), args...)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	cmd.Dir = s.opts.Dir
	if s.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred}
	}
	return cmd
}

func (s *Server) initdb(ctx context.Context) error {
	s.opts.Log("initialising PostgreSQL cluster in %s", s.data)
	args := []string{"-D", s.data, "-U", User, "-A", "trust", "-E", "UTF8", "--locale=C"}
	if !s.opts.Durable {
		args = append(args, "--no-sync")
	}
	var out bytes.Buffer
	cmd := s.command(ctx, "initdb", args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("initdb failed: %v\n%s", err, out.String())
	}
	return nil
}

func (s *Server) removeStalePid() {
	pidfile := filepath.Join(s.data, "postmaster.pid")
	b, err := os.ReadFile(pidfile)
	if err != nil {
		return
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pid, _ := strconv.Atoi(strings.TrimSpace(line))
	if pid > 0 && syscall.Kill(pid, 0) == nil {
		return // really running; postgres will refuse and say so
	}
	os.Remove(pidfile)
}

func (s *Server) start(ctx context.Context) error {
	args := []string{"-D", s.data, "-k", s.opts.Dir, "-h", "127.0.0.1", "-p", strconv.Itoa(s.port),
		"-c", "max_connections=300", "-c", "shared_buffers=128MB", "-c", "log_min_messages=warning",
		"-c", "synchronous_commit=off", "-c", "unix_socket_permissions=0777"}
	if !s.opts.Durable {
		args = append(args, "-c", "fsync=off", "-c", "full_page_writes=off")
	}
	for k, v := range s.opts.Settings {
		args = append(args, "-c", k+"="+v)
	}
	logf, err := os.OpenFile(filepath.Join(s.opts.Dir, "postgres.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := s.command(context.Background(), "postgres", args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Own process group: a terminal's SIGINT goes to us, and we stop postgres in order.
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	cmd.SysProcAttr.Pdeathsig = syscall.SIGQUIT
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("starting postgres: %w", err)
	}
	s.cmd = cmd
	go func() { cmd.Wait(); logf.Close(); close(s.exited) }()

	deadline := time.Now().Add(30 * time.Second)
	for {
		if c, err := net.DialTimeout("tcp", s.Addr(), 200*time.Millisecond); err == nil {
			c.Close()
			if s.ready(ctx) {
				return nil
			}
		}
		select {
		case <-s.exited:
			return fmt.Errorf("postgres exited during start-up; see %s", filepath.Join(s.opts.Dir, "postgres.log"))
		case <-ctx.Done():
			s.Stop()
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.Stop()
			return fmt.Errorf("postgres did not accept connections within 30 s; see %s", filepath.Join(s.opts.Dir, "postgres.log"))
		}
	}
}

// ready asks pg_isready-equivalent: the server answers on its socket.
func (s *Server) ready(ctx context.Context) bool {
	cmd := s.command(ctx, "pg_isready", "-q", "-h", "127.0.0.1", "-p", strconv.Itoa(s.port), "-U", User)
	return cmd.Run() == nil
}

// Addr is the server's TCP address.
func (s *Server) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)) }

// Port is the server's TCP port.
func (s *Server) Port() int { return s.port }

// SocketDir is the directory holding the unix socket.
func (s *Server) SocketDir() string { return s.opts.Dir }

// URL returns a connection URL for database db over TCP.
func (s *Server) URL(db string) string {
	return fmt.Sprintf("postgres://%s@%s/%s?sslmode=disable", User, s.Addr(), db)
}

// Stop shuts the server down (fast mode) and waits for it to exit; after
// 10 s it kills it.
func (s *Server) Stop() error {
	if s.cmd == nil || s.cmd.Process == nil {
		return nil
	}
	select {
	case <-s.exited:
		return nil
	default:
	}
	s.cmd.Process.Signal(syscall.SIGINT) // fast shutdown
	select {
	case <-s.exited:
		return nil
	case <-time.After(10 * time.Second):
		s.cmd.Process.Kill()
		<-s.exited
		return errors.New("postgres did not stop within 10 s and was killed")
	}
}

// Exited is closed when the server process has exited.
func (s *Server) Exited() <-chan struct{} { return s.exited }

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
