package network

import (
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"flotilla/agent/driver"
	"flotilla/api/errdefs"

	"flotilla/internal/testenv"
)

func TestNames(t *testing.T) {
	for _, n := range []string{BridgeName("net-1"), VethName("inst", 3), TapName("inst", 12), NetNSName("x")} {
		if !validIfName(n) || !strings.HasPrefix(n, Prefix) {
			t.Errorf("name %q is not a valid prefixed interface name", n)
		}
	}
	if VethName("a", 0) == VethName("b", 0) || VethName("a", 0) == VethName("a", 1) {
		t.Error("veth names collide")
	}
	if BridgeName("n") != BridgeName("n") {
		t.Error("bridge name is not stable")
	}
	if validIfName("0123456789abcdef") || validIfName("a/b") || validIfName("") {
		t.Error("validIfName accepts an invalid name")
	}
}

func TestInvalidArguments(t *testing.T) {
	cases := map[string]error{
		"ErrBridgeName": EnsureBridge("this-name-is-far-too-long", "10.0.0.1/24"),
		"ErrGateway":    EnsureBridge("fltx", "10.0.0.1"),
		"ErrSubnet":     EnableNAT("fltx", "nonsense"),
		"ErrTapName":    CreateTap("a/b", "fltx", ""),
		"ErrNICIP":      SetupInstanceNetNS("fltns", driver.NIC{IP: "x", PrefixLen: 24, Bridge: "fltx"}, "fltvx"),
		"ErrNSName":     SetupInstanceNetNS("../etc", driver.NIC{IP: "10.0.0.2", PrefixLen: 24, Bridge: "fltx"}, "fltvx"),
	}
	for name, err := range cases {
		if errdefs.CodeOf(err) != errdefs.Invalid {
			t.Errorf("%s: got %v, want an invalid error", name, err)
		}
	}
}

// testNet is a bridge with a private subnet 10.213.N.0/24 made for one test.
type testNet struct {
	bridge, subnet, gw string
	third              int
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root to create bridges and namespaces")
	}
	testenv.NeedCommand(t, "iptables", "iptables")
}

func newTestNet(t *testing.T, id string) testNet {
	t.Helper()
	third := 100 + rand.IntN(150)
	n := testNet{
		bridge: BridgeName(fmt.Sprintf("test-%s-%d-%d", id, os.Getpid(), third)),
		subnet: fmt.Sprintf("10.213.%d.0/24", third),
		gw:     fmt.Sprintf("10.213.%d.1", third),
		third:  third,
	}
	if err := EnsureBridge(n.bridge, n.gw+"/24"); err != nil {
		t.Fatalf("EnsureBridge: %v", err)
	}
	t.Cleanup(func() {
		if err := DeleteBridge(n.bridge); err != nil {
			t.Errorf("DeleteBridge: %v", err)
		}
		if LinkExists(n.bridge) {
			t.Errorf("bridge %s still exists", n.bridge)
		}
	})
	return n
}

func (n testNet) addInstance(t *testing.T, id string, host int) (ns, ip string) {
	t.Helper()
	ns, veth := NetNSName(id+n.bridge), VethName(id+n.bridge, 0)
	ip = fmt.Sprintf("10.213.%d.%d", n.third, host)
	nic := driver.NIC{MAC: fmt.Sprintf("90:b8:d0:00:%02x:%02x", n.third, host), IP: ip, PrefixLen: 24,
		Gateway: n.gw, Bridge: n.bridge, Subnet: n.subnet}
	if err := SetupInstanceNetNS(ns, nic, veth); err != nil {
		t.Fatalf("SetupInstanceNetNS: %v", err)
	}
	// Idempotent second call.
	if err := SetupInstanceNetNS(ns, nic, veth); err != nil {
		t.Fatalf("SetupInstanceNetNS again: %v", err)
	}
	t.Cleanup(func() {
		if err := TeardownInstanceNetNS(ns, veth); err != nil {
			t.Errorf("TeardownInstanceNetNS: %v", err)
		}
		if LinkExists(veth) || NetNSExists(ns) {
			t.Errorf("veth %s or netns %s left behind", veth, ns)
		}
	})
	return ns, ip
}

func ping(ns, ip string) error {
	args := []string{"busybox", "ping", "-c", "1", "-W", "1", ip}
	if ns != "" {
		args = append([]string{"ip", "netns", "exec", ns}, args...)
	}
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%v: %s", err, out)
	}
	return nil
}

