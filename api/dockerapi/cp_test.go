package dockerapi

import (
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/docker/docker/api/types/container"
)

// TestDockerCp copies a file into a container on the simulated node and
// back out with the docker CLI (HEAD, PUT and GET /containers/{id}/archive).
func TestDockerCp(t *testing.T) {
	e := newTestEnv(t)
	e.ok("alice", "run", "-d", "--name", "box", "busybox:1.36", "sleep", "1000")
	dir := t.TempDir()
	src := filepath.Join(dir, "file")
	must(t, os.WriteFile(src, []byte("round trip\n"), 0o644))

	t.Run("OK", func(t *testing.T) {
		e := e.with(t)
		e.ok("alice", "cp", src, "box:/tmp/")
		out := filepath.Join(dir, "out")
		e.ok("alice", "cp", "box:/tmp/file", out)
		if b, err := os.ReadFile(out); err != nil || string(b) != "round trip\n" {
			t.Fatalf("copied back: %q %v", b, err)
		}
		// A directory, into a new name.
		sub := filepath.Join(dir, "tree")
		must(t, os.MkdirAll(filepath.Join(sub, "inner"), 0o755))
		must(t, os.WriteFile(filepath.Join(sub, "inner", "g"), []byte("deep"), 0o644))
		e.ok("alice", "cp", sub, "box:/tmp/tree")
		back := filepath.Join(dir, "back")
		e.ok("alice", "cp", "box:/tmp/tree", back)
		if b, err := os.ReadFile(filepath.Join(back, "inner", "g")); err != nil || string(b) != "deep" {
			t.Fatalf("directory copied back: %q %v", b, err)
		}
	})
	t.Run("ErrMissingFile", func(t *testing.T) {
		e := e.with(t)
		e.fails("alice", 1, "Could not find the file /nope in container box", "cp", "box:/nope", dir)
	})
	t.Run("ErrMissingDirectory", func(t *testing.T) {
		e := e.with(t)
		// The CLI's HEAD gets dockerd's 404 and says so in its own words.
		e.fails("alice", 1, "no such directory", "cp", src, "box:/nope/")
	})
	t.Run("StatHeaderAndErrNotDirectory", func(t *testing.T) {
		e := e.with(t)
		base := "https://" + e.srv.Listener.Addr().String() + "/v1.50/containers/box/archive?path="
		resp, err := e.client("alice").Head(base + "/tmp/file")
		must(t, err)
		resp.Body.Close()
		raw, err := base64.StdEncoding.DecodeString(resp.Header.Get("X-Docker-Container-Path-Stat"))
		must(t, err)
		var st container.PathStat
		must(t, json.Unmarshal(raw, &st))
		if resp.StatusCode != http.StatusOK || st.Name != "file" || st.Size != int64(len("round trip\n")) || st.Mode.IsDir() {
			t.Fatalf("HEAD /tmp/file: %d %+v", resp.StatusCode, st)
		}
		req, err := http.NewRequest(http.MethodPut, base+"/tmp/file", strings.NewReader(""))
		must(t, err)
		resp, err = e.client("alice").Do(req)
		must(t, err)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), "extraction point is not a directory") {
			t.Fatalf("PUT into a file: %d %s", resp.StatusCode, body)
		}
	})
	t.Run("ErrOtherAccount", func(t *testing.T) {
		e := e.with(t)
		e.fails("bob", 1, "No such container: box", "cp", "box:/tmp/file", dir)
		// A HEAD has no body for the CLI to print: ask with PUT directly.
		req, err := http.NewRequest(http.MethodPut, "https://"+e.srv.Listener.Addr().String()+
			"/v1.50/containers/box/archive?path=/tmp/", strings.NewReader(""))
		must(t, err)
		resp, err := e.client("bob").Do(req)
		must(t, err)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound || !strings.Contains(string(body), "No such container: box") {
			t.Fatalf("bob's PUT into alice's container: %d %s", resp.StatusCode, body)
		}
	})
}
