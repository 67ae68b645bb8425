package cloudapi_test

import (
	"net/http"
	"testing"
)

func TestFirewallRules(t *testing.T) {
	e := newEnv(t)
	e.startAgent()
	web := e.createMachine("fw-web", map[string]any{"tag.role": "web"})
	db := e.createMachine("fw-db", map[string]any{"tag.role": "db"})

	resp, b := e.post("/alice/fwrules", map[string]any{"rule": `from (tag "role" = "web") to all vms allow tcp port 80`,
		"enabled": true, "description": "web in"})
	wantStatus(t, resp, b, http.StatusCreated)
	rule := decode[map[string]any](t, b)
	id, _ := rule["id"].(string)
	if rule["rule"] != `FROM tag "role" = "web" TO all vms ALLOW tcp PORT 80` || rule["enabled"] != true ||
		rule["description"] != "web in" || rule["log"] != false || id == "" {
		t.Fatalf("created rule %v: want the canonical text, enabled, the description", rule)
	}
	resp, b = e.post("/alice/fwrules", map[string]any{"rule": `FROM any TO vm ` + db["id"].(string) + ` BLOCK tcp PORT 22`})
	wantStatus(t, resp, b, http.StatusCreated)
	dbRule := decode[map[string]any](t, b)
	if dbRule["enabled"] != false {
		t.Errorf("rule created without enabled is %v, want disabled", dbRule["enabled"])
	}

	t.Run("OK/List", func(t *testing.T) {
		resp, b := e.get("/alice/fwrules")
		wantStatus(t, resp, b, http.StatusOK)
		if list := decode[[]map[string]any](t, b); len(list) != 2 || list[0]["id"] != id {
			t.Errorf("list = %v, want both rules, oldest first", list)
		}
	})
	t.Run("OK/MachineRules", func(t *testing.T) {
		resp, b := e.get("/alice/machines/" + db["id"].(string) + "/fwrules")
		wantStatus(t, resp, b, http.StatusOK)
		if list := decode[[]map[string]any](t, b); len(list) != 2 {
			t.Errorf("db's rules = %v, want both (all vms, and its own vm rule)", list)
		}
		resp, b = e.get("/alice/machines/" + web["id"].(string) + "/fwrules")
		wantStatus(t, resp, b, http.StatusOK)
		if list := decode[[]map[string]any](t, b); len(list) != 1 || list[0]["id"] != id {
			t.Errorf("web's rules = %v, want only the tag rule", list)
		}
	})
	t.Run("OK/RuleMachines", func(t *testing.T) {
		resp, b := e.get("/alice/fwrules/" + dbRule["id"].(string) + "/machines")
		wantStatus(t, resp, b, http.StatusOK)
		if list := decode[[]map[string]any](t, b); len(list) != 1 || list[0]["id"] != db["id"] || resp.Header.Get("x-resource-count") != "1" {
			t.Errorf("machines = %v, want only fw-db", list)
		}
	})
	t.Run("OK/EnableDisableUpdate", func(t *testing.T) {
		resp, b := e.post("/alice/fwrules/"+id+"/disable", map[string]any{})
		wantStatus(t, resp, b, http.StatusOK)
		if got := decode[map[string]any](t, b); got["enabled"] != false {
			t.Errorf("after disable: %v", got)
		}
		resp, b = e.post("/alice/fwrules/"+id+"/enable", map[string]any{})
		wantStatus(t, resp, b, http.StatusOK)
		if got := decode[map[string]any](t, b); got["enabled"] != true {
			t.Errorf("after enable: %v", got)
		}
		resp, b = e.post("/alice/fwrules/"+id, map[string]any{"rule": `FROM any TO tag role ALLOW tcp PORTS 443, 80`})
		wantStatus(t, resp, b, http.StatusOK)
		if got := decode[map[string]any](t, b); got["rule"] != `FROM any TO tag "role" ALLOW tcp PORTS 80, 443` || got["enabled"] != true || got["description"] != "web in" {
			t.Errorf("after update: %v", got)
		}
	})
	t.Run("ErrInvalidRule", func(t *testing.T) {
		resp, b := e.post("/alice/fwrules", map[string]any{"rule": `FROM any TO all vms ALLOW tcp PORT 99999`})
		wantError(t, resp, b, http.StatusConflict, "InvalidArgument",
			`invalid firewall rule "FROM any TO all vms ALLOW tcp PORT 99999": port "99999" is not a number from 1 to 65535 (rules look like: FROM any TO tag "role" = "web" ALLOW tcp PORT 80)`)
		resp, b = e.post("/alice/fwrules", map[string]any{"enabled": true})
		wantError(t, resp, b, http.StatusConflict, "MissingParameter", "rule is a required argument")
		resp, b = e.post("/alice/fwrules", map[string]any{"rule": 5})
		wantError(t, resp, b, http.StatusConflict, "InvalidArgument", "rule must be a string")
		resp, b = e.post("/alice/fwrules/"+id, map[string]any{"rule": "FROM nowhere"})
		if resp.StatusCode != http.StatusConflict {
			t.Errorf("update with a bad rule: %d %s", resp.StatusCode, b)
		}
		resp, b = e.get("/alice/fwrules/" + id)
		wantStatus(t, resp, b, http.StatusOK)
		if got := decode[map[string]any](t, b); got["rule"] != `FROM any TO tag "role" ALLOW tcp PORTS 80, 443` {
			t.Errorf("a refused update changed the rule: %v", got)
		}
	})
	t.Run("ErrOtherAccount", func(t *testing.T) {
		bob := e.newSigner("bob", e.keys.bob)
		for _, r := range []request{
			{method: "GET", path: "/bob/fwrules/" + id, signer: bob},
			{method: "POST", path: "/bob/fwrules/" + id + "/enable", signer: bob, body: map[string]any{}},
			{method: "DELETE", path: "/bob/fwrules/" + id, signer: bob},
			{method: "GET", path: "/bob/fwrules/" + id + "/machines", signer: bob},
		} {
			resp, b := e.do(r)
			wantError(t, resp, b, http.StatusNotFound, "ResourceNotFound", "firewall rule "+id+" not found")
		}
		resp, b := e.do(request{method: "GET", path: "/bob/fwrules", signer: bob})
		wantStatus(t, resp, b, http.StatusOK)
		if list := decode[[]map[string]any](t, b); len(list) != 0 {
			t.Errorf("bob sees %v", list)
		}
	})
	t.Run("OK/Delete", func(t *testing.T) {
		resp, b := e.do(request{method: "DELETE", path: "/alice/fwrules/" + id})
		wantStatus(t, resp, b, http.StatusNoContent)
		resp, b = e.get("/alice/fwrules/" + id)
		wantError(t, resp, b, http.StatusNotFound, "ResourceNotFound", "firewall rule "+id+" not found")
		resp, b = e.get("/alice/fwrules/not-a-uuid")
		wantError(t, resp, b, http.StatusNotFound, "ResourceNotFound", "firewall rule not-a-uuid not found")
	})
}
