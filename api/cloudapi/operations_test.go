package cloudapi_test

import (
	"bufio"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"flotilla/store"
)

// TestAccountOperations covers UpdateAccount, the config routes, limits and
// image deletion.
func TestAccountOperations(t *testing.T) {
	e := newEnv(t)

	t.Run("UpdateAccount", func(t *testing.T) {
		resp, b := e.post("/my", map[string]any{"companyName": "Acme", "phone": "+1 555 0100", "triton_cns_enabled": "true"})
		wantStatus(t, resp, b, http.StatusOK)
		a := decode[map[string]any](t, b)
		if a["companyName"] != "Acme" || a["phone"] != "+1 555 0100" || a["triton_cns_enabled"] != true || a["login"] != "alice" {
			t.Errorf("updated account %v", a)
		}
		resp, b = e.post("/my", map[string]any{"email": 42})
		wantError(t, resp, b, http.StatusConflict, "InvalidArgument", "email must be a string")
		resp, b = e.get("/my")
		wantStatus(t, resp, b, http.StatusOK)
		if a := decode[map[string]any](t, b); a["companyName"] != "Acme" || a["email"] != "alice@example.com" {
			t.Errorf("account after a refused update: %v", a)
		}
	})

	t.Run("Config", func(t *testing.T) {
		resp, b := e.get("/my/config")
		wantStatus(t, resp, b, http.StatusOK)
		if string(b) != "{}" {
			t.Errorf("fresh config %s", b)
		}
		nets, err := e.st.ListNetworks(e.ctx, e.alice.ID)
		if err != nil || len(nets) == 0 {
			t.Fatal(nets, err)
		}
		resp, b = e.do(request{method: "PUT", path: "/my/config", body: map[string]any{"default_network": nets[0].ID}})
		wantStatus(t, resp, b, http.StatusOK)
		if got := decode[map[string]any](t, b)["default_network"]; got != nets[0].ID {
			t.Errorf("default_network %v, want %s", got, nets[0].ID)
		}
		resp, b = e.do(request{method: "PUT", path: "/my/config", body: map[string]any{"default_network": "nope"}})
		wantError(t, resp, b, http.StatusConflict, "InvalidArgument", "unknown network nope")
	})

	t.Run("Limits", func(t *testing.T) {
		resp, b := e.get("/my/limits")
		wantStatus(t, resp, b, http.StatusOK)
		if string(b) != "[]" {
			t.Errorf("limits %s", b)
		}
	})

	t.Run("DeleteImage", func(t *testing.T) {
		owner := e.alice.ID
		mine, err := e.st.CreateImage(e.ctx, store.Image{OwnerID: &owner, Name: "mine", Version: "1", OS: "linux", Type: "lx-dataset"})
		if err != nil {
			t.Fatal(err)
		}
		resp, b := e.do(request{method: "DELETE", path: "/my/images/" + e.image.ID})
		wantError(t, resp, b, http.StatusForbidden, "NotAuthorized", "image "+e.image.ID+" is not owned by you")
		resp, b = e.do(request{method: "DELETE", path: "/my/images/" + mine.ID})
		wantStatus(t, resp, b, http.StatusNoContent)
		resp, b = e.get("/my/images/" + mine.ID)
		wantError(t, resp, b, http.StatusNotFound, "ResourceNotFound", "image "+mine.ID+" not found")
	})
}

