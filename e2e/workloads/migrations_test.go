package workloads

import (
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"flotilla/agent/network"
)

// nodeOf returns the dev node (node-N) whose runc driver holds container id,
// or "" when none does.
func (c *cloud) nodeOf(t *testing.T, id string) string {
	t.Helper()
	dirs, _ := filepath.Glob(filepath.Join(c.Data, "nodes", "node-*"))
	var found []string
	for _, d := range dirs {
		if fileExists(filepath.Join(d, "runc", "containers", id, "spec.json")) {
			found = append(found, filepath.Base(d))
		}
	}
	if len(found) > 1 {
		t.Fatalf("container %s is on more than one node: %v", id, found)
	}
	if len(found) == 0 {
		return ""
	}
	return found[0]
}

// execOn runs sh -c script in container id on dev node node.
func (c *cloud) execOn(t *testing.T, node, id, script string) string {
	t.Helper()
	root := filepath.Join(c.Data, "nodes", node, "runc", "runc")
	out, err := exec.Command("runc", "--root", root, "exec", id, "sh", "-c", script).CombinedOutput()
	if err != nil {
		t.Fatalf("runc exec on %s %s sh -c %q: %v\n%s", node, id, script, err, out)
	}
	return string(out)
}

// runcStatus is runc's view of container id on node: its status and pid.
func (c *cloud) runcStatus(t *testing.T, node, id string) runcState {
	t.Helper()
	root := filepath.Join(c.Data, "nodes", node, "runc", "runc")
	out, err := exec.Command("runc", "--root", root, "state", id).Output()
	if err != nil {
		return runcState{}
	}
	var s runcState
	if err := json.Unmarshal(out, &s); err != nil {
		t.Fatalf("runc state %s: %v\n%s", id, err, out)
	}
	return s
}

// migration is what the tests read of `triton inst migration get -j`.
type migration struct {
	Machine  string `json:"machine"`
	Phase    string `json:"phase"`
	State    string `json:"state"`
	Error    string `json:"error"`
	Duration int64  `json:"duration_ms"`
	Progress []struct {
		Phase      string `json:"phase"`
		State      string `json:"state"`
		DurationMs int64  `json:"duration_ms"`
		Message    string `json:"message"`
	} `json:"progress_history"`
}

func (c *cloud) migrationOf(t *testing.T, id string) migration {
	t.Helper()
	var m migration
	decodeJSON(t, "triton inst migration get -j", c.tri(t, "inst", "migration", "get", "-j", id), &m)
	return m
}

