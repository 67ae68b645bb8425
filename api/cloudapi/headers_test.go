package cloudapi_test

import (
	"crypto/md5"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"regexp"
	"strconv"
	"testing"
	"time"
)

var uuidRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// TestResponseHeaders checks the headers restify's fullResponse gives every
// CloudAPI response.
func TestResponseHeaders(t *testing.T) {
	e := newEnv(t)

	t.Run("Common", func(t *testing.T) {
		resp, b := e.get("/alice/keys")
		wantStatus(t, resp, b, http.StatusOK)
		want := map[string]string{
			"Server":                        "cloudapi/9.20.0",
			"Api-Version":                   "9.0.0",
			"Content-Type":                  "application/json",
			"Content-Length":                strconv.Itoa(len(b)),
			"Access-Control-Allow-Origin":   "*",
			"Access-Control-Allow-Headers":  "Accept, Accept-Version, Content-Length, Content-MD5, Content-Type, Date, Api-Version, Response-Time",
			"Access-Control-Allow-Methods":  "GET, HEAD, POST, PUT, DELETE, OPTIONS",
			"Access-Control-Expose-Headers": "Api-Version, Request-Id, Response-Time",
		}
		for k, v := range want {
			if got := resp.Header.Get(k); got != v {
				t.Errorf("%s: %q, want %q", k, got, v)
			}
		}
		sum := md5.Sum(b)
		if got := resp.Header.Get("Content-MD5"); got != base64.StdEncoding.EncodeToString(sum[:]) {
			t.Errorf("Content-MD5 %q does not match the body", got)
		}
		if rt := resp.Header.Get("Response-Time"); !regexp.MustCompile(`^\d+$`).MatchString(rt) {
			t.Errorf("Response-Time %q", rt)
		}
		if !uuidRE.MatchString(resp.Header.Get("Request-Id")) {
			t.Errorf("generated Request-Id %q is not a uuid", resp.Header.Get("Request-Id"))
		}
		d, err := http.ParseTime(resp.Header.Get("Date"))
		if err != nil || time.Since(d) > time.Minute {
			t.Errorf("Date %q: %v", resp.Header.Get("Date"), err)
		}
	})

	t.Run("ErrorsCarryThemToo", func(t *testing.T) {
		resp, b := e.do(request{method: "GET", path: "/alice", unsigned: true})
		wantStatus(t, resp, b, http.StatusUnauthorized)
		sum := md5.Sum(b)
		if resp.Header.Get("Content-Length") != strconv.Itoa(len(b)) ||
			resp.Header.Get("Content-MD5") != base64.StdEncoding.EncodeToString(sum[:]) ||
			resp.Header.Get("Server") != "cloudapi/9.20.0" || resp.Header.Get("Access-Control-Allow-Origin") != "*" {
			t.Errorf("401 headers %v", resp.Header)
		}
	})

	t.Run("RequestIdEchoed", func(t *testing.T) {
		for _, h := range []string{"Request-Id", "X-Request-Id"} {
			resp, b := e.do(request{method: "GET", path: "/alice", header: map[string]string{h: "req-" + h}})
			wantStatus(t, resp, b, http.StatusOK)
			if got := resp.Header.Get("Request-Id"); got != "req-"+h {
				t.Errorf("sent %s, got Request-Id %q", h, got)
			}
		}
		// On errors as well.
		resp, _ := e.do(request{method: "GET", path: "/alice", unsigned: true, header: map[string]string{"x-request-id": "unsigned-1"}})
		if got := resp.Header.Get("Request-Id"); got != "unsigned-1" {
			t.Errorf("401 Request-Id %q", got)
		}
	})

	t.Run("ApiVersion", func(t *testing.T) {
		for rng, want := range map[string]string{"": "9.0.0", "*": "9.0.0", "~9||~8": "9.0.0", "8": "8.0.0",
			"~8": "8.0.0", "~7.2": "7.2.0", "7.x": "7.3.0"} {
			r := request{method: "GET", path: "/alice"}
			if rng != "" {
				r.header = map[string]string{"Accept-Version": rng}
			}
			resp, b := e.do(r)
			wantStatus(t, resp, b, http.StatusOK)
			if got := resp.Header.Get("Api-Version"); got != want {
				t.Errorf("Accept-Version %q: Api-Version %q, want %q", rng, got, want)
			}
		}
	})

	t.Run("ImageTypeByVersion", func(t *testing.T) {
		for rng, want := range map[string]string{"~9": "zone-dataset", "~7": "smartmachine"} {
			resp, b := e.do(request{method: "GET", path: "/alice/images/" + e.image.ID, header: map[string]string{"Accept-Version": rng}})
			wantStatus(t, resp, b, http.StatusOK)
			if got := decode[map[string]any](t, b)["type"]; got != want {
				t.Errorf("Accept-Version %s: image type %v, want %s", rng, got, want)
			}
		}
	})

	t.Run("Ping", func(t *testing.T) {
		resp, b := e.do(request{method: "GET", path: "/--ping", unsigned: true})
		wantStatus(t, resp, b, http.StatusOK)
		ping := decode[map[string]any](t, b)
		versions, _ := ping["cloudapi"].(map[string]any)["versions"].([]any)
		if ping["ping"] != "pong" || len(ping) != 2 || len(versions) != 6 || versions[0] != "9.0.0" || versions[5] != "7.0.0" {
			t.Errorf("ping body %s", b)
		}
		if dc := resp.Header.Get("Triton-Datacenter-Name"); dc != "test-1" {
			t.Errorf("Triton-Datacenter-Name %q", dc)
		}
	})

	t.Run("CORSPreflight", func(t *testing.T) {
		resp, b := e.do(request{method: "OPTIONS", path: "/alice/machines", unsigned: true,
			header: map[string]string{"Origin": "https://portal.example", "Access-Control-Request-Method": "POST"}})
		wantStatus(t, resp, b, http.StatusOK)
		if len(b) != 0 || resp.Header.Get("Access-Control-Allow-Origin") != "*" ||
			resp.Header.Get("Access-Control-Allow-Methods") == "" {
			t.Errorf("preflight: %v %q", resp.Header, b)
		}
	})

	t.Run("MyAlias", func(t *testing.T) {
		_, mine := e.get("/my/keys")
		_, alices := e.get("/alice/keys")
		if string(mine) != string(alices) || len(decode[[]any](t, mine)) != 3 {
			t.Errorf("/my/keys %s\n/alice/keys %s", mine, alices)
		}
		resp, b := e.get("/my")
		wantStatus(t, resp, b, http.StatusOK)
		acct := decode[map[string]any](t, b)
		if acct["login"] != "alice" || acct["email"] != "alice@example.com" || acct["firstName"] != "Alice" ||
			acct["triton_cns_enabled"] != false {
			t.Errorf("GET /my: %v", acct)
		}
	})

	t.Run("Services", func(t *testing.T) {
		resp, b := e.get("/my/services")
		wantStatus(t, resp, b, http.StatusOK)
		if got := decode[map[string]any](t, b); got["cloudapi"] != e.srv.URL || len(got) != 1 {
			t.Errorf("services %v", got)
		}
		resp, b = e.get("/my/datacenters")
		wantStatus(t, resp, b, http.StatusOK)
		if got := decode[map[string]any](t, b); got["test-1"] != e.srv.URL || resp.Header.Get("Triton-Datacenter-Name") != "test-1" {
			t.Errorf("datacenters %v", got)
		}
		resp, b = e.get("/my/datacenters/test-1")
		wantError(t, resp, b, http.StatusFound, "ResourceMoved", "test-1 "+e.srv.URL)
		if resp.Header.Get("Location") != e.srv.URL {
			t.Errorf("Location %q", resp.Header.Get("Location"))
		}
	})
}

