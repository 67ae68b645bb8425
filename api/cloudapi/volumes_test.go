package cloudapi_test

import (
	"net/http"
	"net/url"
	"testing"

	"flotilla/api/cloudapi"
	"flotilla/api/errdefs"
)

func TestVolumes(t *testing.T) {
	e := newEnv(t)
	bob := e.newSigner("bob", e.keys.bob)

	resp, b := e.post("/alice/volumes", map[string]any{"name": "data", "size": 20480, "tags": map[string]any{"team": "a"}})
	wantStatus(t, resp, b, http.StatusCreated)
	vol := decode[map[string]any](t, b)
	id, _ := vol["id"].(string)
	if vol["name"] != "data" || vol["type"] != "tritonnfs" || vol["state"] != "ready" || id == "" {
		t.Fatalf("created %v", vol)
	}

	t.Run("OK/GetByIDAndName", func(t *testing.T) {
		for _, ref := range []string{id, "data"} {
			resp, b := e.get("/alice/volumes/" + ref)
			wantStatus(t, resp, b, http.StatusOK)
			if got := decode[map[string]any](t, b); got["id"] != id {
				t.Errorf("GET %s = %v", ref, got)
			}
		}
	})
	t.Run("OK/ListPredicate", func(t *testing.T) {
		pred := url.QueryEscape(`{"and":[{"ne":["state","failed"]},{"eq":["name","data"]}]}`)
		resp, b := e.get("/alice/volumes?predicate=" + pred)
		wantStatus(t, resp, b, http.StatusOK)
		if list := decode[[]map[string]any](t, b); len(list) != 1 || list[0]["id"] != id {
			t.Errorf("list by predicate = %v", list)
		}
		resp, b = e.get("/alice/volumes?name=da*")
		wantStatus(t, resp, b, http.StatusOK)
		if list := decode[[]map[string]any](t, b); len(list) != 1 {
			t.Errorf("list by name prefix = %v", list)
		}
		resp, b = e.get("/alice/volumes?predicate=" + url.QueryEscape(`{"gt":["size",1]}`))
		wantError(t, resp, b, http.StatusConflict, "InvalidArgument", `predicate operator "gt" is not one of and, or, eq, ne`)
	})
	t.Run("OK/Sizes", func(t *testing.T) {
		resp, b := e.get("/alice/volumesizes")
		wantStatus(t, resp, b, http.StatusOK)
		if list := decode[[]map[string]any](t, b); len(list) != 19 {
			t.Errorf("sizes = %v", list)
		}
	})
	t.Run("ErrOtherAccount", func(t *testing.T) {
		resp, b := e.do(request{method: "GET", path: "/bob/volumes/" + id, signer: bob})
		wantError(t, resp, b, http.StatusNotFound, "ResourceNotFound", "volume "+id+" not found")
		resp, b = e.do(request{method: "DELETE", path: "/bob/volumes/" + id, signer: bob})
		wantError(t, resp, b, http.StatusNotFound, "ResourceNotFound", "volume "+id+" not found")
		resp, b = e.do(request{method: "GET", path: "/bob/volumes", signer: bob})
		wantStatus(t, resp, b, http.StatusOK)
		if list := decode[[]map[string]any](t, b); len(list) != 0 {
			t.Errorf("bob lists %v", list)
		}
	})
	t.Run("ErrBadInput", func(t *testing.T) {
		for _, tc := range []struct {
			body      map[string]any
			code, msg string
		}{
			{map[string]any{"name": "data"}, "VolumeAlreadyExists", "a volume named data already exists"},
			{map[string]any{"name": "odd", "size": 15000}, "VolumeSizeNotAvailable", "volume size 15000 MiB is not available; see ListVolumeSizes (triton volume sizes)"},
			{map[string]any{"name": "bad/name"}, "InvalidArgument", `invalid volume name "bad/name": use up to 256 letters, digits, '_', '.' or '-', starting with a letter or digit`},
			{map[string]any{"name": "t", "type": "nfs"}, "InvalidArgument", `volume type "nfs" is not supported: use tritonnfs`},
			{map[string]any{"name": "s", "size": "ten"}, "InvalidArgument", "size must be a positive number of MiB"},
			{map[string]any{"name": "n", "networks": []string{"x"}}, "InvalidArgument", "volume networks are not supported: nodes reach a shared volume over their own network; leave out networks (-N)"},
			{map[string]any{"name": "a", "affinity": []string{"instance=web"}}, "InvalidArgument", "could not find operator in affinity rule: expected one of \"==\", \"!=\": \"instance=web\""},
			{map[string]any{"name": "a", "affinity": []string{"instance==web"}}, "InsufficientCapacity", "no node can hold volume a (this cloud runs no runc node), so its affinity rules cannot be met"},
		} {
			resp, b := e.post("/alice/volumes", tc.body)
			wantError(t, resp, b, http.StatusConflict, tc.code, tc.msg)
		}
	})
	t.Run("OK/Rename", func(t *testing.T) {
		resp, b := e.post("/alice/volumes/"+id, map[string]any{"name": "renamed"})
		wantStatus(t, resp, b, http.StatusOK)
		if got := decode[map[string]any](t, b); got["id"] != id || got["name"] != "renamed" {
			t.Fatalf("renamed: %v", got)
		}
		resp, b = e.get("/alice/volumes/renamed")
		wantStatus(t, resp, b, http.StatusOK)
		resp, b = e.post("/alice/volumes", map[string]any{"name": "other"})
		wantStatus(t, resp, b, http.StatusCreated)
		otherID := decode[map[string]any](t, b)["id"].(string)
		for _, tc := range []struct {
			path      string
			body      map[string]any
			code, msg string
		}{
			{"renamed", map[string]any{"name": "other"}, "VolumeAlreadyExists", "a volume named other already exists"},
			{"renamed", map[string]any{"name": "bad/name"}, "InvalidArgument", `invalid volume name "bad/name": use up to 256 letters, digits, '_', '.' or '-', starting with a letter or digit`},
			{"renamed", map[string]any{"size": 20480}, "InvalidArgument", "size cannot be updated: a volume's name is all that can change"},
			{"renamed", map[string]any{}, "InvalidArgument", "name is required: give the volume's new name"},
		} {
			resp, b := e.post("/alice/volumes/"+tc.path, tc.body)
			wantError(t, resp, b, http.StatusConflict, tc.code, tc.msg)
		}
		resp, b = e.do(request{method: "POST", path: "/bob/volumes/" + id, body: map[string]any{"name": "stolen"}, signer: bob})
		wantError(t, resp, b, http.StatusNotFound, "ResourceNotFound", "volume "+id+" not found")
		resp, b = e.post("/alice/volumes/"+id, map[string]any{"name": "data"})
		wantStatus(t, resp, b, http.StatusOK)
		resp, b = e.do(request{method: "DELETE", path: "/alice/volumes/" + otherID})
		wantStatus(t, resp, b, http.StatusNoContent)
	})
	t.Run("OK/Delete", func(t *testing.T) {
		resp, b := e.do(request{method: "DELETE", path: "/alice/volumes/" + id})
		wantStatus(t, resp, b, http.StatusNoContent)
		resp, b = e.get("/alice/volumes/" + id)
		wantError(t, resp, b, http.StatusNotFound, "VolumeNotFound", "volume "+id+" was deleted")
		// Its name is free again.
		resp, b = e.post("/alice/volumes", map[string]any{"name": "data"})
		wantStatus(t, resp, b, http.StatusCreated)
	})
}

