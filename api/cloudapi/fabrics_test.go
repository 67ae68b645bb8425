package cloudapi_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"flotilla/api/service"
	"flotilla/store"
)

// wantCode fails unless resp is status with CloudAPI error code.
func wantCode(t testing.TB, resp *http.Response, body []byte, status int, code string) {
	t.Helper()
	wantStatus(t, resp, body, status)
	var got map[string]any
	if err := json.Unmarshal(body, &got); err != nil || got["code"] != code || got["message"] == "" {
		t.Errorf("%s %s: error body %s, want code %s and a message", resp.Request.Method, resp.Request.URL.RequestURI(), body, code)
	}
}

func TestFabricVLANs(t *testing.T) {
	e := newEnv(t)
	bob := e.newSigner("bob", e.keys.bob)
	const vlans = "/alice/fabrics/default/vlans"

	resp, b := e.post(vlans, map[string]any{"vlan_id": 10, "name": "ten", "description": "the tenth"})
	wantStatus(t, resp, b, http.StatusCreated)
	if got := decode[map[string]any](t, b); got["name"] != "ten" || got["description"] != "the tenth" || got["vlan_id"] != json.Number("10") {
		t.Fatalf("created %v", got)
	}
	if loc := resp.Header.Get("Location"); loc != "/alice/fabrics/default/vlans/10" {
		t.Errorf("Location %q", loc)
	}

	t.Run("OK/GetList", func(t *testing.T) {
		resp, b := e.get(vlans + "/10")
		wantStatus(t, resp, b, http.StatusOK)
		resp, b = e.get(vlans)
		wantStatus(t, resp, b, http.StatusOK)
		if list := decode[[]map[string]any](t, b); len(list) != 1 || list[0]["name"] != "ten" {
			t.Errorf("list %v", list)
		}
	})
	t.Run("OK/UpdateByPUTAndPOST", func(t *testing.T) {
		resp, b := e.do(request{method: "PUT", path: vlans + "/10", body: map[string]any{"name": "ten-a"}})
		wantStatus(t, resp, b, http.StatusAccepted)
		// triton 7.17 sends POST; the description stays when left out.
		resp, b = e.post(vlans+"/10", map[string]any{"name": "ten-b"})
		wantStatus(t, resp, b, http.StatusAccepted)
		if got := decode[map[string]any](t, b); got["name"] != "ten-b" || got["description"] != "the tenth" {
			t.Errorf("updated %v", got)
		}
	})
	t.Run("ErrBadInput", func(t *testing.T) {
		for _, tc := range []struct {
			body      map[string]any
			code, msg string
		}{
			{map[string]any{"vlan_id": 10, "name": "again"}, "InvalidArgument", "VLAN 10 already exists"},
			{map[string]any{"vlan_id": 11, "name": "ten-b"}, "InvalidArgument", `a VLAN named "ten-b" already exists`},
			{map[string]any{"vlan_id": 4096, "name": "big"}, "InvalidArgument", "vlan_id 4096 is out of range: use 0 to 4095"},
			{map[string]any{"vlan_id": 1.5, "name": "half"}, "InvalidArgument", "vlan_id must be an integer"},
			{map[string]any{"name": "none"}, "MissingParameter", "vlan_id is a required argument"},
			{map[string]any{"vlan_id": 12}, "MissingParameter", "name is a required argument"},
		} {
			resp, b := e.post(vlans, tc.body)
			wantError(t, resp, b, http.StatusConflict, tc.code, tc.msg)
		}
		resp, b := e.get(vlans + "/99")
		wantError(t, resp, b, http.StatusNotFound, "ResourceNotFound", "VLAN 99 not found")
		resp, b = e.get(vlans + "/x")
		wantError(t, resp, b, http.StatusNotFound, "ResourceNotFound", "VLAN x not found")
	})
	t.Run("ErrOtherAccount", func(t *testing.T) {
		for _, r := range []request{
			{method: "GET", path: "/bob/fabrics/default/vlans/10"},
			{method: "DELETE", path: "/bob/fabrics/default/vlans/10"},
			{method: "PUT", path: "/bob/fabrics/default/vlans/10", body: map[string]any{"name": "mine"}},
			{method: "GET", path: "/bob/fabrics/default/vlans/10/networks"},
		} {
			r.signer = bob
			resp, b := e.do(r)
			wantError(t, resp, b, http.StatusNotFound, "ResourceNotFound", "VLAN 10 not found")
		}
		// Bob may use the same id and name for his own VLAN.
		resp, b := e.do(request{method: "POST", path: "/bob/fabrics/default/vlans", signer: bob, body: map[string]any{"vlan_id": 10, "name": "ten-b"}})
		wantStatus(t, resp, b, http.StatusCreated)
	})
	t.Run("OK/Delete", func(t *testing.T) {
		resp, b := e.do(request{method: "DELETE", path: vlans + "/10"})
		wantStatus(t, resp, b, http.StatusNoContent)
		resp, b = e.get(vlans + "/10")
		wantCode(t, resp, b, http.StatusNotFound, "ResourceNotFound")
		resp, b = e.do(request{method: "GET", path: "/bob/fabrics/default/vlans/10", signer: bob})
		wantStatus(t, resp, b, http.StatusOK)
	})
}

