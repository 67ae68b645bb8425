package dockerapi

import (
	"archive/tar"
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"flotilla/agent/driver/runc"
	"flotilla/store"
)

// hostCgroupFile is the path of a cgroup file of a container (by Docker
// id) in the node's pids hierarchy, v1 or unified.
func hostCgroupFile(dockerID, file string) string {
	id := dockerID[:8] + "-" + dockerID[8:12] + "-" + dockerID[12:16] + "-" + dockerID[16:20] + "-" + dockerID[20:32]
	var fs unix.Statfs_t
	if unix.Statfs("/sys/fs/cgroup", &fs) == nil && fs.Type == unix.CGROUP2_SUPER_MAGIC {
		return filepath.Join("/sys/fs/cgroup", runc.CgroupParent, id, file)
	}
	return filepath.Join("/sys/fs/cgroup/pids", runc.CgroupParent, id, file)
}

// TestDockerRuncHardening drives the container hardening through the real
// docker CLI against a real runc node: docker info names the node's real
// cgroups, every container has a pid limit (the package's unless
// --pids-limit asks for less), cannot make namespaces, refuses uploaded
// device nodes, and a fork bomb neither escapes its limit nor stops the
// node from answering.
func TestDockerRuncHardening(t *testing.T) {
	re := newRuncEnv(t)
	e := re.testEnv

	t.Run("InfoCgroups", func(t *testing.T) {
		e := e.with(t)
		want := "1 cgroupfs\n"
		var fs unix.Statfs_t
		if unix.Statfs("/sys/fs/cgroup", &fs) == nil && fs.Type == unix.CGROUP2_SUPER_MAGIC {
			want = "2 cgroupfs\n"
		}
		if out := e.ok("alice", "info", "--format", "{{.CgroupVersion}} {{.CgroupDriver}}"); out != want {
			t.Fatalf("docker info cgroups = %q, want %q (what the node has)", out, want)
		}
	})
	t.Run("PIDsLimit", func(t *testing.T) {
		e := e.with(t)
		id := strings.TrimSpace(e.ok("alice", "run", "-d", "--name", "limited", "busybox", "sleep", "300"))
		got, err := os.ReadFile(hostCgroupFile(id, "pids.max"))
		if err != nil || strings.TrimSpace(string(got)) != "4000" {
			t.Errorf("pids.max of a container of the default package = %q (%v), want the package's lwps 4000", got, err)
		}
		id = strings.TrimSpace(e.ok("alice", "run", "-d", "--pids-limit", "50", "--name", "limited50", "busybox", "sleep", "300"))
		got, err = os.ReadFile(hostCgroupFile(id, "pids.max"))
		if err != nil || strings.TrimSpace(string(got)) != "50" {
			t.Errorf("pids.max with --pids-limit 50 = %q (%v)", got, err)
		}
	})
	t.Run("NoNamespaces", func(t *testing.T) {
		e := e.with(t)
		for _, flag := range []string{"-n", "-U", "-m"} {
			_, errOut, code := e.run("alice", "exec", "limited", "unshare", flag, "true")
			if code == 0 || !strings.Contains(errOut, "Operation not permitted") {
				t.Errorf("docker exec unshare %s: exit %d %q, want EPERM", flag, code, errOut)
			}
		}
		if out := e.ok("alice", "exec", "limited", "sh", "-c", "echo ok; ls / >/dev/null"); out != "ok\n" {
			t.Errorf("an ordinary exec: %q", out)
		}
	})
	t.Run("CpDeviceRefused", func(t *testing.T) {
		e := e.with(t)
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		must(t, tw.WriteHeader(&tar.Header{Name: "sda", Typeflag: tar.TypeBlock, Mode: 0o666, Devmajor: 8}))
		must(t, tw.WriteHeader(&tar.Header{Name: "mem", Typeflag: tar.TypeChar, Mode: 0o666, Devmajor: 1, Devminor: 1}))
		must(t, tw.Close())
		cmd := e.cmd("alice", "cp", "-", "limited:/tmp")
		cmd.Stdin = &buf
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), "device node") {
			t.Errorf("docker cp of a tar with device nodes: %v %q, want a refusal naming the device node", err, out)
		}
		if _, _, code := e.run("alice", "exec", "limited", "sh", "-c", "test -e /tmp/sda || test -e /tmp/mem"); code == 0 {
			t.Errorf("a device node from the upload exists in the container")
		}
	})
	t.Run("ForkBomb", func(t *testing.T) {
		e := e.with(t)
		const limit = 40
		id := strings.TrimSpace(e.ok("alice", "run", "-d", "--pids-limit", strconv.Itoa(limit), "--name", "bomb", "busybox", "sleep", "300"))
		e.ok("alice", "exec", "-d", "bomb", "sh", "-c", "b(){ b|b& }; b")
		peak := 0
		for end := time.Now().Add(2 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
			b, err := os.ReadFile(hostCgroupFile(id, "pids.current"))
			if err != nil {
				t.Fatalf("read pids.current: %v", err)
			}
			n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
			if n > limit {
				t.Fatalf("pids.current = %d, over the limit %d", n, limit)
			}
			peak = max(peak, n)
		}
		if peak < limit/2 {
			t.Errorf("the bomb never got near the limit (peak %d)", peak)
		}
		if out := e.ok("alice", "ps", "--format", "{{.Names}}", "--filter", "name=bomb"); out != "bomb\n" {
			t.Errorf("docker ps during the bomb: %q", out)
		}
		e.ok("alice", "rm", "-f", "bomb")
		if _, _, code := e.run("alice", "inspect", "bomb"); code == 0 {
			t.Errorf("the bombed container survived docker rm -f")
		}
	})
	e.ok("alice", "rm", "-f", "limited", "limited50")
}

func TestNodeCgroups(t *testing.T) {
	n := func(state, v, d string) store.Node {
		return store.Node{State: state, CgroupVersion: v, CgroupDriver: d}
	}
	cases := []struct {
		name  string
		nodes []store.Node
		want  [2]string
	}{
		{"NoneReported", []store.Node{n("running", "", "")}, [2]string{"1", "none"}},
		{"MostCommon", []store.Node{n("running", "2", "systemd"), n("running", "1", "cgroupfs"), n("running", "1", "cgroupfs")}, [2]string{"1", "cgroupfs"}},
		{"TieFirst", []store.Node{n("running", "2", "systemd"), n("running", "1", "cgroupfs")}, [2]string{"2", "systemd"}},
		{"OfflineIgnored", []store.Node{n("offline", "2", "systemd"), n("running", "1", "cgroupfs")}, [2]string{"1", "cgroupfs"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			v, d := nodeCgroups(c.nodes)
			if [2]string{v, d} != c.want {
				t.Errorf("nodeCgroups = %s %s, want %v", v, d, c.want)
			}
		})
	}
}
