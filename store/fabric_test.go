package store_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/google/uuid"

	"flotilla/api/errdefs"
	"flotilla/store"
)

func TestFabricVLANs(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, 1<<20, "10.90.0.0/20")
	v, err := f.st.CreateFabricVLAN(ctx, store.FabricVLAN{OwnerID: f.owner.ID, VLANID: 10, Name: "ten"})
	if err != nil {
		t.Fatal(err)
	}
	if v.VNI < 4096 {
		t.Fatalf("VNI %d, want one from the VNI sequence", v.VNI)
	}
	t.Run("ErrTaken", func(t *testing.T) {
		if _, err := f.st.CreateFabricVLAN(ctx, store.FabricVLAN{OwnerID: f.owner.ID, VLANID: 10, Name: "other"}); !errdefs.Is(err, errdefs.Conflict) {
			t.Fatalf("duplicate vlan_id: %v", err)
		}
		if _, err := f.st.CreateFabricVLAN(ctx, store.FabricVLAN{OwnerID: f.owner.ID, VLANID: 11, Name: "ten"}); !errdefs.Is(err, errdefs.Conflict) {
			t.Fatalf("duplicate name: %v", err)
		}
	})
	t.Run("ErrRange", func(t *testing.T) {
		if _, err := f.st.CreateFabricVLAN(ctx, store.FabricVLAN{OwnerID: f.owner.ID, VLANID: 4096, Name: "big"}); !errdefs.Is(err, errdefs.Invalid) {
			t.Fatalf("vlan 4096: %v", err)
		}
	})
	t.Run("OtherAccountOwnVLAN", func(t *testing.T) {
		w, err := f.st.CreateFabricVLAN(ctx, store.FabricVLAN{OwnerID: f.other.ID, VLANID: 10, Name: "ten"})
		if err != nil {
			t.Fatal(err)
		}
		if w.VNI == v.VNI {
			t.Fatalf("two accounts' VLAN 10 share VNI %d", v.VNI)
		}
		if _, err := f.st.CreateFabricNetwork(ctx, f.other.ID, 12, store.Network{Name: "x", Subnet: "10.1.0.0/24"}); !errdefs.Is(err, errdefs.NotFound) {
			t.Fatalf("network on a VLAN the account lacks: %v", err)
		}
	})
	t.Run("Networks", func(t *testing.T) {
		n, err := f.st.CreateFabricNetwork(ctx, f.owner.ID, 10, store.Network{Name: "a", Subnet: "10.1.0.0/24"})
		if err != nil {
			t.Fatal(err)
		}
		if !n.Fabric || n.VNI != v.VNI || n.VLANID != 10 || *n.Gateway != "10.1.0.1" {
			t.Fatalf("network %+v", n)
		}
		if _, err := f.st.CreateFabricNetwork(ctx, f.owner.ID, 10, store.Network{Name: "b", Subnet: "10.1.0.128/25"}); !errdefs.Is(err, errdefs.Conflict) || !strings.Contains(err.Error(), "same VLAN") {
			t.Fatalf("overlap on the same VLAN: %v", err)
		}
		// Another VLAN, and another account, may reuse the subnet.
		if _, err := f.st.CreateFabricVLAN(ctx, store.FabricVLAN{OwnerID: f.owner.ID, VLANID: 20, Name: "twenty"}); err != nil {
			t.Fatal(err)
		}
		if _, err := f.st.CreateFabricNetwork(ctx, f.owner.ID, 20, store.Network{Name: "b", Subnet: "10.1.0.0/24"}); err != nil {
			t.Fatalf("same subnet on another VLAN: %v", err)
		}
		if _, err := f.st.CreateFabricNetwork(ctx, f.other.ID, 10, store.Network{Name: "a", Subnet: "10.1.0.0/24"}); err != nil {
			t.Fatalf("same subnet for another account: %v", err)
		}
		if err := f.st.DeleteFabricVLAN(ctx, f.owner.ID, 10); !errdefs.Is(err, errdefs.Conflict) {
			t.Fatalf("delete a VLAN with networks: %v", err)
		}
		if err := f.st.DeleteNetwork(ctx, f.other.ID, n.ID); !errdefs.Is(err, errdefs.NotFound) {
			t.Fatalf("another account deletes the network: %v", err)
		}
		if err := f.st.DeleteNetwork(ctx, f.owner.ID, n.ID); err != nil {
			t.Fatal(err)
		}
		if err := f.st.DeleteFabricVLAN(ctx, f.owner.ID, 10); err != nil {
			t.Fatal(err)
		}
	})
}

