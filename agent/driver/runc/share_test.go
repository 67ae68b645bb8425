package runc

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"flotilla/agent/driver"
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
