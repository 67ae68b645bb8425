package dockerapi

import (
	"testing"
)

// TestDockerNetworkSubnetRules reproduces the tenant-network attack: a
// tenant asking for a Docker network on loopback, link-local or multicast
// space, or on a shared network's subnet with another tenant's address as
// its gateway, so that the node would take that address. Each is refused
// with a Docker error that says what to do.
func TestDockerNetworkSubnetRules(t *testing.T) {
	e := newTestEnv(t)
	for _, tc := range []struct {
		name, msg string
		args      []string
	}{
		{"ErrLoopback", "overlaps loopback 127.0.0.0/8", []string{"--subnet", "127.0.0.0/8", "lo"}},
		{"ErrLoopbackGateway", "overlaps loopback 127.0.0.0/8", []string{"--subnet", "127.5.0.0/24", "--gateway", "127.5.0.1", "lo2"}},
		{"ErrLinkLocal", "overlaps link-local 169.254.0.0/16", []string{"--subnet", "169.254.169.0/24", "--gateway", "169.254.169.254", "meta"}},
		{"ErrMulticast", "overlaps multicast 224.0.0.0/4", []string{"--subnet", "224.0.0.0/24", "mc"}},
		{"ErrSharedSubnet", "overlaps 10.198.0.0/20 of the shared network public", []string{"--subnet", "10.198.0.0/24", "--gateway", "10.198.0.5", "steal"}},
		{"ErrOutsidePool", "outside the address pool", []string{"--subnet", "8.8.8.0/24", "dns"}},
		{"ErrGatewayBroadcast", "network or broadcast address", []string{"--subnet", "192.168.62.0/24", "--gateway", "192.168.62.255", "bc"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := e.with(t)
			e.fails("alice", 1, tc.msg, append([]string{"network", "create"}, tc.args...)...)
			if out := e.ok("alice", "network", "ls", "--format", "{{.Name}}"); containsLine(out, tc.args[len(tc.args)-1]) {
				t.Fatalf("the refused network was recorded anyway:\n%s", out)
			}
		})
	}
}

func containsLine(out, line string) bool {
	for _, l := range splitLines(out) {
		if l == line {
			return true
		}
	}
	return false
}

func splitLines(s string) []string {
	var out []string
	start := 0
	for i := 0; i < len(s); i++ {
		if s[i] == '\n' {
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	if start < len(s) {
		out = append(out, s[start:])
	}
	return out
}

// TestDockerNetworkLabels: docker network create --label keeps the labels;
// inspect shows them and ls filters by them (key, key=value, AND-ed), as
// docker compose finds its project's networks; another account's labelled
// network is not listed.
func TestDockerNetworkLabels(t *testing.T) {
	e := newTestEnv(t)
	e.ok("alice", "network", "create", "--label", "com.docker.compose.project=shop", "--label", "com.docker.compose.network=back", "shop_back")
	e.ok("alice", "network", "create", "--label", "com.docker.compose.project=other", "other_back")
	e.ok("bob", "network", "create", "--label", "com.docker.compose.project=shop", "bobs")
	if out := e.ok("alice", "network", "inspect", "--format", "{{json .Labels}}", "shop_back"); out != `{"com.docker.compose.network":"back","com.docker.compose.project":"shop"}`+"\n" {
		t.Fatalf("network inspect labels: %q", out)
	}
	for _, tc := range []struct {
		filters []string
		want    string
	}{
		{[]string{"label=com.docker.compose.project=shop"}, "shop_back\n"},
		{[]string{"label=com.docker.compose.project"}, "other_back\nshop_back\n"},
		{[]string{"label=com.docker.compose.project=shop", "label=com.docker.compose.network=back"}, "shop_back\n"},
		{[]string{"label=com.docker.compose.project=shop", "label=com.docker.compose.network=front"}, ""},
		{[]string{"label=com.docker.compose.project=nope"}, ""},
	} {
		args := []string{"network", "ls", "--format", "{{.Name}}"}
		for _, f := range tc.filters {
			args = append(args, "--filter", f)
		}
		if out := e.ok("alice", args...); out != tc.want {
			t.Errorf("network ls %v: %q, want %q", tc.filters, out, tc.want)
		}
	}
	// A network made without labels shows an empty map, not null.
	e.ok("alice", "network", "create", "plain")
	if out := e.ok("alice", "network", "inspect", "--format", "{{json .Labels}}", "plain"); out != "{}\n" {
		t.Fatalf("labels of a network made without: %q", out)
	}
}