func TestTenantSubnetRules(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, 1<<20, "10.90.0.0/20") // a shared network
	if _, err := f.st.CreateFabricVLAN(ctx, store.FabricVLAN{OwnerID: f.owner.ID, VLANID: 3, Name: "v"}); err != nil {
		t.Fatal(err)
	}
	gw := func(s string) *string { return &s }
	for _, tc := range []struct {
		name   string
		n      store.Network
		code   errdefs.Code
		reason string
	}{
		{"ErrLoopback", store.Network{Subnet: "127.0.0.0/8"}, errdefs.Invalid, "loopback"},
		{"ErrLinkLocal", store.Network{Subnet: "169.254.0.0/16"}, errdefs.Invalid, "link-local"},
		{"ErrMulticast", store.Network{Subnet: "239.1.0.0/24"}, errdefs.Invalid, "multicast"},
		{"ErrShared", store.Network{Subnet: "10.90.1.0/24", Gateway: gw("10.90.1.7")}, errdefs.Invalid, "shared network net"},
		{"ErrOutsidePool", store.Network{Subnet: "100.64.0.0/24"}, errdefs.Invalid, "outside the address pool"},
		{"ErrGatewayOutside", store.Network{Subnet: "10.5.0.0/24", Gateway: gw("10.90.0.1")}, errdefs.Invalid, "not inside subnet"},
		{"ErrGatewayNetworkAddress", store.Network{Subnet: "10.5.0.0/24", Gateway: gw("10.5.0.0")}, errdefs.Invalid, "network or broadcast"},
		{"ErrRangeBackwards", store.Network{Subnet: "10.5.0.0/24", ProvisionStart: "10.5.0.200", ProvisionEnd: "10.5.0.10"}, errdefs.Invalid, "backwards"},
		{"ErrRangeOutside", store.Network{Subnet: "10.5.0.0/24", ProvisionStart: "10.5.1.2", ProvisionEnd: "10.5.1.10"}, errdefs.Invalid, "not inside subnet"},
		{"OK", store.Network{Subnet: "10.5.0.0/24", Gateway: gw("10.5.0.254")}, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.n.Name = "n-" + tc.name
			_, err := f.st.CreateFabricNetwork(ctx, f.owner.ID, 3, tc.n)
			if tc.code == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errdefs.Is(err, tc.code) || !strings.Contains(err.Error(), tc.reason) {
				t.Fatalf("got %v, want %s mentioning %q", err, tc.code, tc.reason)
			}
		})
	}
	t.Run("OperatorPool", func(t *testing.T) {
		if _, err := f.st.AddSubnetPool(ctx, "127.0.0.0/8"); !errdefs.Is(err, errdefs.Invalid) {
			t.Fatalf("loopback pool: %v", err)
		}
		if _, err := f.st.AddSubnetPool(ctx, "172.20.0.0/16"); err != nil {
			t.Fatal(err)
		}
		if _, err := f.st.CreateFabricNetwork(ctx, f.owner.ID, 3, store.Network{Name: "p1", Subnet: "10.6.0.0/24"}); !errdefs.Is(err, errdefs.Invalid) {
			t.Fatalf("subnet outside the operator's pool: %v", err)
		}
		n, err := f.st.CreateFabricNetwork(ctx, f.owner.ID, 3, store.Network{Name: "p2"})
		if err != nil || n.Subnet != "172.20.0.0/24" {
			t.Fatalf("subnet picked from the pool: %v %+v", err, n)
		}
	})
}