// TestMachineSubresources covers the tag, metadata, NIC, network IP, audit,
// resize and firewall routes and the changefeed.
func TestMachineSubresources(t *testing.T) {
	e := newEnv(t)
	e.startAgent()
	m := e.createMachine("sub-1", map[string]any{"tag.a": "1", "tag.b": true, "metadata.k1": "v1", "metadata.k2": "v2"})
	id := m["id"].(string)
	e.waitState(id, "running")
	base := "/alice/machines/" + id

	t.Run("HeadTag", func(t *testing.T) {
		resp, b := e.do(request{method: "HEAD", path: base + "/tags/b"})
		wantStatus(t, resp, b, http.StatusOK)
		resp, b = e.do(request{method: "HEAD", path: base + "/tags/zz"})
		wantStatus(t, resp, b, http.StatusNotFound)
	})

	t.Run("DeleteAllTags", func(t *testing.T) {
		resp, b := e.do(request{method: "DELETE", path: base + "/tags"})
		wantStatus(t, resp, b, http.StatusNoContent)
		_, b = e.get(base + "/tags")
		if string(b) != "{}" {
			t.Errorf("tags after DeleteMachineTags: %s", b)
		}
		resp, b = e.do(request{method: "DELETE", path: base + "/tags/a"})
		wantError(t, resp, b, http.StatusNotFound, "ResourceNotFound", `tag "a" not found`)
	})

	t.Run("DeleteAllMetadata", func(t *testing.T) {
		resp, b := e.do(request{method: "DELETE", path: base + "/metadata/root_authorized_keys"})
		wantError(t, resp, b, http.StatusConflict, "InvalidArgument", "root_authorized_keys cannot be deleted")
		resp, b = e.do(request{method: "DELETE", path: base + "/metadata"})
		wantStatus(t, resp, b, http.StatusNoContent)
		_, b = e.get(base + "/metadata")
		md := decode[map[string]any](t, b)
		if _, ok := md["k1"]; ok || len(md) != 1 || md["root_authorized_keys"] == nil {
			t.Errorf("metadata after DeleteAllMachineMetadata: %v", md)
		}
	})

	t.Run("NicsAndIPs", func(t *testing.T) {
		_, b := e.get(base + "/nics")
		nics := decode[[]map[string]any](t, b)
		if len(nics) != 1 || nics[0]["primary"] != true || nics[0]["state"] != "running" {
			t.Fatalf("nics %v", nics)
		}
		mac := nics[0]["mac"].(string)
		resp, b := e.get(base + "/nics/" + strings.ReplaceAll(mac, ":", ""))
		wantStatus(t, resp, b, http.StatusOK)
		if decode[map[string]any](t, b)["ip"] != nics[0]["ip"] {
			t.Errorf("GetNic without colons: %s", b)
		}
		resp, b = e.get("/alice/networks/" + nics[0]["network"].(string) + "/ips")
		wantStatus(t, resp, b, http.StatusOK)
		found := false
		for _, ip := range decode[[]map[string]any](t, b) {
			if ip["ip"] == nics[0]["ip"] {
				found = ip["belongs_to_uuid"] == id && ip["owner_uuid"] == e.alice.ID
			}
		}
		if !found || resp.Header.Get("x-resource-count") == "" {
			t.Errorf("the machine's IP is not listed as its own: %s", b)
		}
	})

	t.Run("ResizeAndFirewall", func(t *testing.T) {
		for _, body := range []map[string]any{{"action": "resize", "package": "g1-micro-512M"},
			{"action": "enable_firewall"}, {"action": "enable_deletion_protection"}} {
			resp, b := e.post(base, body)
			wantStatus(t, resp, b, http.StatusAccepted)
		}
		_, b := e.get(base)
		got := decode[map[string]any](t, b)
		if got["package"] != "g1-micro-512M" || got["memory"] != json.Number("512") || got["firewall_enabled"] != true ||
			got["deletion_protection"] != true {
			t.Errorf("after resize and firewall: %v", got)
		}
		resp, b := e.post(base, map[string]any{"action": "resize"})
		wantError(t, resp, b, http.StatusConflict, "MissingParameter", "package is required")
		e.waitAudit(id, "resize")
	})

	t.Run("ChangefeedNeedsUpgrade", func(t *testing.T) {
		resp, b := e.get("/alice/changefeed")
		wantError(t, resp, b, http.StatusConflict, "InvalidArgument", "the changefeed needs a WebSocket upgrade")
	})

	t.Run("Changefeed", func(t *testing.T) {
		conn := e.dialChangefeed(t)
		defer conn.Close()
		sub, _ := json.Marshal(map[string]any{"resource": "vm", "subResources": []string{"alias", "state"}, "vms": []string{id}})
		conn.writeText(t, sub)
		time.Sleep(300 * time.Millisecond) // let the feed take its starting point and subscription
		resp, b := e.post(base, map[string]any{"action": "rename", "name": "sub-renamed"})
		wantStatus(t, resp, b, http.StatusAccepted)
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			msg := conn.readText(t)
			var ev struct {
				ChangeKind struct {
					Resource     string   `json:"resource"`
					SubResources []string `json:"subResources"`
				} `json:"changeKind"`
				ChangedResourceID string         `json:"changedResourceId"`
				Published         int64          `json:"published"`
				ResourceObject    map[string]any `json:"resourceObject"`
			}
			if err := json.Unmarshal(msg, &ev); err != nil {
				t.Fatalf("frame %q: %v", msg, err)
			}
			if ev.ChangedResourceID != id || ev.ChangeKind.Resource != "vm" || ev.Published == 0 {
				t.Fatalf("event %s", msg)
			}
			if len(ev.ChangeKind.SubResources) == 1 && ev.ChangeKind.SubResources[0] == "alias" {
				if ev.ResourceObject["name"] != "sub-renamed" {
					t.Errorf("rename event carries %v", ev.ResourceObject["name"])
				}
				return
			}
		}
		t.Fatal("no alias event for the rename")
	})
}

