package dockerapi

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestDockerHealthRunc runs a health check in a real container: starting
// until the probe first passes, healthy, then unhealthy once it fails
// --health-retries times, as docker inspect, ps and events show it.
func TestDockerHealthRunc(t *testing.T) {
	re := newRuncEnv(t)
	e := re.testEnv
	t0 := time.Now()
	status := func() string {
		return strings.TrimSpace(e.ok("alice", "inspect", "-f", "{{.State.Health.Status}}", "doc"))
	}
	waitStatus := func(t *testing.T, want string, within time.Duration) time.Duration {
		t.Helper()
		start := time.Now()
		for status() != want {
			if time.Since(start) > within {
				t.Fatalf("health still %q after %v, want %q", status(), within, want)
			}
			time.Sleep(50 * time.Millisecond)
		}
		return time.Since(start)
	}

	t.Run("StartingThenHealthy", func(t *testing.T) {
		e := e.with(t)
		start := time.Now()
		// Without a start period the probes of the first second would make
		// it unhealthy before it is ready (as with dockerd): its failures
		// in the start period do not count while it is starting.
		e.ok("alice", "run", "-d", "--name", "doc", "--health-cmd", "test -f /tmp/ok", "--health-interval", "200ms",
			"--health-retries", "2", "--health-start-period", "5s", "--health-start-interval", "200ms",
			"busybox", "sh", "-c", "sleep 1; touch /tmp/ok; exec sleep 600")
		ran := time.Now()
		if s := status(); s != "starting" {
			t.Fatalf("health right after run: %q", s)
		}
		if out := e.ok("alice", "ps", "--filter", "health=starting", "--format", "{{.Names}} {{.Status}}"); !strings.HasPrefix(out, "doc Up ") || !strings.HasSuffix(out, " (health: starting)\n") {
			t.Fatalf("ps while starting: %q", out)
		}
		waitStatus(t, "healthy", 10*time.Second)
		t.Logf("figure: docker run -d to healthy (ready after 1s, 200ms interval) took %s, %s of it after run returned",
			time.Since(start).Round(time.Millisecond), time.Since(ran).Round(time.Millisecond))
		var h struct {
			Status        string
			FailingStreak int
			Log           []struct {
				Start, End time.Time
				ExitCode   int
				Output     string
			}
		}
		must(t, json.Unmarshal([]byte(e.ok("alice", "inspect", "-f", "{{json .State.Health}}", "doc")), &h))
		if h.FailingStreak != 0 || len(h.Log) == 0 || h.Log[len(h.Log)-1].ExitCode != 0 || h.Log[len(h.Log)-1].Start.Before(start) {
			t.Fatalf("health when healthy: %+v", h)
		}
		if out := e.ok("alice", "inspect", "-f", "{{json .Config.Healthcheck}}", "doc"); out != `{"Test":["CMD-SHELL","test -f /tmp/ok"],"Interval":200000000,"StartPeriod":5000000000,"StartInterval":200000000,"Retries":2}`+"\n" {
			t.Fatalf("Config.Healthcheck: %s", out)
		}
		if out := e.ok("alice", "ps", "--format", "{{.Names}} {{.Status}}"); !strings.HasPrefix(out, "doc Up ") || !strings.HasSuffix(out, " (healthy)\n") {
			t.Fatalf("ps when healthy: %q", out)
		}
	})
	t.Run("Unhealthy", func(t *testing.T) {
		e := e.with(t)
		e.ok("alice", "exec", "doc", "rm", "/tmp/ok")
		// Still in its start period, but it has been healthy: failures count.
		took := waitStatus(t, "unhealthy", 10*time.Second)
		t.Logf("figure: unhealthy %s after the probed file went (2 retries, 200ms interval)", took.Round(time.Millisecond))
		out := e.ok("alice", "inspect", "-f", "{{.State.Health.FailingStreak}} {{range .State.Health.Log}}{{.ExitCode}} {{end}}", "doc")
		f := strings.Fields(out)
		if streak, _ := strconv.Atoi(f[0]); streak < 2 || f[len(f)-1] != "1" || len(f)-1 > 5 {
			t.Fatalf("unhealthy: failing streak and log codes %q", out)
		}
		if out := e.ok("alice", "ps", "--format", "{{.Names}} {{.Status}}"); !strings.HasSuffix(out, " (unhealthy)\n") {
			t.Fatalf("ps when unhealthy: %q", out)
		}
		if out := e.ok("alice", "ps", "--filter", "health=unhealthy", "--format", "{{.Names}}"); out != "doc\n" {
			t.Fatalf("ps --filter health=unhealthy: %q", out)
		}
		if out := e.ok("alice", "ps", "--filter", "health=healthy", "-q"); out != "" {
			t.Fatalf("ps --filter health=healthy: %q", out)
		}
	})
	t.Run("Events", func(t *testing.T) {
		e := e.with(t)
		until := strconv.FormatInt(time.Now().Add(time.Second).Unix(), 10)
		out := e.ok("alice", "events", "--since", strconv.FormatInt(t0.Unix(), 10), "--until", until,
			"--filter", "event=health_status", "--format", "{{.Action}} {{.Actor.Attributes.name}}")
		if out != "health_status: healthy doc\nhealth_status: unhealthy doc\n" {
			t.Fatalf("health events:\n%s", out)
		}
	})
	t.Run("HealthyAgainAndStopped", func(t *testing.T) {
		e := e.with(t)
		e.ok("alice", "exec", "doc", "touch", "/tmp/ok")
		waitStatus(t, "healthy", 10*time.Second)
		e.ok("alice", "stop", "-t", "1", "doc")
		if s := status(); s != "unhealthy" {
			t.Fatalf("health of the stopped container: %q", s)
		}
		// A new run begins at starting again; /tmp/ok is still there.
		e.ok("alice", "start", "doc")
		waitStatus(t, "healthy", 10*time.Second)
	})
	t.Run("ProbeTimeout", func(t *testing.T) {
		e := e.with(t)
		e.ok("alice", "run", "-d", "--name", "slow", "--health-cmd", "sleep 5", "--health-interval", "100ms",
			"--health-timeout", "200ms", "--health-retries", "1", "busybox", "sleep", "600")
		deadline := time.Now().Add(10 * time.Second)
		for {
			out := e.ok("alice", "inspect", "-f", "{{.State.Health.Status}} {{range .State.Health.Log}}{{.ExitCode}}:{{.Output}}{{end}}", "slow")
			if strings.HasPrefix(out, "unhealthy -1:Health check exceeded timeout (200ms)") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("a probe that outlives its timeout: %q", out)
			}
			time.Sleep(50 * time.Millisecond)
		}
		// The timed-out probes were killed: no sleep 5 lingers in the container.
		time.Sleep(300 * time.Millisecond)
		out := e.ok("alice", "top", "slow")
		if n := strings.Count(out, "sleep 5"); n > 1 {
			t.Fatalf("%d timed-out probes still running:\n%s", n, out)
		}
	})
	t.Run("ImageHealthcheck", func(t *testing.T) {
		e := e.with(t)
		dir := t.TempDir()
		must(t, os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte("FROM busybox\nHEALTHCHECK --interval=200ms --retries=2 CMD true\n"), 0o644))
		e.ok("alice", "build", "-q", "-t", "probed", dir)
		e.ok("alice", "run", "-d", "--name", "fromimage", "probed", "sleep", "600")
		e.ok("alice", "run", "-d", "--name", "optedout", "--no-healthcheck", "probed", "sleep", "600")
		deadline := time.Now().Add(10 * time.Second)
		for {
			out := e.ok("alice", "inspect", "-f", "{{.State.Health.Status}} {{json .Config.Healthcheck.Test}}", "fromimage")
			if out == `healthy ["CMD-SHELL","true"]`+"\n" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("container of an image with HEALTHCHECK: %q", out)
			}
			time.Sleep(50 * time.Millisecond)
		}
		if out := e.ok("alice", "inspect", "-f", "{{json .State.Health}}", "optedout"); out != "null\n" {
			t.Fatalf("--no-healthcheck over the image's: %q", out)
		}
		if out := e.ok("alice", "ps", "--filter", "health=none", "--format", "{{.Names}}"); out != "optedout\n" {
			t.Fatalf("ps --filter health=none: %q", out)
		}
	})
}
