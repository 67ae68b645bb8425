package cloudapi_test

import (
	"fmt"
	"net/http"
	"slices"
	"testing"

	"flotilla/api/service"
)

// TestMachineDNSNames checks GetMachine's dns_names when the control plane
// runs a CNS server and the account turned CNS on, and that there are none
// otherwise.
func TestMachineDNSNames(t *testing.T) {
	e := newEnv(t, envOptions{CNS: service.CNSZone{Suffix: "cns.test", DC: "test-1"}})
	e.startAgent()
	m := e.createMachine("web-1", map[string]any{"tag.triton.cns.services": "www:80"})
	id := m["id"].(string)
	resp, b := e.get("/alice/machines/" + id)
	wantStatus(t, resp, b, http.StatusOK)
	if names, ok := decode[map[string]any](t, b)["dns_names"]; ok {
		t.Fatalf("dns_names before the account turned CNS on: %v", names)
	}
	resp, b = e.post("/alice", map[string]any{"triton_cns_enabled": true})
	wantStatus(t, resp, b, http.StatusOK)
	resp, b = e.get("/alice/machines/" + id)
	wantStatus(t, resp, b, http.StatusOK)
	got := fmt.Sprint(decode[map[string]any](t, b)["dns_names"])
	// Instance names first, then the service names in order.
	svcs := []string{"www.svc." + e.alice.ID + ".test-1.cns.test", "www.svc.alice.test-1.cns.test"}
	slices.Sort(svcs)
	want := fmt.Sprint(append([]string{
		"web-1.inst.alice.test-1.cns.test", id + ".inst.alice.test-1.cns.test",
		"web-1.inst." + e.alice.ID + ".test-1.cns.test", id + ".inst." + e.alice.ID + ".test-1.cns.test",
	}, svcs...))
	if got != want {
		t.Fatalf("dns_names = %s\nwant %s", got, want)
	}

	off := newEnv(t)
	off.startAgent()
	m = off.createMachine("web-1", nil)
	resp, b = off.get("/alice/machines/" + m["id"].(string))
	wantStatus(t, resp, b, http.StatusOK)
	if names, ok := decode[map[string]any](t, b)["dns_names"]; ok {
		t.Fatalf("dns_names without a CNS server: %v", names)
	}
}
