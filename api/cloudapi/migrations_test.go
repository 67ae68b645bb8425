package cloudapi_test

import (
	"archive/tar"
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"

	"flotilla/api/auth"
	"flotilla/api/errdefs"
	"flotilla/api/nodeclient"
	"flotilla/store"
)

func init() {
	// The watch stream is JSON lines: its body is checked by the tests.
	openapi3filter.RegisterBodyDecoder("application/x-json-stream", func(r io.Reader, _ http.Header, _ *openapi3.SchemaRef, _ openapi3filter.EncodingFn) (any, error) {
		b, err := io.ReadAll(r)
		return string(b), err
	})
}

// nodeOf returns how to reach a node's stream server.
func (e *env) nodeOf(t *testing.T, id string) nodeclient.Node {
	t.Helper()
	ns, err := e.st.NodeStream(e.ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	return nodeclient.Node{ID: ns.NodeID, Address: ns.Address, Token: ns.Token}
}

// writeFile puts a file into a sim instance's filesystem on its node.
func writeFile(t *testing.T, nc *nodeclient.Client, n nodeclient.Node, id, name, content string) {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(content)), Typeflag: tar.TypeReg})
	tw.Write([]byte(content))
	tw.Close()
	if err := nc.Extract(t.Context(), n, id, "/root", false, &buf); err != nil {
		t.Fatalf("write %s into %s: %v", name, id, err)
	}
}

