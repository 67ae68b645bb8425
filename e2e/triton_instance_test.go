package e2e

import (
	"context"
	"encoding/json"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

var createdRE = regexp.MustCompile(`Created instance (\S+) \(([0-9a-f-]{36})\)`)

// tritonCreate runs `triton create ... -w` and returns the new instance's id.
func tritonCreate(t *testing.T, name string, args ...string) string {
	t.Helper()
	start := time.Now()
	out := tri(t, append([]string{"create", "busybox", "g1-nano-256M", "-n", name, "-w"}, args...)...)
	took := time.Since(start)
	m := createdRE.FindStringSubmatch(out)
	if m == nil || m[1] != name {
		t.Fatalf("triton create printed %q, want \"Created instance %s (<uuid>)\"", out, name)
	}
	figure("triton create -w "+name+" (wall)", "%.2fs", took.Seconds())
	return m[2]
}

// instGet is `triton inst get -j X` for an instance that exists.
func instGet(t *testing.T, x string) map[string]any {
	t.Helper()
	var in map[string]any
	triJSON(t, &in, "inst", "get", "-j", x)
	return in
}

// queryRow runs one SQL query against a database URL.
func queryRow(t *testing.T, dbURL, sql string, args []any, dest ...any) {
	t.Helper()
	ctx := ctxTimeout(t, 10*time.Second)
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if err := conn.QueryRow(ctx, sql, args...).Scan(dest...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// TestTritonInstances drives an instance's whole life with the triton CLI.
func TestTritonInstances(t *testing.T) {
	requireTriton(t)

	webID := tritonCreate(t, "e2e-web", "-N", "public", "-m", "foo=bar", "-t", "role=web", "-t", "n=1",
		"--firewall", "--deletion-protection")
	dbID := tritonCreate(t, "e2e-db", "-t", "role=db", "-a", "instance!=e2e-web")
	web := "e2e-web"

	t.Run("CreatedAsAsked", func(t *testing.T) {
		in := instGet(t, web)
		var tags map[string]any
		b, _ := json.Marshal(in["tags"])
		json.Unmarshal(b, &tags)
		checks := []struct{ field, got, want string }{
			{"id", field(in, "id"), webID},
			{"state", field(in, "state"), "running"},
			{"package", field(in, "package"), "g1-nano-256M"},
			{"memory", field(in, "memory"), "256"},
			{"firewall_enabled", field(in, "firewall_enabled"), "true"},
			{"deletion_protection", field(in, "deletion_protection"), "true"},
			{"image", field(in, "image"), "b0c1d2e3-0000-4000-8000-000000000001"},
			{"tags", field(in, "tags"), `{"n":1,"role":"web"}`},
		}
		for _, c := range checks {
			if c.got != c.want {
				t.Errorf("%s = %s, want %s", c.field, c.got, c.want)
			}
		}
		if md, _ := in["metadata"].(map[string]any); md["foo"] != "bar" {
			t.Errorf("metadata = %v, want foo=bar", in["metadata"])
		}
		if ip := field(in, "primaryIp"); !strings.HasPrefix(ip, "10.198.") {
			t.Errorf("primaryIp = %q, want an address on the public network 10.198.0.0/20", ip)
		}
	})

	t.Run("AffinityPlacedApart", func(t *testing.T) {
		var same bool
		queryRow(t, devEnv["FLOTILLA_DB"], `SELECT a.node_id = b.node_id FROM instances a, instances b WHERE a.id = $1 AND b.id = $2`,
			[]any{webID, dbID}, &same)
		if same {
			t.Error("e2e-db was created with instance!=e2e-web but shares its node")
		}
	})

	t.Run("ListFilters", func(t *testing.T) {
		cases := []struct {
			name    string
			filters []string
			want    []string
		}{
			{"All", nil, []string{"e2e-db", "e2e-web"}},
			{"TagRoleWeb", []string{"tag.role=web"}, []string{"e2e-web"}},
			{"TagNumber", []string{"tag.n=1"}, []string{"e2e-web"}},
			{"StateRunning", []string{"state=running"}, []string{"e2e-db", "e2e-web"}},
			{"StateStoppedNone", []string{"state=stopped"}, nil},
			{"Name", []string{"name=e2e-db"}, []string{"e2e-db"}},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				var list []map[string]any
				triJSON(t, &list, append([]string{"ls", "-j"}, tc.filters...)...)
				var got []string
				for _, m := range list {
					got = append(got, field(m, "name"))
				}
				if strings.Join(slices.Sorted(slices.Values(got)), ",") != strings.Join(tc.want, ",") {
					t.Errorf("triton ls %v = %v, want %v", tc.filters, got, tc.want)
				}
			})
		}
		out := tri(t, "ls", "-H", "-o", "name,state,flags")
		if !regexp.MustCompile(`(?m)^e2e-web\s+running\s+\S*F`).MatchString(out) {
			t.Errorf("triton ls -o name,state,flags does not show e2e-web running with the F(irewall) flag:\n%s", out)
		}
	})

	t.Run("InfoCounts", func(t *testing.T) {
		var info map[string]any
		triJSON(t, &info, "info", "-j")
		if field(info, "totalInstances") != "2" || field(info, "instances") != `{"running":2}` {
			t.Errorf("info = %v, want 2 running instances", info)
		}
	})

	t.Run("StopStartReboot", func(t *testing.T) {
		steps := []struct {
			args      []string
			wantState string
		}{
			{[]string{"inst", "stop", "-w", web}, "stopped"},
			{[]string{"inst", "start", "-w", web}, "running"},
			{[]string{"inst", "reboot", "-w", web}, "running"},
		}
		for _, s := range steps {
			start := time.Now()
			tri(t, s.args...)
			figure("triton "+s.args[1]+" -w (wall)", "%.2fs", time.Since(start).Seconds())
			if got := field(instGet(t, web), "state"); got != s.wantState {
				t.Errorf("after %v: state %s, want %s", s.args, got, s.wantState)
			}
		}
	})

	t.Run("RenameAndResize", func(t *testing.T) {
		tri(t, "inst", "rename", "-w", web, "e2e-web2")
		web = "e2e-web2"
		in := instGet(t, web)
		if field(in, "id") != webID || field(in, "name") != "e2e-web2" {
			t.Fatalf("after rename: %s is %s (%s)", web, field(in, "name"), field(in, "id"))
		}
		triFails(t, "e2e-web", "inst", "get", "e2e-web")
		tri(t, "inst", "resize", "-w", web, "g1-micro-512M")
		in = instGet(t, web)
		if field(in, "package") != "g1-micro-512M" || field(in, "memory") != "512" {
			t.Errorf("after resize: package %s memory %s, want g1-micro-512M 512", field(in, "package"), field(in, "memory"))
		}
	})

	t.Run("Tags", func(t *testing.T) {
		tagLs := func() string {
			var tags map[string]any
			triJSON(t, &tags, "inst", "tag", "ls", web)
			b, _ := json.Marshal(tags)
			return string(b)
		}
		tri(t, "inst", "tag", "set", "-w", web, "a=1", "b=true", "c=str")
		if got, want := tagLs(), `{"a":1,"b":true,"c":"str","n":1,"role":"web"}`; got != want {
			t.Errorf("tag ls after set = %s, want %s (a number and a boolean)", got, want)
		}
		if got := strings.TrimSpace(tri(t, "inst", "tag", "get", web, "a")); got != "1" {
			t.Errorf("tag get a = %q, want 1", got)
		}
		tri(t, "inst", "tag", "delete", "-w", web, "c")
		if got := tagLs(); strings.Contains(got, `"c"`) {
			t.Errorf("tag ls after delete c = %s", got)
		}
		tri(t, "inst", "tag", "replace-all", "-w", web, "only=yes", "x=false")
		if got, want := tagLs(), `{"only":"yes","x":false}`; got != want {
			t.Errorf("tag ls after replace-all = %s, want %s", got, want)
		}
		var list []map[string]any
		triJSON(t, &list, "ls", "-j", "tag.only=yes")
		if len(list) != 1 || field(list[0], "id") != webID {
			t.Errorf("ls tag.only=yes = %v, want only %s", list, webID)
		}
	})

	t.Run("Metadata", func(t *testing.T) {
		tri(t, "inst", "metadata", "set", "-w", web, "k1=v1", "k2=v2")
		if got := strings.TrimSpace(tri(t, "inst", "metadata", "get", web, "k1")); got != "v1" {
			t.Errorf("metadata get k1 = %q, want v1", got)
		}
		var md map[string]any
		triJSON(t, &md, "inst", "metadata", "ls", web)
		if md["k1"] != "v1" || md["k2"] != "v2" || md["foo"] != "bar" {
			t.Errorf("metadata ls = %v, want k1, k2 and foo", md)
		}
		tri(t, "inst", "metadata", "delete", "-f", "-w", web, "k1")
		triJSON(t, &md, "inst", "metadata", "ls", web)
		if _, ok := md["k1"]; ok || md["k2"] != "v2" {
			t.Errorf("metadata ls after delete k1 = %v", md)
		}
	})

	t.Run("Firewall", func(t *testing.T) {
		for _, s := range []struct{ cmd, want string }{{"disable-firewall", "false"}, {"enable-firewall", "true"}} {
			tri(t, "inst", s.cmd, "-w", web)
			if got := field(instGet(t, web), "firewall_enabled"); got != s.want {
				t.Errorf("after %s: firewall_enabled %s, want %s", s.cmd, got, s.want)
			}
		}
	})

	t.Run("DeletionProtection", func(t *testing.T) {
		tri(t, "inst", "enable-deletion-protection", "-w", "e2e-db")
		if got := field(instGet(t, "e2e-db"), "deletion_protection"); got != "true" {
			t.Errorf("deletion_protection = %s after enable", got)
		}
		for _, x := range []string{web, "e2e-db"} {
			triFails(t, `"deletion_protection" enabled`, "inst", "delete", "-f", "-w", x)
			if got := field(instGet(t, x), "state"); got != "running" {
				t.Errorf("%s is %s after a refused delete", x, got)
			}
		}
		tri(t, "inst", "disable-deletion-protection", "-w", "e2e-db")
		if got := field(instGet(t, "e2e-db"), "deletion_protection"); got != "false" {
			t.Errorf("deletion_protection = %s after disable", got)
		}
	})

	t.Run("Audit", func(t *testing.T) {
		var entries []map[string]any
		triJSON(t, &entries, "inst", "audit", "-j", web)
		seen := map[string]bool{}
		for _, e := range entries {
			seen[field(e, "action")] = true
		}
		for _, want := range []string{"provision", "stop", "start", "reboot", "rename", "resize", "set_metadata"} {
			if !seen[want] {
				t.Errorf("audit lacks %q; actions: %v", want, seen)
			}
		}
	})

	t.Run("NicsAndIP", func(t *testing.T) {
		ip := field(instGet(t, web), "primaryIp")
		if got := strings.TrimSpace(tri(t, "ip", web)); got != ip {
			t.Errorf("triton ip = %q, want %q", got, ip)
		}
		var nics []map[string]any
		triJSON(t, &nics, "inst", "nic", "ls", "-j", web)
		if len(nics) != 1 || field(nics[0], "ip") != ip || field(nics[0], "primary") != "true" {
			t.Fatalf("nic ls = %v, want one primary NIC with %s", nics, ip)
		}
		var nic map[string]any
		triJSON(t, &nic, "inst", "nic", "get", web, field(nics[0], "mac"))
		if field(nic, "ip") != ip || field(nic, "gateway") != "10.198.0.1" {
			t.Errorf("nic get = %v", nic)
		}
	})

	t.Run("ChangefeedSeesStop", func(t *testing.T) {
		feed, err := StartProc("triton changefeed", home, tritonEnv(), "", tritonBin, "changefeed", "-j")
		if err != nil {
			t.Fatal(err)
		}
		defer feed.Kill()
		// The feed prints no "connected" line: give the WebSocket a moment,
		// and should the first stop still come before the subscription,
		// start and stop again.
		time.Sleep(time.Second)
		var line string
		for round := 0; ; round++ {
			tri(t, "inst", "stop", "-w", "e2e-db")
			if line, err = feed.WaitLine(`"resourceState":"stopped"`, 10*time.Second); err == nil {
				break
			}
			if round == 2 {
				t.Fatal(err)
			}
			tri(t, "inst", "start", "-w", "e2e-db")
		}
		var ev map[string]any
		decodeJSONOutput(t, line, &ev)
		if field(ev, "changedResourceId") != dbID {
			t.Errorf("changefeed event for %s, want %s: %s", field(ev, "changedResourceId"), dbID, line)
		}
		if strings.Contains(feed.Output(), webID) {
			t.Errorf("changefeed reported e2e-web, which did not change:\n%s", feed.Output())
		}
	})

	t.Run("Delete", func(t *testing.T) {
		tri(t, "inst", "disable-deletion-protection", "-w", web)
		start := time.Now()
		tri(t, "inst", "delete", "-f", "-w", web, "e2e-db")
		figure("triton delete -w 2 instances (wall)", "%.2fs", time.Since(start).Seconds())
		for _, id := range []string{webID, dbID} {
			r := runTriton(t, nil, "inst", "get", "-j", id)
			if r.Code == 0 || !strings.Contains(r.Stderr, "InstanceDeleted") {
				t.Errorf("inst get of a deleted instance: want a non-zero exit with InstanceDeleted:\n%s", r)
			}
			var in map[string]any
			decodeJSONOutput(t, r.Stdout, &in)
			if field(in, "state") != "deleted" || field(in, "id") != id {
				t.Errorf("inst get %s after delete = %v, want state deleted", id, in)
			}
		}
		var list []map[string]any
		triJSON(t, &list, "ls", "-j")
		if len(list) != 0 {
			t.Errorf("ls after delete = %v, want none", list)
		}
		var info map[string]any
		triJSON(t, &info, "info", "-j")
		if field(info, "totalInstances") != "0" {
			t.Errorf("info after delete = %v, want 0 instances", info)
		}
		var used int64
		queryRow(t, devEnv["FLOTILLA_DB"], `SELECT COALESCE(sum(used_memory_mib), 0)::bigint FROM nodes`, nil, &used)
		if used != 0 {
			t.Errorf("nodes still account %d MiB of memory after every instance was deleted", used)
		}
	})
}
