package cloudapi_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"flotilla/agent/driver"
	"flotilla/agent/driver/sim"
	"flotilla/store"
)

// waitDisk polls GetMachineDisk until the disk's state is want (or, for
// "gone", until it is not found).
func (e *env) waitDisk(id, diskID, want string) map[string]any {
	e.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	var last map[string]any
	for time.Now().Before(deadline) {
		resp, b := e.get("/alice/machines/" + id + "/disks/" + diskID)
		if want == "gone" && resp.StatusCode == http.StatusNotFound {
			return nil
		}
		wantStatus(e.t, resp, b, http.StatusOK)
		last = decode[map[string]any](e.t, b)
		if last["state"] == want {
			return last
		}
		time.Sleep(50 * time.Millisecond)
	}
	e.t.Fatalf("disk %s stayed %v, want %s", diskID, last["state"], want)
	return nil
}

func (e *env) listDisks(id string) []map[string]any {
	e.t.Helper()
	resp, b := e.get("/alice/machines/" + id + "/disks")
	wantStatus(e.t, resp, b, http.StatusOK)
	list := decode[[]map[string]any](e.t, b)
	if n := resp.Header.Get("x-resource-count"); n != jsonInt(len(list)) {
		e.t.Errorf("x-resource-count %q for %d disks", n, len(list))
	}
	return list
}

func jsonInt(n int) string { b, _ := json.Marshal(n); return string(b) }

// sizes are the disks' sizes (MiB) and boot flags, as "512b" or "256".
func sizes(list []map[string]any) string {
	var out []string
	for _, d := range list {
		s := fmt.Sprint(d["size"])
		if d["boot"] == true {
			s += "b"
		}
		out = append(out, s)
	}
	return strings.Join(out, ",")
}

