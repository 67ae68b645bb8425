package firewall

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"flotilla/agent/driver"
	"flotilla/agent/network"
	"flotilla/fwrule"
	"flotilla/internal/testenv"
)

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root to create bridges, namespaces and nftables tables")
	}
	testenv.NeedCommand(t, "iptables", "iptables")
	testenv.NeedCommand(t, "busybox", "busybox-static")
	testenv.NeedCommand(t, "ip", "iproute2")
}

// lab is a bridge with instances in network namespaces, made for one test.
type lab struct {
	t      *testing.T
	id     string
	bridge string
	third  int
}

type host struct {
	id, ns, veth string
	ip           netip.Addr
	mac          net.HardwareAddr
}

func newLab(t *testing.T) *lab {
	t.Helper()
	l := &lab{t: t, id: fmt.Sprintf("fw%d%d", os.Getpid(), rand.IntN(1e6)), third: 100 + rand.IntN(150)}
	l.bridge = network.BridgeName(l.id)
	if err := network.EnsureBridge(l.bridge, fmt.Sprintf("10.214.%d.1/24", l.third)); err != nil {
		t.Fatalf("EnsureBridge: %v", err)
	}
	t.Cleanup(func() {
		if err := network.DeleteBridge(l.bridge); err != nil {
			t.Errorf("DeleteBridge: %v", err)
		}
	})
	return l
}

func (l *lab) add(name string, n int) host {
	l.t.Helper()
	id := l.id + name
	h := host{id: id, ns: network.NetNSName(id), veth: network.VethName(id, 0),
		ip:  netip.MustParseAddr(fmt.Sprintf("10.214.%d.%d", l.third, n)),
		mac: net.HardwareAddr{0x90, 0xb8, 0xd0, 0x01, byte(l.third), byte(n)}}
	nic := driver.NIC{MAC: h.mac.String(), IP: h.ip.String(), PrefixLen: 24, Gateway: fmt.Sprintf("10.214.%d.1", l.third),
		Bridge: l.bridge, Subnet: fmt.Sprintf("10.214.%d.0/24", l.third)}
	if err := network.SetupInstanceNetNS(h.ns, nic, h.veth); err != nil {
		l.t.Fatalf("SetupInstanceNetNS: %v", err)
	}
	l.t.Cleanup(func() { network.TeardownInstanceNetNS(h.ns, h.veth) })
	return h
}

func (h host) nic() NIC { return NIC{Ifaces: []string{h.veth}, MAC: h.mac, IP: h.ip} }

// inNS runs fn on a thread in namespace ns; sockets it opens stay there.
func inNS(t *testing.T, ns string, fn func()) {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	h, err := netns.GetFromName(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if err := netns.Set(h); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := netns.Set(orig); err != nil {
			panic(err) // the thread stays locked and dies; never reused
		}
	}()
	fn()
}

// listen serves TCP on port in h's namespace, answering "ok".
func listen(t *testing.T, h host, port int) {
	t.Helper()
	var ln net.Listener
	inNS(t, h.ns, func() {
		var err error
		if ln, err = net.Listen("tcp4", fmt.Sprintf("%s:%d", h.ip, port)); err != nil {
			t.Fatal(err)
		}
	})
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("ok"))
			c.Close()
		}
	}()
}

// dial connects from h's namespace (from local, when set) to addr and
// reads the answer; it fails within half a second when packets are dropped.
func dial(t *testing.T, from host, local netip.Addr, to host, port int) error {
	t.Helper()
	var conn net.Conn
	var err error
	inNS(t, from.ns, func() {
		d := net.Dialer{Timeout: 500 * time.Millisecond}
		if local.IsValid() {
			d.LocalAddr = &net.TCPAddr{IP: local.AsSlice()}
		}
		conn, err = d.DialContext(context.Background(), "tcp4", fmt.Sprintf("%s:%d", to.ip, port))
	})
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(time.Second))
	b := make([]byte, 2)
	if _, err := conn.Read(b); err != nil || string(b) != "ok" {
		return fmt.Errorf("read %q: %v", b, err)
	}
	return nil
}

