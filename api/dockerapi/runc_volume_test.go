package dockerapi

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestDockerRuncVolumes: docker volume create/ls/inspect/rm/prune and the
// volume forms of docker run (-v name:/path, anonymous -v /path, --mount
// type=volume) on a runc node; what one container writes to a volume the
// next one reads; host paths are refused; another account sees nothing.
func TestDockerRuncVolumes(t *testing.T) {
	re := newRuncEnv(t)
	e := re.testEnv

	t.Run("CreateLsInspect", func(t *testing.T) {
		e := e.with(t)
		if out := e.ok("alice", "volume", "create", "--label", "team=a", "-o", "size=2G", "data1"); out != "data1\n" {
			t.Fatalf("volume create printed %q", out)
		}
		// Creating an existing name again is a no-op, as dockerd.
		e.ok("alice", "volume", "create", "data1")
		out := e.ok("alice", "volume", "ls", "--format", "{{.Driver}} {{.Name}}")
		if !strings.Contains(out, "local data1\n") {
			t.Fatalf("volume ls: %q", out)
		}
		var vols []map[string]any
		must(t, json.Unmarshal([]byte(e.ok("alice", "volume", "inspect", "data1")), &vols))
		if len(vols) != 1 || vols[0]["Name"] != "data1" || vols[0]["Driver"] != "local" ||
			vols[0]["Labels"].(map[string]any)["team"] != "a" || vols[0]["Options"].(map[string]any)["size"] != "2G" {
			t.Fatalf("volume inspect: %+v", vols)
		}
		if out := e.ok("alice", "volume", "ls", "-q", "--filter", "label=team=a"); out != "data1\n" {
			t.Fatalf("ls by label: %q", out)
		}
	})
	t.Run("ErrOtherAccount", func(t *testing.T) {
		e := e.with(t)
		e.fails("bob", 1, "no such volume", "volume", "inspect", "data1")
		e.fails("bob", 1, "no such volume", "volume", "rm", "data1")
		if out := e.ok("bob", "volume", "ls", "-q"); out != "" {
			t.Fatalf("bob sees %q", out)
		}
	})
	t.Run("NamedVolumeSharedByContainers", func(t *testing.T) {
		e := e.with(t)
		e.ok("alice", "run", "--rm", "-v", "data1:/data", "busybox", "sh", "-c", "echo persisted > /data/f")
		if out := e.ok("alice", "run", "--rm", "-v", "data1:/mnt:ro", "busybox", "cat", "/mnt/f"); out != "persisted\n" {
			t.Fatalf("second container reads %q", out)
		}
		// Read-only means read-only.
		_, errOut, code := e.run("alice", "run", "--rm", "-v", "data1:/mnt:ro", "busybox", "sh", "-c", "echo x > /mnt/g")
		if code == 0 || !strings.Contains(errOut, "Read-only file system") {
			t.Fatalf("write to a ro volume: exit %d, %q", code, errOut)
		}
		if out := e.ok("alice", "run", "--rm", "--mount", "type=volume,source=data1,target=/m", "busybox", "cat", "/m/f"); out != "persisted\n" {
			t.Fatalf("--mount reads %q", out)
		}
		// A volume that does not exist yet is made by run.
		e.ok("alice", "run", "--rm", "-v", "made-by-run:/x", "busybox", "true")
		e.ok("alice", "volume", "inspect", "made-by-run")
	})
	t.Run("InUse", func(t *testing.T) {
		e := e.with(t)
		e.ok("alice", "run", "-d", "--name", "holder", "-v", "data1:/data", "busybox", "sleep", "1000")
		e.fails("alice", 1, "volume is in use", "volume", "rm", "data1")
		e.ok("alice", "rm", "-f", "holder")
	})
	t.Run("Anonymous", func(t *testing.T) {
		e := e.with(t)
		e.ok("alice", "run", "--name", "anon", "-v", "/scratch", "busybox", "sh", "-c", "echo a > /scratch/a")
		before := e.ok("alice", "volume", "ls", "-q")
		if n := len(strings.Fields(before)); n != 3 {
			t.Fatalf("volumes after an anonymous -v: %q", before)
		}
		e.ok("alice", "rm", "-v", "anon")
		if out := e.ok("alice", "volume", "ls", "-q"); len(strings.Fields(out)) != 2 {
			t.Fatalf("docker rm -v left %q", out)
		}
		e.ok("alice", "run", "--rm", "-v", "/tmp2", "busybox", "true")
		waitGone(t, e, "alice")
		if out := e.ok("alice", "volume", "prune", "-f"); !strings.Contains(out, "Total reclaimed space") {
			t.Fatalf("prune: %q", out)
		}
		if out := e.ok("alice", "volume", "ls", "-q"); out != "data1\nmade-by-run\n" {
			t.Fatalf("after prune: %q", out)
		}
	})
	t.Run("ErrHostPaths", func(t *testing.T) {
		e := e.with(t)
		dir := t.TempDir()
		e.fails("alice", 125, "host paths cannot be mounted", "run", "--rm", "-v", dir+":/host", "busybox", "true")
		e.fails("alice", 125, "host paths cannot be mounted", "run", "--rm", "--mount", "type=bind,source="+dir+",target=/host", "busybox", "true")
		e.fails("alice", 125, "--volumes-from is not supported", "run", "--rm", "--volumes-from", "x", "busybox", "true")
		e.fails("alice", 1, "not supported", "volume", "create", "-d", "nfs", "v2")
		e.fails("alice", 1, "invalid volume name", "volume", "create", "bad/name")
	})
	t.Run("Rm", func(t *testing.T) {
		e := e.with(t)
		e.ok("alice", "volume", "rm", "data1", "made-by-run")
		if out := e.ok("alice", "volume", "ls", "-q"); out != "" {
			t.Fatalf("after rm: %q", out)
		}
		e.fails("alice", 1, "no such volume", "volume", "rm", "data1")
	})
	// The storage is the node's, under the driver's root, and each
	// deleted volume's went with it (volume rm, rm -v, prune).
	if ents, err := os.ReadDir(filepath.Join(re.root, "volumes")); err != nil || len(ents) != 0 {
		t.Errorf("volume storage under the driver root after every volume's deletion: %v, %v", ents, err)
	}
	t.Run("Quota", func(t *testing.T) {
		e := e.with(t)
		e.ok("alice", "volume", "create", "-o", "size=16M", "quota")
		_, errOut, code := e.run("alice", "run", "--rm", "-v", "quota:/d", "busybox", "sh", "-c", "dd if=/dev/zero of=/d/f bs=1M count=40")
		if code == 0 || !strings.Contains(errOut, "No space left on device") {
			t.Fatalf("writing 40 MiB to a 16 MiB volume: exit %d, %q", code, errOut)
		}
		out := e.ok("alice", "run", "--rm", "-v", "quota:/d", "busybox", "df", "-k", "/d")
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if f := strings.Fields(lines[len(lines)-1]); len(f) < 2 || len(f[1]) != 5 || f[1] > "16384" || f[1] < "12288" {
			t.Errorf("df of a 16 MiB volume: %q", out)
		}
		acct, err := e.st.AccountByLogin(context.Background(), "alice")
		must(t, err)
		v, err := e.st.GetVolume(context.Background(), acct.ID, "quota")
		must(t, err)
		dir := filepath.Join(re.root, "volumes", v.ID)
		if _, err := os.Stat(filepath.Join(dir, "disk.img")); err != nil {
			t.Fatalf("the volume's image on the node: %v", err)
		}
		// The last --rm container may still be leaving the node.
		e.ok("alice", "volume", "rm", "quota")
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Errorf("%s is left on the node after volume rm: %v", dir, err)
		}
	})
}

// waitGone waits until login has no containers left (--rm is async).
func waitGone(t *testing.T, e *testEnv, login string) {
	t.Helper()
	for i := 0; i < 100; i++ {
		if out, _, _ := e.run(login, "ps", "-aq"); strings.TrimSpace(out) == "" {
			return
		}
		sleepBrief()
	}
	t.Fatalf("%s's containers are not gone", login)
}

func sleepBrief() { time.Sleep(100 * time.Millisecond) }

// unmountVolumes unmounts the volumes' filesystems a test left mounted on
// the node whose driver root is root (a failed test's, or volumes it did
// not delete), so that the temporary directory can go.
func unmountVolumes(t *testing.T, root string) {
	ents, _ := os.ReadDir(filepath.Join(root, "volumes"))
	for _, e := range ents {
		data := filepath.Join(root, "volumes", e.Name(), "_data")
		if err := unix.Unmount(data, unix.MNT_DETACH); err == nil {
			t.Logf("volume %s was left mounted", e.Name())
		}
	}
}