// TestMachineListingAndParams needs machines: it runs a sim agent.
func TestMachineListingAndParams(t *testing.T) {
	e := newEnv(t)
	e.startAgent()
	for _, n := range []string{"list-a", "list-b", "list-c"} {
		e.createMachine(n, nil)
	}

	t.Run("Paging", func(t *testing.T) {
		cases := []struct {
			query       string
			count, lim  string
			first, last string
		}{
			{"", "3", "1000", "", ""},
			{"?limit=2", "2", "2", "", ""},
			{"?limit=2&offset=2", "1", "2", "", ""},
			{"?offset=5", "0", "1000", "", ""},
			{"?name=list-b", "1", "1000", "list-b", "list-b"},
		}
		seen := map[string]bool{}
		for _, c := range cases {
			resp, b := e.get("/alice/machines" + c.query)
			wantStatus(t, resp, b, http.StatusOK)
			list := decode[[]map[string]any](t, b)
			if resp.Header.Get("x-resource-count") != c.count || resp.Header.Get("x-query-limit") != c.lim ||
				strconv.Itoa(len(list)) != c.count {
				t.Errorf("%s: x-resource-count %q x-query-limit %q, %d items; want %s, %s", c.query,
					resp.Header.Get("x-resource-count"), resp.Header.Get("x-query-limit"), len(list), c.count, c.lim)
			}
			if c.first != "" && (len(list) == 0 || list[0]["name"] != c.first) {
				t.Errorf("%s: %v", c.query, list)
			}
			if c.query == "?limit=2" || c.query == "?limit=2&offset=2" {
				for _, m := range list {
					seen[m["name"].(string)] = true
				}
			}
		}
		if len(seen) != 3 {
			t.Errorf("two pages covered %v, want all three machines", seen)
		}
		// HEAD /machines is how triton-go counts: same headers, no body.
		resp, b := e.do(request{method: "HEAD", path: "/alice/machines?limit=2"})
		wantStatus(t, resp, b, http.StatusOK)
		if len(b) != 0 || resp.Header.Get("x-resource-count") != "2" || resp.Header.Get("x-query-limit") != "2" {
			t.Errorf("HEAD machines: %v %q", resp.Header, b)
		}
	})

	t.Run("BodyWinsOverQuery", func(t *testing.T) {
		resp, b := e.post("/alice/machines?name=from-query&package=g1-micro-512M",
			map[string]any{"name": "from-body", "image": e.image.ID})
		wantStatus(t, resp, b, http.StatusCreated)
		m := decode[map[string]any](t, b)
		if m["name"] != "from-body" || m["package"] != "g1-micro-512M" || m["memory"] != json.Number("512") {
			t.Errorf("merged create: name %v package %v memory %v", m["name"], m["package"], m["memory"])
		}
	})

	t.Run("QueryOnlyCreate", func(t *testing.T) {
		resp, b := e.do(request{method: "POST", path: "/alice/machines?name=from-query-only&image=" + e.image.ID + "&package=g1-nano-256M&tag.env=prod"})
		wantStatus(t, resp, b, http.StatusCreated)
		m := decode[map[string]any](t, b)
		if m["name"] != "from-query-only" || m["tags"].(map[string]any)["env"] != "prod" {
			t.Errorf("query create: %v", m)
		}
	})

	t.Run("FormBody", func(t *testing.T) {
		resp, b := e.do(request{method: "POST", path: "/alice/machines",
			body:   "name=from-form&image=" + e.image.ID + "&package=g1-nano-256M",
			header: map[string]string{"Content-Type": "application/x-www-form-urlencoded"}})
		wantStatus(t, resp, b, http.StatusCreated)
		if m := decode[map[string]any](t, b); m["name"] != "from-form" {
			t.Errorf("form create: %v", m)
		}
	})

	t.Run("ActionInQueryOrBody", func(t *testing.T) {
		m := e.createMachine("acts", nil)
		id := m["id"].(string)
		e.waitState(id, "running")
		// triton-go: action in the query, empty body.
		resp, b := e.do(request{method: "POST", path: "/alice/machines/" + id + "?action=stop"})
		wantStatus(t, resp, b, http.StatusAccepted)
		e.waitState(id, "stopped")
		// The body's action wins over the query's.
		resp, b = e.post("/alice/machines/"+id+"?action=bogus", map[string]any{"action": "start"})
		wantStatus(t, resp, b, http.StatusAccepted)
		e.waitState(id, "running")
		resp, b = e.post("/alice/machines/"+id, map[string]any{})
		wantError(t, resp, b, http.StatusConflict, "MissingParameter", "action is required")
		resp, b = e.post("/alice/machines/"+id, map[string]any{"action": "explode"})
		wantError(t, resp, b, http.StatusConflict, "InvalidArgument", "explode is not a valid action")
	})

	t.Run("HeadTwins", func(t *testing.T) {
		_, b := e.get("/alice/machines?name=list-a")
		list := decode[[]map[string]any](t, b)
		if len(list) != 1 {
			t.Fatalf("list-a: %s", b)
		}
		id := list[0]["id"].(string)
		nics := list[0]["nics"].([]any)
		mac := nics[0].(map[string]any)["mac"].(string)
		net := list[0]["networks"].([]any)[0].(string)
		paths := []string{"/alice", "/alice/keys", "/alice/keys/id_rsa", "/alice/limits", "/alice/config",
			"/alice/packages", "/alice/packages/g1-nano-256M", "/alice/images", "/alice/images/" + e.image.ID,
			"/alice/networks", "/alice/networks/" + net, "/alice/networks/" + net + "/ips", "/alice/machines",
			"/alice/machines/" + id, "/alice/machines/" + id + "/audit", "/alice/machines/" + id + "/tags",
			"/alice/machines/" + id + "/metadata", "/alice/machines/" + id + "/metadata/root_authorized_keys",
			"/alice/machines/" + id + "/nics", "/alice/machines/" + id + "/nics/" + mac,
			"/alice/machines/" + id + "/fwrules", "/alice/machines/" + id + "/snapshots",
			"/alice/machines/00000000-0000-4000-8000-000000000000", "/alice/keys/nope"}
		for _, p := range paths {
			gresp, gb := e.get(p)
			hresp, hb := e.do(request{method: "HEAD", path: p})
			if hresp.StatusCode != gresp.StatusCode {
				t.Errorf("HEAD %s: %d, GET %d", p, hresp.StatusCode, gresp.StatusCode)
			}
			if len(hb) != 0 {
				t.Errorf("HEAD %s has a body: %q", p, hb)
			}
			for _, h := range []string{"Content-Length", "Content-MD5", "Content-Type"} {
				if hresp.Header.Get(h) != gresp.Header.Get(h) {
					t.Errorf("HEAD %s: %s %q, GET %q", p, h, hresp.Header.Get(h), gresp.Header.Get(h))
				}
			}
			if gresp.StatusCode == http.StatusOK && gresp.Header.Get("Content-Length") != strconv.Itoa(len(gb)) {
				t.Errorf("GET %s Content-Length %q for %d bytes", p, gresp.Header.Get("Content-Length"), len(gb))
			}
		}
	})

	t.Run("TagAsText", func(t *testing.T) {
		m := e.createMachine("tagged", map[string]any{"tag.count": 3})
		id := m["id"].(string)
		resp, b := e.do(request{method: "GET", path: "/alice/machines/" + id + "/tags/count"})
		wantStatus(t, resp, b, http.StatusOK)
		if string(b) != "3" {
			t.Errorf("tag as JSON %q", b)
		}
		resp, b = e.do(request{method: "GET", path: "/alice/machines/" + id + "/tags/count", header: map[string]string{"Accept": "text/plain"}})
		wantStatus(t, resp, b, http.StatusOK)
		if string(b) != "3" || resp.Header.Get("Content-Type") != "text/plain" {
			t.Errorf("tag as text %q (%s)", b, resp.Header.Get("Content-Type"))
		}
		resp, b = e.get("/alice/machines/" + id + "/tags/nope")
		wantError(t, resp, b, http.StatusNotFound, "ResourceNotFound", `tag "nope" not found`)
	})
}