func ping(from host, to netip.Addr) error {
	out, err := exec.Command("ip", "netns", "exec", from.ns, "busybox", "ping", "-c", "1", "-W", "1", to.String()).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%v: %s", err, out)
	}
	return nil
}

func sh(t *testing.T, ns string, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...).CombinedOutput(); err != nil {
		t.Fatalf("%v: %v: %s", args, err, out)
	}
}

func newFirewall(t *testing.T) *Firewall {
	t.Helper()
	f, err := New(fmt.Sprintf("flt-test-%d-%d", os.Getpid(), rand.IntN(1e9)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := f.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return f
}

func resolve(t *testing.T, rule string, self fwrule.Member, account []fwrule.Member) []fwrule.Entry {
	t.Helper()
	r, err := fwrule.Parse(rule)
	if err != nil {
		t.Fatal(err)
	}
	es := r.Resolve(self, account)
	fwrule.SortEntries(es)
	return es
}

// TestDefaultDenyAndTagRule sends real packets between namespaces on one
// bridge: an enabled firewall drops TCP and ICMP to its instance, a tag
// rule lets the tagged instance in and not the untagged one, changing the
// tags moves the permission, and replies to the instance's own connections
// still arrive.
func TestDefaultDenyAndTagRule(t *testing.T) {
	needRoot(t)
	l := newLab(t)
	srv, web, plain := l.add("s", 2), l.add("w", 3), l.add("p", 4)
	listen(t, srv, 80)
	listen(t, srv, 81)
	listen(t, web, 80)
	f := newFirewall(t)

	// No firewall: everything passes.
	if err := f.Apply([]Instance{{ID: srv.id, NICs: []NIC{srv.nic()}}, {ID: web.id, NICs: []NIC{web.nic()}}, {ID: plain.id, NICs: []NIC{plain.nic()}}}); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	if err := dial(t, plain, netip.Addr{}, srv, 80); err != nil {
		t.Fatalf("without a firewall, plain cannot reach srv:80: %v", err)
	}

	members := func(webTag string) []fwrule.Member {
		return []fwrule.Member{
			{ID: srv.id, IPs: []netip.Addr{srv.ip}},
			{ID: web.id, IPs: []netip.Addr{web.ip}, Tags: map[string]any{"role": webTag}},
			{ID: plain.id, IPs: []netip.Addr{plain.ip}},
		}
	}
	apply := func(webTag string, enabled bool) {
		t.Helper()
		m := members(webTag)
		es := resolve(t, `FROM (tag "role" = "web") TO all vms ALLOW tcp PORT 80`, m[0], m)
		if err := f.Apply([]Instance{{ID: srv.id, NICs: []NIC{srv.nic()}, Enabled: enabled, Entries: es},
			{ID: web.id, NICs: []NIC{web.nic()}}, {ID: plain.id, NICs: []NIC{plain.nic()}}}); err != nil {
			t.Fatalf("Apply: %v", err)
		}
	}

	t.Run("DefaultDeny", func(t *testing.T) {
		if err := f.Apply([]Instance{{ID: srv.id, NICs: []NIC{srv.nic()}, Enabled: true}, {ID: plain.id, NICs: []NIC{plain.nic()}}}); err != nil {
			t.Fatal(err)
		}
		if err := dial(t, plain, netip.Addr{}, srv, 80); err == nil {
			t.Error("TCP to an instance with its firewall on and no rules got through")
		}
		if err := ping(plain, srv.ip); err == nil {
			t.Error("ICMP to an instance with its firewall on and no rules got through")
		}
		// From the node itself (the bridge's address) too.
		if err := ping(host{}, srv.ip); err == nil {
			t.Error("ICMP from the node to an instance with its firewall on got through")
		}
		// Outbound is allowed, and the replies come back.
		if err := dial(t, srv, netip.Addr{}, web, 80); err != nil {
			t.Errorf("the firewalled instance cannot connect out: %v", err)
		}
		if err := ping(srv, plain.ip); err != nil {
			t.Errorf("the firewalled instance cannot ping out: %v", err)
		}
	})
	t.Run("TagRule", func(t *testing.T) {
		apply("web", true)
		if err := dial(t, web, netip.Addr{}, srv, 80); err != nil {
			t.Errorf("tagged instance cannot reach port 80: %v", err)
		}
		if err := dial(t, web, netip.Addr{}, srv, 81); err == nil {
			t.Error("tagged instance reached port 81, which no rule allows")
		}
		if err := dial(t, plain, netip.Addr{}, srv, 80); err == nil {
			t.Error("untagged instance reached port 80")
		}
	})
	t.Run("TagChanged", func(t *testing.T) {
		apply("db", true)
		if err := dial(t, web, netip.Addr{}, srv, 80); err == nil {
			t.Error("instance whose tag no longer matches still reaches port 80")
		}
		apply("web", true)
		if err := dial(t, web, netip.Addr{}, srv, 80); err != nil {
			t.Errorf("instance tagged again cannot reach port 80: %v", err)
		}
	})
	t.Run("Disabled", func(t *testing.T) {
		apply("web", false)
		if err := dial(t, plain, netip.Addr{}, srv, 81); err != nil {
			t.Errorf("with the firewall off, port 81 is unreachable: %v", err)
		}
	})
}

// TestAntiSpoofing is the regression test for instances sending as someone
// else: an address taken from the subnet, or a changed MAC, reaches its
// target with no table (the attack works) and is dropped once the NICs are
// known to the firewall, whose own traffic keeps flowing.
func TestAntiSpoofing(t *testing.T) {
	needRoot(t)
	l := newLab(t)
	victim, attacker := l.add("v", 2), l.add("a", 3)
	listen(t, victim, 80)
	spoofed := netip.MustParseAddr(fmt.Sprintf("10.214.%d.99", l.third))
	sh(t, attacker.ns, "ip", "addr", "add", spoofed.String()+"/24", "dev", "eth0")
	f := newFirewall(t)
	nics := []Instance{{ID: victim.id, NICs: []NIC{victim.nic()}}, {ID: attacker.id, NICs: []NIC{attacker.nic()}}}

	// Red: nothing stops the attack.
	if err := dial(t, attacker, spoofed, victim, 80); err != nil {
		t.Fatalf("without anti-spoofing the spoofed connection should get through (the attack this test guards against): %v", err)
	}

	if err := f.Apply(nics); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	t.Run("SpoofedIP", func(t *testing.T) {
		if err := dial(t, attacker, spoofed, victim, 80); err == nil {
			t.Error("a connection from a spoofed source address got through")
		}
		if err := dial(t, attacker, netip.Addr{}, victim, 80); err != nil {
			t.Errorf("the attacker's own address is blocked too: %v", err)
		}
	})
	t.Run("SpoofedMAC", func(t *testing.T) {
		sh(t, attacker.ns, "ip", "link", "set", "eth0", "address", "90:b8:d0:66:66:66")
		sh(t, attacker.ns, "ip", "neigh", "flush", "all")
		if err := dial(t, attacker, netip.Addr{}, victim, 80); err == nil {
			t.Error("frames from a changed MAC address got through")
		}
		sh(t, attacker.ns, "ip", "link", "set", "eth0", "address", attacker.mac.String())
		if err := dial(t, attacker, netip.Addr{}, victim, 80); err != nil {
			t.Errorf("after restoring its MAC the attacker's own traffic is blocked: %v", err)
		}
	})
	t.Run("ErrBadNIC", func(t *testing.T) {
		err := f.Apply([]Instance{{ID: "x", NICs: []NIC{{Ifaces: []string{"veth"}, IP: netip.MustParseAddr("::1")}}}})
		if err == nil {
			t.Error("Apply accepted a NIC without a MAC and with an IPv6 address")
		}
	})
}
