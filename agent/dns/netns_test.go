package dns

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"

	"flotilla/internal/testenv"
)

// TestResolverInNetNS serves a network whose gateway lives in its own
// network namespace (a per-network router namespace) and queries it with
// busybox's nslookup from a client namespace linked to it by a veth pair.
func TestResolverInNetNS(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: network namespaces need root")
	}
	ipCmd := testenv.NeedCommand(t, "ip", "iproute2")
	testenv.NeedFile(t, "/bin/busybox", "busybox-static")
	name := fmt.Sprintf("flt-dnstest-%06x", rand.IntN(1<<24))
	run := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(ipCmd, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	cname := name + "-c" // the client's namespace, joined to the router's by a veth pair
	run("netns", "add", name)
	t.Cleanup(func() { exec.Command(ipCmd, "netns", "del", name).Run() })
	run("netns", "add", cname)
	t.Cleanup(func() { exec.Command(ipCmd, "netns", "del", cname).Run() })
	b := byte(rand.IntN(250) + 1)
	gw := netip.AddrFrom4([4]byte{10, 77, b, 1})
	client := netip.AddrFrom4([4]byte{10, 77, b, 5})
	run("-n", name, "link", "add", "gw0", "type", "veth", "peer", "name", "eth0", "netns", cname)
	run("-n", name, "addr", "add", gw.String()+"/24", "dev", "gw0")
	run("-n", name, "link", "set", "gw0", "up")
	run("-n", cname, "addr", "add", client.String()+"/24", "dev", "eth0")
	run("-n", cname, "link", "set", "eth0", "up")

	port := freePort(t)
	r := New(Config{Port: port, Upstreams: []string{}})
	defer r.Close()
	n := Network{ID: "net", Gateway: gw, Subnet: netip.PrefixFrom(gw, 24).Masked(), NetNS: "/var/run/netns/" + name}
	r.Feed("node").Replace([]Network{n}, []Record{
		{NetworkID: "net", OwnerID: alice, InstanceID: "c", Names: []string{"client"}, IP: client},
		{NetworkID: "net", OwnerID: alice, InstanceID: "w", Names: []string{"web"}, IP: netip.AddrFrom4([4]byte{10, 77, b, 9})},
	})
	out, err := exec.Command(ipCmd, "netns", "exec", cname, "/bin/busybox", "nslookup", "-type=a", fmt.Sprintf("-port=%d", port), "web", gw.String()).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "10.77."+fmt.Sprint(b)+".9") {
		t.Fatalf("nslookup web inside the namespace: %v\n%s", err, out)
	}
	// The host namespace has no such listener.
	for _, ap := range r.Listening() {
		if ap.Addr() != gw {
			t.Fatalf("listening on %s", ap)
		}
	}
}
