package cloudapi_test

import (
	"encoding/json"
	"net/http"
	"testing"
)

// TestMachineLifecycleErrors runs a real agent (sim driver) and checks the
// machine rules clients depend on: unique names, deletion protection, 410
// with the machine's JSON once deleted, and Idempotency-Key replays.
func TestMachineLifecycleErrors(t *testing.T) {
	e := newEnv(t)
	e.startAgent()

	web := e.createMachine("web-1", map[string]any{"deletion_protection": true, "tag.role": "web"})
	id := web["id"].(string)
	if web["state"] != "provisioning" || web["name"] != "web-1" || web["package"] != "g1-nano-256M" ||
		web["memory"] != json.Number("256") || web["image"] != e.image.ID || web["deletion_protection"] != true {
		t.Errorf("created machine %v", web)
	}
	running := e.waitState(id, "running")
	if running["compute_node"] == nil || running["primaryIp"] == nil || len(running["nics"].([]any)) != 1 {
		t.Errorf("running machine lacks placement or NICs: %v", running)
	}

	t.Run("ErrDuplicateName", func(t *testing.T) {
		resp, b := e.post("/alice/machines", map[string]any{"name": "web-1", "image": e.image.ID, "package": "g1-nano-256M"})
		wantError(t, resp, b, http.StatusConflict, "InvalidArgument", `an instance named "web-1" already exists`)
		// Another account may use the name.
		resp, b = e.do(request{method: "POST", path: "/bob/machines", signer: e.newSigner("bob", e.keys.bob),
			body: map[string]any{"name": "web-1", "image": e.image.ID, "package": "g1-nano-256M"}})
		wantStatus(t, resp, b, http.StatusCreated)
	})

	t.Run("ErrDeletionProtection", func(t *testing.T) {
		resp, b := e.do(request{method: "DELETE", path: "/alice/machines/" + id})
		wantError(t, resp, b, http.StatusConflict, "CannotDestroyMachine", `Instance has "deletion_protection" enabled, preventing deletion`)
		resp, b = e.get("/alice/machines/" + id)
		wantStatus(t, resp, b, http.StatusOK)
		if st := decode[map[string]any](t, b)["state"]; st != "running" {
			t.Errorf("refused delete left state %v", st)
		}
	})

	t.Run("ErrAnotherAccountsMachine", func(t *testing.T) {
		resp, b := e.do(request{method: "GET", path: "/bob/machines/" + id, signer: e.newSigner("bob", e.keys.bob)})
		wantStatus(t, resp, b, http.StatusNotFound)
		if decode[map[string]any](t, b)["code"] != "ResourceNotFound" {
			t.Errorf("body %s", b)
		}
	})

	t.Run("GoneAfterDelete", func(t *testing.T) {
		resp, b := e.post("/alice/machines/"+id, map[string]any{"action": "disable_deletion_protection"})
		wantStatus(t, resp, b, http.StatusAccepted)
		if len(b) != 0 {
			t.Errorf("202 body %q", b)
		}
		resp, b = e.do(request{method: "DELETE", path: "/alice/machines/" + id})
		wantStatus(t, resp, b, http.StatusNoContent)
		gone := e.waitState(id, "deleted")
		resp, b = e.get("/alice/machines/" + id)
		wantStatus(t, resp, b, http.StatusGone)
		m := decode[map[string]any](t, b)
		if m["id"] != id || m["state"] != "deleted" || m["name"] != "web-1" {
			t.Errorf("410 body %v, want the deleted machine", m)
		}
		if gone["id"] != id {
			t.Errorf("waitState returned %v", gone)
		}
		// Actions and a second delete on it are 410 too.
		resp, b = e.post("/alice/machines/"+id, map[string]any{"action": "start"})
		wantStatus(t, resp, b, http.StatusGone)
		resp, b = e.do(request{method: "DELETE", path: "/alice/machines/" + id})
		wantStatus(t, resp, b, http.StatusGone)
		resp, b = e.get("/alice/machines/" + id + "/tags")
		wantStatus(t, resp, b, http.StatusGone)
		// ListMachines leaves it out, unless asked for destroyed ones.
		resp, b = e.get("/alice/machines")
		wantStatus(t, resp, b, http.StatusOK)
		for _, m := range decode[[]map[string]any](t, b) {
			if m["id"] == id {
				t.Errorf("deleted machine listed: %v", m)
			}
		}
		resp, b = e.get("/alice/machines?state=destroyed")
		wantStatus(t, resp, b, http.StatusOK)
		if list := decode[[]map[string]any](t, b); len(list) != 1 || list[0]["id"] != id {
			t.Errorf("state=destroyed lists %v", list)
		}
		// The name is free again.
		again := e.createMachine("web-1", nil)
		if again["id"] == id {
			t.Error("new machine reused the deleted id")
		}
	})

	t.Run("IdempotencyKey", func(t *testing.T) {
		body := map[string]any{"name": "idem-1", "image": e.image.ID, "package": "g1-nano-256M"}
		key := map[string]string{"Idempotency-Key": "create-idem-1"}
		resp, b := e.do(request{method: "POST", path: "/alice/machines", body: body, header: key})
		wantStatus(t, resp, b, http.StatusCreated)
		first := decode[map[string]any](t, b)
		resp, b = e.do(request{method: "POST", path: "/alice/machines", body: body, header: key})
		wantStatus(t, resp, b, http.StatusCreated)
		second := decode[map[string]any](t, b)
		if first["id"] != second["id"] || second["name"] != "idem-1" {
			t.Errorf("replay made %v, first was %v", second["id"], first["id"])
		}
		if loc := resp.Header.Get("Location"); loc != "/alice/machines/"+first["id"].(string) {
			t.Errorf("replay Location %q", loc)
		}
		var rows int
		if err := e.st.Pool().QueryRow(e.ctx, `SELECT count(*) FROM instances WHERE owner_id = $1 AND name = 'idem-1'`,
			e.alice.ID).Scan(&rows); err != nil {
			t.Fatal(err)
		}
		if rows != 1 {
			t.Errorf("%d instance rows for one idempotent create", rows)
		}
		body["package"] = "g1-micro-512M"
		resp, b = e.do(request{method: "POST", path: "/alice/machines", body: body, header: key})
		wantError(t, resp, b, http.StatusUnprocessableEntity, "UnprocessableEntity",
			`Idempotency-Key "create-idem-1" was already used with a different request`)
	})
}
