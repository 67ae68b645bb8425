package fwrule

import (
	"net/netip"
	"strings"
	"testing"

	"flotilla/api/errdefs"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		name, in, want string
	}{
		{"OK/TagValue", `FROM (tag "role" = "web") TO all vms ALLOW tcp PORT 80`, `FROM tag "role" = "web" TO all vms ALLOW tcp PORT 80`},
		{"OK/Lowercase", `from any to all vms allow tcp port 22`, `FROM any TO all vms ALLOW tcp PORT 22`},
		{"OK/BareTag", `FROM any TO tag role ALLOW udp PORT all`, `FROM any TO tag "role" ALLOW udp PORT all`},
		{"OK/List", `FROM (ip 10.0.0.1 OR subnet 10.1.0.0/16 OR vm 0D9F2C1A-1111-2222-3333-444455556666) TO tag "db" BLOCK tcp PORT 5432`,
			`FROM (ip 10.0.0.1 OR subnet 10.1.0.0/16 OR vm 0d9f2c1a-1111-2222-3333-444455556666) TO tag "db" BLOCK tcp PORT 5432`},
		{"OK/Ports", `FROM any TO all vms ALLOW tcp PORTS 443, 80, 8000-8080, 8081`, `FROM any TO all vms ALLOW tcp PORTS 80, 443, 8000 - 8081`},
		{"OK/PortAnd", `FROM any TO all vms ALLOW tcp (PORT 80 AND PORT 443)`, `FROM any TO all vms ALLOW tcp PORTS 80, 443`},
		{"OK/ICMP", `FROM any TO all vms ALLOW icmp TYPE 8 CODE 0`, `FROM any TO all vms ALLOW icmp TYPE 8 CODE 0`},
		{"OK/ICMPAll", `FROM any TO all vms ALLOW icmp TYPE all`, `FROM any TO all vms ALLOW icmp TYPE all`},
		{"OK/QuotedEscapes", `FROM tag "a \"b\"" = "c\\d" TO all vms ALLOW tcp PORT 1`, `FROM tag "a \"b\"" = "c\\d" TO all vms ALLOW tcp PORT 1`},
		{"OK/NumberTag", `FROM tag "n" = 5 TO all vms ALLOW tcp PORT 1`, `FROM tag "n" = "5" TO all vms ALLOW tcp PORT 1`},
		{"OK/Priority", `FROM any TO all vms BLOCK tcp PORT 22 priority 10`, `FROM any TO all vms BLOCK tcp PORT 22 PRIORITY 10`},
		{"ErrPriority", `FROM any TO all vms BLOCK tcp PORT 22 PRIORITY 101`, ""},
		{"ErrNoInstances", `FROM any TO ip 10.0.0.1 ALLOW tcp PORT 80`, ""},
		{"ErrPortRange", `FROM any TO all vms ALLOW tcp PORT 70000`, ""},
		{"ErrBackwards", `FROM any TO all vms ALLOW tcp PORTS 90 - 80`, ""},
		{"ErrProtocol", `FROM any TO all vms ALLOW sctp PORT 80`, ""},
		{"ErrSubnetHostBits", `FROM subnet 10.0.0.1/24 TO all vms ALLOW tcp PORT 80`, ""},
		{"ErrBadVM", `FROM vm web1 TO all vms ALLOW tcp PORT 80`, ""},
		{"ErrAnyInList", `FROM (any OR ip 10.0.0.1) TO all vms ALLOW tcp PORT 80`, ""},
		{"ErrTrailing", `FROM any TO all vms ALLOW tcp PORT 80 PORT 81`, ""},
		{"ErrUnterminated", `FROM tag "role TO all vms ALLOW tcp PORT 80`, ""},
		{"ErrEmpty", ``, ""},
		{"ErrAction", `FROM any TO all vms PERMIT tcp PORT 80`, ""},
		{"ErrICMPType", `FROM any TO all vms ALLOW icmp TYPE 300`, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := Parse(tc.in)
			if tc.want == "" {
				if err == nil {
					t.Fatalf("Parse(%q) = %s, want an error", tc.in, r)
				}
				if !errdefs.Is(err, errdefs.Invalid) || !strings.Contains(err.Error(), "rule") {
					t.Fatalf("Parse(%q) error %v: want an Invalid error about the rule", tc.in, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse(%q): %v", tc.in, err)
			}
			if got := r.String(); got != tc.want {
				t.Fatalf("Parse(%q).String() = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}

func TestTargetMatches(t *testing.T) {
	r, err := Parse(`FROM (tag "role" = "web" OR tag "x" OR subnet 10.1.0.0/16 OR ip 10.9.9.9 OR vm 11111111-2222-3333-4444-555555555555) TO all vms ALLOW tcp PORT 80`)
	if err != nil {
		t.Fatal(err)
	}
	matches := func(id, ip string, tags map[string]any) bool {
		for _, tg := range r.From {
			if tg.Matches(id, []netip.Addr{netip.MustParseAddr(ip)}, tags) {
				return true
			}
		}
		return false
	}
	for _, tc := range []struct {
		name string
		id   string
		ip   string
		tags map[string]any
		want bool
	}{
		{"TagValue", "a", "192.168.0.1", map[string]any{"role": "web"}, true},
		{"OtherTagValue", "a", "192.168.0.1", map[string]any{"role": "db"}, false},
		{"TagPresent", "a", "192.168.0.1", map[string]any{"x": true}, true},
		{"Subnet", "a", "10.1.2.3", nil, true},
		{"IP", "a", "10.9.9.9", nil, true},
		{"VM", "11111111-2222-3333-4444-555555555555", "192.168.0.1", nil, true},
		{"Nothing", "a", "192.168.0.1", map[string]any{"role": 1.0}, false},
	} {
		if got := matches(tc.id, tc.ip, tc.tags); got != tc.want {
			t.Errorf("%s: matches = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// FuzzParse checks that whatever parses renders to text that parses back to
// the same rule, and that nothing panics.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		`FROM (tag "role" = "web") TO all vms ALLOW tcp PORT 80`,
		`FROM any TO all vms ALLOW tcp PORTS 443, 80, 8000-8080`,
		`FROM (ip 10.0.0.1 OR subnet fd00::/8) TO vm 0d9f2c1a-1111-2222-3333-444455556666 BLOCK udp PORT all`,
		`FROM all vms TO any BLOCK icmp TYPE 8 CODE 0`,
		`FROM any TO tag "a \"b\"" ALLOW tcp (PORT 1 AND PORT 2)`,
		`FROM tag x = y TO all vms ALLOW icmp TYPE all`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := Parse(s)
		if err != nil {
			if !errdefs.Is(err, errdefs.Invalid) {
				t.Fatalf("Parse(%q) error %v is not Invalid", s, err)
			}
			return
		}
		text := r.String()
		r2, err := Parse(text)
		if err != nil {
			t.Fatalf("Parse(%q) rendered %q, which does not parse: %v", s, text, err)
		}
		if r2.String() != text {
			t.Fatalf("render is unstable: %q -> %q -> %q", s, text, r2.String())
		}
	})
}

func TestResolve(t *testing.T) {
	web := Member{ID: "w", IPs: []netip.Addr{netip.MustParseAddr("10.0.0.2")}, Tags: map[string]any{"role": "web"}}
	db := Member{ID: "d", IPs: []netip.Addr{netip.MustParseAddr("10.0.0.3")}, Tags: map[string]any{"role": "db"}}
	plain := Member{ID: "p", IPs: []netip.Addr{netip.MustParseAddr("10.0.0.4")}}
	account := []Member{web, db, plain}
	parse := func(s string) Rule {
		r, err := Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	t.Run("TagToAllVMs", func(t *testing.T) {
		r := parse(`FROM (tag "role" = "web") TO all vms ALLOW tcp PORT 80`)
		es := r.Resolve(db, account)
		if len(es) != 1 || !es[0].Inbound || es[0].AnyPeer || len(es[0].Peers) != 1 || es[0].Peers[0].String() != "10.0.0.2/32" {
			t.Fatalf("db entries = %+v, want one inbound from 10.0.0.2/32", es)
		}
		// web is in FROM (no outbound entry for ALLOW) and in TO.
		if es := r.Resolve(web, account); len(es) != 1 || !es[0].Inbound {
			t.Fatalf("web entries = %+v, want one inbound", es)
		}
	})
	t.Run("OutboundBlock", func(t *testing.T) {
		r := parse(`FROM tag "role" TO (ip 192.168.1.1 OR subnet 172.16.0.0/12) BLOCK udp PORT 53`)
		es := r.Resolve(web, account)
		if len(es) != 1 || es[0].Inbound || len(es[0].Peers) != 2 {
			t.Fatalf("web entries = %+v, want one outbound block to two peers", es)
		}
		if es := r.Resolve(plain, account); len(es) != 0 {
			t.Fatalf("untagged instance entries = %+v, want none", es)
		}
	})
	t.Run("AnyInbound", func(t *testing.T) {
		r := parse(`FROM any TO vm ` + "11111111-2222-3333-4444-555555555555" + ` ALLOW icmp TYPE 8`)
		self := Member{ID: "11111111-2222-3333-4444-555555555555"}
		es := r.Resolve(self, append(account, self))
		if len(es) != 1 || !es[0].AnyPeer || es[0].ICMPType != 8 || es[0].ICMPCode != -1 {
			t.Fatalf("entries = %+v", es)
		}
		if r.AppliesTo(web) || !r.AppliesTo(self) {
			t.Fatal("AppliesTo: want only the named vm")
		}
	})
	t.Run("Order", func(t *testing.T) {
		es := []Entry{{Action: Allow}, {Action: Block}, {Action: Allow, Priority: 5}}
		SortEntries(es)
		if es[0].Priority != 5 || es[1].Action != Block || es[2].Action != Allow {
			t.Fatalf("order = %+v", es)
		}
	})
}
