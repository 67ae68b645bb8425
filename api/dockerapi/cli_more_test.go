package dockerapi

import (
	"strings"
	"testing"
)

// More of the CLI's commands and flags: attach, logs --tail, --restart and
// affinity from the environment.
func TestDockerCLIMore(t *testing.T) {
	e := newTestEnv(t)

	t.Run("RestartPolicy", func(t *testing.T) {
		e := e.with(t)
		e.ok("alice", "run", "-d", "--name", "rs", "--restart", "on-failure:3", "busybox:1.36", "sleep", "100")
		out := e.ok("alice", "inspect", "--format", "{{.HostConfig.RestartPolicy.Name}}:{{.HostConfig.RestartPolicy.MaximumRetryCount}}", "rs")
		if out != "on-failure:3\n" {
			t.Fatalf("restart policy %q, want on-failure:3", out)
		}
		e.fails("alice", 125, "invalid restart policy", "run", "-d", "--restart", "sometimes", "busybox:1.36", "true")
		e.ok("alice", "rm", "-f", "rs")
	})

	t.Run("LogsTail", func(t *testing.T) {
		e := e.with(t)
		e.ok("alice", "run", "--name", "lg", "-e", "SIM_EXIT=0", "-e", "SIM_STDERR=to stderr", "busybox:1.36", "echo", "to stdout")
		all := e.ok("alice", "logs", "lg")
		if !strings.Contains(all, "to stdout") {
			t.Fatalf("docker logs: %q", all)
		}
		_, stderr, code := e.run("alice", "logs", "--tail", "1", "lg")
		out, _, _ := e.run("alice", "logs", "--tail", "1", "lg")
		if code != 0 || strings.Count(out+stderr, "\n") != 1 {
			t.Fatalf("docker logs --tail 1: exit %d, stdout %q, stderr %q; want exactly one line", code, out, stderr)
		}
		e.ok("alice", "rm", "lg")
	})

	t.Run("Attach", func(t *testing.T) {
		e := e.with(t)
		e.ok("alice", "run", "-d", "--name", "at", "-e", "SIM_EXIT=4", "-e", "SIM_EXIT_AFTER=2s", "busybox:1.36", "sleep", "2")
		_, _, code := e.run("alice", "attach", "--no-stdin", "at")
		if code != 4 {
			t.Fatalf("docker attach returned %d, want the container's exit code 4", code)
		}
		e.ok("alice", "rm", "-f", "at")
	})

	t.Run("AffinityFromEnvironment", func(t *testing.T) {
		e := e.with(t)
		e.fails("alice", 125, "container==nosuchcontainer", "run", "-d", "-e", "affinity:container==nosuchcontainer", "busybox:1.36", "true")
		e.fails("alice", 125, "could not find operator in affinity rule", "run", "-d", "-e", "affinity:container<>x", "busybox:1.36", "true")
		out, _, _ := e.run("alice", "ps", "-a", "-q")
		if strings.TrimSpace(out) != "" {
			t.Fatalf("refused runs left containers behind: %q", out)
		}
	})
}
