package network

import (
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"flotilla/agent/driver"
	"flotilla/internal/testenv"
)

// hostSetup is what one simulated node does in TestFabricAcrossNodes: it
// runs as a child process of the test binary inside the node's network
// namespace (nsenter keeps the mount namespace, so the namespaces it makes
// under /var/run/netns outlive it, as an agent's do).
type hostSetup struct {
	Underlay string
	Peers    []string
	Fabrics  []Fabric
	// Instances are NICs to plumb, each into its own namespace.
	Instances []hostInstance
}

type hostInstance struct {
	NetNS string
	Veth  string
	NIC   driver.NIC
}

// TestFabricHostHelper is the child process's entry point; it does nothing
// in a normal test run.
func TestFabricHostHelper(t *testing.T) {
	spec := os.Getenv("FLT_FABRIC_HOST")
	if spec == "" {
		t.Skip("helper process for TestFabricAcrossNodes")
	}
	var h hostSetup
	if err := json.Unmarshal([]byte(spec), &h); err != nil {
		t.Fatal(err)
	}
	if err := SetFabricPeers(h.Peers); err != nil {
		t.Fatal(err)
	}
	for _, f := range h.Fabrics {
		if err := EnsureFabric(f); err != nil {
			t.Fatalf("EnsureFabric(%d): %v", f.VNI, err)
		}
		// A second call with the same fabric is free and harmless.
		if err := EnsureFabric(f); err != nil {
			t.Fatal(err)
		}
		fmt.Printf("router %s\n", RouterNetNSName(f.VNI))
	}
	for _, in := range h.Instances {
		if err := SetupInstanceNetNS(in.NetNS, in.NIC, in.Veth); err != nil {
			t.Fatalf("instance %s: %v", in.NetNS, err)
		}
	}
}