func TestFabricNetworks(t *testing.T) {
	e := newEnv(t)
	bob := e.newSigner("bob", e.keys.bob)
	const vlan = "/alice/fabrics/default/vlans/20"
	resp, b := e.post("/alice/fabrics/default/vlans", map[string]any{"vlan_id": 20, "name": "twenty"})
	wantStatus(t, resp, b, http.StatusCreated)

	good := map[string]any{"name": "web", "subnet": "10.40.0.0/24", "provision_start_ip": "10.40.0.10",
		"provision_end_ip": "10.40.0.200", "gateway": "10.40.0.1", "resolvers": []string{"10.40.0.2"},
		"routes": map[string]any{"10.41.0.0/16": "10.40.0.1"}, "description": "web tier"}
	resp, b = e.post(vlan+"/networks", good)
	wantStatus(t, resp, b, http.StatusCreated)
	net := decode[map[string]any](t, b)
	id, _ := net["id"].(string)
	if net["fabric"] != true || net["vlan_id"] != json.Number("20") || net["subnet"] != "10.40.0.0/24" ||
		net["gateway"] != "10.40.0.1" || net["internet_nat"] != true || net["public"] != false || id == "" {
		t.Fatalf("created %v", net)
	}
	if loc := resp.Header.Get("Location"); loc != "/alice/fabrics/default/vlans/20/networks/"+id {
		t.Errorf("Location %q", loc)
	}

	t.Run("OK/GetList", func(t *testing.T) {
		for _, p := range []string{vlan + "/networks/" + id, "/alice/networks/" + id} {
			resp, b := e.get(p)
			wantStatus(t, resp, b, http.StatusOK)
			if got := decode[map[string]any](t, b); got["id"] != id || got["name"] != "web" {
				t.Errorf("GET %s = %v", p, got)
			}
		}
		resp, b := e.get(vlan + "/networks")
		wantStatus(t, resp, b, http.StatusOK)
		if list := decode[[]map[string]any](t, b); len(list) != 1 || list[0]["id"] != id {
			t.Errorf("VLAN 20's networks = %v", list)
		}
		resp, b = e.get("/alice/networks?fabric=true")
		wantStatus(t, resp, b, http.StatusOK)
		if list := decode[[]map[string]any](t, b); len(list) != 1 || list[0]["id"] != id {
			t.Errorf("fabric networks = %v", list)
		}
	})
	t.Run("ErrBadInput", func(t *testing.T) {
		with := func(k string, v any) map[string]any {
			m := map[string]any{}
			for k, v := range good {
				m[k] = v
			}
			m["name"] = "other"
			if v == nil {
				delete(m, k)
			} else {
				m[k] = v
			}
			return m
		}
		for _, tc := range []struct {
			name      string
			body      map[string]any
			code, msg string
		}{
			{"NameTaken", map[string]any{"name": "web", "subnet": "10.42.0.0/24", "provision_start_ip": "10.42.0.10",
				"provision_end_ip": "10.42.0.20", "gateway": "10.42.0.1"}, "InvalidArgument", `network "web" already exists`},
			{"Overlap", with("subnet", "10.40.0.0/16"), "InvalidArgument", ""},
			{"BadSubnet", with("subnet", "10.40.0.0/33"), "InvalidArgument", `invalid subnet "10.40.0.0/33": use IPv4 CIDR notation such as 192.168.10.0/24`},
			{"OutsidePool", with("subnet", "8.8.8.0/24"), "InvalidArgument", ""},
			{"StartOutside", with("provision_start_ip", "10.50.0.10"), "InvalidArgument", ""},
			{"StartNotAnIP", with("provision_start_ip", "ten"), "InvalidArgument", "provision_start_ip must be an IPv4 address inside the subnet"},
			{"NoSubnet", with("subnet", nil), "MissingParameter", "subnet is a required argument"},
			{"BadResolver", with("resolvers", []string{"dns"}), "InvalidArgument", "resolver dns is not an IPv4 address"},
			{"BadRoute", with("routes", map[string]any{"nowhere": "10.40.0.1"}), "InvalidArgument", `route destination "nowhere" is not an IPv4 subnet or address`},
			{"BadNAT", with("internet_nat", "maybe"), "InvalidArgument", "internet_nat must be a boolean"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				resp, b := e.post(vlan+"/networks", tc.body)
				if tc.msg == "" {
					wantCode(t, resp, b, http.StatusConflict, tc.code)
				} else {
					wantError(t, resp, b, http.StatusConflict, tc.code, tc.msg)
				}
			})
		}
		resp, b := e.post("/alice/fabrics/default/vlans/21/networks", good)
		wantError(t, resp, b, http.StatusNotFound, "ResourceNotFound", "VLAN 21 not found: create it first")
	})
	t.Run("ErrVLANInUse", func(t *testing.T) {
		resp, b := e.do(request{method: "DELETE", path: vlan})
		wantError(t, resp, b, http.StatusConflict, "InUseError", "VLAN 20 still has 1 network(s): delete them first")
	})
	t.Run("ErrOtherAccount", func(t *testing.T) {
		for _, r := range []request{
			{method: "GET", path: "/bob/networks/" + id},
			{method: "GET", path: "/bob/networks/" + id + "/ips"},
			{method: "GET", path: "/bob/networks/" + id + "/ips/10.40.0.10"},
			{method: "PUT", path: "/bob/networks/" + id + "/ips/10.40.0.10", body: map[string]any{"reserved": true}},
		} {
			r.signer = bob
			resp, b := e.do(r)
			wantError(t, resp, b, http.StatusNotFound, "ResourceNotFound", "network "+id+" not found")
		}
		resp, b := e.do(request{method: "DELETE", path: "/bob/fabrics/default/vlans/20/networks/" + id, signer: bob})
		wantError(t, resp, b, http.StatusNotFound, "ResourceNotFound", "VLAN 20 not found")
		resp, b = e.do(request{method: "GET", path: "/bob/networks?fabric=true", signer: bob})
		wantStatus(t, resp, b, http.StatusOK)
		if list := decode[[]map[string]any](t, b); len(list) != 0 {
			t.Errorf("bob sees %v", list)
		}
		// Bob's own VLAN may carry the same subnet: tenants' subnets overlap freely.
		resp, b = e.do(request{method: "POST", path: "/bob/fabrics/default/vlans", signer: bob, body: map[string]any{"vlan_id": 20, "name": "b"}})
		wantStatus(t, resp, b, http.StatusCreated)
		resp, b = e.do(request{method: "POST", path: "/bob/fabrics/default/vlans/20/networks", signer: bob, body: good})
		wantStatus(t, resp, b, http.StatusCreated)
	})
	t.Run("OK/NetworkIPs", func(t *testing.T) {
		ips := "/alice/networks/" + id + "/ips/"
		resp, b := e.get(ips + "10.40.0.50")
		wantStatus(t, resp, b, http.StatusOK)
		if got := decode[map[string]any](t, b); got["ip"] != "10.40.0.50" || got["reserved"] != false || got["owner_uuid"] != nil {
			t.Errorf("free address = %v", got)
		}
		resp, b = e.get(ips + "10.40.0.1")
		wantStatus(t, resp, b, http.StatusOK)
		if got := decode[map[string]any](t, b); got["managed"] != true {
			t.Errorf("gateway = %v, want managed", got)
		}
		resp, b = e.do(request{method: "PUT", path: ips + "10.40.0.50", body: map[string]any{"reserved": true}})
		wantStatus(t, resp, b, http.StatusOK)
		if got := decode[map[string]any](t, b); got["reserved"] != true || got["owner_uuid"] != e.alice.ID {
			t.Errorf("reserved = %v", got)
		}
		resp, b = e.get("/alice/networks/" + id + "/ips")
		wantStatus(t, resp, b, http.StatusOK)
		if list := decode[[]map[string]any](t, b); len(list) != 1 || list[0]["ip"] != "10.40.0.50" || list[0]["reserved"] != true {
			t.Errorf("ips = %v", list)
		}
		resp, b = e.do(request{method: "PUT", path: ips + "10.40.0.50", body: map[string]any{"reserved": false}})
		wantStatus(t, resp, b, http.StatusOK)
		if got := decode[map[string]any](t, b); got["reserved"] != false {
			t.Errorf("released = %v", got)
		}
		resp, b = e.get(ips + "10.99.0.1")
		wantError(t, resp, b, http.StatusNotFound, "ResourceNotFound", "IP 10.99.0.1 is not an address of network web (10.40.0.0/24)")
		resp, b = e.do(request{method: "PUT", path: ips + "10.40.0.1", body: map[string]any{"reserved": true}})
		wantError(t, resp, b, http.StatusConflict, "InvalidArgument", "10.40.0.1 is the gateway of network web")
		resp, b = e.do(request{method: "PUT", path: ips + "10.40.0.51", body: map[string]any{}})
		wantError(t, resp, b, http.StatusConflict, "MissingParameter", "reserved is a required argument")
		resp, b = e.do(request{method: "PUT", path: "/alice/networks/" + service.DefaultNetworks[0].ID + "/ips/10.198.0.99",
			body: map[string]any{"reserved": true}})
		wantCode(t, resp, b, http.StatusForbidden, "NotAuthorized")
	})
	t.Run("OK/Delete", func(t *testing.T) {
		resp, b := e.do(request{method: "DELETE", path: vlan + "/networks/" + id})
		wantStatus(t, resp, b, http.StatusNoContent)
		resp, b = e.get("/alice/networks/" + id)
		wantCode(t, resp, b, http.StatusNotFound, "ResourceNotFound")
		resp, b = e.do(request{method: "DELETE", path: vlan})
		wantStatus(t, resp, b, http.StatusNoContent)
	})
}