// TestDefaultFabricOnce: concurrent first creates of one account make one
// default network, and every instance lands on it; another account's
// instances land on its own default network.
func TestDefaultFabricOnce(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, 1<<20, "10.90.0.0/20")
	var wg sync.WaitGroup
	nets := make([]string, 8)
	errs := make([]error, 8)
	for i := range nets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			in, _, err := f.st.CreateInstance(ctx, store.NewInstance{
				Instance: store.Instance{ID: uuid.NewString(), OwnerID: f.owner.ID, Name: fmt.Sprintf("i%d", i), Brand: "joyent-minimal",
					ImageID: f.image.ID, MemoryMiB: 128, DiskMiB: 1024, VCPUsMilli: 100},
				DefaultFabric: true, Candidates: []string{f.node.ID},
			})
			errs[i] = err
			if err == nil {
				nets[i] = in.NICs[0].NetworkID
				if !in.NICs[0].Fabric || in.NICs[0].VNI == 0 || in.NICs[0].NetworkName != store.DefaultFabricNetworkName {
					errs[i] = fmt.Errorf("NIC %+v is not on the default fabric", in.NICs[0])
				}
			}
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("create %d: %v", i, err)
		}
		if nets[i] != nets[0] {
			t.Fatalf("creates landed on different networks: %v", nets)
		}
	}
	vlans, err := f.st.ListFabricVLANs(ctx, f.owner.ID)
	if err != nil || len(vlans) != 1 || vlans[0].VLANID != store.DefaultFabricVLANID {
		t.Fatalf("VLANs %+v %v", vlans, err)
	}
	in, _, err := f.st.CreateInstance(ctx, store.NewInstance{
		Instance: store.Instance{ID: uuid.NewString(), OwnerID: f.other.ID, Name: "b", Brand: "joyent-minimal",
			ImageID: f.image.ID, MemoryMiB: 128, DiskMiB: 1024, VCPUsMilli: 100},
		DefaultFabric: true, Candidates: []string{f.node.ID},
	})
	if err != nil {
		t.Fatal(err)
	}
	if in.NICs[0].NetworkID == nets[0] || in.NICs[0].VNI == 0 {
		t.Fatalf("bob's instance shares alice's network: %+v", in.NICs[0])
	}
	if _, err := f.st.GetNetwork(ctx, f.other.ID, nets[0]); !errdefs.Is(err, errdefs.NotFound) {
		t.Fatalf("bob sees alice's default network: %v", err)
	}
}

func TestAddRemoveNIC(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, 1<<20, "10.90.0.0/20")
	in, err := f.create(ctx, f.owner.ID, "web", 128)
	if err != nil {
		t.Fatal(err)
	}
	netID, err := f.st.EnsureDefaultFabric(ctx, f.owner.ID)
	if err != nil {
		t.Fatal(err)
	}
	nic, created, err := f.st.AddNIC(ctx, f.owner.ID, in.ID, netID, nil, nil)
	if err != nil || !created || nic.Primary || nic.Position != 1 || !nic.Fabric {
		t.Fatalf("AddNIC: %v %v %+v", err, created, nic)
	}
	if _, created, err := f.st.AddNIC(ctx, f.owner.ID, in.ID, netID, nil, nil); err != nil || created {
		t.Fatalf("second AddNIC on the same network: created=%v %v", created, err)
	}
	got, err := f.st.GetInstance(ctx, f.owner.ID, in.ID)
	if err != nil || len(got.NICs) != 2 || got.Generation != in.Generation+1 {
		t.Fatalf("after AddNIC: %v gen %d->%d nics %+v", err, in.Generation, got.Generation, got.NICs)
	}
	if _, _, err := f.st.AddNIC(ctx, f.other.ID, in.ID, netID, nil, nil); !errdefs.Is(err, errdefs.NotFound) {
		t.Fatalf("bob adds a NIC to alice's instance: %v", err)
	}
	bobNet, err := f.st.EnsureDefaultFabric(ctx, f.other.ID)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := f.st.AddNIC(ctx, f.owner.ID, in.ID, bobNet, nil, nil); !errdefs.Is(err, errdefs.NotFound) {
		t.Fatalf("alice joins bob's network: %v", err)
	}
	if err := f.st.RemoveNIC(ctx, f.owner.ID, in.ID, strings.ReplaceAll(nic.MAC, ":", ""), nil); err != nil {
		t.Fatal(err)
	}
	ips, err := f.st.ListNetworkIPs(ctx, f.owner.ID, netID, 100, 0)
	if err != nil || len(ips) != 0 {
		t.Fatalf("the removed NIC's address is still allocated: %v %+v", err, ips)
	}
	if err := f.st.RemoveNIC(ctx, f.owner.ID, in.ID, nic.MAC, nil); !errdefs.Is(err, errdefs.NotFound) {
		t.Fatalf("removing it again: %v", err)
	}
}

