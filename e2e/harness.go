// Package e2e holds Flotilla's end-to-end tests: the real `triton` CLI 7.17
// against the real `flotilla` binary (dev, serve, agent and admin as separate
// processes), and the resilience tests (an agent or the control plane killed
// with SIGKILL mid-flight, capacity under contention) checked in SQL.
//
// This file is the one piece that is not a test: Proc, a child process in its
// own process group whose output is kept and can be waited on, and the key
// and env.sh helpers both end-to-end packages use.
//
// Imports: standard library only (the tests also use api/auth, store and pgx).
package e2e

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Proc is a running child process in its own process group. Its combined
// output is kept in memory (and copied to LogFile when set).
type Proc struct {
	Name string
	cmd  *exec.Cmd

	mu    sync.Mutex
	out   bytes.Buffer
	lines []string
	wake  chan struct{} // closed and replaced whenever a line arrives

	done chan struct{} // closed when the process has exited
	err  error         // Wait's result, valid after done
}

// StartProc starts bin with args and env (nil: the current environment) in
// its own process group, with stdout and stderr captured; logFile, when not
// empty, receives a copy of the output.
func StartProc(name, dir string, env []string, logFile string, bin string, args ...string) (*Proc, error) {
	p := &Proc{Name: name, wake: make(chan struct{}), done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Dir = dir
	p.cmd.Env = env
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	p.cmd.Stdout, p.cmd.Stderr = pw, pw
	if err := p.cmd.Start(); err != nil {
		pr.Close()
		pw.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	pw.Close()
	var log io.Writer = io.Discard
	var logf *os.File
	if logFile != "" {
		if logf, err = os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); err == nil {
			log = logf
		}
	}
	read := make(chan struct{})
	go func() {
		defer close(read)
		if logf != nil {
			defer logf.Close()
		}
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(log, line)
			p.mu.Lock()
			p.out.WriteString(line + "\n")
			p.lines = append(p.lines, line)
			close(p.wake)
			p.wake = make(chan struct{})
			p.mu.Unlock()
		}
		pr.Close()
	}()
	go func() {
		err := p.cmd.Wait()
		<-read
		p.err = err
		close(p.done)
	}()
	return p, nil
}

// Pid is the process id (also its process group id).
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Output is everything the process printed so far.
func (p *Proc) Output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// WaitLine returns the first output line containing substr, waiting up to
// timeout for it. It fails early when the process exits without printing it.
func (p *Proc) WaitLine(substr string, timeout time.Duration) (string, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	seen := 0
	for {
		p.mu.Lock()
		for ; seen < len(p.lines); seen++ {
			if strings.Contains(p.lines[seen], substr) {
				l := p.lines[seen]
				p.mu.Unlock()
				return l, nil
			}
		}
		wake := p.wake
		p.mu.Unlock()
		select {
		case <-wake:
		case <-p.done:
			p.mu.Lock()
			n := len(p.lines)
			p.mu.Unlock()
			if seen >= n {
				return "", fmt.Errorf("%s exited (%v) before printing %q; output:\n%s", p.Name, p.err, substr, p.Output())
			}
		case <-deadline.C:
			return "", fmt.Errorf("%s did not print %q within %s; output:\n%s", p.Name, substr, timeout, p.Output())
		}
	}
}

// Exited reports whether the process has ended.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Kill sends SIGKILL to the whole process group and waits for the process.
func (p *Proc) Kill() {
	syscall.Kill(-p.Pid(), syscall.SIGKILL)
	<-p.done
}

// Stop asks the process to stop with SIGTERM (the process only, so that it
// can shut its own children down in order), waits up to grace, and then
// kills the whole group. It returns the process's exit error, if any, from a
// clean stop.
func (p *Proc) Stop(grace time.Duration) error {
	if p.Exited() {
		return p.err
	}
	syscall.Kill(p.Pid(), syscall.SIGTERM)
	select {
	case <-p.done:
		// Anything the process left behind in its group goes too.
		syscall.Kill(-p.Pid(), syscall.SIGKILL)
		var ee *exec.ExitError
		if errors.As(p.err, &ee) {
			return fmt.Errorf("%s: %v", p.Name, ee)
		}
		return p.err
	case <-time.After(grace):
		p.Kill()
		return fmt.Errorf("%s did not stop within %s; killed", p.Name, grace)
	}
}

// SSHKeygen makes an unencrypted ed25519 key pair at path and returns the
// public key's file name.
func SSHKeygen(path, comment string) (string, error) {
	out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("ssh-keygen (install openssh-client or run `make setup`): %v\n%s", err, out)
	}
	return path + ".pub", nil
}

// ReadEnvFile reads the `export K=V` lines of an env.sh; values that refer
// to other variables are left out.
func ReadEnvFile(path string) (map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	env := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "export ")
		if !ok {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || strings.Contains(v, "$") || strings.Contains(v, " ") {
			continue
		}
		env[k] = v
	}
	return env, sc.Err()
}