// TestMachineNICs adds and removes NICs of a running machine and checks
// that a machine created without networks lands on the account's default
// fabric network.
func TestMachineNICs(t *testing.T) {
	e := newEnv(t)
	e.startAgent()
	bob := e.newSigner("bob", e.keys.bob)

	m := e.createMachine("nic-host", nil)
	id := m["id"].(string)
	e.waitState(id, "running")

	var def map[string]any
	t.Run("OK/DefaultFabricNetwork", func(t *testing.T) {
		resp, b := e.get("/alice/machines/" + id + "/nics")
		wantStatus(t, resp, b, http.StatusOK)
		nics := decode[[]map[string]any](t, b)
		if len(nics) != 1 {
			t.Fatalf("nics %v", nics)
		}
		resp, b = e.get("/alice/networks/" + nics[0]["network"].(string))
		wantStatus(t, resp, b, http.StatusOK)
		def = decode[map[string]any](t, b)
		if def["name"] != store.DefaultFabricNetworkName || def["fabric"] != true || def["vlan_id"] != json.Number("2") {
			t.Errorf("a machine without networks is on %v, want the default fabric network", def)
		}
		resp, b = e.get("/alice/fabrics/default/vlans/2")
		wantStatus(t, resp, b, http.StatusOK)
		if got := decode[map[string]any](t, b); got["name"] != store.DefaultFabricVLANName {
			t.Errorf("VLAN 2 = %v", got)
		}
	})

	resp, b := e.post("/alice/fabrics/default/vlans", map[string]any{"vlan_id": 30, "name": "thirty"})
	wantStatus(t, resp, b, http.StatusCreated)
	resp, b = e.post("/alice/fabrics/default/vlans/30/networks", map[string]any{"name": "back", "subnet": "10.30.0.0/24",
		"provision_start_ip": "10.30.0.10", "provision_end_ip": "10.30.0.20", "gateway": "10.30.0.1"})
	wantStatus(t, resp, b, http.StatusCreated)
	back := decode[map[string]any](t, b)["id"].(string)

	var mac string
	t.Run("OK/AddGetRemove", func(t *testing.T) {
		resp, b := e.post("/alice/machines/"+id+"/nics", map[string]any{"network": back, "primary": false})
		wantStatus(t, resp, b, http.StatusCreated)
		nic := decode[map[string]any](t, b)
		mac, _ = nic["mac"].(string)
		if nic["primary"] != false || nic["network"] != back || !strings.HasPrefix(nic["ip"].(string), "10.30.0.") || nic["netmask"] != "255.255.255.0" {
			t.Fatalf("added %v", nic)
		}
		bare := strings.ReplaceAll(mac, ":", "")
		if loc := resp.Header.Get("Location"); loc != "/alice/machines/"+id+"/nics/"+bare {
			t.Errorf("Location %q", loc)
		}
		// The node applies it; the NIC then reads running.
		var got map[string]any
		for range 200 {
			resp, b = e.get("/alice/machines/" + id + "/nics/" + bare)
			wantStatus(t, resp, b, http.StatusOK)
			if got = decode[map[string]any](t, b); got["state"] == "running" {
				break
			}
		}
		if got["state"] != "running" {
			t.Fatalf("NIC %s stayed %v", mac, got["state"])
		}
		// The same network again: 302 to the NIC it has.
		resp, b = e.post("/alice/machines/"+id+"/nics", map[string]any{"network": map[string]any{"ipv4_uuid": back}})
		wantStatus(t, resp, b, http.StatusFound)
		resp, b = e.get("/alice/networks/" + back + "/ips/" + nic["ip"].(string))
		wantStatus(t, resp, b, http.StatusOK)
		if got := decode[map[string]any](t, b); got["belongs_to_uuid"] != id {
			t.Errorf("the NIC's address = %v", got)
		}
	})
	t.Run("ErrNetworkInUse", func(t *testing.T) {
		resp, b := e.do(request{method: "DELETE", path: "/alice/fabrics/default/vlans/30/networks/" + back})
		wantError(t, resp, b, http.StatusConflict, "InUseError", "network "+back+" is in use: delete its instances' NICs first")
	})
	t.Run("ErrBadInput", func(t *testing.T) {
		for _, tc := range []struct {
			body      any
			code, msg string
		}{
			{map[string]any{}, "MissingParameter", "network is a required argument"},
			{map[string]any{"network": 7}, "InvalidArgument", `network must be a network id or {"ipv4_uuid": id}`},
			{map[string]any{"network": "nosuch"}, "InvalidArgument", "network nosuch not found"},
			{map[string]any{"network": back, "primary": true}, "InvalidArgument", "adding a primary NIC is not supported: the instance keeps its primary NIC"},
			{map[string]any{"network": map[string]any{"ipv4_uuid": back, "ipv4_ips": []string{"10.30.0.15"}}}, "InvalidArgument",
				"choosing NIC addresses (ipv4_ips) is not supported: leave it out and an address is allocated"},
		} {
			resp, b := e.post("/alice/machines/"+id+"/nics", tc.body)
			wantError(t, resp, b, http.StatusConflict, tc.code, tc.msg)
		}
	})
	t.Run("ErrOtherAccount", func(t *testing.T) {
		resp, b := e.do(request{method: "POST", path: "/bob/machines/" + id + "/nics", signer: bob, body: map[string]any{"network": back}})
		wantCode(t, resp, b, http.StatusNotFound, "ResourceNotFound")
		resp, b = e.do(request{method: "DELETE", path: "/bob/machines/" + id + "/nics/" + strings.ReplaceAll(mac, ":", ""), signer: bob})
		wantCode(t, resp, b, http.StatusNotFound, "ResourceNotFound")
		// Bob's machine cannot join Alice's network.
		resp, b = e.do(request{method: "POST", path: "/bob/machines", signer: bob,
			body: map[string]any{"name": "b1", "image": e.image.ID, "package": "g1-nano-256M"}})
		wantStatus(t, resp, b, http.StatusCreated)
		bm := decode[map[string]any](t, b)["id"].(string)
		resp, b = e.do(request{method: "POST", path: "/bob/machines/" + bm + "/nics", signer: bob, body: map[string]any{"network": back}})
		wantError(t, resp, b, http.StatusConflict, "InvalidArgument", "network "+back+" not found")
	})
	t.Run("ErrVM", func(t *testing.T) {
		img, err := e.st.CreateImage(e.ctx, store.Image{Name: "vm-img", Version: "1.0", OS: "linux", Type: "zvol", Public: true, SizeBytes: 1 << 20})
		if err != nil {
			t.Fatal(err)
		}
		resp, b := e.post("/alice/machines", map[string]any{"name": "vm1", "image": img.ID, "package": "g1-nano-256M"})
		wantStatus(t, resp, b, http.StatusCreated)
		vm := decode[map[string]any](t, b)["id"].(string)
		resp, b = e.post("/alice/machines/"+vm+"/nics", map[string]any{"network": back})
		wantError(t, resp, b, http.StatusConflict, "InvalidArgument",
			"adding or removing NICs of a VM (brand bhyve) is not supported: its NICs are fixed when it is created")
	})
	t.Run("OK/Remove", func(t *testing.T) {
		bare := strings.ReplaceAll(mac, ":", "")
		resp, b := e.do(request{method: "DELETE", path: "/alice/machines/" + id + "/nics/" + bare})
		wantStatus(t, resp, b, http.StatusNoContent)
		resp, b = e.get("/alice/machines/" + id + "/nics/" + bare)
		wantCode(t, resp, b, http.StatusNotFound, "ResourceNotFound")
		resp, b = e.do(request{method: "DELETE", path: "/alice/machines/" + id + "/nics/" + bare})
		wantCode(t, resp, b, http.StatusNotFound, "ResourceNotFound")
		resp, b = e.get("/alice/networks/" + back + "/ips")
		wantStatus(t, resp, b, http.StatusOK)
		if list := decode[[]map[string]any](t, b); len(list) != 0 {
			t.Errorf("the removed NIC's address is still allocated: %v", list)
		}
		resp, b = e.do(request{method: "DELETE", path: "/alice/fabrics/default/vlans/30/networks/" + back})
		wantStatus(t, resp, b, http.StatusNoContent)
	})
}
