package cloudapi_test

import (
	"net/http"
	"testing"
	"time"

	"flotilla/store"
)

// waitSnapshot polls GetMachineSnapshot until the snapshot's state is want.
func (e *env) waitSnapshot(id, name, want string) map[string]any {
	e.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	var last map[string]any
	for time.Now().Before(deadline) {
		resp, b := e.get("/alice/machines/" + id + "/snapshots/" + name)
		wantStatus(e.t, resp, b, http.StatusOK)
		last = decode[map[string]any](e.t, b)
		if last["state"] == want {
			return last
		}
		time.Sleep(50 * time.Millisecond)
	}
	e.t.Fatalf("snapshot %s stayed %v, want %s", name, last["state"], want)
	return nil
}

func TestMachineSnapshots(t *testing.T) {
	e := newEnv(t)
	e.startAgent()
	bob := e.newSigner("bob", e.keys.bob)
	m := e.createMachine("snappy", nil)
	id := m["id"].(string)
	e.waitState(id, "running")
	base := "/alice/machines/" + id + "/snapshots"

	t.Run("OK/CreateQueuedThenCreated", func(t *testing.T) {
		resp, b := e.post(base, map[string]any{"name": "s1"})
		wantStatus(t, resp, b, http.StatusCreated)
		if got := decode[map[string]any](t, b); got["name"] != "s1" || got["state"] != "queued" {
			t.Fatalf("created %v, want s1 queued", got)
		}
		if loc := resp.Header.Get("Location"); loc != base+"/s1" {
			t.Errorf("Location %q", loc)
		}
		e.waitSnapshot(id, "s1", "created")
	})
	t.Run("OK/NameFromTheTime", func(t *testing.T) {
		resp, b := e.post(base, map[string]any{})
		wantStatus(t, resp, b, http.StatusCreated)
		name, _ := decode[map[string]any](t, b)["name"].(string)
		if _, err := time.Parse("20060102T150405Z", name); err != nil {
			t.Fatalf("generated name %q is not the UTC time: %v", name, err)
		}
		e.waitSnapshot(id, name, "created")
		resp, b = e.do(request{method: "DELETE", path: base + "/" + name})
		wantStatus(t, resp, b, http.StatusNoContent)
	})
	t.Run("OK/List", func(t *testing.T) {
		resp, b := e.get(base)
		wantStatus(t, resp, b, http.StatusOK)
		list := decode[[]map[string]any](t, b)
		if len(list) == 0 || list[0]["name"] != "s1" {
			t.Fatalf("list = %v, want s1 first", list)
		}
	})
	t.Run("OK/StartFromSnapshot", func(t *testing.T) {
		resp, b := e.post(base+"/s1", nil)
		wantStatus(t, resp, b, http.StatusAccepted)
		// The running machine goes down first, so a wait for "running"
		// does not end on the old run.
		resp, b = e.get("/alice/machines/" + id)
		wantStatus(t, resp, b, http.StatusOK)
		if st := decode[map[string]any](t, b)["state"]; st == "running" {
			t.Errorf("state right after StartMachineFromSnapshot = %v, want not yet running", st)
		}
		e.waitState(id, "running")
	})
	t.Run("ErrUnknownSnapshot", func(t *testing.T) {
		resp, b := e.get(base + "/nope")
		wantError(t, resp, b, http.StatusNotFound, "ResourceNotFound", "snapshot nope not found")
		resp, b = e.post(base+"/nope", nil)
		wantError(t, resp, b, http.StatusNotFound, "ResourceNotFound", "snapshot nope not found")
		resp, b = e.do(request{method: "DELETE", path: base + "/nope"})
		wantError(t, resp, b, http.StatusNotFound, "ResourceNotFound", "snapshot nope not found")
	})
	t.Run("ErrNameTaken", func(t *testing.T) {
		resp, b := e.post(base, map[string]any{"name": "s1"})
		wantError(t, resp, b, http.StatusConflict, "InvalidArgument", "instance "+id+` already has a snapshot named "s1"`)
	})
	t.Run("ErrInvalidName", func(t *testing.T) {
		for _, name := range []string{"-dash", "a b", "x/y", string(make([]byte, 65))} {
			resp, b := e.post(base, map[string]any{"name": name})
			wantStatus(t, resp, b, http.StatusConflict)
			if got := decode[map[string]any](t, b); got["code"] != "InvalidArgument" {
				t.Errorf("name %q: %v", name, got)
			}
		}
		resp, b := e.post(base, map[string]any{"name": 7})
		wantError(t, resp, b, http.StatusConflict, "InvalidArgument", "name must be a string")
	})
	t.Run("ErrOtherAccount", func(t *testing.T) {
		for _, r := range []request{
			{method: "GET", path: "/bob/machines/" + id + "/snapshots"},
			{method: "GET", path: "/bob/machines/" + id + "/snapshots/s1"},
			{method: "POST", path: "/bob/machines/" + id + "/snapshots", body: map[string]any{"name": "x"}},
			{method: "POST", path: "/bob/machines/" + id + "/snapshots/s1"},
			{method: "DELETE", path: "/bob/machines/" + id + "/snapshots/s1"},
		} {
			r.signer = bob
			resp, b := e.do(r)
			wantError(t, resp, b, http.StatusNotFound, "ResourceNotFound", "VM not found")
		}
	})
	t.Run("OK/Delete", func(t *testing.T) {
		resp, b := e.do(request{method: "DELETE", path: base + "/s1"})
		wantStatus(t, resp, b, http.StatusNoContent)
		deadline := time.Now().Add(20 * time.Second)
		for {
			resp, b := e.get(base + "/s1")
			if resp.StatusCode == http.StatusNotFound {
				break
			}
			wantStatus(t, resp, b, http.StatusOK)
			if st := decode[map[string]any](t, b)["state"]; st != "deleted" {
				t.Fatalf("a snapshot being deleted is %v, want deleted", st)
			}
			if time.Now().After(deadline) {
				t.Fatal("the node never reported s1 deleted")
			}
			time.Sleep(50 * time.Millisecond)
		}
		// A job's audit entry shows once it is finished, a second at least
		// after it was asked for (node-triton waits for a later time).
		actions := []string{"create_snapshot", "rollback_snapshot", "delete_snapshot"}
		deadline = time.Now().Add(10 * time.Second)
		for {
			resp, b = e.get("/alice/machines/" + id + "/audit")
			wantStatus(t, resp, b, http.StatusOK)
			seen := map[string]bool{}
			for _, a := range decode[[]map[string]any](t, b) {
				seen[a["action"].(string)] = a["success"] == "yes"
			}
			if seen[actions[0]] && seen[actions[1]] && seen[actions[2]] {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("audit lacks a successful %v: %s", actions, b)
			}
			time.Sleep(100 * time.Millisecond)
		}
		// The name is free again.
		resp, b = e.post(base, map[string]any{"name": "s1"})
		wantStatus(t, resp, b, http.StatusCreated)
		e.waitSnapshot(id, "s1", "created")
	})
	t.Run("ErrDeletedMachine", func(t *testing.T) {
		resp, b := e.do(request{method: "DELETE", path: "/alice/machines/" + id})
		wantStatus(t, resp, b, http.StatusNoContent)
		e.waitState(id, "deleted")
		resp, b = e.post(base, map[string]any{"name": "late"})
		wantStatus(t, resp, b, http.StatusGone)
	})
}

