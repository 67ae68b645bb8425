package dns

import (
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// loopNet is a network made of loopback addresses (127.a.b.0/24), so that a
// test can bind its gateway and send from its "containers" without root.
type loopNet struct {
	Network
	base [3]byte
}

func newLoopNet(id string) loopNet {
	b := [3]byte{127, byte(rand.IntN(200) + 20), byte(rand.IntN(250) + 1)}
	gw := netip.AddrFrom4([4]byte{b[0], b[1], b[2], 1})
	return loopNet{Network: Network{ID: id, Gateway: gw, Subnet: netip.PrefixFrom(gw, 24).Masked()}, base: b}
}

func (n loopNet) ip(host byte) netip.Addr {
	return netip.AddrFrom4([4]byte{n.base[0], n.base[1], n.base[2], host})
}

func freePort(t *testing.T) int {
	t.Helper()
	for range 20 {
		p := 20000 + rand.IntN(40000)
		u, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			continue
		}
		u.Close()
		return p
	}
	t.Fatal("no free port")
	return 0
}

// fakeUpstream is a nameserver standing in for the host's (this machine has
// no internet): it answers A for answers and NXDOMAIN otherwise.
func fakeUpstream(t *testing.T, answers map[string]string) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(req)
		q := req.Question[0]
		if ip, ok := answers[strings.ToLower(q.Name)]; ok && q.Qtype == dns.TypeA {
			rr, _ := dns.NewRR(q.Name + " 60 IN A " + ip)
			m.Answer = append(m.Answer, rr)
		} else {
			m.Rcode = dns.RcodeNameError
		}
		w.WriteMsg(m)
	})}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go srv.ActivateAndServe()
	<-started
	t.Cleanup(func() { srv.Shutdown() })
	return pc.LocalAddr().String()
}

// query asks the resolver at gw:port from the address from.
func query(t *testing.T, proto string, from netip.Addr, gw netip.Addr, port int, name string, qtype uint16) (*dns.Msg, time.Duration) {
	t.Helper()
	var local net.Addr
	if proto == "tcp" {
		local = &net.TCPAddr{IP: from.AsSlice()}
	} else {
		local = &net.UDPAddr{IP: from.AsSlice()}
	}
	c := &dns.Client{Net: proto, Timeout: 3 * time.Second, Dialer: &net.Dialer{LocalAddr: local, Timeout: 3 * time.Second}}
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	start := time.Now()
	resp, _, err := c.Exchange(m, netip.AddrPortFrom(gw, uint16(port)).String())
	if err != nil {
		t.Fatalf("query %s %s from %s: %v", name, dns.TypeToString[qtype], from, err)
	}
	return resp, time.Since(start)
}

func answerIPs(m *dns.Msg) []string {
	var out []string
	for _, rr := range m.Answer {
		switch rr := rr.(type) {
		case *dns.A:
			out = append(out, rr.A.String())
		case *dns.AAAA:
			out = append(out, rr.AAAA.String())
		case *dns.PTR:
			out = append(out, rr.Ptr)
		}
	}
	return out
}

const (
	alice = "00000000-0000-4000-8000-00000000a11c"
	bob   = "00000000-0000-4000-8000-000000000b0b"
)

