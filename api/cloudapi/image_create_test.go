package cloudapi_test

import (
	"net/http"
	"testing"

	"flotilla/oci"
	"flotilla/store"
)

// TestCreateImageFromMachineErrors checks what CreateImageFromMachine
// refuses, each in CloudAPI's error format and never as a server error
// (the success path runs on real runc nodes in e2e/workloads).
func TestCreateImageFromMachineErrors(t *testing.T) {
	e := newEnv(t)
	e.startAgent()
	blobs, err := oci.NewDirStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	e.svc.SetBlobs(blobs)
	zvol, err := e.st.CreateImage(e.ctx, store.Image{Name: "ubuntu-vm", Version: "1", OS: "linux", Type: "zvol", Public: true})
	if err != nil {
		t.Fatal(err)
	}
	ctr := e.createMachine("ctr", nil)
	vm := e.createMachine("vm", map[string]any{"image": zvol.ID})
	e.waitState(vm["id"].(string), "running")
	e.waitState(ctr["id"].(string), "running")

	t.Run("ErrMissingParameter", func(t *testing.T) {
		resp, b := e.post("/alice/images", map[string]any{"name": "x", "version": "1"})
		wantError(t, resp, b, http.StatusConflict, "MissingParameter", "machine is a required argument")
		resp, b = e.post("/alice/images", map[string]any{"machine": ctr["id"], "name": "x"})
		wantError(t, resp, b, http.StatusConflict, "MissingParameter", "version is a required argument")
	})
	t.Run("ErrUnknownMachine", func(t *testing.T) {
		resp, b := e.post("/alice/images", map[string]any{"machine": "00000000-0000-4000-8000-000000000001", "name": "x", "version": "1"})
		wantError(t, resp, b, http.StatusNotFound, "ResourceNotFound", "VM not found")
	})
	t.Run("ErrOtherAccountsMachine", func(t *testing.T) {
		resp, b := e.do(request{method: http.MethodPost, path: "/bob/images", signer: e.newSigner("bob", e.keys.bob),
			body: map[string]any{"machine": ctr["id"], "name": "x", "version": "1"}})
		wantError(t, resp, b, http.StatusNotFound, "ResourceNotFound", "VM not found")
	})
	t.Run("ErrVirtualMachine", func(t *testing.T) {
		resp, b := e.post("/alice/images", map[string]any{"machine": vm["id"], "name": "x", "version": "1"})
		wantError(t, resp, b, http.StatusConflict, "InvalidArgument",
			"instance "+vm["id"].(string)+" is a virtual machine (bhyve): images can be made only from container instances")
	})
	t.Run("ErrImageWithoutContent", func(t *testing.T) {
		// The harness's image is a record without blobs: nothing to build on.
		resp, b := e.post("/alice/images", map[string]any{"machine": ctr["id"], "name": "x", "version": "1"})
		wantError(t, resp, b, http.StatusConflict, "InvalidArgument",
			"the image "+e.image.ID+" of instance "+ctr["id"].(string)+" has no content")
	})
	resp, b := e.get("/alice/images?name=x")
	wantStatus(t, resp, b, http.StatusOK)
	if string(b) != "[]" {
		t.Fatalf("a refused image create left an image: %s", b)
	}
}