// TestMachineSnapshotsOfVMs: a VM's disk is snapshotted, and its snapshots
// deleted, only while the VM is stopped.
func TestMachineSnapshotsOfVMs(t *testing.T) {
	e := newEnv(t)
	e.startAgent()
	img, err := e.st.CreateImage(e.ctx, store.Image{Name: "vm-img", Version: "1.0", OS: "linux", Type: "zvol", Public: true, SizeBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	vm := e.createMachine("vm1", map[string]any{"image": img.ID})
	id := vm["id"].(string)
	e.waitState(id, "running")
	base := "/alice/machines/" + id + "/snapshots"

	resp, b := e.post(base, map[string]any{"name": "s1"})
	wantError(t, resp, b, http.StatusConflict, "InvalidArgument",
		"instance "+id+" is a running VM: stop it before taking a snapshot (a running VM's disk cannot be snapshotted)")

	resp, b = e.post("/alice/machines/"+id, map[string]any{"action": "stop"})
	wantStatus(t, resp, b, http.StatusAccepted)
	e.waitState(id, "stopped")
	resp, b = e.post(base, map[string]any{"name": "s1"})
	wantStatus(t, resp, b, http.StatusCreated)
	e.waitSnapshot(id, "s1", "created")

	// Starting from it is allowed while running: the VM is stopped first.
	resp, b = e.post(base+"/s1", nil)
	wantStatus(t, resp, b, http.StatusAccepted)
	e.waitState(id, "running")
	resp, b = e.do(request{method: "DELETE", path: base + "/s1"})
	wantError(t, resp, b, http.StatusConflict, "InvalidArgument",
		"instance "+id+" is a running VM: stop it before deleting a snapshot (its disk is changed only while the VM is stopped)")
}