func TestResolver(t *testing.T) {
	port := freePort(t)
	up := fakeUpstream(t, map[string]string{"example.org.": "192.0.2.7"})
	cns := fakeUpstream(t, map[string]string{"web.inst.alice.dc1.cns.test.": "192.0.2.99"})
	r := New(Config{Port: port, Upstreams: []string{up}, Timeout: 500 * time.Millisecond})
	t.Cleanup(r.Close)
	r.SetCNS("cns.test", cns)

	// One network shared by two accounts, one of alice's own.
	shared, own := newLoopNet("net-shared"), newLoopNet("net-alice")
	r.Feed("node").Replace([]Network{shared.Network, own.Network}, []Record{
		{NetworkID: shared.ID, OwnerID: alice, InstanceID: "i-web", Names: []string{"web", "www"}, IP: shared.ip(10)},
		{NetworkID: shared.ID, OwnerID: alice, InstanceID: "i-cli", Names: []string{"client"}, IP: shared.ip(11)},
		{NetworkID: shared.ID, OwnerID: bob, InstanceID: "i-bob", Names: []string{"bobweb"}, IP: shared.ip(20)},
		{NetworkID: own.ID, OwnerID: alice, InstanceID: "i-web", Names: []string{"web"}, IP: own.ip(10)},
		{NetworkID: own.ID, OwnerID: alice, InstanceID: "i-db", Names: []string{"db"}, IP: own.ip(12)},
	})
	aliceClient, bobClient := shared.ip(11), shared.ip(20)

	t.Run("OwnName", func(t *testing.T) {
		for _, proto := range []string{"udp", "tcp"} {
			m, _ := query(t, proto, aliceClient, shared.Gateway, port, "Web", dns.TypeA)
			if m.Rcode != dns.RcodeSuccess || fmt.Sprint(answerIPs(m)) != "["+shared.ip(10).String()+"]" {
				t.Fatalf("%s: web = %s %v, want %s", proto, dns.RcodeToString[m.Rcode], answerIPs(m), shared.ip(10))
			}
		}
	})
	t.Run("Alias", func(t *testing.T) {
		m, _ := query(t, "udp", aliceClient, shared.Gateway, port, "www.", dns.TypeA)
		if got := answerIPs(m); len(got) != 1 || got[0] != shared.ip(10).String() {
			t.Fatalf("www = %v", got)
		}
	})
	t.Run("AAAAOfOwnNameIsEmpty", func(t *testing.T) {
		m, _ := query(t, "udp", aliceClient, shared.Gateway, port, "web", dns.TypeAAAA)
		if m.Rcode != dns.RcodeSuccess || len(m.Answer) != 0 {
			t.Fatalf("AAAA web = %s %v, want NOERROR and no answer", dns.RcodeToString[m.Rcode], answerIPs(m))
		}
	})
	t.Run("PTR", func(t *testing.T) {
		rev, _ := dns.ReverseAddr(shared.ip(10).String())
		m, _ := query(t, "udp", aliceClient, shared.Gateway, port, rev, dns.TypePTR)
		if got := answerIPs(m); len(got) != 1 || got[0] != "web." {
			t.Fatalf("PTR = %v, want web.", got)
		}
	})
	t.Run("NetworkScoped", func(t *testing.T) {
		// db is on alice's other network only: not visible on the shared one.
		m, _ := query(t, "udp", aliceClient, shared.Gateway, port, "db", dns.TypeA)
		if m.Rcode != dns.RcodeNameError || len(m.Answer) != 0 {
			t.Fatalf("db from the shared network = %s %v, want NXDOMAIN from upstream", dns.RcodeToString[m.Rcode], answerIPs(m))
		}
		m, _ = query(t, "udp", own.ip(10), own.Gateway, port, "db", dns.TypeA)
		if got := answerIPs(m); len(got) != 1 || got[0] != own.ip(12).String() {
			t.Fatalf("db on alice's network = %v", got)
		}
	})
	t.Run("ErrOtherAccountNotVisible", func(t *testing.T) {
		m, _ := query(t, "udp", bobClient, shared.Gateway, port, "web", dns.TypeA)
		if m.Rcode != dns.RcodeNameError || len(m.Answer) != 0 {
			t.Fatalf("bob asking for alice's web = %s %v, want NXDOMAIN", dns.RcodeToString[m.Rcode], answerIPs(m))
		}
		rev, _ := dns.ReverseAddr(shared.ip(10).String())
		m, _ = query(t, "udp", bobClient, shared.Gateway, port, rev, dns.TypePTR)
		if len(m.Answer) != 0 {
			t.Fatalf("bob got alice's PTR: %v", answerIPs(m))
		}
		m, _ = query(t, "udp", bobClient, shared.Gateway, port, "bobweb", dns.TypeA)
		if got := answerIPs(m); len(got) != 1 || got[0] != shared.ip(20).String() {
			t.Fatalf("bob's own name = %v", got)
		}
	})
	t.Run("Forward", func(t *testing.T) {
		m, _ := query(t, "udp", aliceClient, shared.Gateway, port, "example.org", dns.TypeA)
		if got := answerIPs(m); len(got) != 1 || got[0] != "192.0.2.7" {
			t.Fatalf("example.org = %s %v", dns.RcodeToString[m.Rcode], got)
		}
	})
	t.Run("ForwardCNS", func(t *testing.T) {
		m, _ := query(t, "udp", aliceClient, shared.Gateway, port, "WEB.inst.alice.dc1.cns.test", dns.TypeA)
		if got := answerIPs(m); len(got) != 1 || got[0] != "192.0.2.99" {
			t.Fatalf("CNS name = %s %v", dns.RcodeToString[m.Rcode], got)
		}
	})
	t.Run("ErrRefusedOutsideNetworks", func(t *testing.T) {
		m, _ := query(t, "udp", own.ip(10), shared.Gateway, port, "web", dns.TypeA)
		if m.Rcode != dns.RcodeRefused {
			t.Fatalf("a client of another network = %s, want REFUSED", dns.RcodeToString[m.Rcode])
		}
	})
	t.Run("PutAndForget", func(t *testing.T) {
		fresh := newLoopNet("net-fresh")
		r.Feed("node").Put("i-new", []Network{fresh.Network}, []Record{{NetworkID: fresh.ID, OwnerID: alice, InstanceID: "i-new", Names: []string{"new"}, IP: fresh.ip(5)}})
		m, _ := query(t, "udp", fresh.ip(5), fresh.Gateway, port, "new", dns.TypeA)
		if got := answerIPs(m); len(got) != 1 || got[0] != fresh.ip(5).String() {
			t.Fatalf("new = %v", got)
		}
		r.Feed("node").Forget("i-new")
		for _, ap := range r.Listening() {
			if ap.Addr() == fresh.Gateway {
				t.Fatalf("still listening on %s after the only instance was forgotten", ap)
			}
		}
	})
}