// TestFabricAcrossNodes builds two nodes, each a network namespace joined
// to the other by an underlay link, and two tenants whose VLANs both span
// both nodes with the same subnet (and one address used by both). A
// tenant's instances reach each other across nodes (ping and TCP) and their
// gateway in the router namespace (also on a node with a host network and
// NAT rule of its own on their subnet); the other tenant's are unreachable,
// and a shared address reaches the caller's own tenant's instance.
func TestFabricAcrossNodes(t *testing.T) {
	needRoot(t)
	testenv.NeedCommand(t, "nsenter", "util-linux")
	testenv.NeedCommand(t, "busybox", "busybox-static")
	sfx := fmt.Sprintf("%06x", rand.IntN(1<<24))
	third := 1 + rand.IntN(250)
	underlay := [2]string{fmt.Sprintf("10.251.%d.1", third), fmt.Sprintf("10.251.%d.2", third)}
	hosts := [2]string{"flttest-" + sfx + "-a", "flttest-" + sfx + "-b"}
	var routers []string
	var instNS []string
	t.Cleanup(func() {
		for _, ns := range append(append([]string{}, instNS...), routers...) {
			TeardownInstanceNetNS(ns, "")
		}
		for _, h := range hosts {
			exec.Command("ip", "netns", "del", h).Run()
		}
	})
	for _, h := range hosts {
		run(t, "ip", "netns", "add", h)
		run(t, "ip", "-n", h, "link", "set", "lo", "up")
	}
	// The underlay: a veth pair between the two node namespaces.
	run(t, "ip", "link", "add", "fltua"+sfx[:6], "netns", hosts[0], "type", "veth", "peer", "name", "fltub"+sfx[:6], "netns", hosts[1])
	for i, h := range hosts {
		dev := []string{"fltua" + sfx[:6], "fltub" + sfx[:6]}[i]
		run(t, "ip", "-n", h, "addr", "add", underlay[i]+"/24", "dev", dev)
		run(t, "ip", "-n", h, "link", "set", dev, "up")
	}

	// Node b has a host network of its own on the tenants' subnet, as a
	// docker0 might, with the usual MASQUERADE for it: neither its address
	// (ARP) nor its NAT (br_netfilter) may take the tenants' gateway traffic.
	hostNet := "fltd" + sfx[:6]
	run(t, "ip", "-n", hosts[1], "link", "add", hostNet, "type", "bridge")
	run(t, "ip", "-n", hosts[1], "addr", "add", "192.168.128.1/22", "dev", hostNet)
	run(t, "ip", "-n", hosts[1], "link", "set", hostNet, "up")
	run(t, "ip", "netns", "exec", hosts[1], "iptables", "-w", "-t", "nat", "-A", "POSTROUTING", "-s", "192.168.128.0/22",
		"!", "-o", hostNet, "-j", "MASQUERADE")

	// Tenants A and B: the same subnet, different VNIs.
	vniA, vniB := 0x100000+rand.IntN(1<<19), 0x180000+rand.IntN(1<<19)
	subnet := netip.MustParsePrefix("192.168.128.0/22")
	gw := netip.MustParseAddr("192.168.128.1")
	fab := func(vni, i int) Fabric {
		return Fabric{VNI: vni, Underlay: netip.MustParseAddr(underlay[i]), Networks: []FabricNet{{Subnet: subnet, Gateway: gw, NAT: true}}}
	}
	type inst struct {
		name, ns, ip string
		host, vni    int
	}
	insts := []inst{
		{"a1", "", "192.168.128.10", 0, vniA}, {"a2", "", "192.168.128.11", 1, vniA},
		{"b1", "", "192.168.128.20", 0, vniB}, {"b2", "", "192.168.128.10", 1, vniB}, // b2 has a1's address
	}
	setups := [2]hostSetup{}
	for i := range setups {
		setups[i] = hostSetup{Underlay: underlay[i], Peers: []string{underlay[1-i]}, Fabrics: []Fabric{fab(vniA, i), fab(vniB, i)}}
	}
	for k := range insts {
		in := &insts[k]
		in.ns = "flttest-" + sfx + "-" + in.name
		instNS = append(instNS, in.ns)
		mac := fmt.Sprintf("90:b8:d0:%02x:%02x:%02x", rand.IntN(256), rand.IntN(256), k)
		setups[in.host].Instances = append(setups[in.host].Instances, hostInstance{NetNS: in.ns, Veth: VethName(in.ns, 0),
			NIC: driver.NIC{MAC: mac, IP: in.ip, PrefixLen: 22, Gateway: gw.String(), Bridge: FabricBridgeName(in.vni)}})
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for i, h := range hosts {
		spec, _ := json.Marshal(setups[i])
		cmd := exec.Command("nsenter", "--net="+filepath.Join("/var/run/netns", h), exe, "-test.run=^TestFabricHostHelper$", "-test.v")
		cmd.Env = append(os.Environ(), "FLT_FABRIC_HOST="+string(spec))
		out, err := cmd.CombinedOutput()
		for _, line := range strings.Split(string(out), "\n") {
			if r, ok := strings.CutPrefix(line, "router "); ok {
				routers = append(routers, strings.TrimSpace(r))
			}
		}
		if err != nil {
			t.Fatalf("setting up node %s: %v\n%s", h, err, out)
		}
	}
	if len(routers) != 4 {
		t.Fatalf("routers %v, want one per VLAN per node", routers)
	}
	byName := map[string]inst{}
	for _, in := range insts {
		byName[in.name] = in
	}
	// Each instance answers TCP on 7000 with its own name.
	for _, in := range insts {
		serveName(t, in.ns, in.name)
	}

	t.Run("SameTenantAcrossNodes", func(t *testing.T) {
		for _, p := range [][2]string{{"a1", "a2"}, {"a2", "a1"}, {"b1", "b2"}, {"b2", "b1"}} {
			from, to := byName[p[0]], byName[p[1]]
			if err := pingFrom(from.ns, to.ip, 10*time.Second); err != nil {
				t.Errorf("%s cannot ping %s across nodes: %v", p[0], p[1], err)
			}
			if got, err := dialFrom(from.ns, to.ip); err != nil || got != to.name {
				t.Errorf("%s -> %s:7000 got %q, %v; want %q", p[0], to.ip, got, err, to.name)
			}
		}
	})
	t.Run("GatewayInRouterNamespace", func(t *testing.T) {
		for _, in := range insts {
			if err := pingFrom(in.ns, gw.String(), 5*time.Second); err != nil {
				t.Errorf("%s cannot ping its gateway: %v", in.name, err)
			}
		}
		// The node itself holds no tenant address.
		out, _ := exec.Command("ip", "-n", hosts[0], "-4", "addr").CombinedOutput()
		if strings.Contains(string(out), "192.168.128.") {
			t.Errorf("node namespace holds a tenant address:\n%s", out)
		}
	})
	t.Run("ErrOtherTenantUnreachable", func(t *testing.T) {
		// b1 asks for a2's address: nobody on B's VLAN has it.
		if err := pingFails(byName["b1"].ns, byName["a2"].ip, 2); err != nil {
			t.Error(err)
		}
		if got, err := dialFrom(byName["b1"].ns, byName["a2"].ip); err == nil {
			t.Errorf("b1 reached a2 over TCP (answer %q)", got)
		}
		if err := pingFails(byName["a1"].ns, byName["b1"].ip, 2); err != nil {
			t.Error(err)
		}
		if got, err := dialFrom(byName["a2"].ns, byName["b1"].ip); err == nil {
			t.Errorf("a2 reached b1 over TCP (answer %q)", got)
		}
		// The address both tenants use answers each with its own instance.
		if got, err := dialFrom(byName["b1"].ns, "192.168.128.10"); err != nil || got != "b2" {
			t.Errorf("b1 -> 192.168.128.10 got %q, %v; want b2", got, err)
		}
		if got, err := dialFrom(byName["a2"].ns, "192.168.128.10"); err != nil || got != "a1" {
			t.Errorf("a2 -> 192.168.128.10 got %q, %v; want a1", got, err)
		}
	})
	t.Run("PeersUpdate", func(t *testing.T) {
		// Flooding follows the peer list: the helper set exactly one peer.
		out, err := exec.Command("ip", "netns", "exec", hosts[0], "bridge", "fdb", "show", "dev", VXLANName(vniA)).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "00:00:00:00:00:00 dst "+underlay[1]) {
			t.Errorf("FDB of %s lacks the peer %s: %v\n%s", VXLANName(vniA), underlay[1], err, out)
		}
	})
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

func pingFrom(ns, ip string, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		out, err := exec.Command("ip", "netns", "exec", ns, "busybox", "ping", "-c1", "-W1", ip).CombinedOutput()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%v: %s", err, out)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func pingFails(ns, ip string, count int) error {
	for range count {
		if out, err := exec.Command("ip", "netns", "exec", ns, "busybox", "ping", "-c1", "-W1", ip).CombinedOutput(); err == nil {
			return fmt.Errorf("ping from %s to %s was answered:\n%s", ns, ip, out)
		}
	}
	return nil
}

// serveName listens on :7000 inside ns and answers every connection with name.
func serveName(t *testing.T, ns, name string) {
	t.Helper()
	var l net.Listener
	err := inNamedNetNS(ns, func() error {
		var err error
		l, err = net.Listen("tcp4", ":7000")
		return err
	})
	if err != nil {
		t.Fatalf("listen in %s: %v", ns, err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			io.WriteString(c, name)
			c.Close()
		}
	}()
}

// dialFrom connects from inside ns to ip:7000 and returns what it reads.
func dialFrom(ns, ip string) (string, error) {
	var c net.Conn
	err := inNamedNetNS(ns, func() error {
		var err error
		c, err = net.DialTimeout("tcp4", ip+":7000", 2*time.Second)
		return err
	})
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	b, err := io.ReadAll(c)
	return string(b), err
}