// wsConn is a minimal WebSocket client: enough for the changefeed.
type wsConn struct {
	net.Conn
	r *bufio.Reader
}

// dialChangefeed opens alice's changefeed with a signed upgrade request.
func (e *env) dialChangefeed(t *testing.T) *wsConn {
	t.Helper()
	conn, err := net.DialTimeout("tcp", strings.TrimPrefix(e.srv.URL, "http://"), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	req, _ := http.NewRequest("GET", e.srv.URL+"/alice/changefeed", nil)
	req.Header.Set("Upgrade", "websocket")
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Sec-WebSocket-Version", "13")
	req.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
	if err := e.signer.Sign(req); err != nil {
		t.Fatal(err)
	}
	if err := req.Write(conn); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(conn)
	resp, err := http.ReadResponse(r, req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols || resp.Header.Get("Sec-WebSocket-Accept") != "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" {
		t.Fatalf("upgrade: %d %v", resp.StatusCode, resp.Header)
	}
	return &wsConn{Conn: conn, r: r}
}

func (c *wsConn) writeText(t *testing.T, b []byte) {
	t.Helper()
	if len(b) > 125 {
		t.Fatal("test frames stay short")
	}
	var mask [4]byte
	rand.Read(mask[:])
	frame := []byte{0x81, 0x80 | byte(len(b))}
	frame = append(frame, mask[:]...)
	for i, x := range b {
		frame = append(frame, x^mask[i%4])
	}
	if _, err := c.Write(frame); err != nil {
		t.Fatal(err)
	}
}

func (c *wsConn) readText(t *testing.T) []byte {
	t.Helper()
	var hdr [2]byte
	if _, err := io.ReadFull(c.r, hdr[:]); err != nil {
		t.Fatal(err)
	}
	if hdr[0]&0x0f != 0x1 || hdr[1]&0x80 != 0 {
		t.Fatalf("frame header %x: want an unmasked text frame", hdr)
	}
	n := uint64(hdr[1] & 0x7f)
	switch n {
	case 126:
		var l [2]byte
		io.ReadFull(c.r, l[:])
		n = uint64(binary.BigEndian.Uint16(l[:]))
	case 127:
		var l [8]byte
		io.ReadFull(c.r, l[:])
		n = binary.BigEndian.Uint64(l[:])
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(c.r, b); err != nil {
		t.Fatal(err)
	}
	return b
}
