package dockerapi

import (
	"archive/tar"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestRuncCommit drives `docker diff`, `docker export` and `docker commit`
// with the real docker CLI against a runc node: a container adds, changes
// and deletes files (a directory it deletes and makes again hides what the
// image had in it), and an image committed from it runs with those changes.
func TestRuncCommit(t *testing.T) {
	re := newRuncEnv(t)
	e := re.testEnv
	script := strings.Join([]string{
		"mkdir -p /data/sub", "echo hello > /data/sub/new.txt", "ln /data/sub/new.txt /data/hard",
		"ln -s /etc/passwd /data/link", "echo extra:x:1000:1000::/:/bin/sh >> /etc/passwd",
		"rm /etc/group", "rmdir /home", "rm -rf /usr/sbin", "mkdir /usr/sbin", "echo only > /usr/sbin/only",
	}, " && ")
	e.ok("alice", "run", "--name", "src", "-e", "RUNVAR=1", "busybox", "sh", "-c", script)

	t.Run("Diff", func(t *testing.T) {
		e := e.with(t)
		lines := strings.Split(strings.TrimSpace(e.ok("alice", "diff", "src")), "\n")
		for _, want := range []string{"A /data", "A /data/sub", "A /data/sub/new.txt", "A /data/hard", "A /data/link",
			"C /etc", "C /etc/passwd", "D /etc/group", "D /home", "C /usr", "C /usr/sbin", "A /usr/sbin/only"} {
			if !slices.Contains(lines, want) {
				t.Errorf("docker diff lacks %q:\n%s", want, strings.Join(lines, "\n"))
			}
		}
		var hidden int
		for _, l := range lines {
			if strings.HasPrefix(l, "D /usr/sbin/") {
				hidden++
			}
			for _, never := range []string{"/etc/hosts", "/etc/resolv.conf", "/etc/hostname", "/proc", "/sys", "/dev"} {
				if strings.HasSuffix(l, " "+never) || strings.Contains(l, " "+never+"/") {
					t.Errorf("docker diff lists the mount point %s: %q", never, l)
				}
			}
		}
		if hidden == 0 {
			t.Errorf("docker diff lists none of the image's /usr/sbin entries as deleted:\n%s", strings.Join(lines, "\n"))
		}
	})

	t.Run("Export", func(t *testing.T) {
		e := e.with(t)
		out := filepath.Join(t.TempDir(), "src.tar")
		e.ok("alice", "export", "-o", out, "src")
		f, err := os.Open(out)
		must(t, err)
		defer f.Close()
		entries := map[string]*tar.Header{}
		tr := tar.NewReader(f)
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			must(t, err)
			entries[strings.TrimSuffix(h.Name, "/")] = h
		}
		for _, want := range []string{"data/sub/new.txt", "etc/passwd", "bin/busybox", "usr/sbin/only", "data/link"} {
			if entries[want] == nil {
				t.Errorf("docker export lacks %s (%d entries)", want, len(entries))
			}
		}
		for _, gone := range []string{"etc/group", "home"} {
			if entries[gone] != nil {
				t.Errorf("docker export has the deleted %s", gone)
			}
		}
		if h := entries["data/link"]; h != nil && (h.Typeflag != tar.TypeSymlink || h.Linkname != "/etc/passwd") {
			t.Errorf("data/link exported as type %c -> %q, want the symlink itself", h.Typeflag, h.Linkname)
		}
	})

	t.Run("CommitAndRun", func(t *testing.T) {
		e := e.with(t)
		t0 := time.Now()
		id := strings.TrimSpace(e.ok("alice", "commit", "-a", "tester", "-m", "first commit",
			"-c", "ENV FOO=bar", "-c", "LABEL team=infra", "-c", "WORKDIR /data", "src", "mine/app:v1"))
		t.Logf("figure: docker commit of a small container took %s", time.Since(t0).Round(time.Millisecond))
		if !strings.HasPrefix(id, "sha256:") {
			t.Fatalf("docker commit printed %q", id)
		}
		ev := e.ok("alice", "events", "--since", t0.Add(-time.Second).Format(time.RFC3339), "--until", time.Now().Add(time.Second).Format(time.RFC3339),
			"--filter", "event=commit", "--format", "{{.Type}} {{.Action}} {{.Actor.Attributes.imageRef}} {{.Actor.Attributes.name}}")
		if ev != "container commit mine/app:v1 src\n" {
			t.Errorf("docker events for the commit: %q", ev)
		}
		if got := e.ok("alice", "image", "inspect", "-f", "{{.Id}}", "mine/app:v1"); strings.TrimSpace(got) != id {
			t.Fatalf("image inspect mine/app:v1 = %q, want %s", got, id)
		}
		var cfg struct {
			Author string
			Config struct {
				Env        []string
				Labels     map[string]string
				WorkingDir string
				Cmd        []string
			}
		}
		raw := e.ok("alice", "image", "inspect", "-f", "{{json .}}", "mine/app:v1")
		must(t, json.Unmarshal([]byte(raw), &cfg))
		if !slices.Contains(cfg.Config.Env, "FOO=bar") || !slices.Contains(cfg.Config.Env, "RUNVAR=1") ||
			cfg.Config.Labels["team"] != "infra" || cfg.Config.WorkingDir != "/data" || cfg.Author != "tester" {
			t.Errorf("committed config: %+v", cfg)
		}
		if len(cfg.Config.Cmd) != 3 || cfg.Config.Cmd[0] != "sh" || cfg.Config.Cmd[2] != script {
			t.Errorf("committed Cmd %q, want the container's command", cfg.Config.Cmd)
		}
		check := "cat sub/new.txt hard; readlink link; tail -1 /etc/passwd; echo $FOO; ls /usr/sbin; " +
			"test -e /etc/group && echo group-back; test -e /home && echo home-back; pwd"
		out := e.ok("alice", "run", "--rm", "mine/app:v1", "sh", "-c", check)
		want := "hello\nhello\n/etc/passwd\nextra:x:1000:1000::/:/bin/sh\nbar\nonly\n/data\n"
		if out != want {
			t.Errorf("a container of the committed image sees:\n%s\nwant:\n%s", out, want)
		}
		// An image committed from a container of a committed image has
		// both layers of changes.
		e.ok("alice", "run", "--name", "second", "mine/app:v1", "sh", "-c", "echo two > /data/two; rm /data/sub/new.txt")
		e.ok("alice", "commit", "second", "mine/app:v2")
		if out := e.ok("alice", "run", "--rm", "mine/app:v2", "sh", "-c", "cat two; ls sub; echo $FOO"); out != "two\nbar\n" {
			t.Errorf("a container of the second commit sees %q", out)
		}
		e.ok("alice", "rm", "second")
	})

	t.Run("CommitRunningWithCmd", func(t *testing.T) {
		e := e.with(t)
		e.ok("alice", "run", "-d", "--name", "live", "busybox", "sh", "-c",
			"echo live > /live; trap 'exit 0' TERM; while :; do sleep 1 & wait; done")
		deadline := time.Now().Add(10 * time.Second)
		for {
			if _, _, code := e.run("alice", "exec", "live", "test", "-e", "/live"); code == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("/live never appeared")
			}
			time.Sleep(100 * time.Millisecond)
		}
		e.ok("alice", "commit", "-c", `CMD ["cat", "/live"]`, "live", "mine/live")
		if out := e.ok("alice", "run", "--rm", "mine/live"); out != "live\n" {
			t.Errorf("run mine/live: %q", out)
		}
		e.ok("alice", "rm", "-f", "live")
	})

	t.Run("Errors", func(t *testing.T) {
		e := e.with(t)
		before := e.ok("alice", "images", "-a", "--format", "{{.ID}} {{.Repository}}:{{.Tag}}")
		e.fails("alice", 1, "No such container", "diff", "nosuch")
		e.fails("alice", 1, "No such container", "export", "-o", filepath.Join(t.TempDir(), "x.tar"), "nosuch")
		e.fails("alice", 1, "No such container", "commit", "nosuch", "x:1")
		// Another account's container is not found, and its images are not seen.
		e.fails("bob", 1, "No such container", "commit", "src", "stolen:1")
		e.fails("bob", 1, "No such container", "diff", "src")
		if _, _, code := e.run("bob", "image", "inspect", "mine/app:v1"); code == 0 {
			t.Errorf("bob sees alice's committed image")
		}
		e.fails("alice", 1, "not a valid change command", "commit", "-c", "FROM scratch", "src", "x:2")
		// A container whose image the account can no longer see cannot be
		// committed: the new manifest would name layers the account may
		// not read.
		appID := strings.TrimSpace(e.ok("alice", "image", "inspect", "-f", "{{.Id}}", "mine/app:v1"))
		setPublic := func(public bool) {
			_, err := e.st.Pool().Exec(context.Background(), `UPDATE images SET public = $1 WHERE name = 'mine/app'`, public)
			must(t, err)
		}
		setPublic(true)
		e.ok("bob", "run", "--name", "bobsrc", appID, "touch", "/mine")
		setPublic(false)
		e.fails("bob", 1, "no longer available to this account", "commit", "bobsrc", "bob/img:1")
		setPublic(true)
		e.ok("bob", "commit", "bobsrc", "bob/img:1")
		e.ok("bob", "rmi", "bob/img:1")
		setPublic(false)
		e.ok("bob", "rm", "bobsrc")
		for _, q := range []string{"container=src&repo=BAD%20REPO", "container=src&repo=Upper", "container=src&repo=a&tag=b@c",
			"repo=x", "container=src&tag=only"} {
			resp, err := e.client("alice").Post(e.srv.URL+"/v1.47/commit?"+q, "application/json", nil)
			must(t, err)
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), "message") {
				t.Errorf("POST /commit?%s: %d %s, want 400", q, resp.StatusCode, body)
			}
		}
		resp, err := e.client("alice").Post(e.srv.URL+"/v1.47/commit?container=nosuch&repo=ok", "application/json", nil)
		must(t, err)
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("POST /commit of an unknown container: %d, want 404", resp.StatusCode)
		}
		// Nothing was recorded by the failed commits.
		if after := e.ok("alice", "images", "-a", "--format", "{{.ID}} {{.Repository}}:{{.Tag}}"); after != before {
			t.Errorf("a failed commit left an image:\n%s\nbefore:\n%s", after, before)
		}
	})
}