// readFile reads a file of an instance's filesystem on node n.
func readFile(t *testing.T, nc *nodeclient.Client, n nodeclient.Node, id, path string) (string, error) {
	t.Helper()
	_, rc, err := nc.Archive(t.Context(), n, id, path)
	if err != nil {
		return "", err
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	if _, err := tr.Next(); err != nil {
		return "", err
	}
	b, err := io.ReadAll(tr)
	return string(b), err
}

// migrate posts a migration action for alice (or as signer).
func (e *env) migrate(id, action string, signer *auth.Signer) (*http.Response, []byte) {
	e.t.Helper()
	login := "alice"
	if signer != nil {
		login = "bob"
	}
	return e.do(request{method: "POST", path: "/" + login + "/machines/" + id + "/migrate", body: map[string]any{"action": action}, signer: signer})
}

// waitMigration polls GetMigration until its state is want.
func (e *env) waitMigration(t *testing.T, id, want string) map[string]any {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var last map[string]any
	for time.Now().Before(deadline) {
		resp, b := e.get("/alice/migrations/" + id)
		wantStatus(t, resp, b, http.StatusOK)
		last = decode[map[string]any](t, b)
		if last["state"] == want {
			return last
		}
		if last["state"] == "failed" && want != "failed" {
			t.Fatalf("migration failed: %v", last)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("migration of %s stayed %v, want %s: %v", id, last["state"], want, last)
	return nil
}

// watch reads the watch stream of an instance's migration to its end.
func (e *env) watch(t *testing.T, id string) []map[string]any {
	t.Helper()
	resp, b := e.do(request{method: "POST", path: "/alice/machines/" + id + "/migrate?action=watch"})
	wantStatus(t, resp, b, http.StatusOK)
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		var ev map[string]any
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			t.Fatalf("watch line %q: %v", sc.Text(), err)
		}
		out = append(out, ev)
	}
	if len(out) == 0 || out[len(out)-1]["type"] != "end" {
		t.Fatalf("watch stream does not end with an end event: %s", b)
	}
	return out
}

func nodeUsage(t *testing.T, e *env, id string) int64 {
	t.Helper()
	n, err := e.st.GetNode(e.ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	return n.UsedMemoryMiB
}

// TestMigrations moves sim instances between two nodes through every
// migration route: automatic with a running instance (its files, addresses
// and state kept), begin/sync/switch with a stopped one, abort, and the
// refusals.
func TestMigrations(t *testing.T) {
	e := newEnv(t)
	e.startNamedAgent("cn-1", true)
	e.startNamedAgent("cn-2", true)
	nc := nodeclient.New()
	defer nc.Close()

	t.Run("AutomaticRunning", func(t *testing.T) {
		m := e.createMachine("mig-run", nil)
		id := m["id"].(string)
		before := e.waitState(id, "running")
		src := before["compute_node"].(string)
		writeFile(t, nc, e.nodeOf(t, src), id, "data", "kept across nodes")
		srcUsed := nodeUsage(t, e, src)

		resp, b := e.migrate(id, "automatic", nil)
		wantStatus(t, resp, b, http.StatusOK)
		mig := decode[map[string]any](t, b)
		if mig["machine"] != id || mig["automatic"] != true || mig["state"] != "running" {
			t.Fatalf("automatic answered %s", b)
		}
		events := e.watch(t, id)
		end := events[len(events)-1]
		if end["state"] != "successful" || end["phase"] != "switch" {
			t.Fatalf("watch ended with %v; events %v", end, events)
		}
		got := e.waitMigration(t, id, "successful")
		var phases []string
		for _, p := range got["progress_history"].([]any) {
			pm := p.(map[string]any)
			phases = append(phases, pm["phase"].(string)+":"+pm["state"].(string))
		}
		if strings.Join(phases, ",") != "begin:successful,sync:successful,switch:successful" {
			t.Errorf("progress history %v", phases)
		}
		after := e.waitState(id, "running")
		dst := after["compute_node"].(string)
		if dst == src || dst != got["target_server_uuid"] {
			t.Fatalf("instance on %s after its move from %s (migration target %v)", dst, src, got["target_server_uuid"])
		}
		if after["primaryIp"] != before["primaryIp"] {
			t.Errorf("address %v after the move, %v before", after["primaryIp"], before["primaryIp"])
		}
		if s, err := readFile(t, nc, e.nodeOf(t, dst), id, "/root/data"); err != nil || s != "kept across nodes" {
			t.Errorf("file on the target: %q, %v", s, err)
		}
		if _, err := readFile(t, nc, e.nodeOf(t, src), id, "/root/data"); !errdefs.Is(err, errdefs.NotFound) {
			t.Errorf("the source still has the instance: %v", err)
		}
		if used := nodeUsage(t, e, src); used != srcUsed-256 {
			t.Errorf("source uses %d MiB after the move, %d before", used, srcUsed)
		}
		// Finalize of a successful migration is accepted; a new begin works.
		resp, b = e.migrate(id, "finalize", nil)
		wantStatus(t, resp, b, http.StatusOK)
		resp, b = e.get("/alice/migrations")
		wantStatus(t, resp, b, http.StatusOK)
		if list := decode[[]map[string]any](t, b); len(list) != 1 || list[0]["machine"] != id {
			t.Errorf("ListMigrations: %s", b)
		}
	})

	t.Run("StepsStopped", func(t *testing.T) {
		m := e.createMachine("mig-stop", nil)
		id := m["id"].(string)
		e.waitState(id, "running")
		resp, b := e.post("/alice/machines/"+id+"?action=stop", nil)
		wantStatus(t, resp, b, http.StatusAccepted)
		before := e.waitState(id, "stopped")

		// The Triton action form, as documented for MigrateMachine.
		resp, b = e.post("/alice/machines/"+id+"?action=migrate&migration_action=begin", nil)
		wantStatus(t, resp, b, http.StatusOK)
		if mig := decode[map[string]any](t, b); mig["phase"] != "begin" || mig["state"] != "paused" {
			t.Fatalf("begin answered %s", b)
		}
		resp, b = e.migrate(id, "begin", nil)
		wantStatus(t, resp, b, http.StatusConflict)
		resp, b = e.migrate(id, "sync", nil)
		wantStatus(t, resp, b, http.StatusOK)
		if ev := e.watch(t, id); ev[len(ev)-1]["phase"] != "sync" || ev[len(ev)-1]["state"] != "paused" {
			t.Fatalf("sync watch ended with %v", ev[len(ev)-1])
		}
		resp, b = e.migrate(id, "finalize", nil)
		wantStatus(t, resp, b, http.StatusConflict)
		resp, b = e.migrate(id, "switch", nil)
		wantStatus(t, resp, b, http.StatusOK)
		e.waitMigration(t, id, "successful")
		after := e.waitState(id, "stopped")
		if after["compute_node"] == before["compute_node"] {
			t.Fatalf("still on %v", after["compute_node"])
		}
		time.Sleep(300 * time.Millisecond)
		if got := e.waitState(id, "stopped"); got["state"] != "stopped" {
			t.Errorf("a stopped instance was started by its move: %v", got["state"])
		}
		resp, b = e.migrate(id, "abort", nil)
		wantStatus(t, resp, b, http.StatusConflict)
	})

	t.Run("Abort", func(t *testing.T) {
		m := e.createMachine("mig-abort", nil)
		id := m["id"].(string)
		before := e.waitState(id, "running")
		src := before["compute_node"].(string)
		resp, b := e.migrate(id, "begin", nil)
		wantStatus(t, resp, b, http.StatusOK)
		target := decode[map[string]any](t, b)["target_server_uuid"].(string)
		claimed := nodeUsage(t, e, target)
		resp, b = e.migrate(id, "sync", nil)
		wantStatus(t, resp, b, http.StatusOK)
		e.waitMigration(t, id, "paused")
		resp, b = e.migrate(id, "abort", nil)
		wantStatus(t, resp, b, http.StatusOK)
		if mig := decode[map[string]any](t, b); mig["state"] != "aborted" || mig["phase"] != "abort" {
			t.Fatalf("abort answered %s", b)
		}
		if used := nodeUsage(t, e, target); used != claimed-256 {
			t.Errorf("target uses %d MiB after the abort, %d with the claim", used, claimed)
		}
		after := e.waitState(id, "running")
		if after["compute_node"] != src {
			t.Errorf("aborted migration moved the instance to %v", after["compute_node"])
		}
		resp, b = e.migrate(id, "abort", nil)
		wantStatus(t, resp, b, http.StatusConflict)
		// A new migration may begin after an abort.
		resp, b = e.migrate(id, "begin", nil)
		wantStatus(t, resp, b, http.StatusOK)
		resp, b = e.migrate(id, "pause", nil)
		wantError(t, resp, b, http.StatusConflict, "InvalidArgument",
			"the migration of instance "+id+" is paused in phase begin: only a running sync can be paused")
		// While a switch runs, nothing else changes the instance's state.
		setMigration := func(phase, state string) {
			t.Helper()
			if _, err := e.st.Pool().Exec(e.ctx, `UPDATE migrations SET phase = $2, state = $3, updated_at = now()
				WHERE instance_id = $1 AND state NOT IN ('aborted', 'successful')`, id, phase, state); err != nil {
				t.Fatal(err)
			}
		}
		setMigration("switch", "running")
		resp, b = e.post("/alice/machines/"+id+"?action=stop", nil)
		wantError(t, resp, b, http.StatusConflict, "InvalidArgument",
			"instance "+id+" is being switched to another compute node by its migration: try again once the switch is over")
		resp, b = e.post("/alice/machines/"+id+"/tags", map[string]any{"during": "switch"})
		wantStatus(t, resp, b, http.StatusOK)
		setMigration("begin", "paused")
		// A sync left running by a replica that stopped (no heartbeat for a
		// minute) is failed when next looked at, and can be aborted.
		if _, err := e.st.Pool().Exec(e.ctx, `UPDATE migrations SET phase = 'sync', state = 'running',
			updated_at = now() - interval '5 minutes' WHERE instance_id = $1 AND state = 'paused'`, id); err != nil {
			t.Fatal(err)
		}
		resp, b = e.get("/alice/migrations/" + id)
		wantStatus(t, resp, b, http.StatusOK)
		if mig := decode[map[string]any](t, b); mig["state"] != "failed" || !strings.Contains(mig["error"].(string), "replica") {
			t.Fatalf("a stale running migration: %s", b)
		}
		resp, b = e.migrate(id, "abort", nil)
		wantStatus(t, resp, b, http.StatusOK)

		// Deleting an instance in the middle of a migration ends it and
		// gives back the target's room.
		resp, b = e.migrate(id, "begin", nil)
		wantStatus(t, resp, b, http.StatusOK)
		target = decode[map[string]any](t, b)["target_server_uuid"].(string)
		claimed = nodeUsage(t, e, target)
		resp, b = e.do(request{method: "DELETE", path: "/alice/machines/" + id})
		wantStatus(t, resp, b, http.StatusNoContent)
		e.waitState(id, "deleted")
		if used := nodeUsage(t, e, target); used != claimed-256 {
			t.Errorf("target uses %d MiB after the delete, %d with the claim", used, claimed)
		}
		resp, b = e.get("/alice/migrations/" + id)
		wantStatus(t, resp, b, http.StatusOK)
		if mig := decode[map[string]any](t, b); mig["state"] != "aborted" || mig["error"] != "the instance was deleted" {
			t.Errorf("migration of a deleted instance: %s", b)
		}
	})

	t.Run("Refusals", func(t *testing.T) {
		m := e.createMachine("mig-other", nil)
		id := m["id"].(string)
		e.waitState(id, "running")
		bob := e.newSigner("bob", e.keys.bob)
		resp, b := e.migrate(id, "begin", bob)
		wantError(t, resp, b, http.StatusNotFound, "ResourceNotFound", "VM not found")
		resp, b = e.do(request{method: "GET", path: "/bob/migrations/" + id, signer: bob})
		wantStatus(t, resp, b, http.StatusNotFound)
		resp, b = e.do(request{method: "GET", path: "/bob/migrations", signer: bob})
		wantStatus(t, resp, b, http.StatusOK)
		if list := decode[[]any](t, b); len(list) != 0 {
			t.Errorf("bob sees alice's migrations: %s", b)
		}
		resp, b = e.migrate("6a7e1f1e-0000-4000-8000-000000000000", "begin", nil)
		wantStatus(t, resp, b, http.StatusNotFound)
		resp, b = e.get("/alice/migrations/" + id)
		wantStatus(t, resp, b, http.StatusNotFound)
		resp, b = e.migrate(id, "teleport", nil)
		wantError(t, resp, b, http.StatusConflict, "InvalidArgument",
			`unknown migration action "teleport": use begin, sync, switch, automatic, pause, abort or finalize`)
		resp, b = e.migrate(id, "sync", nil)
		wantStatus(t, resp, b, http.StatusNotFound)
		resp, b = e.do(request{method: "POST", path: "/alice/machines/" + id + "/migrate",
			body: map[string]any{"action": "begin", "affinity": []string{"instance!=foo"}}})
		wantStatus(t, resp, b, http.StatusConflict)

		img, err := e.st.CreateImage(e.ctx, store.Image{Name: "mig-vm", Version: "1.0", OS: "linux", Type: "zvol", Public: true, SizeBytes: 1 << 20})
		if err != nil {
			t.Fatal(err)
		}
		vm := e.createMachine("mig-vm", map[string]any{"image": img.ID})
		vid := vm["id"].(string)
		e.waitState(vid, "running")
		resp, b = e.migrate(vid, "begin", nil)
		wantError(t, resp, b, http.StatusConflict, "InvalidArgument", "instance "+vid+" is a bhyve VM: only containers can be migrated")

		resp, b = e.post("/alice/machines/"+id+"/snapshots", map[string]any{"name": "s1"})
		wantStatus(t, resp, b, http.StatusCreated)
		resp, b = e.migrate(id, "begin", nil)
		wantError(t, resp, b, http.StatusConflict, "InvalidArgument", "instance "+id+" has 1 snapshot(s), kept on its compute node: delete them before migrating it")

		// A Docker volume lives on its node (shared ones move with the
		// instance: TestVolumesAcrossNodes).
		if _, err := e.st.CreateVolume(e.ctx, store.Volume{OwnerID: e.alice.ID, Name: "migvol", Type: "local", SizeMiB: 10240}); err != nil {
			t.Fatal(err)
		}
		wv := e.createMachine("mig-vol", map[string]any{"volumes": []map[string]any{{"name": "migvol", "mountpoint": "/data"}}})
		wid := wv["id"].(string)
		e.waitState(wid, "running")
		resp, b = e.migrate(wid, "automatic", nil)
		wantStatus(t, resp, b, http.StatusConflict)
		if !strings.Contains(string(b), "with one cannot be migrated") {
			t.Errorf("volume refusal: %s", b)
		}
	})
}

// TestMigrationSwitchFails moves an instance to a node that cannot take its
// disk: the switch fails, the instance is back running on its source with
// its files, and the migration can be aborted.
func TestMigrationSwitchFails(t *testing.T) {
	e := newEnv(t)
	failImport := func(op, id string) error {
		if op == "import" {
			return errdefs.InvalidArgument("sim: this node cannot import disks")
		}
		return nil
	}
	e.startNamedAgent("cn-1", true, failImport)
	e.startNamedAgent("cn-2", true, failImport)
	nc := nodeclient.New()
	defer nc.Close()

	m := e.createMachine("mig-fail", nil)
	id := m["id"].(string)
	before := e.waitState(id, "running")
	src := before["compute_node"].(string)
	writeFile(t, nc, e.nodeOf(t, src), id, "data", "still here")

	resp, b := e.migrate(id, "automatic", nil)
	wantStatus(t, resp, b, http.StatusOK)
	end := e.watch(t, id)
	if last := end[len(end)-1]; last["state"] != "failed" || last["phase"] != "switch" {
		t.Fatalf("watch ended with %v", last)
	}
	mig := e.waitMigration(t, id, "failed")
	if msg, _ := mig["error"].(string); !strings.Contains(msg, "cannot import disks") || !strings.Contains(msg, "back on its source node") {
		t.Errorf("migration error %q", msg)
	}
	after := e.waitState(id, "running")
	if after["compute_node"] != src {
		t.Fatalf("after the failed switch the instance is on %v, was on %s", after["compute_node"], src)
	}
	if s, err := readFile(t, nc, e.nodeOf(t, src), id, "/root/data"); err != nil || s != "still here" {
		t.Errorf("file on the source after the failed switch: %q, %v", s, err)
	}
	target := mig["target_server_uuid"].(string)
	if _, err := readFile(t, nc, e.nodeOf(t, target), id, "/root/data"); !errdefs.Is(err, errdefs.NotFound) {
		t.Errorf("the target keeps the instance: %v", err)
	}
	claimed := nodeUsage(t, e, target)
	resp, b = e.migrate(id, "abort", nil)
	wantStatus(t, resp, b, http.StatusOK)
	if used := nodeUsage(t, e, target); used != claimed-256 {
		t.Errorf("target uses %d MiB after the abort, %d with the claim", used, claimed)
	}
}
