package workloads

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestVolumes drives CloudAPI volumes with the triton CLI on a runc node:
// sizes, create -w, ls, get, delete -w (which removes the volume's
// filesystem from its node), and two containers mounting one volume
// (read-write and read-only) that see each other's files.
func TestVolumes(t *testing.T) {
	c := startDev(t, "vol", "runc")
	pub := c.addNetwork(t, "vol-pub", "")
	other := c.addAccount(t, "vol2")

	if out := c.tri(t, "volume", "sizes"); !strings.Contains(out, " 10G\n") || !strings.Contains(out, "1000G") || !strings.Contains(out, "tritonnfs") {
		t.Fatalf("triton volume sizes: %s", out)
	}
	c.tri(t, "volume", "create", "-n", "vol1", "-s", "20G", "-w")
	var vol struct {
		ID, Name, Type, State string
		Size                  int
		Refs                  []string
	}
	if err := json.Unmarshal([]byte(c.tri(t, "volume", "get", "vol1")), &vol); err != nil {
		t.Fatal(err)
	}
	if vol.Name != "vol1" || vol.State != "ready" || vol.Size != 20480 || vol.Type != "tritonnfs" {
		t.Fatalf("triton volume get vol1: %+v", vol)
	}
	if out := c.tri(t, "volume", "ls"); !strings.Contains(out, "vol1") {
		t.Fatalf("triton volume ls: %s", out)
	}
	t.Run("ErrSizeNotAvailable", func(t *testing.T) {
		_, errOut, err := c.tritonAs(c.Owner, "volume", "create", "-n", "odd", "-s", "15G")
		if err == nil || !strings.Contains(errOut, "volume size not available") {
			t.Fatalf("a 15G volume: %v %s", err, errOut)
		}
	})
	t.Run("ErrOtherAccount", func(t *testing.T) {
		if out, errOut, err := c.tritonAs(other, "volume", "get", vol.ID); err == nil {
			t.Fatalf("another account reads vol1: %s %s", out, errOut)
		}
		if out := c.triAs(t, other, "volume", "ls", "-H", "-o", "name"); strings.TrimSpace(out) != "" {
			t.Fatalf("another account lists %q", out)
		}
		if _, _, err := c.tritonAs(other, "volume", "delete", "-f", vol.ID); err == nil {
			t.Fatal("another account deleted vol1")
		}
	})

	w, _ := c.createAs(t, c.Owner, "vw", "busybox@1.36", "g1-nano-256M", "--network", pub.Name, "-v", "vol1:/data")
	r, _ := c.createAs(t, c.Owner, "vr", "busybox@1.36", "g1-nano-256M", "--network", pub.Name, "-v", "vol1:/shared:ro")
	t.Run("SharedBetweenInstances", func(t *testing.T) {
		// Write through the writer's mount namespace, read through the
		// reader's: the same storage.
		wpid, rpid := c.runningPid(t, w.ID), c.runningPid(t, r.ID)
		if err := os.WriteFile(filepath.Join("/proc", strconv.Itoa(wpid), "root", "data", "hello"), []byte("from vw\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(rpid), "root", "shared", "hello"))
		if err != nil || string(b) != "from vw\n" {
			t.Fatalf("vr reads %q, %v", b, err)
		}
		if err := os.WriteFile(filepath.Join("/proc", strconv.Itoa(rpid), "root", "shared", "x"), []byte("x"), 0o644); err == nil {
			t.Error("wrote through a read-only volume mount")
		}
		if err := json.Unmarshal([]byte(c.tri(t, "volume", "get", "vol1")), &vol); err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(vol.Refs, w.ID) || !slices.Contains(vol.Refs, r.ID) {
			t.Errorf("refs %v, want %s and %s", vol.Refs, w.ID, r.ID)
		}
	})
	t.Run("ErrInUse", func(t *testing.T) {
		_, errOut, err := c.tritonAs(c.Owner, "volume", "delete", "-f", "vol1")
		if err == nil || !strings.Contains(errOut, "in use") {
			t.Fatalf("deleting a volume in use: %v %s", err, errOut)
		}
	})
	t.Run("ErrMissingVolume", func(t *testing.T) {
		_, errOut, err := c.tritonAs(c.Owner, "inst", "create", "-n", "nov", "-v", "nosuch:/x", "--network", pub.Name, "busybox@1.36", "g1-nano-256M")
		if err == nil || !strings.Contains(errOut, "volume nosuch not found") {
			t.Fatalf("a missing volume: %v %s", err, errOut)
		}
	})
	t.Run("Delete", func(t *testing.T) {
		storage := filepath.Join(c.Data, "nodes", "node-1", "runc", "volumes", vol.ID)
		if _, err := os.Stat(filepath.Join(storage, "disk.img")); err != nil {
			t.Errorf("vol1's 20G filesystem on the node: %v", err)
		}
		c.tri(t, "inst", "delete", "-f", "-w", "vw", "vr")
		c.tri(t, "volume", "delete", "-f", "-w", "vol1")
		if _, _, err := c.tritonAs(c.Owner, "volume", "get", "vol1"); err == nil {
			t.Fatal("vol1 still there after delete -w")
		}
		if _, err := os.Stat(storage); !os.IsNotExist(err) {
			t.Errorf("vol1's storage is left on the node: %v", err)
		}
	})
}

// TestVolumesAcrossNodes shares one CloudAPI volume between containers on
// two runc nodes: the volume lives on one node, the other mounts that
// node's share of it (sshfs over the agents' stream servers), and each
// container sees what the other writes, at once.
func TestVolumesAcrossNodes(t *testing.T) {
	// Registered first, so it runs once flotilla dev has stopped: a stopped
	// node leaves no volume of another node mounted (nc keeps one until then).
	t.Cleanup(func() {
		if m := MountsContaining(filepath.Join(tmp, "nfs")); len(m) != 0 {
			t.Errorf("mounts left after flotilla dev stopped: %v", m)
		}
	})
	c := startDevNodes(t, "nfs", "runc", 2)
	pub := c.addNetwork(t, "nfs-pub", "")
	c.timed(t, "volume create -w (shared volume)", "volume", "create", "-n", "shared", "-w")
	var vol struct{ ID string }
	if err := json.Unmarshal([]byte(c.tri(t, "volume", "get", "shared")), &vol); err != nil {
		t.Fatal(err)
	}
	a, tookA := c.createAs(t, c.Owner, "na", "busybox@1.36", "g1-nano-256M", "--network", pub.Name, "-v", "shared:/data")
	b, tookB := c.createAs(t, c.Owner, "nb", "busybox@1.36", "g1-nano-256M", "--network", pub.Name, "-v", "shared:/data:rw",
		"-a", "instance!=na")
	figure("inst create -w with the shared volume (first)", "%.2fs", tookA.Seconds())
	figure("inst create -w with the shared volume (second node)", "%.2fs", tookB.Seconds())
	na, nb := c.nodeOf(t, a.ID), c.nodeOf(t, b.ID)
	if na == "" || nb == "" || na == nb {
		t.Fatalf("na on %q, nb on %q: want two nodes", na, nb)
	}
	shares := MountsContaining(filepath.Join("shares", vol.ID))
	if len(shares) != 1 {
		t.Fatalf("mounts of another node's share of %s: %v, want one (on the node the volume does not live on)", vol.ID, shares)
	}

	t.Run("SharedBothWays", func(t *testing.T) {
		c.execOn(t, na, a.ID, "echo from-na > /data/a; mkdir -p /data/dir/sub; echo deep > /data/dir/sub/f; ln -s a /data/link")
		if got := c.execOn(t, nb, b.ID, "cat /data/a /data/dir/sub/f /data/link"); got != "from-na\ndeep\nfrom-na\n" {
			t.Fatalf("nb reads %q", got)
		}
		c.execOn(t, nb, b.ID, "echo from-nb > /data/b; echo more >> /data/a; mv /data/dir/sub/f /data/g; rm -r /data/dir; dd if=/dev/zero of=/data/big bs=1M count=8 2>/dev/null")
		got := c.execOn(t, na, a.ID, "cat /data/b /data/a /data/g; ls /data | tr '\\n' ' '; wc -c < /data/big")
		if want := "from-nb\nfrom-na\nmore\ndeep\na b big g link \n8388608\n"; strings.Join(strings.Fields(got), " ") != strings.Join(strings.Fields(want), " ") {
			t.Fatalf("na reads %q, want %q", got, want)
		}
		t0 := time.Now()
		c.execOn(t, nb, b.ID, "dd if=/dev/zero of=/data/copy bs=1M count=32 2>/dev/null; sync")
		figure("write 32 MiB to another node's volume", "%.0f ms", float64(time.Since(t0).Milliseconds()))
		if got := c.execOn(t, na, a.ID, "wc -c < /data/copy"); strings.TrimSpace(got) != "33554432" {
			t.Fatalf("na sees %q bytes of nb's 32 MiB file", got)
		}
	})
	t.Run("SurvivesRestart", func(t *testing.T) {
		c.tri(t, "inst", "stop", "-w", "nb")
		c.tri(t, "inst", "start", "-w", "nb")
		if got := c.execOn(t, nb, b.ID, "cat /data/b"); got != "from-nb\n" {
			t.Fatalf("after a restart nb reads %q", got)
		}
	})
	t.Run("Affinity", func(t *testing.T) {
		// A volume created next to na lives on na's node: nb, on the other
		// node, mounts it from there.
		c.tri(t, "volume", "create", "-n", "near", "-a", "instance==na", "-w")
		var near struct{ ID string }
		if err := json.Unmarshal([]byte(c.tri(t, "volume", "get", "near")), &near); err != nil {
			t.Fatal(err)
		}
		c.createAs(t, c.Owner, "nc", "busybox@1.36", "g1-nano-256M", "--network", pub.Name, "-v", "near:/near", "-a", "instance==nb")
		if m := MountsContaining(filepath.Join("nodes", nb, "runc", "shares", near.ID)); len(m) != 1 {
			t.Errorf("nc on %s does not mount near from na's node: %v", nb, m)
		}
		// nc runs on until flotilla dev stops.
		errOut := c.triFails(t, c.Owner, "volume", "create", "-n", "far", "-a", "instance==nosuch")
		if !strings.Contains(errOut, "meets its affinity rules") {
			t.Errorf("a volume whose affinity no node meets: %s", errOut)
		}
	})
	t.Run("Migration", func(t *testing.T) {
		// A shared volume moves with its container: on the new node it is
		// mounted from the volume's node (or is local there).
		c.timed(t, "migration automatic -w of a container with a shared volume", "inst", "migration", "automatic", "-w", "nb")
		if now := c.nodeOf(t, b.ID); now != na {
			t.Fatalf("nb on %q after its migration, want %s", now, na)
		}
		nb = na
		if got := c.execOn(t, nb, b.ID, "cat /data/b; echo after-move > /data/moved"); got != "from-nb\n" {
			t.Fatalf("after the move nb reads %q", got)
		}
		if got := c.execOn(t, na, a.ID, "cat /data/moved"); got != "after-move\n" {
			t.Fatalf("na reads %q of what the moved nb wrote", got)
		}
	})
	t.Run("ErrInUse", func(t *testing.T) {
		if _, errOut, err := c.tritonAs(c.Owner, "volume", "delete", "-f", "shared"); err == nil || !strings.Contains(errOut, "in use") {
			t.Fatalf("deleting a volume in use on two nodes: %v %s", err, errOut)
		}
	})
	t.Run("Delete", func(t *testing.T) {
		c.tri(t, "inst", "delete", "-f", "-w", "na", "nb")
		if m := MountsContaining(filepath.Join("shares", vol.ID)); len(m) != 0 {
			t.Errorf("the share is still mounted after its last container went: %v", m)
		}
		c.tri(t, "volume", "delete", "-f", "-w", "shared")
	})
}
