package agentapi_test

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"

	"github.com/google/uuid"

	"flotilla/agent/driver"
	"flotilla/api/agentapi"
	"flotilla/api/agentapi/wire"
	"flotilla/api/service"
	"flotilla/store"
)

// TestAssignmentVolumeHomes: a node is told how to reach the shared volumes
// its instances mount that live on another node (with that node's share
// token for that volume only), and nothing of the others.
func TestAssignmentVolumeHomes(t *testing.T) {
	e := newRegistryEnv(t)
	ctx := context.Background()
	n2, err := e.st.RegisterNode(ctx, store.NodeRegistration{Name: "n2", Driver: "runc", Address: "127.0.0.1:7002", Brands: []string{"joyent-minimal"},
		MemoryMiB: 1024, DiskMiB: 1024, VCPUsMilli: 1000}, agentapi.HashToken(agentapi.NewToken()))
	if err != nil {
		t.Fatal(err)
	}
	if err := e.st.SetNodeStreamToken(ctx, n2.ID, "n2-stream-token"); err != nil {
		t.Fatal(err)
	}
	if err := e.st.SetNodeStreamToken(ctx, e.node.ID, "n1-stream-token"); err != nil {
		t.Fatal(err)
	}
	vol := func(name, typ string, node *string) store.Volume {
		v, err := e.st.CreateVolume(ctx, store.Volume{OwnerID: e.owner.ID, Name: name, Type: typ, SizeMiB: 20480, NodeID: node})
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	remote := vol("remote", service.VolumeTypeTritonNFS, &n2.ID)
	here := vol("here", service.VolumeTypeTritonNFS, &e.node.ID)
	unplaced := vol("unplaced", service.VolumeTypeTritonNFS, nil)
	local := vol("local", service.VolumeTypeLocal, &n2.ID)
	proc := service.ProcessSpec{Options: driver.ContainerOptions{Volumes: []driver.VolumeMount{
		{Volume: remote.ID, Destination: "/a"}, {Volume: here.ID, Destination: "/b"},
		{Volume: unplaced.ID, Destination: "/c"}, {Volume: local.ID, Destination: "/d"}}}}
	spec, _ := json.Marshal(proc)
	in, _, err := e.st.CreateInstance(ctx, store.NewInstance{
		Instance: store.Instance{ID: uuid.NewString(), OwnerID: e.owner.ID, Name: "vols", Brand: "joyent-minimal",
			ImageID: e.image.ID, MemoryMiB: 64, DiskMiB: 64, VCPUsMilli: 100, Spec: spec},
		Networks: []string{e.net.ID}, Candidates: []string{e.node.ID},
	})
	if err != nil {
		t.Fatal(err)
	}
	resp, b := e.do(t, http.MethodGet, "/agent/v1/nodes/"+e.node.ID+"/assignments?wait=0", e.cred)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("assignments: %d %s", resp.StatusCode, b)
	}
	var out wire.Assignments
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	var got []driver.VolumeMount
	for _, a := range out.Assignments {
		if a.ID == in.ID {
			got = a.Spec.Options.Volumes
		}
	}
	if len(got) != 4 {
		t.Fatalf("volumes of the assignment: %+v", got)
	}
	want := driver.RemoteVolume{Node: n2.ID, Address: "127.0.0.1:7002", Token: wire.VolumeShareToken("n2-stream-token", remote.ID)}
	if got[0].Remote == nil || *got[0].Remote != want {
		t.Errorf("the volume of another node: %+v, want %+v", got[0].Remote, want)
	}
	for i, v := range got {
		if v.SizeMiB != 20480 {
			t.Errorf("volume %d: size %d", i, v.SizeMiB)
		}
		if i > 0 && v.Remote != nil {
			t.Errorf("volume %d (%s) is remote: %+v", i, v.Volume, v.Remote)
		}
	}
	if got[0].Remote != nil && got[0].Remote.Token == "n2-stream-token" {
		t.Error("the node got another node's stream token")
	}
}
