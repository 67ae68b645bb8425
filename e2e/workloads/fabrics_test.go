package workloads

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
	"time"

	"flotilla/agent/network"
)

// fabricNet is what the tests read of a network in triton's JSON.
type fabricNet struct {
	ID      string `json:"id"`
	Name    string `json:"name"`
	Subnet  string `json:"subnet"`
	Gateway string `json:"gateway"`
	Fabric  bool   `json:"fabric"`
	VLANID  int    `json:"vlan_id"`
	Public  bool   `json:"public"`
	StartIP string `json:"provision_start_ip"`
	EndIP   string `json:"provision_end_ip"`
	NAT     bool   `json:"internet_nat"`
}

// nic is what the tests read of `triton inst nic get`.
type nic struct {
	MAC     string `json:"mac"`
	IP      string `json:"ip"`
	Network string `json:"network"`
	Primary bool   `json:"primary"`
	State   string `json:"state"`
}

// decodeJSON unmarshals out (what a triton command printed) into v.
func decodeJSON(t *testing.T, what, out string, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(out), v); err != nil {
		t.Fatalf("%s: %v\n%s", what, err, out)
	}
}

// jsonLines decodes triton's `-j` list output: one JSON object a line.
func jsonLines[T any](t *testing.T, what, out string) []T {
	t.Helper()
	var list []T
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if line == "" {
			continue
		}
		var v T
		decodeJSON(t, what, line, &v)
		list = append(list, v)
	}
	return list
}

// addrsIn lists the IPv4 addresses of the interfaces inside the network
// namespace of container id, as `ip addr` in the container shows them.
func addrsIn(t *testing.T, id string) string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", network.NetNSName(id), "ip", "-4", "-o", "addr").CombinedOutput()
	if err != nil {
		t.Fatalf("ip addr in %s: %v\n%s", id, err, out)
	}
	return string(out)
}

// timed runs triton as the owner and records its wall time as a figure.
func (c *cloud) timed(t *testing.T, fig string, args ...string) string {
	t.Helper()
	t0 := time.Now()
	out := c.tri(t, args...)
	figure(fig, "%.0f ms", float64(time.Since(t0).Milliseconds()))
	return out
}

// triFails runs triton as a, wants it to fail, and returns its stderr.
func (c *cloud) triFails(t *testing.T, a account, args ...string) string {
	t.Helper()
	out, errOut, err := c.tritonAs(a, args...)
	if err == nil {
		t.Fatalf("triton %s (as %s) succeeded, want an error:\n%s", strings.Join(args, " "), a.Login, out)
	}
	if strings.Contains(errOut, "InternalError") || strings.Contains(errOut, "TypeError") {
		t.Fatalf("triton %s (as %s) failed badly:\n%s", strings.Join(args, " "), a.Login, errOut)
	}
	return errOut
}

