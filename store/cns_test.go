package store_test

import (
	"context"
	"slices"
	"testing"

	"github.com/google/uuid"

	"flotilla/store"
)

func TestNodeNames(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, 1<<20, "10.51.0.0/24")
	n2, err := f.st.RegisterNode(ctx, store.NodeRegistration{Name: "n2", Brands: []string{"joyent-minimal"},
		MemoryMiB: 1 << 20, DiskMiB: 1 << 20, VCPUsMilli: 64000}, []byte("cred2"))
	if err != nil {
		t.Fatal(err)
	}
	other, err := f.st.CreateNetwork(ctx, store.Network{Name: "net2", Subnet: "10.52.0.0/24"})
	if err != nil {
		t.Fatal(err)
	}
	place := func(owner, name, node string, nets ...string) store.Instance {
		t.Helper()
		in, _, err := f.st.CreateInstance(ctx, store.NewInstance{
			Instance: store.Instance{ID: uuid.NewString(), OwnerID: owner, Name: name, Brand: "joyent-minimal",
				ImageID: f.image.ID, MemoryMiB: 64, DiskMiB: 64, DesiredState: "running", State: "provisioning",
				Spec: []byte(`{"network_aliases":{"` + nets[0] + `":["alias-` + name + `"]}}`)},
			Networks: nets, Candidates: []string{node},
		})
		if err != nil {
			t.Fatal(err)
		}
		return in
	}
	place(f.owner.ID, "web1", f.node.ID, f.network.ID)
	place(f.owner.ID, "web2", n2.ID, f.network.ID) // same network and account, another node
	place(f.other.ID, "bobweb", f.node.ID, f.network.ID)
	place(f.owner.ID, "elsewhere", n2.ID, other.ID) // a network n1 has nothing on
	stopped := place(f.owner.ID, "stopped", n2.ID, f.network.ID)
	if _, err := f.st.UpdateInstance(ctx, f.owner.ID, stopped.ID, store.Mutation{Action: "stop",
		Apply: func(in *store.Instance) error { in.DesiredState = "stopped"; return nil }}); err != nil {
		t.Fatal(err)
	}

	names := func(node string) []string {
		list, err := f.st.NodeNames(ctx, node)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, n := range list {
			who := "alice"
			if n.OwnerID == f.other.ID {
				who = "bob"
			}
			out = append(out, who+":"+n.Name+":"+n.Aliases[0])
			if n.Gateway == "" || n.Subnet == "" || n.IP == "" {
				t.Fatalf("incomplete row %+v", n)
			}
		}
		slices.Sort(out)
		return out
	}
	if got, want := names(f.node.ID), []string{"alice:web1:alias-web1", "alice:web2:alias-web2", "bob:bobweb:alias-bobweb"}; !slices.Equal(got, want) {
		t.Fatalf("n1 serves %v, want %v", got, want)
	}
	// n2 has alice on both networks and no bob: bob's name is not its business.
	if got, want := names(n2.ID), []string{"alice:elsewhere:alias-elsewhere", "alice:web1:alias-web1", "alice:web2:alias-web2"}; !slices.Equal(got, want) {
		t.Fatalf("n2 serves %v, want %v", got, want)
	}
	if got := names(uuid.NewString()); len(got) != 0 {
		t.Fatalf("an unknown node serves %v", got)
	}
}
