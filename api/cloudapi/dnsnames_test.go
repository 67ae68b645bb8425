package cloudapi_test

import (
	"fmt"
	"net/http"
	"testing"

	"flotilla/api/service"
)

// TestMachineDNSNames checks GetMachine's dns_names when the control plane
// runs a CNS server, and that a machine without one has none.
func TestMachineDNSNames(t *testing.T) {
	e := newEnv(t, envOptions{CNS: service.CNSZone{Suffix: "cns.test", DC: "test-1"}})
	e.startAgent()
	m := e.createMachine("web-1", map[string]any{"tag.triton.cns.services": "www:80"})
	id := m["id"].(string)
	resp, b := e.get("/alice/machines/" + id)
	wantStatus(t, resp, b, http.StatusOK)
	got := fmt.Sprint(decode[map[string]any](t, b)["dns_names"])
	want := fmt.Sprint([]string{
		"web-1.inst.alice.test-1.cns.test", id + ".inst.alice.test-1.cns.test",
		"web-1.inst." + e.alice.ID + ".test-1.cns.test", id + ".inst." + e.alice.ID + ".test-1.cns.test",
		"www.svc." + e.alice.ID + ".test-1.cns.test", "www.svc.alice.test-1.cns.test",
	})
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
