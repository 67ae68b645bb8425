package runc

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"flotilla/agent"
	"flotilla/agent/driver"
	"flotilla/api/agentapi/wire"
	"flotilla/internal/testenv"
)

// TestUpdateShares: a container created while another node's volume was at
// one address mounts it, at its next start, from where the control plane
// says it is now; its other volumes are left alone.
func TestUpdateShares(t *testing.T) {
	needRuntime(t)
	d := newDriver(t, "")
	id := testID("shares")
	remote := "0b6c1f4e-5f43-4c55-9d8a-3b1c2d3e4f50"
	local := "1b6c1f4e-5f43-4c55-9d8a-3b1c2d3e4f51"
	spec := baseSpec(id, "true")
	spec.Options.Volumes = []driver.VolumeMount{
		{Volume: remote, Destination: "/r", Remote: &driver.RemoteVolume{Node: "n2", Address: "127.0.0.1:1000", Token: "t"}},
		{Volume: local, Destination: "/l"},
	}
	bundle := filepath.Join(d.cfg.Root, "containers", id)
	if err := os.MkdirAll(bundle, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := writeJSONAtomic(filepath.Join(bundle, fileSpec), spec); err != nil {
		t.Fatal(err)
	}
	// The container counts as a user of the other node's volume through
	// its share, and of the local one through this node's storage: what
	// unmounting shares (and volumes) on a node stop looks at.
	if got := d.volumeUsers(remote, true); len(got) != 1 || got[0] != id {
		t.Errorf("users of the other node's volume: %v", got)
	}
	if got := d.volumeUsers(remote, false); len(got) != 0 {
		t.Errorf("users of the other node's volume on this node's storage: %v", got)
	}
	if got := d.volumeUsers(local, false); len(got) != 1 {
		t.Errorf("users of the local volume: %v", got)
	}
	now := &driver.RemoteVolume{Node: "n2", Address: "127.0.0.1:2000", Token: "t"}
	if err := d.UpdateShares(context.Background(), id, []driver.VolumeMount{
		{Volume: remote, Destination: "/r", Remote: now}, {Volume: local, Destination: "/l"},
	}); err != nil {
		t.Fatal(err)
	}
	_, got, err := d.loadSpec(id)
	if err != nil {
		t.Fatal(err)
	}
	if r := got.Options.Volumes[0].Remote; r == nil || *r != *now {
		t.Errorf("the other node's volume is at %+v, want %+v", r, now)
	}
	if got.Options.Volumes[1].Remote != nil {
		t.Errorf("the local volume became remote: %+v", got.Options.Volumes[1])
	}
	if err := d.UpdateShares(context.Background(), "nosuch", nil); err == nil {
		t.Error("updated a container that does not exist")
	}
}

// testPipeEnv makes the test binary the volume pipe (TestMain).
const testPipeEnv = "FLOTILLA_TEST_PIPE"

// TestShareReconnects mounts one node's volume on another with sshfs, as
// containers there see it, and restarts the volume node's stream server:
// the mount carries on by itself, then goes away with unmountShare.
func TestShareReconnects(t *testing.T) {
	needRuntime(t)
	testenv.NeedCommand(t, "sshfs", "sshfs")
	testenv.NeedFile(t, "/dev/fuse", "the fuse kernel module")
	t.Setenv(testPipeEnv, "1")
	home := newDriver(t, "")
	const token = "home-stream-token"
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	serve := func(ln net.Listener) (stop func()) {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- agent.NewStreamServer(home, token, nil).Serve(ctx, ln) }()
		return func() { cancel(); <-done }
	}
	stop := serve(ln)
	defer func() { stop() }()

	other := newDriver(t, "")
	other.cfg.SharePipe = []string{os.Args[0]}
	id := "0b6c1f4e-5f43-4c55-9d8a-3b1c2d3e4f52"
	v := driver.VolumeMount{Volume: id, Name: "shared", Destination: "/data",
		Remote: &driver.RemoteVolume{Node: "home", Address: addr, Token: wire.VolumeShareToken(token, id)}}
	t0 := time.Now()
	if err := other.mountShare(context.Background(), v); err != nil {
		t.Fatal(err)
	}
	t.Logf("mounted in %v", time.Since(t0))
	mnt := shareDir(filepath.Join(other.cfg.Root, "volumes"), id)
	defer other.unmountShare(id)
	if err := os.WriteFile(filepath.Join(mnt, "f"), []byte("before"), 0o644); err != nil {
		t.Fatal(err)
	}
	local, err := home.VolumeDir(context.Background(), id, 0)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(local, "f")); err != nil || string(b) != "before" {
		t.Fatalf("the volume's node holds %q, %v", b, err)
	}

	// The node's stream server restarts on the same address.
	stop()
	ln, err = net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	stop = serve(ln)
	if err := os.WriteFile(filepath.Join(local, "g"), []byte("after"), 0o644); err != nil {
		t.Fatal(err)
	}
	var b []byte
	deadline := time.Now().Add(20 * time.Second)
	for {
		// A request the broken connection was carrying may fail; sshfs
		// then reconnects for the next.
		if b, err = os.ReadFile(filepath.Join(mnt, "g")); err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil || string(b) != "after" {
		t.Fatalf("after the restart the mount reads %q, %v", b, err)
	}
	other.unmountShare(id)
	if ok, _ := mountedAt(mnt); ok {
		t.Error("still mounted after unmountShare")
	}
}
