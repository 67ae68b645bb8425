package dockerapi

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"flotilla/store"
)

// randomSubnet is a /24 no other test is likely to use at the same time.
func randomSubnet() (subnet, gateway string) {
	a, b := 100+rand.IntN(60), rand.IntN(256)
	return fmt.Sprintf("10.%d.%d.0/24", a, b), fmt.Sprintf("10.%d.%d.1", a, b)
}

// TestRuncDNS runs real containers that find each other by name through the
// node's resolver, and checks that another account's names stay invisible
// on a network both use.
func TestRuncDNS(t *testing.T) {
	re := newRuncEnv(t)
	e := re.testEnv
	subnet, gateway := randomSubnet()
	e.ok("alice", "network", "create", "--subnet", subnet, "net1")
	e.ok("alice", "run", "-d", "--name", "web", "--network", "net1", "--network-alias", "www", "busybox", "sleep", "600")
	webIP := strings.TrimSpace(e.ok("alice", "inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", "web"))
	if webIP == "" {
		t.Fatal("web has no IP address")
	}

	t.Run("ResolvConf", func(t *testing.T) {
		e := e.with(t)
		out := e.ok("alice", "run", "--rm", "--network", "net1", "busybox", "cat", "/etc/resolv.conf")
		if want := "nameserver " + gateway + "\noptions ndots:0\n"; out != want {
			t.Fatalf("resolv.conf = %q, want %q", out, want)
		}
	})
	t.Run("ResolvConfFromFlags", func(t *testing.T) {
		e := e.with(t)
		out := e.ok("alice", "run", "--rm", "--network", "net1", "--dns", "192.0.2.53", "--dns-search", "example.com",
			"--dns-option", "ndots:2", "busybox", "cat", "/etc/resolv.conf")
		if want := "nameserver 192.0.2.53\nsearch example.com\noptions ndots:2\n"; out != want {
			t.Fatalf("resolv.conf = %q, want %q", out, want)
		}
	})
	t.Run("NameAndAlias", func(t *testing.T) {
		e := e.with(t)
		for _, name := range []string{"web", "www"} {
			out := e.ok("alice", "run", "--rm", "--network", "net1", "busybox", "nslookup", name)
			if !strings.Contains(out, "Address: "+webIP) {
				t.Fatalf("nslookup %s: %q, want %s", name, out, webIP)
			}
		}
		if out := e.ok("alice", "run", "--rm", "--network", "net1", "busybox", "ping", "-c1", "-W2", "web"); !strings.Contains(out, "1 packets received") {
			t.Fatalf("ping web: %q", out)
		}
	})
	t.Run("ErrUnknownName", func(t *testing.T) {
		e := e.with(t)
		if out, _, code := e.run("alice", "run", "--rm", "--network", "net1", "busybox", "nslookup", "nosuchname"); code == 0 {
			t.Fatalf("nslookup nosuchname succeeded: %q", out)
		}
	})
	t.Run("ErrOtherAccount", func(t *testing.T) {
		e := e.with(t)
		// A public network both accounts have containers on: one gateway,
		// one resolver, two accounts' names.
		shared, _ := randomSubnet()
		_, err := e.st.CreateNetwork(context.Background(), store.Network{Name: "shared-dns", Public: true, Subnet: shared})
		must(t, err)
		e.ok("alice", "run", "-d", "--name", "api", "--network", "shared-dns", "busybox", "sleep", "600")
		if out := e.ok("alice", "run", "--rm", "--network", "shared-dns", "busybox", "nslookup", "api"); !strings.Contains(out, "Name:") {
			t.Fatalf("alice cannot resolve her own api: %q", out)
		}
		if out, _, code := e.run("bob", "run", "--rm", "--network", "shared-dns", "busybox", "nslookup", "api"); code == 0 || strings.Contains(out, "Name:") {
			t.Fatalf("bob resolved alice's api: exit %d %q", code, out)
		}
		if out, _, code := e.run("bob", "run", "--rm", "--network", "shared-dns", "busybox", "nslookup", "web"); code == 0 {
			t.Fatalf("bob resolved alice's web: %q", out)
		}
	})
}