func TestResolverNoUpstream(t *testing.T) {
	port := freePort(t)
	// An upstream that never answers, and none at all.
	dead, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer dead.Close()
	for name, ups := range map[string][]string{"Silent": {dead.LocalAddr().String()}, "None": {}} {
		t.Run(name, func(t *testing.T) {
			r := New(Config{Port: port, Upstreams: ups, Timeout: 300 * time.Millisecond})
			defer r.Close()
			n := newLoopNet("net")
			r.Feed("node").Replace([]Network{n.Network}, []Record{{NetworkID: n.ID, OwnerID: alice, InstanceID: "i", Names: []string{"a"}, IP: n.ip(2)}})
			m, took := query(t, "udp", n.ip(2), n.Gateway, port, "nowhere.example", dns.TypeA)
			if m.Rcode != dns.RcodeServerFailure {
				t.Fatalf("rcode %s, want SERVFAIL", dns.RcodeToString[m.Rcode])
			}
			if took > 2*time.Second {
				t.Fatalf("SERVFAIL took %s", took)
			}
		})
	}
}

func TestResolverSecondListenerFails(t *testing.T) {
	port := freePort(t)
	n := newLoopNet("net")
	a := New(Config{Port: port, Upstreams: []string{}})
	defer a.Close()
	if err := a.Serve("", n.Gateway); err != nil {
		t.Fatal(err)
	}
	b := New(Config{Port: port, Upstreams: []string{}})
	defer b.Close()
	if err := b.Serve("", n.Gateway); err == nil {
		t.Fatal("a second resolver bound the same address; it would steal queries")
	}
}

func TestReverseAddr(t *testing.T) {
	for _, ip := range []string{"10.0.0.1", "192.168.200.254", "2001:db8::1", "::"} {
		rev, err := dns.ReverseAddr(ip)
		if err != nil {
			t.Fatal(err)
		}
		got, ok := reverseAddr(canonical(rev))
		if !ok || got != netip.MustParseAddr(ip) {
			t.Errorf("reverseAddr(%s) = %v %v, want %s", rev, got, ok, ip)
		}
	}
	for _, bad := range []string{"1.2.3.in-addr.arpa", "256.1.1.1.in-addr.arpa", "01.1.1.1.in-addr.arpa", "x.ip6.arpa", "example.org", ""} {
		if a, ok := reverseAddr(bad); ok {
			t.Errorf("reverseAddr(%q) = %s, want no address", bad, a)
		}
	}
}

// FuzzReverseAddr checks that any name parsed as a reverse name is exactly
// the reverse name of the address it gives.
func FuzzReverseAddr(f *testing.F) {
	for _, s := range []string{"1.0.0.10.in-addr.arpa", "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.0.0.0.0.1.2.3.4.ip6.arpa", "1.2.3.in-addr.arpa", "-1.0.0.0.in-addr.arpa", "web"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		a, ok := reverseAddr(name)
		if !ok {
			return
		}
		rev, err := dns.ReverseAddr(a.String())
		if err != nil {
			t.Fatalf("%q parsed to %s, which has no reverse name: %v", name, a, err)
		}
		if canonical(rev) != canonical(name) {
			t.Fatalf("%q parsed to %s, whose reverse name is %q", name, a, rev)
		}
	})
}