func TestVolumeInUse(t *testing.T) {
	e := newEnv(t)
	e.startAgent()
	resp, b := e.post("/alice/volumes", map[string]any{"name": "shared"})
	wantStatus(t, resp, b, http.StatusCreated)
	m := e.createMachine("with-vol", map[string]any{"volumes": []map[string]any{{"name": "shared", "mountpoint": "/data", "type": "tritonnfs", "mode": "rw"}}})
	resp, b = e.get("/alice/volumes/shared")
	wantStatus(t, resp, b, http.StatusOK)
	if refs, _ := decode[map[string]any](t, b)["refs"].([]any); len(refs) != 1 || refs[0] != m["id"] {
		t.Errorf("refs = %v, want [%v]", refs, m["id"])
	}
	resp, b = e.do(request{method: "DELETE", path: "/alice/volumes/shared"})
	wantError(t, resp, b, http.StatusConflict, "VolumeInUse", "volume shared is in use by "+m["id"].(string)+"; remove those instances first")
	resp, b = e.post("/alice/machines", map[string]any{"name": "no-vol", "image": e.image.ID, "package": "g1-nano-256M",
		"volumes": []map[string]any{{"name": "nosuch", "mountpoint": "/data"}}})
	wantError(t, resp, b, http.StatusConflict, "InvalidArgument", "volume nosuch not found: create it first (triton volume create -n nosuch)")
	resp, b = e.post("/alice/machines", map[string]any{"name": "bad-vol", "image": e.image.ID, "package": "g1-nano-256M",
		"volumes": []map[string]any{{"name": "shared", "mountpoint": "relative"}}})
	wantError(t, resp, b, http.StatusConflict, "InvalidArgument", `invalid mount point "relative" for a volume: give an absolute path other than /`)
}

func FuzzVolumePredicate(f *testing.F) {
	for _, s := range []string{`{"and":[{"ne":["state","failed"]},{"eq":["name","x"]}]}`, `{"eq":["size",10240]}`,
		`{"or":[]}`, `{}`, `[]`, `{"eq":["nope",1]}`, `{"and":[{"and":[{"and":[]}]}]}`, `null`, `{"ne":["name"]}`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := cloudapi.ParseVolumePredicate(s)
		if err != nil {
			if !errdefs.Is(err, errdefs.Invalid) {
				t.Fatalf("ParseVolumePredicate(%q): %v is not Invalid", s, err)
			}
			return
		}
		if p == nil {
			t.Fatalf("ParseVolumePredicate(%q) = nil, nil", s)
		}
	})
}