// TestAddNICEdit checks that a NIC's edit (a Docker connect's aliases) is
// written with it and only with it, and that removing the NIC forgets the
// instance's aliases on its network and keeps the others.
func TestAddNICEdit(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, 1<<20, "10.91.0.0/20")
	in, err := f.create(ctx, f.owner.ID, "web", 128)
	if err != nil {
		t.Fatal(err)
	}
	netID, err := f.st.EnsureDefaultFabric(ctx, f.owner.ID)
	if err != nil {
		t.Fatal(err)
	}
	spec := `{"cmd":["sh"],"network_aliases":{"` + f.network.ID + `":["www"],"` + netID + `":["db"]}}`
	edit := func(in *store.Instance) error { in.Spec = []byte(spec); return nil }
	nic, created, err := f.st.AddNIC(ctx, f.owner.ID, in.ID, netID, nil, edit)
	if err != nil || !created {
		t.Fatalf("AddNIC: %v %v", err, created)
	}
	got, err := f.st.GetInstance(ctx, f.owner.ID, in.ID)
	if err != nil || !strings.Contains(string(got.Spec), `"db"`) {
		t.Fatalf("the edit was not written with the NIC: %v %s", err, got.Spec)
	}
	t.Run("ErrExistingNICWritesNothing", func(t *testing.T) {
		other := func(in *store.Instance) error { in.Spec = []byte(`{}`); return nil }
		if _, created, err := f.st.AddNIC(ctx, f.owner.ID, in.ID, netID, nil, other); err != nil || created {
			t.Fatalf("AddNIC again: %v %v", err, created)
		}
		again, err := f.st.GetInstance(ctx, f.owner.ID, in.ID)
		if err != nil || again.Generation != got.Generation || string(again.Spec) != string(got.Spec) {
			t.Fatalf("a NIC that existed changed the instance: gen %d->%d spec %s", got.Generation, again.Generation, again.Spec)
		}
	})
	t.Run("ErrEditFails", func(t *testing.T) {
		bad := func(in *store.Instance) error { return errdefs.InvalidArgument("no") }
		if _, _, err := f.st.AddNIC(ctx, f.owner.ID, in.ID, f.network.ID, nil, bad); !errdefs.Is(err, errdefs.Invalid) {
			t.Fatalf("AddNIC with a failing edit: %v", err)
		}
		again, _ := f.st.GetInstance(ctx, f.owner.ID, in.ID)
		if len(again.NICs) != len(got.NICs) {
			t.Fatalf("a failed edit left a NIC: %+v", again.NICs)
		}
	})
	t.Run("RemoveForgetsAliases", func(t *testing.T) {
		if err := f.st.RemoveNIC(ctx, f.owner.ID, in.ID, nic.MAC, nil); err != nil {
			t.Fatal(err)
		}
		after, err := f.st.GetInstance(ctx, f.owner.ID, in.ID)
		if err != nil {
			t.Fatal(err)
		}
		var p struct {
			Cmd     []string            `json:"cmd"`
			Aliases map[string][]string `json:"network_aliases"`
		}
		if err := json.Unmarshal(after.Spec, &p); err != nil {
			t.Fatal(err)
		}
		if _, ok := p.Aliases[netID]; ok || len(p.Aliases[f.network.ID]) != 1 || len(p.Cmd) != 1 {
			t.Fatalf("spec after RemoveNIC: %s", after.Spec)
		}
	})
}

func FuzzParseSubnet(f *testing.F) {
	for _, s := range []string{"10.0.0.0/8", "192.168.1.0/24", "127.0.0.1/32", "169.254.0.0/16", "224.0.0.0/4",
		"10.1.2.3/24", "::1/128", "1.2.3.4", "", "0.0.0.0/0", "255.255.255.255/32", "10.0.0.0/33", "010.0.0.0/8"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := store.ParseSubnet(s, false)
		if err != nil {
			if !errdefs.Is(err, errdefs.Invalid) {
				t.Fatalf("%q: error %v is not Invalid", s, err)
			}
			return
		}
		if !p.Addr().Is4() || p.Masked() != p {
			t.Fatalf("%q parsed to %s", s, p)
		}
		for _, bad := range []string{"127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4"} {
			if netip.MustParsePrefix(bad).Overlaps(p) {
				t.Fatalf("%q (%s) overlaps reserved %s", s, p, bad)
			}
		}
		if strict, err := store.ParseSubnet(p.String(), true); err != nil || strict != p {
			t.Fatalf("%s does not parse strictly to itself: %v", p, err)
		}
	})
}