// TestFabrics drives fabric VLANs, fabric networks, network IPs and NICs
// with the triton CLI on a runc node: a container made without --network
// is on the account's default fabric network, a NIC added to a running
// container appears inside it and reaches another container on that
// network, and removing it takes the address away again.
func TestFabrics(t *testing.T) {
	c := startDev(t, "fab", "runc")
	other := c.addAccount(t, "fab2")
	const vlanID = "42"

	var fnet fabricNet
	ok := t.Run("VLANAndNetwork", func(t *testing.T) {
		c.timed(t, "triton vlan create", "vlan", "create", "-n", "wl-vlan", "-D", "the test VLAN", vlanID)
		var v struct {
			VLANID      int    `json:"vlan_id"`
			Name        string `json:"name"`
			Description string `json:"description"`
		}
		decodeJSON(t, "triton vlan get", c.timed(t, "triton vlan get", "vlan", "get", "wl-vlan"), &v)
		if v.VLANID != 42 || v.Name != "wl-vlan" || v.Description != "the test VLAN" {
			t.Fatalf("triton vlan get wl-vlan: %+v", v)
		}
		// `triton vlan update` of triton 7.17 calls a function its own
		// TritonApi lacks (a TypeError before any request), so the update
		// goes through the CLI's raw request command, with the POST it
		// would have sent.
		c.tri(t, "cloudapi", "-X", "POST", "/my/fabrics/default/vlans/"+vlanID, "-d", `{"description":"renamed","name":"wl-vlan2"}`)
		decodeJSON(t, "triton vlan get", c.tri(t, "vlan", "get", vlanID), &v)
		if v.Name != "wl-vlan2" || v.Description != "renamed" {
			t.Fatalf("after the update: %+v", v)
		}
		if out := c.timed(t, "triton vlan list", "vlan", "list", "-H", "-o", "vlan_id,name"); !strings.Contains(out, "42") || !strings.Contains(out, "wl-vlan2") {
			t.Fatalf("triton vlan list: %s", out)
		}

		out := c.timed(t, "triton network create (fabric)", "network", "create", "-j", "-n", "wl-fab", "-D", "back end",
			"-s", "10.77.0.0/24", "-S", "10.77.0.10", "-E", "10.77.0.200", "-g", "10.77.0.1", "-r", "10.77.0.1", vlanID)
		decodeJSON(t, "triton network create -j", out, &fnet)
		if !fnet.Fabric || fnet.VLANID != 42 || fnet.Subnet != "10.77.0.0/24" || fnet.Gateway != "10.77.0.1" || !fnet.NAT || fnet.Public {
			t.Fatalf("created %+v", fnet)
		}
		var got fabricNet
		decodeJSON(t, "triton network get", c.timed(t, "triton network get", "network", "get", "wl-fab"), &got)
		if got.ID != fnet.ID || got.StartIP != "10.77.0.10" || got.EndIP != "10.77.0.200" {
			t.Fatalf("triton network get wl-fab: %+v, created %+v", got, fnet)
		}
		onVLAN := jsonLines[fabricNet](t, "triton vlan networks -j", c.timed(t, "triton vlan networks", "vlan", "networks", "-j", "wl-vlan2"))
		if len(onVLAN) != 1 || onVLAN[0].ID != fnet.ID {
			t.Fatalf("triton vlan networks: %+v", onVLAN)
		}
		if out := c.timed(t, "triton network list", "network", "list", "-H", "-o", "name,vlan,fabric"); !strings.Contains(out, "wl-fab") {
			t.Fatalf("triton network list: %s", out)
		}
	})
	if !ok {
		t.FailNow()
	}

	t.Run("ErrorsInCloudAPIsFormat", func(t *testing.T) {
		for _, tc := range []struct {
			args []string
			want string
		}{
			{[]string{"vlan", "create", "-n", "dup", vlanID}, "VLAN 42 already exists"},
			{[]string{"vlan", "create", "-n", "big", "4096"}, "vlan_id 4096 is out of range"},
			{[]string{"vlan", "delete", vlanID}, "VLAN 42 still has 1 network(s): delete them first"},
			{[]string{"network", "create", "-n", "bad", "-s", "10.78.0.0/33", "-S", "10.78.0.10", "-E", "10.78.0.20", "-x", vlanID},
				`error (InvalidArgument): invalid subnet "10.78.0.0/33"`},
			{[]string{"network", "create", "-n", "over", "-s", "10.77.0.0/16", "-S", "10.77.1.10", "-E", "10.77.1.20", "-x", vlanID},
				"error (InvalidArgument): subnet 10.77.0.0/16 overlaps 10.77.0.0/24 of network wl-fab"},
			{[]string{"network", "create", "-n", "out", "-s", "8.8.8.0/24", "-S", "8.8.8.10", "-E", "8.8.8.20", "-x", vlanID},
				"error (InvalidArgument): subnet 8.8.8.0/24 is outside the address pool"},
			{[]string{"network", "create", "-n", "novlan", "-s", "10.79.0.0/24", "-S", "10.79.0.10", "-E", "10.79.0.20", "-x", "43"},
				"error (ResourceNotFound): VLAN 43 not found: create it first"},
			{[]string{"network", "ip", "get", "wl-fab", "10.99.0.1"}, "error (ResourceNotFound)"},
		} {
			if errOut := c.triFails(t, c.Owner, tc.args...); !strings.Contains(errOut, tc.want) {
				t.Errorf("triton %s: %s, want %q", strings.Join(tc.args, " "), errOut, tc.want)
			}
		}
		// The raw request shows CloudAPI's code and status for the VLAN in use.
		out := c.triFails(t, c.Owner, "cloudapi", "-X", "DELETE", "/my/fabrics/default/vlans/"+vlanID)
		if !strings.Contains(out, "InUseError") {
			t.Errorf("DELETE of a VLAN with a network: %s, want InUseError", out)
		}
	})

	t.Run("OtherAccountSeesNothing", func(t *testing.T) {
		for _, args := range [][]string{
			{"vlan", "get", vlanID}, {"network", "get", fnet.ID}, {"network", "ip", "list", fnet.ID},
			{"vlan", "delete", vlanID}, {"network", "delete", fnet.ID},
		} {
			if errOut := c.triFails(t, other, args...); !strings.Contains(errOut, "not found") && !strings.Contains(errOut, "ResourceNotFound") {
				t.Errorf("triton %s as %s: %s, want not found", strings.Join(args, " "), other.Login, errOut)
			}
		}
		if out := c.triAs(t, other, "vlan", "list", "-H"); strings.Contains(out, "wl-vlan") {
			t.Errorf("%s lists %s's VLAN: %s", other.Login, c.Owner.Login, out)
		}
		if out := c.triAs(t, other, "network", "list", "-H"); strings.Contains(out, "wl-fab") {
			t.Errorf("%s lists %s's network: %s", other.Login, c.Owner.Login, out)
		}
	})

	// c1 has no --network: the default fabric network, made on first use.
	c1, took := c.createAs(t, c.Owner, "fc1", "busybox@1.36", "g1-nano-256M")
	figure("container create -w on the default fabric (triton)", "%.0f ms", float64(took.Milliseconds()))
	c2, _ := c.createAs(t, c.Owner, "fc2", "busybox@1.36", "g1-nano-256M", "--network", "wl-fab")
	t.Cleanup(func() {
		c.tritonAs(c.Owner, "inst", "rm", "-f", "-w", "fc1", "fc2")
	})

	t.Run("DefaultFabricNetwork", func(t *testing.T) {
		var def fabricNet
		decodeJSON(t, "triton network get-default", c.tri(t, "network", "get-default"), &def)
		if def.Name != "My-Fabric-Network" || !def.Fabric || def.VLANID != 2 {
			t.Fatalf("the default network is %+v, want My-Fabric-Network on VLAN 2", def)
		}
		if !subnetContains(t, def.Subnet, c1.PrimaryIP) {
			t.Fatalf("fc1 (no --network) has %s, not on %s (%s)", c1.PrimaryIP, def.Name, def.Subnet)
		}
		if out := c.tri(t, "vlan", "list", "-H", "-o", "vlan_id,name"); !strings.Contains(out, "My-Fabric-VLAN") {
			t.Fatalf("no default VLAN after the first instance: %s", out)
		}
		if !strings.Contains(addrsIn(t, c1.ID), c1.PrimaryIP+"/22") {
			t.Fatalf("fc1 lacks %s/22 inside: %s", c1.PrimaryIP, addrsIn(t, c1.ID))
		}
		// Its gateway lives in the VLAN's router namespace and answers.
		if err := Ping(network.NetNSName(c1.ID), def.Gateway, 10*time.Second); err != nil {
			t.Errorf("fc1 cannot reach its gateway %s: %v", def.Gateway, err)
		}
	})

	var added nic
	t.Run("NICAddedToARunningContainer", func(t *testing.T) {
		if !subnetContains(t, fnet.Subnet, c2.PrimaryIP) {
			t.Fatalf("fc2 has %s, not on wl-fab", c2.PrimaryIP)
		}
		if err := PingFails(network.NetNSName(c2.ID), c1.PrimaryIP, 1); err != nil {
			t.Fatalf("fc2 reaches fc1 before they share a network: %v", err)
		}
		out := c.timed(t, "triton inst nic create -w", "inst", "nic", "create", "-j", "-w", "fc1", "wl-fab")
		decodeJSON(t, "triton inst nic create -j -w", out, &added)
		if added.State != "running" || added.Network != fnet.ID || added.Primary || !subnetContains(t, fnet.Subnet, added.IP) {
			t.Fatalf("added %+v", added)
		}
		var got nic
		decodeJSON(t, "triton inst nic get", c.timed(t, "triton inst nic get", "inst", "nic", "get", "fc1", added.MAC), &got)
		if got != added {
			t.Errorf("nic get %+v, create said %+v", got, added)
		}
		nics := jsonLines[nic](t, "triton inst nic list -j", c.timed(t, "triton inst nic list", "inst", "nic", "list", "-j", "fc1"))
		if len(nics) != 2 {
			t.Fatalf("fc1 has NICs %+v, want 2", nics)
		}
		if in := addrsIn(t, c1.ID); !strings.Contains(in, added.IP+"/24") {
			t.Fatalf("fc1 lacks the new NIC's %s/24 inside:\n%s", added.IP, in)
		}
		if err := Ping(network.NetNSName(c2.ID), added.IP, 10*time.Second); err != nil {
			t.Errorf("fc2 cannot reach fc1's new NIC: %v", err)
		}
		if err := Ping(network.NetNSName(c1.ID), c2.PrimaryIP, 10*time.Second); err != nil {
			t.Errorf("fc1 cannot reach fc2 over its new NIC: %v", err)
		}
		// The address shows in the network's IPs, as fc1's.
		var ip struct {
			IP        string `json:"ip"`
			BelongsTo string `json:"belongs_to_uuid"`
		}
		decodeJSON(t, "triton network ip get", c.timed(t, "triton network ip get", "network", "ip", "get", "wl-fab", added.IP), &ip)
		if ip.BelongsTo != c1.ID {
			t.Errorf("triton network ip get %s: %+v, want it fc1's", added.IP, ip)
		}
		if out := c.timed(t, "triton network ip list", "network", "ip", "list", "-H", "-o", "ip", "wl-fab"); !strings.Contains(out, added.IP) || !strings.Contains(out, c2.PrimaryIP) {
			t.Errorf("triton network ip list wl-fab: %s", out)
		}
		// Again on the same network: triton reports the NIC it has.
		if errOut := c.triFails(t, c.Owner, "inst", "nic", "create", "fc1", "wl-fab"); !strings.Contains(errOut, "already has a NIC on that network") {
			t.Errorf("a second NIC on wl-fab: %s", errOut)
		}
		if errOut := c.triFails(t, c.Owner, "network", "delete", "wl-fab"); !strings.Contains(errOut, "is in use") {
			t.Errorf("deleting a network in use: %s", errOut)
		}
	})

	t.Run("ReservedAddress", func(t *testing.T) {
		c.tri(t, "network", "ip", "update", "wl-fab", "10.77.0.150", "reserved=true")
		var ip struct {
			Reserved bool `json:"reserved"`
		}
		decodeJSON(t, "triton network ip get", c.tri(t, "network", "ip", "get", "wl-fab", "10.77.0.150"), &ip)
		if !ip.Reserved {
			t.Errorf("10.77.0.150 is not reserved after the update")
		}
		c.tri(t, "network", "ip", "update", "wl-fab", "10.77.0.150", "reserved=false")
		if errOut := c.triFails(t, c.Owner, "network", "ip", "update", "wl-fab", added.IP, "reserved=true"); !strings.Contains(errOut, "in use by instance") {
			t.Errorf("reserving fc1's address: %s", errOut)
		}
	})

	t.Run("NICRemovedFromARunningContainer", func(t *testing.T) {
		c.timed(t, "triton inst nic delete", "inst", "nic", "delete", "-f", "fc1", added.MAC)
		if !WaitFor(10*time.Second, func() bool { return !strings.Contains(addrsIn(t, c1.ID), added.IP+"/") }) {
			t.Fatalf("fc1 still has %s inside after nic delete:\n%s", added.IP, addrsIn(t, c1.ID))
		}
		if err := PingFails(network.NetNSName(c2.ID), added.IP, 2); err != nil {
			t.Error(err)
		}
		if errOut := c.triFails(t, c.Owner, "inst", "nic", "get", "fc1", added.MAC); !strings.Contains(errOut, "ResourceNotFound") {
			t.Errorf("nic get after delete: %s", errOut)
		}
		if nics := jsonLines[nic](t, "triton inst nic list -j", c.tri(t, "inst", "nic", "list", "-j", "fc1")); len(nics) != 1 || nics[0].IP != c1.PrimaryIP {
			t.Errorf("fc1 has NICs %+v after the delete, want its primary only", nics)
		}
		if err := PingFails(network.NetNSName(c1.ID), c2.PrimaryIP, 2); err != nil {
			t.Errorf("fc1 still reaches fc2 without a NIC on wl-fab: %v", err)
		}
	})

	t.Run("OtherAccountsDefaultFabricIsIsolated", func(t *testing.T) {
		o1, _ := c.createAs(t, other, "fo1", "busybox@1.36", "g1-nano-256M")
		t.Cleanup(func() { c.tritonAs(other, "inst", "rm", "-f", "-w", "fo1") })
		if o1.PrimaryIP == c1.PrimaryIP {
			t.Skip("both accounts' instances drew the same address of their default subnets")
		}
		if err := PingFails(network.NetNSName(o1.ID), c1.PrimaryIP, 2); err != nil {
			t.Errorf("another account's default fabric reaches fc1: %v", err)
		}
	})

	t.Run("DeleteNetworkAndVLAN", func(t *testing.T) {
		c.tri(t, "inst", "rm", "-f", "-w", "fc2")
		c.timed(t, "triton network delete (fabric)", "network", "delete", "wl-fab")
		c.timed(t, "triton vlan delete", "vlan", "delete", vlanID)
		if errOut := c.triFails(t, c.Owner, "vlan", "get", vlanID); !strings.Contains(errOut, "not found") {
			t.Errorf("vlan get after delete: %s", errOut)
		}
	})
}
