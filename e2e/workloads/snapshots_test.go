package workloads

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// snapshot is what the tests read of `triton inst snapshot get -j`.
type snapshot struct {
	Name  string `json:"name"`
	State string `json:"state"`
	Size  int64  `json:"size"`
}

// execIn runs sh -c script in container id (runc exec, as the container's
// own processes would write) and returns its output.
func (c *cloud) execIn(t *testing.T, id, script string) string {
	t.Helper()
	root := filepath.Join(c.Data, "nodes", "node-1", "runc", "runc")
	out, err := exec.Command("runc", "--root", root, "exec", id, "sh", "-c", script).CombinedOutput()
	if err != nil {
		t.Fatalf("runc exec %s sh -c %q: %v\n%s", id, script, err, out)
	}
	return string(out)
}

// TestSnapshots takes snapshots of a runc container with the triton CLI,
// running and stopped, and starts it from them.
func TestSnapshots(t *testing.T) {
	c := startDev(t, "snap", "runc")
	pub := c.addNetwork(t, "snap-pub", "")
	in, _ := c.createAs(t, c.Owner, "sn1", "busybox@1.36", "g1-nano-256M", "--network", pub.Name)
	bundle := filepath.Join(c.Data, "nodes", "node-1", "runc", "containers", in.ID)
	const files = "cat /root/data; ls /root; cat /etc/motd 2>/dev/null || echo no-motd"

	var before string
	ok := t.Run("CreateWhileRunning", func(t *testing.T) {
		c.execIn(t, in.ID, "echo v1 > /root/data && echo keep > /root/keep && echo hi > /etc/motd")
		before = c.execIn(t, in.ID, files)
		t0 := time.Now()
		out := c.tri(t, "inst", "snapshot", "create", "-w", "-n", "first", "sn1")
		figure("snapshot create -w, running container (triton)", "%.0f ms", float64(time.Since(t0).Milliseconds()))
		if !strings.Contains(out, `Created snapshot "first"`) {
			t.Fatalf("snapshot create -w printed %q", out)
		}
		var sn snapshot
		if err := json.Unmarshal([]byte(c.tri(t, "inst", "snapshot", "get", "-j", "sn1", "first")), &sn); err != nil {
			t.Fatal(err)
		}
		if sn.Name != "first" || sn.State != "created" || sn.Size <= 0 {
			t.Fatalf("snapshot get = %+v, want first, created, with a size", sn)
		}
		if _, err := os.Stat(filepath.Join(bundle, "snapshots", "first", "layer.tar")); err != nil {
			t.Fatalf("the node holds no archive of the snapshot: %v", err)
		}
		// The container was frozen, not stopped, for it.
		c.runningPid(t, in.ID)
	})
	if !ok {
		t.FailNow()
	}

	t.Run("StartFromSnapshotRestoresFiles", func(t *testing.T) {
		c.execIn(t, in.ID, "echo v2 > /root/data && rm /root/keep /etc/motd && echo new > /root/extra")
		if got := c.execIn(t, in.ID, files); got == before {
			t.Fatalf("the files did not change: %q", got)
		}
		pid := c.runningPid(t, in.ID)
		t0 := time.Now()
		c.tri(t, "inst", "start", "-w", "--snapshot", "first", "sn1")
		figure("start --snapshot -w, running container (triton)", "%.0f ms", float64(time.Since(t0).Milliseconds()))
		if got := c.getAs(t, c.Owner, "sn1"); got.State != "running" {
			t.Fatalf("sn1 is %s after start --snapshot -w", got.State)
		}
		if pid2 := c.runningPid(t, in.ID); pid2 == pid {
			t.Fatalf("sn1 runs the same process %d: it was not restarted", pid)
		}
		if got := c.execIn(t, in.ID, files); got != before {
			t.Fatalf("files after start --snapshot:\n%s\nwant as at the snapshot:\n%s", got, before)
		}
	})

	t.Run("CreateWhileStoppedAndStartFromIt", func(t *testing.T) {
		c.execIn(t, in.ID, "echo v3 > /root/data")
		c.tri(t, "inst", "stop", "-w", "sn1")
		c.tri(t, "inst", "snapshot", "create", "-w", "-n", "stopped.v3", "sn1")
		c.tri(t, "inst", "start", "-w", "sn1")
		c.execIn(t, in.ID, "echo v4 > /root/data")
		c.tri(t, "inst", "stop", "-w", "sn1")
		c.tri(t, "inst", "start", "-w", "--snapshot", "stopped.v3", "sn1")
		if got := strings.TrimSpace(c.execIn(t, in.ID, "cat /root/data")); got != "v3" {
			t.Fatalf("/root/data = %q after starting a stopped container from its snapshot, want v3", got)
		}
	})

	t.Run("List", func(t *testing.T) {
		out := c.tri(t, "inst", "snapshot", "ls", "-j", "sn1")
		var names []string
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			var sn snapshot
			if err := json.Unmarshal([]byte(line), &sn); err != nil {
				t.Fatalf("snapshot ls -j: %v\n%s", err, out)
			}
			if sn.State != "created" {
				t.Errorf("snapshot %s is %s, want created", sn.Name, sn.State)
			}
			names = append(names, sn.Name)
		}
		if strings.Join(names, ",") != "first,stopped.v3" {
			t.Fatalf("snapshot ls lists %v, want first and stopped.v3, oldest first", names)
		}
	})

	t.Run("Errors", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			args []string
			want []string // in stderr
		}{
			{"ErrUnknownSnapshot", []string{"inst", "snapshot", "get", "sn1", "nope"}, []string{"ResourceNotFound", "nope"}},
			{"ErrStartFromUnknown", []string{"inst", "start", "-w", "--snapshot", "nope", "sn1"}, []string{"snapshot nope not found"}},
			{"ErrDeleteUnknown", []string{"inst", "snapshot", "delete", "-f", "sn1", "nope"}, []string{"snapshot nope not found"}},
			{"ErrNameTaken", []string{"inst", "snapshot", "create", "-n", "first", "sn1"}, []string{"InvalidArgument", `already has a snapshot named "first"`}},
			{"ErrInvalidName", []string{"inst", "snapshot", "create", "-n", "no/slash", "sn1"}, []string{"InvalidArgument", "invalid snapshot name"}},
			{"ErrUnknownInstance", []string{"inst", "snapshot", "ls", "00000000-0000-4000-8000-000000000000"}, []string{"not found"}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				stderr := c.triFails(t, c.Owner, tc.args...)
				for _, w := range tc.want {
					if !strings.Contains(stderr, w) {
						t.Errorf("stderr lacks %q:\n%s", w, stderr)
					}
				}
				if strings.Contains(stderr, "InternalError") {
					t.Errorf("an internal error:\n%s", stderr)
				}
			})
		}
		t.Run("ErrAnotherAccountsInstance", func(t *testing.T) {
			other := c.addAccount(t, "snap2")
			for _, args := range [][]string{
				{"inst", "snapshot", "ls", in.ID},
				{"inst", "snapshot", "get", in.ID, "first"},
				{"inst", "snapshot", "create", "-n", "theirs", in.ID},
				{"inst", "snapshot", "delete", "-f", in.ID, "first"},
				{"inst", "start", "--snapshot", "first", in.ID},
			} {
				stderr := c.triFails(t, other, args...)
				if !strings.Contains(stderr, "not found") && !strings.Contains(stderr, "ResourceNotFound") {
					t.Errorf("triton %s as another account: want not found, got:\n%s", strings.Join(args, " "), stderr)
				}
			}
			var sn snapshot
			if err := json.Unmarshal([]byte(c.tri(t, "inst", "snapshot", "get", "-j", "sn1", "first")), &sn); err != nil || sn.State != "created" {
				t.Fatalf("first after another account's delete: %+v, %v", sn, err)
			}
		})
	})

	t.Run("Delete", func(t *testing.T) {
		out := c.tri(t, "inst", "snapshot", "delete", "-w", "-f", "sn1", "first")
		if !strings.Contains(out, `Deleted snapshot "first"`) {
			t.Fatalf("snapshot delete -w printed %q", out)
		}
		if _, err := os.Stat(filepath.Join(bundle, "snapshots", "first")); !os.IsNotExist(err) {
			t.Fatalf("the node still holds the deleted snapshot (stat: %v)", err)
		}
		stderr := c.triFails(t, c.Owner, "inst", "snapshot", "get", "sn1", "first")
		if !strings.Contains(stderr, "ResourceNotFound") {
			t.Fatalf("get of a deleted snapshot: %s", stderr)
		}
		out = c.tri(t, "inst", "snapshot", "ls", "-j", "sn1")
		if strings.Contains(out, `"first"`) {
			t.Fatalf("snapshot ls still lists first:\n%s", out)
		}
		// The name is free again.
		c.tri(t, "inst", "snapshot", "create", "-w", "-n", "first", "sn1")
	})

	t.Run("DeleteInstanceRemovesSnapshots", func(t *testing.T) {
		c.tri(t, "inst", "rm", "-f", "-w", "sn1")
		if _, err := os.Stat(bundle); !os.IsNotExist(err) {
			t.Fatalf("the container's bundle (and its snapshots) is still on the node (stat: %v)", err)
		}
	})
}

