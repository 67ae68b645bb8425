package dockerapi

import (
	"os"
	"path/filepath"
	"testing"
)

// TestDockerRuncCp copies files in and out of a running runc container
// with the docker CLI: what is copied in is what the container's processes
// see, and what they write can be copied out.
func TestDockerRuncCp(t *testing.T) {
	re := newRuncEnv(t)
	e := re.testEnv
	e.ok("alice", "run", "-d", "--name", "cpbox", "busybox", "sleep", "1000")
	dir := t.TempDir()
	src := filepath.Join(dir, "file")
	must(t, os.WriteFile(src, []byte("into runc\n"), 0o644))

	t.Run("OK", func(t *testing.T) {
		e := e.with(t)
		e.ok("alice", "cp", src, "cpbox:/tmp/")
		if out := e.ok("alice", "exec", "cpbox", "cat", "/tmp/file"); out != "into runc\n" {
			t.Fatalf("the container sees %q", out)
		}
		e.ok("alice", "exec", "cpbox", "sh", "-c", "mkdir -p /srv/d && echo from inside > /srv/d/made")
		e.ok("alice", "cp", "cpbox:/srv/d", filepath.Join(dir, "d"))
		if b, err := os.ReadFile(filepath.Join(dir, "d", "made")); err != nil || string(b) != "from inside\n" {
			t.Fatalf("copied out: %q %v", b, err)
		}
		out := filepath.Join(dir, "out")
		e.ok("alice", "cp", "cpbox:/tmp/file", out)
		if b, err := os.ReadFile(out); err != nil || string(b) != "into runc\n" {
			t.Fatalf("round trip: %q %v", b, err)
		}
	})
	t.Run("ErrMissingFile", func(t *testing.T) {
		e.with(t).fails("alice", 1, "Could not find the file /nope in container cpbox", "cp", "cpbox:/nope", dir)
	})
}
