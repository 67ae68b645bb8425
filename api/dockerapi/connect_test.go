package dockerapi

import (
	"encoding/json"
	"io"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestDockerNetworkConnect connects and disconnects a container with the
// docker CLI (on a simulated node) and checks what inspect, network
// inspect and events show, and every refusal's status and message.
func TestDockerNetworkConnect(t *testing.T) {
	e := newTestEnv(t)
	since := strconv.FormatInt(time.Now().Add(-time.Second).Unix(), 10)
	e.ok("alice", "network", "create", "net2")
	e.ok("alice", "network", "create", "net3")
	e.ok("bob", "network", "create", "bobnet")
	bobNetID := strings.TrimSpace(e.ok("bob", "network", "inspect", "--format", "{{.Id}}", "bobnet"))
	e.ok("alice", "run", "-d", "--name", "web", "busybox", "sleep", "600")
	e.ok("alice", "create", "--name", "idle", "busybox", "true")
	webID := strings.TrimSpace(e.ok("alice", "inspect", "--format", "{{.Id}}", "web"))

	networks := func(t *testing.T, name string) map[string]struct {
		IPAddress string
		Aliases   []string
		DNSNames  []string
	} {
		t.Helper()
		var out map[string]struct {
			IPAddress string
			Aliases   []string
			DNSNames  []string
		}
		must(t, json.Unmarshal([]byte(e.with(t).ok("alice", "inspect", "--format", "{{json .NetworkSettings.Networks}}", name)), &out))
		return out
	}
	// post sends a raw connect or disconnect, for the status the CLI hides.
	post := func(t *testing.T, login, path, body string) (int, string) {
		t.Helper()
		resp, err := e.client(login).Post(e.srv.URL+"/v1.51"+path, "application/json", strings.NewReader(body))
		must(t, err)
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode >= 400 && resp.Header.Get("Content-Type") != "application/json" {
			t.Fatalf("error without Docker's JSON: %d %q %s", resp.StatusCode, resp.Header.Get("Content-Type"), b)
		}
		var msg struct{ Message string }
		json.Unmarshal(b, &msg)
		return resp.StatusCode, msg.Message
	}

	t.Run("OK", func(t *testing.T) {
		e := e.with(t)
		e.ok("alice", "network", "connect", "--alias", "www", "--alias", "api", "net2", "web")
		nets := networks(t, "web")
		n2, ok := nets["net2"]
		if !ok || len(nets) != 2 || n2.IPAddress == "" {
			t.Fatalf("web's networks after connect: %+v", nets)
		}
		if strings.Join(n2.Aliases, ",") != "www,api" || strings.Join(n2.DNSNames, ",") != "web,www,api,"+webID[:12] {
			t.Fatalf("net2 endpoint: aliases %v, DNS names %v", n2.Aliases, n2.DNSNames)
		}
		var ni struct {
			Containers map[string]struct{ Name, IPv4Address string }
		}
		must(t, json.Unmarshal([]byte(e.ok("alice", "network", "inspect", "--format", "{{json .}}", "net2")), &ni))
		if c, ok := ni.Containers[webID]; !ok || c.Name != "web" || !strings.HasPrefix(c.IPv4Address, n2.IPAddress+"/") {
			t.Fatalf("network inspect net2 containers: %+v (web %s)", ni.Containers, n2.IPAddress)
		}
	})
	t.Run("OKStopped", func(t *testing.T) {
		e := e.with(t)
		e.ok("alice", "network", "connect", "net3", "idle")
		if nets := networks(t, "idle"); nets["net3"].IPAddress == "" {
			t.Fatalf("idle's networks after connect: %+v", nets)
		}
		e.ok("alice", "network", "disconnect", "net3", "idle")
		if nets := networks(t, "idle"); len(nets) != 1 {
			t.Fatalf("idle's networks after disconnect: %+v", nets)
		}
	})
	for _, tc := range []struct {
		name, login, path, body string
		status                  int
		msg                     string
	}{
		{"ErrAlreadyConnected", "alice", "/networks/net2/connect", `{"Container":"web"}`, 403, "endpoint with name web already exists in network net2"},
		{"ErrNoSuchContainer", "alice", "/networks/net2/connect", `{"Container":"nope"}`, 404, "No such container: nope"},
		{"ErrNoSuchNetwork", "alice", "/networks/nope/connect", `{"Container":"web"}`, 404, "network nope not found"},
		{"ErrOtherAccountsNetwork", "alice", "/networks/bobnet/connect", `{"Container":"web"}`, 404, "network bobnet not found"},
		{"ErrOtherAccountsNetworkByID", "alice", "/networks/" + bobNetID + "/connect", `{"Container":"web"}`, 404, "not found"},
		{"ErrOtherAccountsContainer", "bob", "/networks/bobnet/connect", `{"Container":"web"}`, 404, "No such container: web"},
		{"ErrFixedIP", "alice", "/networks/net3/connect", `{"Container":"web","EndpointConfig":{"IPAMConfig":{"IPv4Address":"10.0.0.9"}}}`, 400, "a fixed address (--ip, --ip6, --link-local-ip) on network net3 is not supported"},
		{"ErrLink", "alice", "/networks/net3/connect", `{"Container":"web","EndpointConfig":{"Links":["idle:db"]}}`, 400, "--link is not supported"},
		{"ErrBadAlias", "alice", "/networks/net3/connect", `{"Container":"web","EndpointConfig":{"Aliases":["a b"]}}`, 400, `invalid network alias "a b"`},
		{"ErrBadBody", "alice", "/networks/net3/connect", `{"Container":`, 400, ""},
		{"ErrNotConnected", "alice", "/networks/net3/disconnect", `{"Container":"web"}`, 403, "container " + webID + " is not connected to network net3"},
		{"ErrDisconnectNoSuchContainer", "alice", "/networks/net2/disconnect", `{"Container":"nope","Force":true}`, 404, "No such container: nope"},
		{"ErrDisconnectOtherAccount", "bob", "/networks/bobnet/disconnect", `{"Container":"web"}`, 404, "No such container: web"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, msg := post(t, tc.login, tc.path, tc.body)
			if status != tc.status || !strings.Contains(msg, tc.msg) {
				t.Fatalf("%s %s: %d %q, want %d %q", tc.path, tc.body, status, msg, tc.status, tc.msg)
			}
			if nets := networks(t, "web"); len(nets) != 2 || nets["net3"].IPAddress != "" {
				t.Fatalf("a refused request changed web's networks: %+v", nets)
			}
		})
	}
	t.Run("ErrCLIFixedIP", func(t *testing.T) {
		e.with(t).fails("alice", 1, "is not supported by this cloud yet", "network", "connect", "--ip", "192.168.250.9", "net3", "web")
	})
	t.Run("ErrCLIInUse", func(t *testing.T) {
		e.with(t).fails("alice", 1, "has active endpoints", "network", "rm", "net2")
	})
	t.Run("Disconnect", func(t *testing.T) {
		e := e.with(t)
		e.ok("alice", "network", "disconnect", "-f", "net2", "web")
		if nets := networks(t, "web"); len(nets) != 1 || nets["net2"].IPAddress != "" {
			t.Fatalf("web's networks after disconnect: %+v", nets)
		}
		if out := e.ok("alice", "network", "inspect", "--format", "{{len .Containers}}", "net2"); strings.TrimSpace(out) != "0" {
			t.Fatalf("net2 still has containers: %s", out)
		}
		// Reconnected without aliases, it has none: they went with the NIC.
		e.ok("alice", "network", "connect", "net2", "web")
		if n2 := networks(t, "web")["net2"]; n2.IPAddress == "" || len(n2.Aliases) != 0 {
			t.Fatalf("reconnected: %+v", n2)
		}
		e.ok("alice", "network", "disconnect", "net2", "web")
		e.ok("alice", "network", "rm", "net2")
	})
	t.Run("Events", func(t *testing.T) {
		e := e.with(t)
		until := strconv.FormatInt(time.Now().Add(time.Second).Unix(), 10)
		out := e.ok("alice", "events", "--since", since, "--until", until, "--filter", "type=network",
			"--format", "{{.Action}} {{.Actor.Attributes.name}} {{.Actor.Attributes.container}}")
		var got []string
		for _, l := range splitLines(out) {
			if strings.HasPrefix(l, "connect ") || strings.HasPrefix(l, "disconnect ") {
				got = append(got, l)
			}
		}
		idleID := strings.TrimSpace(e.ok("alice", "inspect", "--format", "{{.Id}}", "idle"))
		want := []string{"connect net2 " + webID, "connect net3 " + idleID, "disconnect net3 " + idleID,
			"disconnect net2 " + webID, "connect net2 " + webID, "disconnect net2 " + webID}
		if strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Fatalf("network events:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
		if out := e.ok("bob", "events", "--since", since, "--until", until, "--filter", "type=network", "--format", "{{.Action}}"); strings.Contains(out, "connect") {
			t.Fatalf("bob sees alice's network events: %s", out)
		}
	})
}