// TestVMSnapshots drives snapshots of a tiny-vm on a QEMU node with the
// triton CLI: refused while the VM runs, and a VM booted from a kernel
// image (it has no disk) gets a failed snapshot that says why.
func TestVMSnapshots(t *testing.T) {
	c := startDev(t, "vsnap", "qemu")
	pub := c.addNetwork(t, "vsnap-pub", "")
	vm, _ := c.createAs(t, c.Owner, "vs1", "tiny-vm@1.0", "g1-nano-256M", "--network", pub.Name)

	stderr := c.triFails(t, c.Owner, "inst", "snapshot", "create", "-n", "s1", "vs1")
	if !strings.Contains(stderr, "InvalidArgument") || !strings.Contains(stderr, "stop it before taking a snapshot") {
		t.Fatalf("snapshot of a running VM: want 409 InvalidArgument saying to stop it, got:\n%s", stderr)
	}
	c.tri(t, "inst", "stop", "-w", "vs1")
	_, stderr, err := c.tritonAs(c.Owner, "inst", "snapshot", "create", "-w", "-n", "s1", "vs1")
	if err == nil || !strings.Contains(stderr, `Failed to create snapshot "s1"`) {
		t.Fatalf("snapshot create -w of a kernel-booted VM: err %v, stderr:\n%s", err, stderr)
	}
	var sn struct {
		State string `json:"state"`
		Error string `json:"error"`
	}
	if err := json.Unmarshal([]byte(c.tri(t, "inst", "snapshot", "get", "-j", "vs1", "s1")), &sn); err != nil {
		t.Fatal(err)
	}
	if sn.State != "failed" || !strings.Contains(sn.Error, "has no disk") {
		t.Fatalf("snapshot s1 = %+v, want failed saying the VM has no disk", sn)
	}
	stderr = c.triFails(t, c.Owner, "inst", "start", "-w", "--snapshot", "s1", "vs1")
	if !strings.Contains(stderr, "only from successfully created snapshots") {
		t.Fatalf("start from a failed snapshot:\n%s", stderr)
	}
	c.tri(t, "inst", "snapshot", "delete", "-w", "-f", "vs1", "s1")
	c.tri(t, "inst", "rm", "-f", "-w", vm.ID)
}