// simDisks waits until the sim node holds want as the VM's data disks.
func simDisks(t *testing.T, drv *sim.Driver, id, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		spec, err := drv.Spec(id)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, d := range spec.Disks {
			got = append(got, jsonInt(int(d.SizeMiB)))
		}
		if strings.Join(got, ",") == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the node holds data disks %v, want %s", spec.Disks, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestMachineDisks: the disks of a VM on a flexible-disk package, against
// a sim node: the package's disk is the quota, disks change only while the
// VM is stopped, a shrink needs dangerous_allow_shrink, the boot disk
// stays, and containers, other packages and other accounts are refused.
func TestMachineDisks(t *testing.T) {
	e := newEnv(t)
	drv := e.startAgent()
	bob := e.newSigner("bob", e.keys.bob)
	if _, err := e.st.CreatePackage(e.ctx, store.Package{Name: "flex-2G", MemoryMiB: 256, DiskMiB: 2048, VCPUs: 1,
		FlexibleDisk: true, Active: true}); err != nil {
		t.Fatal(err)
	}
	imageSize := int64(512)
	diskImg, err := e.st.CreateImage(e.ctx, store.Image{Name: "vm-disk", Version: "1.0", OS: "linux", Type: "zvol", Public: true,
		SizeBytes: 1 << 20, ImageSize: &imageSize})
	if err != nil {
		t.Fatal(err)
	}
	kernelImg, err := e.st.CreateImage(e.ctx, store.Image{Name: "vm-kernel", Version: "1.0", OS: "linux", Type: "zvol", Public: true,
		SizeBytes: 1 << 20, Config: json.RawMessage(`{"config":{"Labels":{"` + driver.VMFormatLabel + `":"kernel"}}}`)})
	if err != nil {
		t.Fatal(err)
	}

	vm := e.createMachine("vmd", map[string]any{"image": diskImg.ID, "package": "flex-2G",
		"disks": []any{map[string]any{"boot": true}, map[string]any{"size": 256}}})
	id := vm["id"].(string)
	base := "/alice/machines/" + id + "/disks"
	e.waitState(id, "running")
	list := e.listDisks(id)
	if got := sizes(list); got != "512b,256" {
		t.Fatalf("disks after create = %s (%v), want the 512 MiB boot disk then 256", got, list)
	}
	boot, data := list[0]["id"].(string), list[1]["id"].(string)
	if list[0]["pci_slot"] != "0:2:0" || list[1]["pci_slot"] != "0:25:0" || list[1]["state"] != "running" {
		t.Errorf("disks %v: want the data disk running at 0:25:0", list)
	}
	simDisks(t, drv, id, "256")
	if spec, err := drv.Spec(id); err != nil || spec.DiskMiB != 512 {
		t.Fatalf("the node's spec has disk %d MiB (%v), want the boot disk's 512", spec.DiskMiB, err)
	}
	for _, path := range []string{base, base + "/" + data} {
		resp, b := e.do(request{method: "HEAD", path: path})
		wantStatus(t, resp, b, http.StatusOK)
	}
	t.Run("GetMachine", func(t *testing.T) {
		resp, b := e.get("/alice/machines/" + id)
		wantStatus(t, resp, b, http.StatusOK)
		var m struct {
			Flexible  bool
			FreeSpace int64 `json:"free_space"`
			Disks     []struct {
				ID   string
				Size int64
				Boot bool
			}
		}
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatal(err)
		}
		// 2048 MiB of the package, 512 for the boot disk, 256 for the other.
		if !m.Flexible || m.FreeSpace != 2048-512-256 || len(m.Disks) != 2 || m.Disks[0].ID != boot || !m.Disks[0].Boot || m.Disks[1].Size != 256 {
			t.Errorf("GetMachine of a flexible-disk VM: %s", b)
		}
	})

	t.Run("ErrRunning", func(t *testing.T) {
		resp, b := e.post(base, map[string]any{"size": 128})
		wantError(t, resp, b, http.StatusConflict, "InvalidArgument",
			"VM "+id+" is running: stop it before adding a disk (a VM's disks change only while it is stopped)")
		resp, b = e.post(base+"/"+data, map[string]any{"size": 300})
		wantError(t, resp, b, http.StatusConflict, "InvalidArgument",
			"VM "+id+" is running: stop it before resizing a disk (a VM's disks change only while it is stopped)")
		resp, b = e.do(request{method: "DELETE", path: base + "/" + data})
		wantError(t, resp, b, http.StatusConflict, "InvalidArgument",
			"VM "+id+" is running: stop it before deleting a disk (a VM's disks change only while it is stopped)")
	})

	resp, b := e.post("/alice/machines/"+id, map[string]any{"action": "stop"})
	wantStatus(t, resp, b, http.StatusAccepted)
	e.waitState(id, "stopped")

	var added string
	t.Run("OK/Add", func(t *testing.T) {
		resp, b := e.post(base, map[string]any{"size": 1024})
		wantStatus(t, resp, b, http.StatusOK)
		d := decode[map[string]any](t, b)
		added = d["id"].(string)
		if d["state"] != "creating" || fmt.Sprint(d["size"]) != "1024" || d["boot"] != false || d["pci_slot"] != "0:26:0" {
			t.Fatalf("added %v, want a creating 1024 MiB data disk at 0:26:0", d)
		}
		if loc := resp.Header.Get("Location"); loc != base+"/"+added {
			t.Errorf("Location %q", loc)
		}
		e.waitDisk(id, added, "running")
		simDisks(t, drv, id, "256,1024")
	})
	t.Run("ErrQuota", func(t *testing.T) {
		resp, b := e.post(base, map[string]any{"size": 512})
		wantError(t, resp, b, http.StatusConflict, "InvalidArgument", "package flex-2G gives VM "+id+
			` 2048 MiB of disk and its disks use 1792 MiB: only 256 MiB remain, not the 512 MiB asked for (ask for at most that, or "remaining")`)
	})
	var rest string
	t.Run("OK/Remaining", func(t *testing.T) {
		resp, b := e.post(base, map[string]any{"size": "remaining"})
		wantStatus(t, resp, b, http.StatusOK)
		d := decode[map[string]any](t, b)
		rest = d["id"].(string)
		if fmt.Sprint(d["size"]) != "256" {
			t.Fatalf("remaining disk %v, want 256 MiB", d)
		}
		e.waitDisk(id, rest, "running")
		resp, b = e.post(base, map[string]any{"size": "remaining"})
		wantError(t, resp, b, http.StatusConflict, "InvalidArgument", "package flex-2G gives VM "+id+
			" 2048 MiB of disk and its disks use all of it: nothing remains for a new disk")
	})
	t.Run("OK/ResizeGrowAndShrink", func(t *testing.T) {
		resp, b := e.post(base+"/"+rest, map[string]any{"size": 128})
		wantError(t, resp, b, http.StatusConflict, "InvalidArgument", "shrinking disk "+rest+
			" from 256 MiB to 128 MiB would lose the data past 128 MiB: set dangerous_allow_shrink to do it anyway")
		resp, b = e.post(base+"/"+rest, map[string]any{"size": 128, "dangerous_allow_shrink": true})
		wantStatus(t, resp, b, http.StatusOK)
		if d := decode[map[string]any](t, b); d["state"] != "resizing" || fmt.Sprint(d["size"]) != "128" {
			t.Fatalf("resized %v, want resizing to 128", d)
		}
		e.waitDisk(id, rest, "running")
		simDisks(t, drv, id, "256,1024,128")
		resp, b = e.post(base+"/"+data, map[string]any{"size": 400})
		wantError(t, resp, b, http.StatusConflict, "InvalidArgument", "package flex-2G gives VM "+id+
			" 2048 MiB of disk and its other disks use 1664 MiB: disk "+data+" can be at most 384 MiB, not 400 MiB")
		resp, b = e.post(base+"/"+data, map[string]any{"size": 384})
		wantStatus(t, resp, b, http.StatusOK)
		e.waitDisk(id, data, "running")
		simDisks(t, drv, id, "384,1024,128")
	})
	t.Run("ErrBootDisk", func(t *testing.T) {
		resp, b := e.do(request{method: "DELETE", path: base + "/" + boot})
		wantError(t, resp, b, http.StatusConflict, "InvalidArgument", "disk "+boot+" is the boot disk of VM "+id+": it cannot be deleted")
		resp, b = e.post(base+"/"+boot, map[string]any{"size": 256, "dangerous_allow_shrink": true})
		wantError(t, resp, b, http.StatusConflict, "InvalidArgument", "disk "+boot+" is the boot disk of VM "+id+
			": it cannot shrink (512 MiB now, 256 MiB asked for)")
	})
	t.Run("OK/Delete", func(t *testing.T) {
		resp, b := e.do(request{method: "DELETE", path: base + "/" + added})
		wantStatus(t, resp, b, http.StatusNoContent)
		resp, b = e.get(base + "/" + added)
		if resp.StatusCode == http.StatusOK {
			if st := decode[map[string]any](t, b)["state"]; st != "deleting" {
				t.Fatalf("a disk being deleted is %v", st)
			}
		}
		e.waitDisk(id, added, "gone")
		simDisks(t, drv, id, "384,128")
		if got := sizes(e.listDisks(id)); got != "512b,384,128" {
			t.Fatalf("disks after the delete = %s", got)
		}
		// Its room and its slot are free again.
		resp, b = e.post(base, map[string]any{"size": 1024})
		wantStatus(t, resp, b, http.StatusOK)
		if d := decode[map[string]any](t, b); d["pci_slot"] != "0:26:0" {
			t.Errorf("new disk %v, want the freed slot 0:26:0", d)
		}
	})
	t.Run("ErrBadInput", func(t *testing.T) {
		for _, body := range []any{
			map[string]any{"size": "abc"}, map[string]any{"size": -1}, map[string]any{"size": 0},
			map[string]any{"size": 1.5}, map[string]any{"size": true}, map[string]any{"size": 1 << 50},
		} {
			resp, b := e.post(base, body)
			wantStatus(t, resp, b, http.StatusConflict)
			if got := decode[map[string]any](t, b); got["code"] != "InvalidArgument" {
				t.Errorf("add %v: %v", body, got)
			}
			resp, b = e.post(base+"/"+data, body)
			wantStatus(t, resp, b, http.StatusConflict)
		}
		resp, b := e.post(base, map[string]any{})
		wantError(t, resp, b, http.StatusConflict, "MissingParameter", `size is required: a positive integer number of MiB or "remaining"`)
		resp, b = e.post(base+"/"+data, map[string]any{"size": "remaining"})
		wantStatus(t, resp, b, http.StatusConflict)
		resp, b = e.post(base+"/"+data, map[string]any{"size": 100, "dangerous_allow_shrink": "maybe"})
		wantError(t, resp, b, http.StatusConflict, "InvalidArgument", "dangerous_allow_shrink must be a boolean")
		for _, d := range []string{"nope", "00000000-0000-4000-8000-000000000000"} {
			resp, b = e.get(base + "/" + d)
			wantError(t, resp, b, http.StatusNotFound, "ResourceNotFound", "disk "+d+" not found")
			resp, b = e.post(base+"/"+d, map[string]any{"size": 10})
			wantError(t, resp, b, http.StatusNotFound, "ResourceNotFound", "disk "+d+" not found")
			resp, b = e.do(request{method: "DELETE", path: base + "/" + d})
			wantError(t, resp, b, http.StatusNotFound, "ResourceNotFound", "disk "+d+" not found")
		}
	})
	t.Run("ErrOtherAccount", func(t *testing.T) {
		for _, r := range []request{
			{method: "GET", path: "/bob/machines/" + id + "/disks"},
			{method: "GET", path: "/bob/machines/" + id + "/disks/" + data},
			{method: "POST", path: "/bob/machines/" + id + "/disks", body: map[string]any{"size": 1}},
			{method: "POST", path: "/bob/machines/" + id + "/disks/" + data, body: map[string]any{"size": 1}},
			{method: "DELETE", path: "/bob/machines/" + id + "/disks/" + data},
		} {
			r.signer = bob
			resp, b := e.do(r)
			wantError(t, resp, b, http.StatusNotFound, "ResourceNotFound", "VM not found")
		}
	})
	t.Run("ErrPackageResize", func(t *testing.T) {
		resp, b := e.post("/alice/machines/"+id, map[string]any{"action": "resize", "package": "g1-nano-256M"})
		wantStatus(t, resp, b, http.StatusConflict)
		if msg := decode[map[string]any](t, b)["message"].(string); !strings.Contains(msg, "does not have flexible_disk") {
			t.Fatalf("resize to a package without flexible_disk: %s", msg)
		}
	})
	t.Run("ErrContainer", func(t *testing.T) {
		c := e.createMachine("ctr", nil)
		cid := c["id"].(string)
		msg := "instance " + cid + " is a container: containers have no disks (disks belong to VMs with a flexible_disk package)"
		resp, b := e.get("/alice/machines/" + cid + "/disks")
		wantError(t, resp, b, http.StatusConflict, "InvalidArgument", msg)
		resp, b = e.post("/alice/machines/"+cid+"/disks", map[string]any{"size": 10})
		wantError(t, resp, b, http.StatusConflict, "InvalidArgument", msg)
		resp, b = e.post("/alice/machines", map[string]any{"name": "ctr2", "image": e.image.ID, "package": "flex-2G",
			"disks": []any{map[string]any{"size": 10}}})
		wantError(t, resp, b, http.StatusConflict, "InvalidArgument",
			"disks can only be given for a VM with a flexible_disk package; package flex-2G does not have flexible_disk")
	})
	t.Run("ErrNotFlexible", func(t *testing.T) {
		plain := e.createMachine("plain", map[string]any{"image": diskImg.ID})
		pid := plain["id"].(string)
		if got := e.listDisks(pid); len(got) != 0 {
			t.Fatalf("a VM without a flexible_disk package lists disks %v", got)
		}
		e.waitState(pid, "running")
		resp, b := e.post("/alice/machines/"+pid, map[string]any{"action": "stop"})
		wantStatus(t, resp, b, http.StatusAccepted)
		e.waitState(pid, "stopped")
		resp, b = e.post("/alice/machines/"+pid+"/disks", map[string]any{"size": 10})
		wantError(t, resp, b, http.StatusConflict, "InvalidArgument", "VM "+pid+
			" has package g1-nano-256M, which does not have flexible_disk: its disks cannot be changed (resize it to a flexible_disk package first)")
		resp, b = e.post("/alice/machines", map[string]any{"name": "plain2", "image": diskImg.ID, "package": "g1-nano-256M",
			"disks": []any{map[string]any{"size": 10}}})
		wantError(t, resp, b, http.StatusConflict, "InvalidArgument",
			"disks can only be given for a VM with a flexible_disk package; package g1-nano-256M does not have flexible_disk")
	})
	t.Run("OK/KernelImageHasNoBootDisk", func(t *testing.T) {
		k := e.createMachine("vmk", map[string]any{"image": kernelImg.ID, "package": "flex-2G",
			"disks": []any{map[string]any{"size": 100}, map[string]any{"size": "remaining"}}})
		kid := k["id"].(string)
		if got := sizes(e.listDisks(kid)); got != "100,1948" {
			t.Fatalf("kernel VM disks = %s, want 100,1948", got)
		}
		e.waitState(kid, "running")
		simDisks(t, drv, kid, "100,1948")
		k2 := e.createMachine("vmk2", map[string]any{"image": kernelImg.ID, "package": "flex-2G"})
		if got := e.listDisks(k2["id"].(string)); len(got) != 0 {
			t.Fatalf("a kernel VM created without disks has %v", got)
		}
	})
	t.Run("OK/ConcurrentAddsKeepTheQuota", func(t *testing.T) {
		k := e.createMachine("vmc", map[string]any{"image": kernelImg.ID, "package": "flex-2G"})
		kid := k["id"].(string)
		e.waitState(kid, "running")
		resp, b := e.post("/alice/machines/"+kid, map[string]any{"action": "stop"})
		wantStatus(t, resp, b, http.StatusAccepted)
		e.waitState(kid, "stopped")
		// Seven adds of 500 MiB at once: the package's 2048 MiB hold four.
		codes := make(chan int, 7)
		var wg sync.WaitGroup
		for range 7 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				resp, _ := e.post("/alice/machines/"+kid+"/disks", map[string]any{"size": 500})
				codes <- resp.StatusCode
			}()
		}
		wg.Wait()
		close(codes)
		n := map[int]int{}
		for c := range codes {
			n[c]++
		}
		if n[http.StatusOK] != 4 || n[http.StatusConflict] != 3 {
			t.Fatalf("concurrent adds answered %v, want 4 OK and 3 Conflict", n)
		}
		if got := sizes(e.listDisks(kid)); got != "500,500,500,500" {
			t.Fatalf("disks after concurrent adds = %s", got)
		}
	})
	t.Run("ErrCreateDisks", func(t *testing.T) {
		sizeless, err := e.st.CreateImage(e.ctx, store.Image{Name: "vm-sizeless", Version: "1.0", OS: "linux", Type: "zvol", Public: true, SizeBytes: 1 << 20})
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range []struct {
			img   string
			disks any
			msg   string
		}{
			{diskImg.ID, []any{map[string]any{}, map[string]any{"size": 2000}},
				"the disks add up to 2512 MiB, more than the 2048 MiB of disk of package flex-2G"},
			{diskImg.ID, []any{map[string]any{}, map[string]any{"size": "remaining"}, map[string]any{"size": "remaining"}},
				`only one disk can have size "remaining"`},
			{diskImg.ID, []any{map[string]any{"size": 2048}, map[string]any{"size": "remaining"}},
				`package flex-2G has 2048 MiB of disk and the other disks take 2048 MiB: nothing remains for the disk of size "remaining"`},
			{diskImg.ID, []any{map[string]any{}, map[string]any{"boot": true, "size": 1}}, "disks[1]: only disks[0] can be the boot disk"},
			{diskImg.ID, []any{map[string]any{}, map[string]any{}}, `disks[1] needs a size: a positive number of MiB or "remaining"`},
			{kernelImg.ID, []any{map[string]any{"boot": true, "size": 1}},
				"disks[0]: image vm-kernel boots a kernel and has no boot disk; every disk is a data disk"},
			{diskImg.ID, "not json", "disks must be an array of {size, boot}: invalid character 'o' in literal null (expecting 'u')"},
			{diskImg.ID, []any{"x"}, "disks[0] must be an object {size, boot}"},
			{diskImg.ID, []any{map[string]any{"size": -5}}, `disks[0].size must be a positive integer number of MiB or "remaining", not -5`},
			{diskImg.ID, []any{map[string]any{}, 1, 2, 3, 4, 5, 6, 7, 8}, "a VM has at most 8 disks, not 9"},
			{sizeless.ID, nil, `package flex-2G has flexible_disk and image vm-sizeless does not say how large its disk is: give the boot disk's size in disks (triton create --disk '{"size":MiB}')`},
			{sizeless.ID, []any{map[string]any{}}, "disks[0] (the boot disk) needs a size: image vm-sizeless does not say how large its disk is"},
		} {
			body := map[string]any{"name": "bad", "image": c.img, "package": "flex-2G"}
			if c.disks != nil {
				body["disks"] = c.disks
			}
			resp, b := e.post("/alice/machines", body)
			wantError(t, resp, b, http.StatusConflict, "InvalidArgument", c.msg)
		}
	})
}