func TestBridgeNetNSAndIsolation(t *testing.T) {
	needRoot(t)
	testenv.NeedCommand(t, "busybox", "busybox-static")
	a := newTestNet(t, "a")
	// EnsureBridge is idempotent.
	if err := EnsureBridge(a.bridge, a.gw+"/24"); err != nil {
		t.Fatalf("EnsureBridge again: %v", err)
	}
	b := newTestNet(t, "b")
	for b.third == a.third {
		b = newTestNet(t, "b2")
	}
	if err := EnableNAT(a.bridge, a.subnet); err != nil {
		t.Fatalf("EnableNAT: %v", err)
	}
	if err := EnableNAT(b.bridge, b.subnet); err != nil {
		t.Fatalf("EnableNAT: %v", err)
	}
	nsA1, ipA1 := a.addInstance(t, "a1", 11)
	_, ipA2 := a.addInstance(t, "a2", 12)
	nsB1, ipB1 := b.addInstance(t, "b1", 11)

	if err := ping("", ipA1); err != nil {
		t.Errorf("host -> container: %v", err)
	}
	if err := ping(nsA1, ipA2); err != nil {
		t.Errorf("container -> container on one bridge: %v", err)
	}
	if err := ping(nsA1, a.gw); err != nil {
		t.Errorf("container -> gateway: %v", err)
	}
	if err := ping(nsA1, ipB1); err == nil {
		t.Errorf("container on %s reached %s on %s: isolation broken", a.bridge, ipB1, b.bridge)
	}
	// Without the isolation rules the same traffic flows (so the check above
	// is about the rules, not about routing).
	if err := removeIsolation(a.bridge); err != nil {
		t.Fatal(err)
	}
	if err := removeIsolation(b.bridge); err != nil {
		t.Fatal(err)
	}
	if err := ping(nsB1, ipA1); err != nil {
		t.Errorf("with isolation removed, cross-bridge ping failed: %v", err)
	}
	if err := EnsureBridge(a.bridge, a.gw+"/24"); err != nil {
		t.Fatal(err)
	}
	if err := EnsureBridge(b.bridge, b.gw+"/24"); err != nil {
		t.Fatal(err)
	}
	if err := ping(nsB1, ipA1); err == nil {
		t.Error("isolation not restored by EnsureBridge")
	}

	if err := DisableNAT(a.bridge, a.subnet); err != nil {
		t.Fatalf("DisableNAT: %v", err)
	}
	out, _ := iptables("-t", "nat", "-S", chainNAT)
	if strings.Contains(out, a.bridge) {
		t.Errorf("NAT rule for %s survived DisableNAT:\n%s", a.bridge, out)
	}
	if !strings.Contains(out, b.bridge) {
		t.Errorf("NAT rule for %s missing:\n%s", b.bridge, out)
	}
}

func TestCreateTap(t *testing.T) {
	needRoot(t)
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skip("skipping: /dev/net/tun not available")
	}
	n := newTestNet(t, "tap")
	tap := TapName(fmt.Sprintf("tap-%d", os.Getpid()), 0)
	if err := CreateTap(tap, "fltnosuchbr", ""); errdefs.CodeOf(err) != errdefs.NotFound {
		t.Errorf("CreateTap on a missing bridge: %v, want not found", err)
	}
	if err := CreateTap(tap, n.bridge, "90:b8:d0:11:22:33"); err != nil {
		t.Fatalf("CreateTap: %v", err)
	}
	if err := CreateTap(tap, n.bridge, "90:b8:d0:11:22:33"); err != nil {
		t.Fatalf("CreateTap again: %v", err)
	}
	defer DeleteLink(tap)
	l, err := netlink.LinkByName(tap)
	if err != nil {
		t.Fatal(err)
	}
	br, _ := netlink.LinkByName(n.bridge)
	if l.Attrs().MasterIndex != br.Attrs().Index {
		t.Errorf("tap master %d, want bridge %d", l.Attrs().MasterIndex, br.Attrs().Index)
	}
	if got := l.Attrs().HardwareAddr.String(); got != "fe:b8:d0:11:22:33" {
		t.Errorf("tap MAC %s, want fe:b8:d0:11:22:33", got)
	}
	if err := DeleteLink(tap); err != nil || LinkExists(tap) {
		t.Errorf("DeleteLink: %v (exists=%v)", err, LinkExists(tap))
	}
	if err := DeleteLink(tap); err != nil {
		t.Errorf("DeleteLink of a missing link: %v", err)
	}
}