// TestMigrations moves runc containers between the two nodes of `flotilla
// dev --nodes 2` with the triton CLI: a running one with `migration
// automatic -w` (its files, its process, its address kept, reachable after
// the move, gone from the source), a stopped one with begin, sync and
// switch (stopped on the other node, its files there when started), and
// the refusals.
func TestMigrations(t *testing.T) {
	c := startDevNodes(t, "mig", "runc", 2)
	pub := c.addNetwork(t, "mig-pub", "")

	t.Run("AutomaticRunning", func(t *testing.T) {
		in, _ := c.createAs(t, c.Owner, "mg1", "busybox@1.36", "g1-nano-256M", "--network", pub.Name)
		src := c.nodeOf(t, in.ID)
		if src == "" {
			t.Fatalf("container %s is on no node", in.ID)
		}
		c.execOn(t, src, in.ID, "echo migrated-data > /root/data; mkdir -p /srv/app && echo nested > /srv/app/f; rm -f /etc/hostname.bak; rm /bin/vi")
		t0 := time.Now()
		out := c.tri(t, "inst", "migration", "automatic", "-w", in.ID)
		took := time.Since(t0)
		figure("migration automatic -w (running container)", "%.2fs", took.Seconds())
		t.Logf("triton inst migration automatic -w printed:\n%s", out)
		if !strings.Contains(out, "Done - switch finished") {
			t.Errorf("automatic -w printed no end of the switch:\n%s", out)
		}
		after := c.getAs(t, c.Owner, in.ID)
		if after.State != "running" || after.ComputeNode == in.ComputeNode || after.PrimaryIP != in.PrimaryIP {
			t.Fatalf("after the move: %+v; before: %+v", after, in)
		}
		dst := c.nodeOf(t, in.ID)
		if dst == "" || dst == src {
			t.Fatalf("container on %q after its move from %s", dst, src)
		}
		if s := c.runcStatus(t, dst, in.ID); s.Status != "running" || !ProcessAlive(s.Pid) {
			t.Fatalf("runc on %s: %+v, want a running process", dst, s)
		}
		if s := c.runcStatus(t, src, in.ID); s.Status != "" {
			t.Errorf("runc on the source %s still knows the container: %+v", src, s)
		}
		got := c.execOn(t, dst, in.ID, "cat /root/data /srv/app/f; test -e /bin/vi && echo vi-back || echo vi-gone")
		if got != "migrated-data\nnested\nvi-gone\n" {
			t.Errorf("filesystem after the move: %q", got)
		}
		if !strings.Contains(addrsIn(t, in.ID), in.PrimaryIP+"/") {
			t.Errorf("%s is not in the container's namespace after the move:\n%s", in.PrimaryIP, addrsIn(t, in.ID))
		}
		if err := Ping("", in.PrimaryIP, 15*time.Second); err != nil {
			t.Errorf("the moved container does not answer at its address: %v", err)
		}
		m := c.migrationOf(t, in.ID)
		if m.State != "successful" || m.Phase != "switch" || len(m.Progress) != 3 {
			t.Fatalf("migration: %+v", m)
		}
		for _, p := range m.Progress {
			figure("migration automatic phase "+p.Phase, "%d ms", p.DurationMs)
		}
		figure("migration automatic total (created to finished)", "%d ms", m.Duration)
		figure("migration switch message", "%s", m.Progress[2].Message)
		if ls := c.tri(t, "inst", "migration", "list"); !strings.Contains(ls, in.ID[:8]) || !strings.Contains(ls, "successful") {
			t.Errorf("migration list:\n%s", ls)
		}
		if get := c.tri(t, "inst", "migration", "get", in.ID); !strings.Contains(get, "Migration finished successfully") {
			t.Errorf("migration get:\n%s", get)
		}
		// Moved back, on the same address still.
		c.timed(t, "migration automatic -w back to the first node", "inst", "migration", "automatic", "-w", in.ID)
		if back := c.getAs(t, c.Owner, in.ID); back.State != "running" || back.ComputeNode != in.ComputeNode || back.PrimaryIP != in.PrimaryIP {
			t.Fatalf("after the move back: %+v", back)
		}
		if got := c.execOn(t, src, in.ID, "cat /root/data"); got != "migrated-data\n" {
			t.Errorf("file after the move back: %q", got)
		}
		c.tri(t, "inst", "rm", "-f", "-w", in.ID)
		if n := c.nodeOf(t, in.ID); n != "" {
			t.Errorf("the deleted container is still on %s", n)
		}
		if LinkExists(network.VethName(in.ID, 0)) || fileExists(network.NetNSPath(network.NetNSName(in.ID))) {
			t.Errorf("the deleted container's veth or network namespace is left on the host")
		}
	})

	t.Run("DefaultFabric", func(t *testing.T) {
		f1, _ := c.createAs(t, c.Owner, "mgf1", "busybox@1.36", "g1-nano-256M")
		f2, _ := c.createAs(t, c.Owner, "mgf2", "busybox@1.36", "g1-nano-256M")
		t.Cleanup(func() { c.tritonAs(c.Owner, "inst", "rm", "-f", "-w", f1.ID, f2.ID) })
		var def struct {
			Subnet  string `json:"subnet"`
			Gateway string `json:"gateway"`
		}
		decodeJSON(t, "triton network get-default", c.tri(t, "network", "get-default"), &def)
		if !subnetContains(t, def.Subnet, f1.PrimaryIP) {
			t.Fatalf("mgf1 has %s, not on the default fabric %s", f1.PrimaryIP, def.Subnet)
		}
		c.timed(t, "migration automatic -w (container on a fabric)", "inst", "migration", "automatic", "-w", f1.ID)
		after := c.getAs(t, c.Owner, f1.ID)
		if after.State != "running" || after.ComputeNode == f1.ComputeNode || after.PrimaryIP != f1.PrimaryIP {
			t.Fatalf("after the move: %+v; before: %+v", after, f1)
		}
		if err := Ping(network.NetNSName(f2.ID), f1.PrimaryIP, 15*time.Second); err != nil {
			t.Errorf("a container on the same fabric cannot reach the moved one: %v", err)
		}
		if err := Ping(network.NetNSName(f1.ID), def.Gateway, 15*time.Second); err != nil {
			t.Errorf("the moved container cannot reach its fabric gateway: %v", err)
		}
	})

	t.Run("StepsStopped", func(t *testing.T) {
		in, _ := c.createAs(t, c.Owner, "mg2", "busybox@1.36", "g1-nano-256M", "--network", pub.Name)
		src := c.nodeOf(t, in.ID)
		c.execOn(t, src, in.ID, "echo stopped-data > /root/data")
		c.tri(t, "inst", "stop", "-w", in.ID)

		t0 := time.Now()
		c.tri(t, "inst", "migration", "begin", "-w", in.ID)
		if m := c.migrationOf(t, in.ID); m.Phase != "begin" || m.State != "paused" {
			t.Fatalf("after begin: %+v", m)
		}
		errOut := c.triFails(t, c.Owner, "inst", "migration", "begin", in.ID)
		if !strings.Contains(errOut, "already has a migration in progress") {
			t.Errorf("second begin: %s", errOut)
		}
		out := c.tri(t, "inst", "migration", "sync", "-w", in.ID)
		if !strings.Contains(out, "Done - sync finished") {
			t.Errorf("sync -w printed:\n%s", out)
		}
		c.tri(t, "inst", "migration", "switch", "-w", in.ID)
		figure("migration begin+sync+switch -w (stopped container)", "%.2fs", time.Since(t0).Seconds())
		after := c.getAs(t, c.Owner, in.ID)
		dst := c.nodeOf(t, in.ID)
		if after.State != "stopped" || after.ComputeNode == in.ComputeNode || dst == src || dst == "" {
			t.Fatalf("after the switch: %+v on %q (was on %s)", after, dst, src)
		}
		if s := c.runcStatus(t, dst, in.ID); s.Status == "running" {
			t.Fatalf("a stopped container runs after its move: %+v", s)
		}
		c.tri(t, "inst", "start", "-w", in.ID)
		if got := c.execOn(t, dst, in.ID, "cat /root/data"); got != "stopped-data\n" {
			t.Errorf("file after the move: %q", got)
		}
		c.tri(t, "inst", "rm", "-f", "-w", in.ID)
	})

	t.Run("AbortAndRefusals", func(t *testing.T) {
		in, _ := c.createAs(t, c.Owner, "mg3", "busybox@1.36", "g1-nano-256M", "--network", pub.Name)
		src := c.nodeOf(t, in.ID)
		c.tri(t, "inst", "migration", "begin", in.ID)
		c.tri(t, "inst", "migration", "sync", "-w", in.ID)
		c.tri(t, "inst", "migration", "abort", in.ID)
		if m := c.migrationOf(t, in.ID); m.State != "aborted" {
			t.Fatalf("after abort: %+v", m)
		}
		if after := c.getAs(t, c.Owner, in.ID); after.State != "running" || after.ComputeNode != in.ComputeNode || c.nodeOf(t, in.ID) != src {
			t.Fatalf("after abort: %+v", after)
		}
		other := c.addAccount(t, "migother")
		errOut := c.triFails(t, other, "inst", "migration", "begin", in.ID)
		if !strings.Contains(errOut, "not found") {
			t.Errorf("another account's begin: %s", errOut)
		}
		errOut = c.triFails(t, c.Owner, "inst", "migration", "get", "nosuchinst")
		if !strings.Contains(errOut, "no instance") && !strings.Contains(errOut, "not found") {
			t.Errorf("get of no instance: %s", errOut)
		}
	})
}
